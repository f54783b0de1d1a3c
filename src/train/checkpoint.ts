/**
 * Training checkpoints: everything a run needs to continue exactly.
 *
 *   step-NNNNNNNN/
 *     model.safetensors      weights and RRE tables, model config in the metadata
 *     optimizer.safetensors  AdamW moments m.<param>, v.<param>
 *     tokenizer.json         the tokenizer the data was made with (generation needs it)
 *     state.json             train config, step, tokens, schedule, loader RNG state,
 *                            tokenizer hash, RRE table hashes, file sizes and hashes
 *     experts.index          with an expert store (ECSS): which record slot, generation
 *                            and checksum of each expert this checkpoint stands for;
 *                            model.safetensors and optimizer.safetensors then hold only
 *                            the dense part (the experts and their moments are in the store)
 *     experts-rank-RRRR.safetensors
 *                            expert parallel: shard R's experts with their moments, one
 *                            file per rank of the first expert group, each written by its
 *                            rank (src/models/shards.ts); the two files above then hold
 *                            only the dense part, and state.json's `experts` lists them
 *
 * Written all-or-nothing by src/checkpoint/folder.ts; loading verifies every
 * file and refuses a checkpoint whose model config differs from the run's.
 */
import type { Communicator } from "../comm/comm.js";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { decodeSafetensors, encodeSafetensors, type StArray } from "../checkpoint/safetensors.js";
import { z } from "zod";
import { FilesSchema, MAX_STEP, Sha256Schema as Sha256, StepSchema, openCheckpointFolder, pruneCheckpoints, saveCheckpointFolder, stepDirName, type FileRecord, type LoadedFolder } from "../checkpoint/folder.js";
import { decodeCheckpointModel, encodeModel, shardManifest } from "../models/io.js";
import { EXPERT_TENSOR, ShardManifestSchema, encodeShard, shardFileName, withExperts, type ShardManifest } from "../models/shards.js";
import { writeFileSynced } from "../util/fs.js";
import { parallelPlan } from "./data-parallel.js";
import type { PanguSigma } from "../models/pangu-sigma.js";
import { SigmaError } from "../util/errors.js";
import { parseWithSchema } from "../util/json.js";
import { parseTrainConfig, type TrainConfig } from "./config.js";
import { learningRate } from "./schedule.js";
import { Trainer, trainerShard } from "./trainer.js";
import { StoreSetSchema, ownStore, rankIndexName, rankStorePath, rebuildStore, sameStores, type StoreSet, type StoreSource } from "./ecss-ranks.js";

export const TRAIN_FORMAT = "sigma-train";
export const TRAIN_VERSION = 1;

const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** The loader's RNG state (xoshiro128**: four 32-bit words, not all zero, and the spare normal draw). */
const RngStateSchema = z
  .object({
    s: z.array(z.number().int().min(0).max(0xffffffff)).length(4).refine((s) => s.some((w) => w !== 0), "an all-zero state never leaves zero"),
    spare: z.number().finite().nullable(),
  })
  .strict();

/**
 * state.json of a training checkpoint, parsed strictly: every number read
 * back steers the run (the step names the next checkpoint's folder), so each
 * is an integer or finite number in range; the config is parsed by the train
 * config's own schema afterwards (resumeTrainer) so its errors name its fields.
 */
export const TrainStateSchema = z.object({
  files: FilesSchema,
  format: z.literal("sigma-train"),
  version: z.literal(1),
  step: StepSchema,
  tokens: Count,
  seconds: z.number().finite().min(0),
  config: z.unknown(),
  schedule: z.object({ nextLr: z.number().finite() }).passthrough(),
  loaderRng: RngStateSchema,
  tokenizer: z.object({ sha256: Sha256, vocabSize: z.number().int().min(1).max(2 ** 31 - 1) }).strict(),
  /** sha256 of each RRE routing table (they live in model.safetensors); checked on load. */
  rreTables: z.record(z.string().max(256), Sha256),
  /** Expert parallel: the experts are in per-rank shard files (src/models/shards.ts). */
  experts: ShardManifestSchema.optional(),
  /** With an expert store: its file and id (experts.index refers to its records). */
  store: z.object({ path: z.string().min(1).max(4096), storeId: z.string().min(1).max(128) }).strict().optional(),
  /** ECSS on several ranks: the layout and each rank's store id (experts-rank-RRRR.index refer to their records). */
  stores: StoreSetSchema.optional(),
});

