/**
 * Data parallelism over the ranks of an MPI launch (docs/distributed.md).
 *
 * Every rank holds the whole model and the same optimizer state. Each
 * micro-batch of B sequences is cut into contiguous slices, one per rank
 * (rank q takes rows ⌊qB/N⌋ … ⌊(q+1)B/N⌋ − 1); each rank computes its
 * share of the micro-batch's loss — the routers and the model weight every
 * batch-level quantity by the whole batch (src/moe/routing.ts, BatchSlice) —
 * so the shares, and their gradients, sum over the ranks to exactly what
 * one process computes over the whole micro-batch. After the last
 * micro-batch's backward the gradients are summed (bucketed, overlapped with
 * that backward: src/comm/buckets.ts), and every rank takes the same
 * optimizer step: the parameters stay identical everywhere, which
 * `assertInSync` checks at every checkpoint.
 *
 * Expert parallelism (`parallel.expert` = P > 1): the ranks form groups of
 * P consecutive ranks; each group's ranks split each sparse layer's experts
 * (src/moe/expert-parallel.ts) and exchange tokens by all-to-all. Every rank
 * still takes its own slice of every micro-batch; the ranks holding the
 * same shard in different groups are its data-parallel replicas.
 */
import { createHash } from "node:crypto";
import { BucketedAllreduce } from "../comm/buckets.js";
import type { Communicator } from "../comm/comm.js";
import type { Tensor } from "../tensor/tensor.js";
import { SigmaError } from "../util/errors.js";
import type { TrainConfig } from "./config.js";

/** What parallel.* resolves to on `ranks` processes. */
export interface ParallelPlan {
  data: number;
  expert: number;
}

/** Resolves parallel.{data, expert} against the launched ranks; a SigmaError names the field when they do not fit. */
export function parallelPlan(c: TrainConfig, ranks: number, source = "the train config"): ParallelPlan {
  // One process ignores the section: it holds everything (and resumes any layout's checkpoint).
  if (ranks === 1) return { data: 1, expert: 1 };
  const expert = c.parallel.expert;
  const data = c.parallel.data ?? ranks / expert;
  if (!Number.isInteger(data) || data * expert !== ranks) {
    const got = c.parallel.data === null ? `parallel.expert = ${expert} does not divide them` : `parallel.data × parallel.expert = ${c.parallel.data} × ${expert} = ${c.parallel.data * expert}`;
    throw new SigmaError(`${ranks} rank(s) were launched but ${got} (${source})`, `launch data × expert ranks (mpirun -np ${(c.parallel.data ?? 1) * expert}), or set parallel in ${source} so that data × expert = ${ranks} (leave parallel.data out: all ranks over expert)`);
  }
  if (expert > 1) {
    const experts = c.model.experts?.count ?? 0;
    if (experts === 0 || c.model.sparseLayers === 0) throw new SigmaError(`parallel.expert = ${expert} in ${source}, but the model has no experts to split`, "set parallel.expert to 1 (data parallel), or give the model sparse layers");
    if (experts % expert !== 0) throw new SigmaError(`parallel.expert = ${expert} in ${source} does not divide the ${experts} experts of each sparse layer (model.experts.count)`, `set parallel.expert to a divisor of ${experts}`);
  }
  // Every rank takes its own rows of each micro-batch, whatever its expert shard.
  if (ranks > 1 && c.batchSize < ranks) {
    throw new SigmaError(`batchSize ${c.batchSize} (${source}) cannot be split over ${ranks} ranks: each rank takes whole sequences of every micro-batch`, `raise batchSize to ${ranks} or more (use accumSteps to keep the same batch), or launch fewer ranks`);
  }
  return { data, expert };
}

/** An expert-parallel layout of the ranks (memoized per communicator: creating it is collective). */
export interface ExpertLayout {
  /** This rank's expert group: ranks d·P … d·P + P − 1, rank p of it holding shard p. */
  group: Communicator;
  /** The replicas of this rank's shard (the ranks with the same position in every group), or null with one replica. */
  replicas: Communicator | null;
  plan: ParallelPlan;
}

const layouts = new WeakMap<Communicator, Map<string, ExpertLayout>>();

/** The expert groups and shard replicas of `plan` over `comm` (every rank must ask, in the same order). */
export function expertLayout(comm: Communicator, plan: ParallelPlan): ExpertLayout {
  const key = `${plan.data}x${plan.expert}`;
  let m = layouts.get(comm);
  if (!m) layouts.set(comm, (m = new Map()));
  const known = m.get(key);
  if (known) return known;
  const P = plan.expert;
  const group = comm.split(Math.floor(comm.rank / P), comm.rank)!;
  const replicas = comm.split(comm.rank % P, comm.rank)!;
  const layout = { group, replicas: plan.data > 1 ? replicas : null, plan };
  m.set(key, layout);
  return layout;
}

/** The rows of a batch of B that rank q of N takes: contiguous, sizes differing by at most one. */
export function sliceRows(rank: number, ranks: number, B: number): { first: number; count: number } {
  const first = Math.floor((rank * B) / ranks);
  return { first, count: Math.floor(((rank + 1) * B) / ranks) - first };
}

/** One set of gradients summed over one communicator. */
class GradientSum {
  private reducer: BucketedAllreduce | null = null;
  private arrays: Float32Array[] = [];
  readonly index = new Map<Tensor, number>();

  constructor(private readonly comm: Communicator) {}

