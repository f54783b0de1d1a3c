/**
 * Expert parallelism (docs/distributed.md): the experts of a sparse layer are
 * split over the ranks of an expert group, and each token's hidden state
 * travels to the rank that holds its expert and back.
 *
 * Rank p of a group of P holds the experts [p·E/P, (p+1)·E/P) — contiguous
 * blocks, so a MoGE group of E/G experts sits whole on one rank when P
 * divides G, and every rank then serves exactly its share of assignments.
 * Every rank routes its own rows (the routers are unchanged: their batch
 * statistics already span the whole batch through BatchSlice), then:
 *
 *   1. dispatch: the kept assignments, sorted by global expert id (so by
 *      owner rank), go to their owners by one all-to-all-v of rows; a small
 *      all-to-all first tells each owner how many rows of each of its
 *      experts every source sends;
 *   2. the owner sorts what it received by local expert (sources in rank
 *      order within each expert: the order one process would see, since
 *      the ranks hold consecutive slices of the batch) and computes its
 *      experts' FFNs in one grouped product;
 *   3. return: the outputs go back, unsorted to source order, by the mirror
 *      all-to-all-v; the source weighs and adds them to their tokens.
 *
 * Both exchanges are differentiable: the backward of one is the other
 * exchange applied to the gradient, so the gradient of an expert's output
 * goes back to its owner, and the gradient of its input comes back to the
 * token's rank. The expert weights' gradients therefore collect, on their
 * owner only, every row of the group that used them.
 *
 * MPI requires every rank of a communicator to enter its collectives in the
 * same order. Every rank runs the same layers in the same order, forward and
 * backward (and the exchange is recorded on the tape on every rank or on
 * none), so the exchanges line up. A backward node runs only when its output
 * received a gradient; the return exchange therefore makes sure the dispatch
 * output has one (zeros if nothing reached it), so that a rank whose experts
 * got no rows still takes part in the dispatch's backward exchange.
 */
import { gradOf, record } from "../autograd/tape.js";
import type { Communicator } from "../comm/comm.js";
import * as ops from "../ops/index.js";
import { Tensor } from "../tensor/tensor.js";

/** Where this rank's experts sit in an expert group. */
export interface ExpertShard {
  /** The ranks of the expert group; rank p holds experts [p·count, (p+1)·count). */
  comm: Communicator;
  /** Experts held per rank (E / comm.size). */
  count: number;
  /** Global id of this rank's first expert (comm.rank · count). */
  first: number;
  /** Seconds spent in the exchanges (forward and backward) since the trainer last reset it. */
  timing: { seconds: number };
}

/** The shard of `experts` that rank `rank` of a group of `size` holds. */
export function shardOf(comm: Communicator, experts: number): ExpertShard {
  if (experts % comm.size !== 0) throw new RangeError(`${comm.size} ranks do not divide ${experts} experts evenly`);
  const count = experts / comm.size;
  return { comm, count, first: comm.rank * count, timing: { seconds: 0 } };
}

const prefix = (counts: Int32Array, scale: number): Int32Array => {
  const d = new Int32Array(counts.length);
  for (let i = 1; i < counts.length; i++) d[i] = d[i - 1]! + counts[i - 1]! * scale;
  return d;
};

/**
 * Rows of t [n, C] exchanged over `comm`: sendRows[q] consecutive rows go to
 * rank q (in rank order), recvRows[q] arrive from rank q; returns the
 * received [Σ recvRows, C]. Differentiable: the backward sends each received
 * row's gradient back to where the row came from. `alsoGrad`: a tensor whose
 * gradient buffer the backward creates (zeroed) if it has none, so that its
 * node runs on this rank as on every other (see the file comment).
 */
export function exchangeRows(t: Tensor, comm: Communicator, sendRows: Int32Array, recvRows: Int32Array, alsoGrad?: Tensor, timing?: { seconds: number }): Tensor {
  const C = t.dim(1);
  const n = recvRows.reduce((s, r) => s + r, 0);
  const out = Tensor.zeros([n, C], t.dtype);
  const [sc, rc] = [sendRows.map((r) => r * C), recvRows.map((r) => r * C)];
  const [sd, rd] = [prefix(sendRows, C), prefix(recvRows, C)];
  const t0 = performance.now();
  comm.alltoallv(t.data as Float32Array, sc, sd, out.data as Float32Array, rc, rd);
  if (timing) timing.seconds += (performance.now() - t0) / 1000;
  record(out, [t], (g) => {
    const back = Tensor.zeros(t.shape, t.dtype);
    const t1 = performance.now();
    comm.alltoallv(g.data as Float32Array, rc, rd, back.data as Float32Array, sc, sd);
    if (timing) timing.seconds += (performance.now() - t1) / 1000;
    const dt = gradOf(t).data;
    const b = back.data;
    for (let i = 0; i < b.length; i++) dt[i] += b[i]!;
    if (alsoGrad) gradOf(alsoGrad);
  });
  return out;
}