export type TrainState = Omit<z.infer<typeof TrainStateSchema>, "config"> & { config: TrainConfig };

/**
 * A training checkpoint's state.json, validated (format, version, every
 * number, the config). `folder` is an opened checkpoint folder.
 */
export function readTrainState(folder: LoadedFolder): TrainState {
  const where = folder.path;
  const raw = folder.state as Record<string, unknown>;
  if (raw.format !== TRAIN_FORMAT) throw new SigmaError(`${where}/state.json is not a Sigma training checkpoint (format ${JSON.stringify(raw.format) ?? "missing"})`, "pass a folder written by `sigma train`");
  if (raw.version !== TRAIN_VERSION) throw new SigmaError(`${where} is a version ${JSON.stringify(raw.version)} checkpoint; this Sigma reads version ${TRAIN_VERSION}`);
  const s = parseWithSchema(TrainStateSchema, raw, `${where}/state.json`, `the checkpoint is damaged or was edited; use an earlier one`);
  return { ...s, config: parseTrainConfig(s.config, `${where}/state.json (config)`) };
}

/** The optimizer's step from optimizer.safetensors' metadata: a decimal integer in [0, MAX_STEP]. */
export function optimizerStep(metadata: Record<string, string>, source: string): number {
  const text = metadata.step;
  const n = typeof text === "string" && /^\d{1,13}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n > MAX_STEP) throw new SigmaError(`${source}: the metadata field "step" is ${JSON.stringify(text) ?? "missing"}, not an integer in [0, ${MAX_STEP}]`, "the checkpoint is damaged or was edited; use an earlier one");
  return n;
}

const hashOf = (a: Int32Array): string => createHash("sha256").update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest("hex");

function rreTables(model: PanguSigma): Record<string, string> {
  return Object.fromEntries([...model.namedBuffers()].map(([n, b]) => [n, hashOf(b)]));
}

/**
 * Saves the trainer's complete state under `dir` (keeping the newest `keep`); returns the folder.
 *
 * Expert parallel: every rank of the first expert group calls it (the other
 * groups hold copies of the same shards and return ""). Each rank writes its
 * shard of the experts, weights and moments, to a staging file beside the
 * checkpoints and fsyncs it; the ranks gather the files' sizes and hashes to
 * rank 0, which writes the dense part and state.json and moves the shards
 * into the folder before renaming it into place: the checkpoint appears
 * whole, with every shard, or not at all.
 */