  /** Ready for a backward pass over `params` (gradient buffers given). */
  begin(params: Tensor[], gradOf: (t: Tensor) => Tensor): BucketedAllreduce {
    // Reverse order: the backward pass finishes the last layers' gradients first.
    const arrays = params.map((p) => gradOf(p).data).reverse();
    for (const a of arrays) if (!(a instanceof Float32Array)) throw new Error("data parallel: gradients must be float32");
    if (!this.reducer || arrays.length !== this.arrays.length || arrays.some((a, i) => !sameView(a, this.arrays[i]!))) {
      this.arrays = arrays as Float32Array[];
      this.reducer = new BucketedAllreduce(this.comm, this.arrays);
      this.index.clear();
      [...params].reverse().forEach((p, i) => this.index.set(p, i));
    }
    this.reducer.reset();
    return this.reducer;
  }
}

/**
 * The gradient side of a data-parallel trainer: sums the gradients over the
 * ranks (bucketed, started from the backward pass as they become final) and
 * the step's statistics.
 *
 * With expert parallelism the expert parameters are not everyone's: a rank
 * holds its shard of each layer's experts, and their gradients (which already
 * gather every row of its expert group that used them) are summed only over
 * the data-parallel replicas of that shard — `expertComm`, or not at all
 * when there is one replica (null). The dense ones are summed over all ranks.
 */
export class DataParallel {
  private readonly dense: GradientSum;
  private readonly experts: GradientSum | null;
  private reducers: BucketedAllreduce[] = [];
  /** Seconds this rank spent in gradient communication in the last step. */
  commSeconds = 0;

  /** `expertComm`: undefined without expert parallelism (every gradient goes over gradComm). */
  constructor(readonly comm: Communicator, gradComm: Communicator, private readonly expertComm?: Communicator | null) {
    this.dense = new GradientSum(gradComm);
    this.experts = expertComm ? new GradientSum(expertComm) : null;
  }

  /**
   * Before the backward pass whose gradients are summed: gives every
   * parameter a gradient buffer (a rank may not touch some parameter in a
   * step — an expert none of its tokens reached — but still takes part in
   * the sum) and returns the hook that hands finished gradients to the buckets.
   * `isExpert` tells a rank's expert shard from the dense parameters (expert parallel).
   */
  beginBackward(params: Tensor[], gradOf: (t: Tensor) => Tensor, isExpert: (p: Tensor) => boolean = () => false): (leaf: Tensor) => void {
    const ep = this.expertComm !== undefined;
    const expert = ep ? params.filter(isExpert) : [];
    const dense = ep ? params.filter((p) => !isExpert(p)) : params;
    // An expert shard with no other replica has nothing to sum, but its gradients still need buffers.
    for (const p of expert) gradOf(p);
    this.reducers = [this.dense.begin(dense, gradOf), ...(this.experts ? [this.experts.begin(expert, gradOf)] : [])];
    const parts = [this.dense, ...(this.experts ? [this.experts] : [])];
    const reducers = this.reducers;
    return (leaf) => {
      for (let k = 0; k < parts.length; k++) {
        const i = parts[k]!.index.get(leaf);
        if (i !== undefined) return reducers[k]!.ready(i);
      }
    };
  }

  /** After that backward: waits until every gradient holds the sum over the ranks. */
  endBackward(): void {
    this.commSeconds = 0;
    for (const r of this.reducers) {
      r.finish();
      this.commSeconds += r.commSeconds;
    }
  }

  /** Sums a step's statistics (this rank's shares of losses, its routing counts) over the ranks, in place. */
  sumStats(values: Float64Array): void {
    const t0 = performance.now();
    this.comm.allreduce(values);
    this.commSeconds += (performance.now() - t0) / 1000;
  }
}

const sameView = (a: ArrayBufferView, b: ArrayBufferView): boolean => a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength === b.byteLength;

/**
 * Every rank must hold the same run: the same step, loader state, config and
 * parameters. Gathers a digest from each and throws the same SigmaError on
 * every rank when one differs from rank 0's — say, a rank that resumed from
 * another checkpoint (its out folder is not the one rank 0 sees), or was
 * given another config.
 */
export function assertInSync(comm: Communicator, what: string, parts: { step: number; config: unknown; loader: unknown; params: Tensor[] }): void {
  if (comm.size === 1) return;
  const h = createHash("sha256");
  h.update(JSON.stringify({ step: parts.step, config: parts.config, loader: parts.loader }));
  for (const p of parts.params) h.update(new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength));
  const mine = new Uint8Array(h.digest());
  const steps = comm.allgather(Float64Array.of(parts.step));
  const all = comm.allgather(mine);
  const differ: number[] = [];
  for (let q = 1; q < comm.size; q++) {
    for (let i = 0; i < 32; i++) {
      if (all[q * 32 + i] !== all[i]) {
        differ.push(q);
        break;
      }
    }
  }
  if (!differ.length) return;
  const stepsDiffer = differ.filter((q) => steps[q] !== steps[0]);
  throw new SigmaError(
    `${what}: rank(s) ${differ.join(", ")} of ${comm.size} hold a different run from rank 0's` + (stepsDiffer.length ? ` (rank 0 is at step ${steps[0]}, ${stepsDiffer.map((q) => `rank ${q} at step ${steps[q]}`).join(", ")})` : " (same step, different config, data order or parameters)"),
    "every rank must read the same config and data and, to resume, the same checkpoint: keep the run's out folder on a filesystem every rank sees",
  );
}
