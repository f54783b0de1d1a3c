/**
 * Bucketed gradient allreduce, overlapped with the backward pass.
 *
 * The arrays (one per parameter gradient, listed in the order the backward
 * pass usually finishes them: last layer first) are cut into buckets of about
 * `bucketBytes`. An array at least that large is a bucket of its own and is
 * reduced in place; smaller neighbours share a staging buffer (copied in when
 * the bucket starts, copied back when it completes), so that a hundred small
 * biases cost one collective, not a hundred.
 *
 * As the backward pass marks arrays final (`ready(i)`), each bucket whose
 * arrays are all final starts a non-blocking allreduce (MPI_Iallreduce), while
 * backward goes on computing the earlier layers' gradients. Buckets start
 * strictly in bucket order, whatever order the arrays become ready in: MPI
 * requires every rank to start its collectives in the same order, and the
 * order in which a rank's backward finishes arrays is not something to bet
 * on. Each `ready` also tests the buckets in flight, since Open MPI moves a
 * non-blocking collective forward only inside MPI calls. `finish()` starts
 * whatever is left and waits for all of them.
 *
 * The sum lands in every rank's arrays: what a single process would have
 * accumulated had it run every rank's micro-batch slice itself.
 */
import type { Communicator, Request } from "./comm.js";

interface Bucket {
  /** Indices of the arrays in it. */
  members: number[];
  /** Members not yet ready. */
  waiting: number;
  /** Staging buffer for several small arrays; null for a single array reduced in place. */
  staging: Float32Array | null;
  request: Request | null;
}

/** 4 MiB: large enough that per-call latency is small against the bytes, small enough to start early. */
export const DEFAULT_BUCKET_BYTES = 4 * 2 ** 20;

export class BucketedAllreduce {
  private readonly buckets: Bucket[] = [];
  /** Bucket index of each array. */
  private readonly bucketOf: Int32Array;
  private readonly isReady: Uint8Array;
  /** Buckets before this index have started. */
  private started = 0;
  /** Seconds spent inside MPI calls (start, test, wait) since the last reset. */
  commSeconds = 0;

  constructor(private readonly comm: Communicator, private readonly arrays: Float32Array[], bucketBytes = DEFAULT_BUCKET_BYTES) {
    this.bucketOf = new Int32Array(arrays.length);
    this.isReady = new Uint8Array(arrays.length);
    let open: number[] = [];
    let openBytes = 0;
    const close = (): void => {
      if (open.length) this.buckets.push({ members: open, waiting: 0, staging: null, request: null });
      open = [];
      openBytes = 0;
    };
    arrays.forEach((a, i) => {
      if (a.byteLength >= bucketBytes) {
        close();
        open = [i];
        close();
        return;
      }
      if (openBytes + a.byteLength > bucketBytes) close();
      open.push(i);
      openBytes += a.byteLength;
    });
    close();
    this.buckets.forEach((b, k) => {
      for (const i of b.members) this.bucketOf[i] = k;
      if (b.members.length > 1) b.staging = new Float32Array(b.members.reduce((s, i) => s + arrays[i]!.length, 0));
    });
    this.reset();
  }

  /** How many collectives a step makes. */
  get bucketCount(): number {
    return this.buckets.length;
  }

  /** Before a backward pass whose arrays will be reported ready. */
  reset(): void {
    this.isReady.fill(0);
    for (const b of this.buckets) {
      b.waiting = b.members.length;
      b.request = null;
    }
    this.started = 0;
    this.commSeconds = 0;
  }

  /** Array i holds its final local values: its bucket may start. */
  ready(i: number): void {
    if (this.isReady[i]) return;
    this.isReady[i] = 1;
    this.buckets[this.bucketOf[i]!]!.waiting--;
    const t0 = performance.now();
    while (this.started < this.buckets.length && this.buckets[this.started]!.waiting === 0) this.start(this.buckets[this.started++]!);
    for (let k = 0; k < this.started; k++) this.buckets[k]!.request?.test();
    this.commSeconds += (performance.now() - t0) / 1000;
  }

  private start(b: Bucket): void {
    if (b.staging) {
      let at = 0;
      for (const i of b.members) {
        b.staging.set(this.arrays[i]!, at);
        at += this.arrays[i]!.length;
      }
      b.request = this.comm.iallreduce(b.staging);
    } else b.request = this.comm.iallreduce(this.arrays[b.members[0]!]!);
  }

  /** Starts the buckets not started yet (in order), waits for all, and copies staged sums back. */
  finish(): void {
    const t0 = performance.now();
    while (this.started < this.buckets.length) this.start(this.buckets[this.started++]!);
    for (const b of this.buckets) {
      b.request!.wait();
      if (b.staging) {
        let at = 0;
        for (const i of b.members) {
          const a = this.arrays[i]!;
          a.set(b.staging.subarray(at, at + a.length));
          at += a.length;
        }
      }
    }
    this.commSeconds += (performance.now() - t0) / 1000;
  }
}
