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
 * Expert parallelism (`parallel.expert` > 1) is the next stage: its
 * all-to-all exchange plugs into the same BatchSlice (docs/distributed.md).
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
  const expert = c.parallel.expert;
  const data = c.parallel.data ?? ranks / expert;
  if (!Number.isInteger(data) || data * expert !== ranks) {
    const got = c.parallel.data === null ? `parallel.expert = ${expert} does not divide them` : `parallel.data × parallel.expert = ${c.parallel.data} × ${expert} = ${c.parallel.data * expert}`;
    throw new SigmaError(`${ranks} rank(s) were launched but ${got} (${source})`, `launch data × expert ranks (mpirun -np ${(c.parallel.data ?? 1) * expert}), or set parallel in ${source} so that data × expert = ${ranks} (leave parallel.data out: all ranks over expert)`);
  }
  if (expert > 1) {
    throw new SigmaError(`parallel.expert = ${expert} in ${source}: expert parallelism is not built yet (only data parallelism is)`, "set parallel.expert to 1 (every rank then holds every expert, and their gradients are summed like the rest)");
  }
  if (ranks > 1 && c.batchSize < data) {
    throw new SigmaError(`batchSize ${c.batchSize} (${source}) cannot be split over ${data} data-parallel ranks: each rank takes whole sequences of every micro-batch`, `raise batchSize to ${data} or more (use accumSteps to keep the same batch), or launch fewer ranks`);
  }
  if (ranks > 1 && c.store.enabled) {
    throw new SigmaError(`the expert store (store.enabled in ${source}) does not run on several ranks yet: each rank's store comes with expert parallelism`, "train without the store on several ranks, or on one process with it");
  }
  return { data, expert };
}

/** The rows of a batch of B that rank q of N takes: contiguous, sizes differing by at most one. */
export function sliceRows(rank: number, ranks: number, B: number): { first: number; count: number } {
  const first = Math.floor((rank * B) / ranks);
  return { first, count: Math.floor(((rank + 1) * B) / ranks) - first };
}

/**
 * The gradient side of a data-parallel trainer: sums the gradients over the
 * ranks (bucketed, started from the backward pass as they become final) and
 * the step's statistics.
 */
export class DataParallel {
  private reducer: BucketedAllreduce | null = null;
  private arrays: Float32Array[] = [];
  private readonly index = new Map<Tensor, number>();
  /** Seconds this rank spent in gradient communication in the last step. */
  commSeconds = 0;

  constructor(readonly comm: Communicator, private readonly gradComm: Communicator) {}

  /**
   * Before the backward pass whose gradients are summed: gives every
   * parameter a gradient buffer (a rank may not touch some parameter in a
   * step — an expert none of its tokens reached — but still takes part in
   * the sum) and returns the hook that hands finished gradients to the buckets.
   */
  beginBackward(params: Tensor[], gradOf: (t: Tensor) => Tensor): (leaf: Tensor) => void {
    // Reverse order: the backward pass finishes the last layers' gradients first.
    const arrays = params.map((p) => gradOf(p).data).reverse();
    for (const a of arrays) if (!(a instanceof Float32Array)) throw new Error("data parallel: gradients must be float32");
    if (!this.reducer || arrays.length !== this.arrays.length || arrays.some((a, i) => !sameView(a, this.arrays[i]!))) {
      this.arrays = arrays as Float32Array[];
      this.reducer = new BucketedAllreduce(this.gradComm, this.arrays);
      this.index.clear();
      [...params].reverse().forEach((p, i) => this.index.set(p, i));
    }
    this.reducer.reset();
    const reducer = this.reducer;
    return (leaf) => {
      const i = this.index.get(leaf);
      if (i !== undefined) reducer.ready(i);
    };
  }

  /** After that backward: waits until every gradient holds the sum over the ranks. */
  endBackward(): void {
    this.reducer!.finish();
    this.commSeconds = this.reducer!.commSeconds;
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
