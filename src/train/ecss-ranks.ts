/**
 * ECSS on several ranks (docs/distributed.md, ECSS per rank; docs/store.md):
 * where each rank's expert store lives, what a checkpoint records about the
 * stores, and how a checkpoint's stores are resharded into another layout's.
 *
 * Placement. One process keeps its store at store.path (default
 * <out>/experts.sgxs). On N ranks with parallel {data D, expert P}, rank r
 * keeps a store of its own, in a folder of its own (the store, its lock and
 * its statistics):
 *
 *   <dir>/store/d<D>e<P>/rank-RRRR/<name>        <dir>/<name>: that same store.path
 *
 * Rank r holds experts [p·E/P, (p+1)·E/P) of every sparse layer, p = r mod P,
 * as store-local ids 0 … E/P − 1 (data parallel: P = 1, every expert). The
 * replicas of a shard hold the same experts in stores of their own.
 *
 * Checkpoints. Every rank flushes its store; rank 0 writes each rank's
 * index as experts-rank-RRRR.index in the checkpoint folder, and state.json's
 * `stores` says the layout and each rank's store id. Resuming in the same
 * layout, each rank reopens its store and adopts its index. In any other
 * layout — other N, other {D, P}, one process, or a one-process checkpoint
 * resumed on N ranks — each rank builds a new store of its range for the
 * new layout, reading every expert's record (weights, Adam moments, step
 * count) from the old store that holds it, as of the checkpoint's index.
 *
 * Every path is made from the config (store.path or out) and the layouts'
 * numbers, which state.json gives as checked integers: nothing read from a
 * file names a path, so none steers a write outside its folder.
 */
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import type { LoadedFolder } from "../checkpoint/folder.js";
import { ExpertStoreFile } from "../store/file.js";
import { RECORD_HEADER, payloadFloats } from "../store/format.js";
import { lockStore } from "../store/lock.js";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";
import type { ParallelPlan } from "./data-parallel.js";
import { storeLayout } from "./ecss-model.js";

/** The store of a one-process run. */
export const storePath = (c: TrainConfig): string => c.store.path ?? join(c.out, "experts.sgxs");

const pad = (r: number): string => String(r).padStart(4, "0");

/** Rank `rank`'s store under `plan` (one process: storePath). */
export function rankStorePath(c: TrainConfig, plan: ParallelPlan, rank: number): string {
  const file = storePath(c);
  if (plan.data * plan.expert === 1) return file;
  return join(dirname(file), "store", `d${plan.data}e${plan.expert}`, `rank-${pad(rank)}`, basename(file));
}

/** The checkpoint file holding rank r's store index. */
export const rankIndexName = (rank: number): string => `experts-rank-${pad(rank)}.index`;

/** state.json's `stores`: a checkpoint of per-rank stores. */
export const StoreSetSchema = z
  .object({
    data: z.number().int().min(1).max(2 ** 16),
    expert: z.number().int().min(1).max(2 ** 16),
    /** Experts per sparse layer (a multiple of expert). */
    experts: z.number().int().min(1).max(2 ** 16),
    /** Each rank's store id, by rank. */
    ids: z.array(z.string().min(1).max(128)).min(2).max(2 ** 16),
  })
  .strict()
  .refine((s) => s.ids.length === s.data * s.expert && s.experts % s.expert === 0, "one store id per rank (data × expert), and expert must divide the experts");
export type StoreSet = z.infer<typeof StoreSetSchema>;

/** Where a checkpoint's experts are: one process's store (state.json `store`), or per-rank stores (`stores`). */
export type StoreSource = { kind: "single"; storeId: string } | { kind: "set"; set: StoreSet };

/** Whether resuming `src` under `plan` reopens the same stores (otherwise they are rebuilt). */
export function sameStores(src: StoreSource, plan: ParallelPlan): boolean {
  return src.kind === "single" ? plan.data * plan.expert === 1 : src.set.data === plan.data && src.set.expert === plan.expert;
}

/** The store id and index file rank `rank` resumes from, when sameStores. */
export function ownStore(src: StoreSource, rank: number): { storeId: string; index: string } {
  return src.kind === "single" ? { storeId: src.storeId, index: "experts.index" } : { storeId: src.set.ids[rank]!, index: rankIndexName(rank) };
}

/**
 * Builds `target`, the store of experts [first, first + count) for a new
 * layout, from the checkpoint `folder`'s stores (`src`), record by record:
 * each expert's payload and step count are copied from the store that held
 * it (in a set, the rank of the first expert group holding its shard), as
 * of that store's index in the checkpoint. An existing file at `target` is
 * replaced (atomically: the new store is renamed into place), under its lock.
 */
export function rebuildStore(c: TrainConfig, folder: LoadedFolder, src: StoreSource, target: string, first: number, count: number): void {
  const E = c.model.experts!.count;
  const shards = src.kind === "single" ? 1 : src.set.expert;
  const per = E / shards;
  const opened = new Map<number, ExpertStoreFile>();
  const open = (p: number): ExpertStoreFile => {
    let s = opened.get(p);
    if (s) return s;
    // Only read: the paths come from the config and the checkpoint's (checked) layout numbers.
    const path = src.kind === "single" ? storePath(c) : rankStorePath(c, { data: src.set.data, expert: src.set.expert }, p);
    const { storeId, index } = ownStore(src, p);
    s = ExpertStoreFile.open(path, { readOnly: true, layers: storeLayout(c.model, per) });
    opened.set(p, s);
    if (s.header.storeId !== storeId) throw new SigmaError(`the checkpoint ${folder.path} was written with the expert store ${storeId}, but ${path} is store ${s.header.storeId}`, "resume from the run's newest checkpoint, with the config (out, store.path) that wrote it");
    s.restore(folder.read(index), join(folder.path, index));
    return s;
  };
  const release = lockStore(target);
  const steps: number[][] = [];
  try {
    const built = ExpertStoreFile.create(
      target,
      storeLayout(c.model, count),
      (l, i, payload) => {
        const e = first + i;
        const p = Math.floor(e / per);
        const s = open(p);
        const rec = new Uint8Array(s.recordBytes(l));
        const entry = s.read(l, e - p * per, rec);
        payload.set(new Float32Array(rec.buffer, RECORD_HEADER, payloadFloats(s.layout(l))));
        (steps[l] ??= [])[i] = entry.step;
      },
      (l, i) => steps[l]![i]!,
    );
    built.close();
  } finally {
    for (const s of opened.values()) s.close();
    release();
  }
}