export function saveTrainCheckpoint(t: Trainer, dir: string, keep = t.config.checkpoint.keep, onFile?: (name: string) => void): string {
  // ECSS on several ranks (src/train/ecss-ranks.ts): every rank's experts are in its own store, not in shard files.
  const stores = t.ecss && t.comm.size > 1 ? gatherStores(t) : null;
  if (stores && t.comm.rank > 0) {
    // The store's new index becomes the protected one only once the checkpoint naming it is durable.
    t.comm.broadcast(Int32Array.of(0), 0);
    t.ecss!.committed();
    return "";
  }
  const ep = t.ecss ? null : t.expertParallel;
  if (ep && t.comm.rank >= ep.layout.group.size) return "";
  const moments = new Map<string, { shape: number[]; data: StArray }>();
  for (const [name, { m, v }] of t.optimizer.moments()) {
    moments.set(`m.${name}`, { shape: [...m.shape], data: m.data });
    moments.set(`v.${name}`, { shape: [...v.shape], data: v.data });
  }
  // The sparse rule's per-expert step counts (exact as float32 below 2^24 steps).
  for (const [path, steps] of t.optimizer.expertSteps) moments.set(`steps.${path}`, { shape: [steps.length], data: Float32Array.from(steps) });
  let shard: { manifest: ShardManifest; bytes: Uint8Array; adopted: Map<string, { path: string; record: FileRecord }> } | null = null;
  if (ep) {
    const group = ep.layout.group;
    const tensors = new Map<string, { shape: number[]; data: StArray }>();
    for (const [name, p] of t.model.namedParameters()) if (EXPERT_TENSOR.test(name)) tensors.set(name, { shape: [...p.tensor.shape], data: p.tensor.data });
    for (const [name, x] of moments) {
      if (!EXPERT_TENSOR.test(name)) continue;
      tensors.set(name, x);
      moments.delete(name);
    }
    const bytes = encodeShard(tensors, ep.shard.first, ep.shard.count, ep.shard.count * group.size);
    // Rank 0's pid names the save; the other ranks stage their shard beside the checkpoints under it.
    const pid = Int32Array.of(process.pid);
    group.broadcast(pid, 0);
    const staged = (p: number): string => join(dir, `.tmp-${stepDirName(t.step)}-${pid[0]}.${shardFileName(p)}`);
    if (group.rank > 0) {
      mkdirSync(dir, { recursive: true });
      writeFileSynced(staged(group.rank), bytes);
    }
    const hashes = group.allgather(new Uint8Array(createHash("sha256").update(bytes).digest()));
    const sizes = group.allgather(Float64Array.of(bytes.length));
    if (group.rank > 0) return "";
    const adopted = new Map<string, { path: string; record: FileRecord }>();
    for (let p = 1; p < group.size; p++) {
      adopted.set(shardFileName(p), { path: staged(p), record: { bytes: sizes[p]!, sha256: Buffer.from(hashes.subarray(p * 32, (p + 1) * 32)).toString("hex") } });
    }
    const manifest = { shards: group.size, experts: ep.shard.count * group.size, files: Array.from({ length: group.size }, (_, p) => shardFileName(p)) };
    shard = { manifest, bytes, adopted };
  }
  const files = new Map<string, Uint8Array | string>([
    ["model.safetensors", encodeModel(t.model, { denseOnly: ep !== null })],
    ["optimizer.safetensors", encodeSafetensors(moments, { format: "sigma-adamw", step: String(t.optimizer.step) })],
    ["tokenizer.json", readFileSync(join(t.config.data.dir, t.loader.manifest.tokenizer.file))],
  ]);
  if (shard) files.set(shardFileName(0), shard.bytes);
  // ECSS: dirty experts go to the store (never into the slots the previous checkpoint names) and are fsynced first.
  if (t.ecss && !stores) files.set("experts.index", t.ecss.flush());
  if (stores) stores.indexes.forEach((bytes, r) => files.set(rankIndexName(r), bytes));
  const state: Omit<TrainState, "files"> = {
    format: TRAIN_FORMAT,
    version: TRAIN_VERSION,
    step: t.step,
    tokens: t.tokens,
    seconds: t.seconds,
    config: t.config,
    schedule: { ...t.schedule, nextLr: learningRate(t.schedule, t.step) },
    loaderRng: t.loaderState(),
    tokenizer: { sha256: t.tokenizerSha256, vocabSize: t.loader.manifest.tokenizer.vocabSize },
    rreTables: rreTables(t.model),
    ...(shard ? { experts: shard.manifest } : {}),
    ...(t.ecss && !stores ? { store: { path: t.ecss.store.path, storeId: t.ecss.store.header.storeId } } : {}),
    ...(stores ? { stores: stores.set } : {}),
  };
  const path = saveCheckpointFolder(dir, t.step, files, state as unknown as Record<string, unknown>, onFile, shard?.adopted);
  if (stores) t.comm.broadcast(Int32Array.of(1), 0);
  t.ecss?.committed();
  pruneCheckpoints(dir, keep);
  return path;
}