/** What the owner computes on the rows it received: [rows, C] sorted by local expert → outputs in the same order. */
export type LocalExperts = (xs: Tensor, offsets: Int32Array, expertOf: Int32Array) => Tensor;

/**
 * The owner's experts when they live in an expert store (ECSS per rank):
 * the experts of the shard that received rows are compacted to 0 … U − 1
 * (`weights` gets their store-local ids, ascending, and returns their
 * weights), and the rows computed over those U. Experts without rows are
 * neither read nor touched, as in one process.
 */
export function usedLocalExperts<W>(weights: (used: Int32Array) => W, ffn: (xs: Tensor, offsets: Int32Array, expertOf: Int32Array, w: W) => Tensor): LocalExperts {
  return (xs, offsets, expertOf) => {
    const count = offsets.length - 1;
    const used: number[] = [];
    const pos = new Int32Array(count);
    for (let j = 0; j < count; j++) if (offsets[j + 1]! > offsets[j]!) pos[j] = used.push(j) - 1;
    const compact = new Int32Array(used.length + 1);
    used.forEach((j, i) => (compact[i + 1] = offsets[j + 1]!));
    return ffn(xs, compact, expertOf.map((j) => pos[j]!), weights(Int32Array.from(used)));
  };
}

/**
 * The expert outputs of this rank's kept assignments, computed on their
 * owners. `expertIds` are global ids (E = dropped), `rows`/`tokenOf` the kept
 * assignments sorted by global expert and their tokens (as permuteByExpert
 * and the layer give them). Returns [kept, C] in that same order.
 */
export function expertParallelOutputs(x: Tensor, shard: ExpertShard, experts: number, expertOffsets: Int32Array, tokenOf: Int32Array, local: LocalExperts): Tensor {
  const { comm, count } = shard;
  const P = comm.size;
  // Rows per (destination rank, its local expert): the sorted offsets cut by owner.
  const sendPer = new Int32Array(P * count);
  for (let e = 0; e < experts; e++) sendPer[e] = expertOffsets[e + 1]! - expertOffsets[e]!;
  const recvPer = new Int32Array(P * count); // [source, local expert]
  const t0 = performance.now();
  comm.alltoall(sendPer, recvPer);
  shard.timing.seconds += (performance.now() - t0) / 1000;
  const sendRows = new Int32Array(P);
  const recvRows = new Int32Array(P);
  for (let q = 0; q < P; q++) {
    for (let j = 0; j < count; j++) {
      sendRows[q] += sendPer[q * count + j]!;
      recvRows[q] += recvPer[q * count + j]!;
    }
  }
  const xs = ops.gatherRows(x, tokenOf);
  const got = exchangeRows(xs, comm, sendRows, recvRows, undefined, shard.timing); // [received, C], source-major

  // Source-major → expert-major (sources in rank order within each expert), and back.
  const total = got.dim(0);
  const start = new Int32Array(P * count); // where (source, expert)'s rows begin in `got`
  for (let i = 1; i < P * count; i++) start[i] = start[i - 1]! + recvPer[i - 1]!;
  const byExpert = new Int32Array(total);
  const offsets = new Int32Array(count + 1);
  const expertOf = new Int32Array(total);
  let at = 0;
  for (let j = 0; j < count; j++) {
    offsets[j] = at;
    for (let q = 0; q < P; q++) {
      const s = start[q * count + j]!;
      for (let i = 0; i < recvPer[q * count + j]!; i++) {
        expertOf[at] = j;
        byExpert[at++] = s + i;
      }
    }
  }
  offsets[count] = at;
  const back = new Int32Array(total);
  byExpert.forEach((src, p) => (back[src] = p));
  const ys = ops.gatherRows(local(ops.gatherRows(got, byExpert), offsets, expertOf), back);
  return exchangeRows(ys, comm, recvRows, sendRows, got, shard.timing);
}
