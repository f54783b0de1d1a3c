/**
 * Expert-sharded checkpoints (docs/distributed.md, Checkpoints and
 * resharding). An expert-parallel run of P ranks per expert group writes:
 *
 *   model.safetensors              the dense part (every tensor but the experts')
 *   optimizer.safetensors          the dense part's moments
 *   experts-rank-RRRR.safetensors  rank R's experts [R·E/P, (R+1)·E/P) of every
 *                                  sparse layer — weights, moments m./v. and the
 *                                  sparse rule's step counts — each tensor with
 *                                  the expert as its first axis
 *
 * and state.json's `experts` manifest says so: { shards: P, experts: E,
 * files: [...] }, each file listed (bytes, sha256) like the others.
 *
 * Reading is by expert range: whoever needs experts [first, first + count) —
 * a rank of another layout, or one process assembling the whole model —
 * takes those rows from the files that hold them. A checkpoint without the
 * manifest holds every expert in model.safetensors and optimizer.safetensors;
 * the same rows come from there. So any layout resumes on any other.
 */
import { z } from "zod";
import { decodeSafetensors, encodeSafetensors, type StArray, type StTensor } from "../checkpoint/safetensors.js";
import type { LoadedFolder } from "../checkpoint/folder.js";
import { SigmaError } from "../util/errors.js";

/** The file of shard p. */
export const shardFileName = (p: number): string => `experts-rank-${String(p).padStart(4, "0")}.safetensors`;

/** state.json's `experts` entry of a sharded checkpoint. */
export const ShardManifestSchema = z
  .object({
    /** Ranks per expert group when written: the number of shard files. */
    shards: z.number().int().min(1).max(2 ** 20),
    /** Experts per sparse layer (a multiple of shards). */
    experts: z.number().int().min(1).max(2 ** 16),
    files: z.array(z.string().regex(/^experts-rank-\d{4,7}\.safetensors$/)).min(1).max(2 ** 20),
  })
  .strict()
  .refine((m) => m.experts % m.shards === 0 && m.files.length === m.shards && m.files.every((f, p) => f === shardFileName(p)), "the shard files must be experts-rank-0000… one per shard, and the shards must divide the experts");
export type ShardManifest = z.infer<typeof ShardManifestSchema>;

/**
 * The tensors whose first axis is the expert: each MoE layer's stacked
 * weights and biases, their moments, and the sparse rule's step counts.
 * (Shared experts, blocks.N.moe.shared.*, are dense: every rank holds them.)
 */
export const EXPERT_TENSOR = /^(?:[mv]\.)?blocks\.\d+\.moe\.(?:w1|b1|w2|b2|w3|b3)$|^steps\.blocks\.\d+\.moe$/;

/** Rows [first, first + count) of a tensor whose first axis is the expert. */
export function expertRows(t: { shape: number[]; data: StArray }, first: number, count: number): { shape: number[]; data: StArray } {
  const n = t.shape.slice(1).reduce((a, b) => a * b, 1);
  return { shape: [count, ...t.shape.slice(1)], data: t.data.slice(first * n, (first + count) * n) };
}

/** One shard file's bytes: its expert tensors, with the range in the metadata. */
export function encodeShard(tensors: Map<string, { shape: number[]; data: StArray }>, first: number, count: number, experts: number): Uint8Array {
  return encodeSafetensors(tensors, { format: "sigma-experts", first: String(first), count: String(count), experts: String(experts) });
}

/**
 * Rows [first, first + count) of every expert tensor of a sharded
 * checkpoint, read from the shard files that hold them (each read and
 * verified once, and only those). Tensors come back with their full names
 * (model tensors bare, moments with m./v., step counts with steps.).
 */
export function readExpertRange(folder: LoadedFolder, manifest: ShardManifest, first: number, count: number): Map<string, StTensor> {
  const per = manifest.experts / manifest.shards;
  if (first < 0 || count < 1 || first + count > manifest.experts) throw new RangeError(`experts [${first}, ${first + count}) are outside the ${manifest.experts} of the checkpoint`);
  const parts = new Map<string, StTensor[]>();
  for (let p = Math.floor(first / per); p * per < first + count; p++) {
    const name = manifest.files[p]!;
    const source = `${folder.path}/${name}`;
    const { tensors, metadata } = decodeSafetensors(folder.read(name), source);
    if (metadata.format !== "sigma-experts" || metadata.first !== String(p * per) || metadata.count !== String(per)) {
      throw new SigmaError(`${source} does not hold experts [${p * per}, ${(p + 1) * per}) as state.json says`, "the checkpoint is damaged; use an earlier one");
    }
    const [a, b] = [Math.max(first, p * per), Math.min(first + count, (p + 1) * per)];
    for (const [n, t] of tensors) {
      if (t.shape[0] !== per) throw new SigmaError(`${source}: tensor "${n}" has ${t.shape[0]} experts on its first axis, not ${per}`, "the checkpoint is damaged; use an earlier one");
      const list = parts.get(n) ?? [];
      if (list.length !== p - Math.floor(first / per)) throw new SigmaError(`${source}: tensor "${n}" is not in every shard`, "the checkpoint is damaged; use an earlier one");
      list.push({ dtype: t.dtype, ...expertRows(t, a - p * per, b - a) });
      parts.set(n, list);
    }
  }
  const shardsRead = Math.ceil((first + count) / per) - Math.floor(first / per);
  const out = new Map<string, StTensor>();
  for (const [n, list] of parts) {
    if (list.length !== shardsRead) throw new SigmaError(`${folder.path}: tensor "${n}" is not in every shard`, "the checkpoint is damaged; use an earlier one");
    const data = new (list[0]!.data.constructor as new (n: number) => StArray)(list.reduce((s, t) => s + t.data.length, 0));
    let at = 0;
    for (const t of list) {
      data.set(t.data as never, at);
      at += t.data.length;
    }
    out.set(n, { dtype: list[0]!.dtype, shape: [count, ...list[0]!.shape.slice(1)], data });
  }
  return out;
}

/**
 * The tensors of a checkpoint's model or optimizer file with the expert
 * tensors restricted to [first, first + count) — from the shard files when
 * the checkpoint is sharded, else cut from the file's own full tensors.
 * `prefix`: which expert tensors belong to this file ("" for the model,
 * "m."/"v."/"steps." for the optimizer).
 */
export function withExperts(
  tensors: Map<string, StTensor>,
  folder: LoadedFolder,
  manifest: ShardManifest | undefined,
  range: { first: number; count: number },
  belongs: (name: string) => boolean,
): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  if (manifest) {
    for (const [n, t] of tensors) out.set(n, t);
    for (const [n, t] of readExpertRange(folder, manifest, range.first, range.count)) if (belongs(n)) out.set(n, t);
    return out;
  }
  for (const [n, t] of tensors) out.set(n, EXPERT_TENSOR.test(n) ? { dtype: t.dtype, ...expertRows(t, range.first, range.count) } : t);
  return out;
}