/**
 * ECSS on several ranks, at a checkpoint: every rank writes its dirty
 * experts back and fsyncs its store; rank 0 gets every rank's index (all of
 * the same size: every rank's store has the same layout) and store id.
 */
function gatherStores(t: Trainer): { indexes: Uint8Array[]; set: StoreSet } {
  const index = t.ecss!.flush();
  const all = t.comm.allgather(index);
  const id = new Uint8Array(128);
  id.set(new TextEncoder().encode(t.ecss!.store.header.storeId).subarray(0, 128));
  const ids = t.comm.allgather(id);
  const N = t.comm.size;
  const plan = parallelPlan(t.config, N);
  const text = (r: number): string => new TextDecoder().decode(ids.subarray(r * 128, (r + 1) * 128)).replace(/\0+$/, "");
  return {
    indexes: Array.from({ length: N }, (_, r) => all.subarray(r * index.length, (r + 1) * index.length)),
    set: { data: plan.data, expert: plan.expert, experts: t.config.model.experts!.count, ids: Array.from({ length: N }, (_, r) => text(r)) },
  };
}

/** Names the fields where two JSON values differ (for config-mismatch errors). */
export function diffFields(a: unknown, b: unknown, path = ""): string[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) === !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => diffFields((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], path ? `${path}.${k}` : k));
  }
  return [`${path || "(value)"}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`];
}

/**
 * A trainer restored from a checkpoint. With `config` (the run's config file),
 * its model section must equal the checkpoint's; the rest (steps, eval,
 * checkpoint cadence, out) may change — e.g. to train longer.
 */
export function resumeTrainer(path: string, config?: TrainConfig, comm?: Communicator): Trainer {
  const folder = openCheckpointFolder(path);
  const where = folder.path;
  const s = readTrainState(folder);
  const saved = s.config;
  if (config) {
    const diff = diffFields(saved.model, config.model).map((d) => `model.${d}`);
    if (diff.length) {
      // A config written when one shared slot was the default, read now that one slot per domain is (docs/domains.md).
      const oldDefault = saved.model.embeddingSlots === 1 && config.model.embeddingSlots > 1;
      throw new SigmaError(
        `the checkpoint ${where} was trained with a different model config:\n  ${diff.join("\n  ")}`,
        oldDefault
          ? 'the checkpoint has one token-embedding slot shared by its domains; a config that does not say so now means one slot per domain: add "embeddingSlots": 1 to its model section to resume'
          : "resume with the model section the checkpoint was made with, or start a new run (another --out)",
      );
    }
  }
  const cfg = config ?? saved;
  const withStore = cfg.store.enabled;
  const src: StoreSource | null = s.store ? { kind: "single", storeId: s.store.storeId } : s.stores ? { kind: "set", set: s.stores } : null;
  if (withStore !== (src !== null)) {
    throw new SigmaError(
      withStore ? `the checkpoint ${where} keeps its experts in RAM, but the config enables the expert store` : `the checkpoint ${where} keeps its experts in ${s.store ? `the store ${s.store.path}` : `per-rank expert stores (${s.stores!.ids.length} ranks)`}, but the config does not enable the store`,
      s.stores ? "set store.enabled (the stores are resharded to any number of ranks)" : "convert the checkpoint between layouts with `sigma store convert`, or set store.enabled to match it",
    );
  }
  if (s.stores && s.stores.experts !== (cfg.model.experts?.count ?? 0)) throw new SigmaError(`${where}/state.json says ${s.stores.experts} experts per layer, the model config ${cfg.model.experts?.count ?? 0}`, "the checkpoint is damaged; use an earlier one");
  // Expert parallel (this run's layout or the checkpoint's): each rank reads its own experts, whatever layout wrote them.
  const manifest = shardManifest(folder);
  const plan = parallelPlan(cfg, comm?.size ?? 1);
  const ep = comm && plan.expert > 1 ? trainerShard(cfg, comm) : null;
  // ECSS in another layout than the checkpoint's (src/train/ecss-ranks.ts): this rank's store is built anew from the checkpoint's stores.
  const reshard = src !== null && !sameStores(src, plan);
  if (reshard) {
    const rank = comm?.rank ?? 0;
    rebuildStore(cfg, folder, src, rankStorePath(cfg, plan, rank), ep ? ep.shard.first : 0, ep ? ep.shard.count : cfg.model.experts!.count);
  }
  const model = decodeCheckpointModel(folder, { externalExperts: withStore, ...(ep ? { expertShard: ep.shard } : {}) });
  const modelDiff = diffFields(model.config, cfg.model);
  if (modelDiff.length) throw new SigmaError(`${where}/model.safetensors does not match the config in state.json: ${modelDiff.join("; ")}`, "the checkpoint is damaged; use an earlier one");
  const tables = rreTables(model);
  for (const [name, h] of Object.entries(s.rreTables ?? {})) {
    if (tables[name] !== h) throw new SigmaError(`${where}: the RRE table "${name}" differs from the one recorded in state.json`, "the checkpoint is damaged; use an earlier one");
  }
  const t = new Trainer(cfg, model, comm);
  t.resumedPrecision = saved.precision;
  // The same stores as the checkpoint's: each adopts its index (a rebuilt one already holds the checkpoint's records).
  if (t.ecss && !reshard) {
    const own = ownStore(src!, comm?.rank ?? 0);
    const id = t.ecss.store.header.storeId;
    if (id !== own.storeId) {
      t.close();
      throw new SigmaError(`the checkpoint ${where} was written with the expert store ${own.storeId}, but ${t.ecss.store.path} is store ${id}`, "point store.path at the store this run wrote");
    }
    t.ecss.restore(folder.read(own.index), join(where, own.index));
  }
  if (t.tokenizerSha256 !== s.tokenizer.sha256) {
    t.close();
    throw new SigmaError(`the checkpoint ${where} was trained on data from another tokenizer (sha256 ${s.tokenizer.sha256.slice(0, 12)}…, data has ${t.tokenizerSha256.slice(0, 12)}…)`, `point data.dir at the data it was trained on`);
  }
  const optPath = join(where, "optimizer.safetensors");
  const opt = decodeSafetensors(folder.read("optimizer.safetensors"), optPath);
  const metadata = opt.metadata;
  const range = ep ? ep.shard : { first: 0, count: cfg.model.experts?.count ?? 0 };
  const tensors = manifest || ep ? withExperts(opt.tensors, folder, manifest, range, (n) => /^(?:m|v|steps)\./.test(n)) : opt.tensors;
  for (const [name, { m, v }] of t.optimizer.moments()) {
    for (const [key, dst] of [[`m.${name}`, m], [`v.${name}`, v]] as const) {
      const src = tensors.get(key);
      if (!src || src.data.length !== dst.size || src.dtype !== "F32") throw new SigmaError(`${optPath}: moment "${key}" is missing or has the wrong size`, "the checkpoint does not match its model");
      dst.data.set(src.data);
    }
  }
  for (const [path, steps] of t.optimizer.expertSteps) {
    const src = tensors.get(`steps.${path}`);
    if (!src || src.data.length !== steps.length) throw new SigmaError(`${optPath}: the per-expert step counts "steps.${path}" are missing`, "the checkpoint was written without optim.sparseExperts; resume with the same optim settings");
    const bad = Array.from(src.data, Number).findIndex((n) => !Number.isInteger(n) || n < 0 || n > MAX_STEP);
    if (src.dtype !== "F32" || bad >= 0) throw new SigmaError(`${optPath}: the per-expert step counts "steps.${path}" are not whole numbers of steps${bad >= 0 ? ` (expert ${bad}: ${src.data[bad]})` : ` (dtype ${src.dtype})`}`, "the checkpoint is damaged or was edited; use an earlier one");
    steps.set(Array.from(src.data, Number));
  }
  t.optimizer.step = optimizerStep(metadata, optPath);
  t.loader.setState(s.loaderRng);
  t.step = s.step;
  t.tokens = s.tokens;
  t.seconds = s.seconds;
  return t;
}
