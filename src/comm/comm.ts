/**
 * A communicator: a group of ranks and the collectives Sigma uses over it.
 *
 * Two implementations: `soloComm` (one process, no MPI: every collective is
 * the identity, so code written for N ranks runs unchanged on one) and
 * `MpiComm` (the MPI addon, src/comm/mpi.ts). Buffers are typed arrays handed
 * to MPI as they are: reductions work in place, nothing is copied on the way.
 *
 * Every rank of a communicator must call its collectives in the same order
 * (MPI's rule, non-blocking ones included); the callers keep to it.
 */
import { SigmaError } from "../util/errors.js";
import { detectLaunch, requireMpi, type Launch, type MpiAddon, type MpiBuffer, type ReduceOp } from "./mpi.js";

/** A non-blocking collective in flight. */
export interface Request {
  /** Lets MPI progress; true once the operation completed. */
  test(): boolean;
  /** Blocks until it completes. */
  wait(): void;
}

export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** Element-wise reduction over the ranks, in place: every rank ends with the result. */
  allreduce(buf: Exclude<MpiBuffer, Uint8Array>, op?: ReduceOp): void;
  /** allreduce started now; the buffer must not be touched until the request completes. */
  iallreduce(buf: Exclude<MpiBuffer, Uint8Array>, op?: ReduceOp): Request;
  /** The root's buf into every rank's. */
  broadcast(buf: MpiBuffer, root?: number): void;
  /** Every rank's `send` (equal lengths), rank after rank, in a new array of size·send.length. */
  allgather<T extends MpiBuffer>(send: T): T;
  /** Equal blocks: block j of send goes to rank j and arrives as block `rank` of j's recv. */
  alltoall(send: MpiBuffer, recv: MpiBuffer): void;
  /** Blocks of any size: counts and displacements in elements, one per rank. */
  alltoallv(send: MpiBuffer, sendCounts: Int32Array, sendDispls: Int32Array, recv: MpiBuffer, recvCounts: Int32Array, recvDispls: Int32Array): void;
  barrier(): void;
  /** The ranks with the same color, ordered by key (then rank); a negative color joins none (null). */
  split(color: number, key: number): Communicator | null;
  /** Stops every process of the job with this exit code. */
  abort(code: number): never;
}

const done: Request = { test: () => true, wait: () => {} };

/** One process: collectives over a single rank. */
export const soloComm: Communicator = {
  rank: 0,
  size: 1,
  allreduce() {},
  iallreduce: () => done,
  broadcast() {},
  allgather: <T extends MpiBuffer>(send: T): T => send.slice() as T,
  alltoall(send, recv) {
    recv.set(send as never);
  },
  alltoallv(send, sendCounts, sendDispls, recv, _recvCounts, recvDispls) {
    recv.set(send.subarray(sendDispls[0]!, sendDispls[0]! + sendCounts[0]!) as never, recvDispls[0]!);
  },
  barrier() {},
  split: (color) => (color < 0 ? null : soloComm),
  abort(code): never {
    process.exit(code);
  },
};

function make<T extends MpiBuffer>(like: T, n: number): T {
  return new (like.constructor as new (n: number) => T)(n);
}

export class MpiComm implements Communicator {
  readonly rank: number;
  readonly size: number;
  constructor(private readonly mpi: MpiAddon, private readonly handle: number) {
    this.rank = mpi.rank(handle);
    this.size = mpi.size(handle);
  }
  allreduce(buf: Exclude<MpiBuffer, Uint8Array>, op: ReduceOp = "sum"): void {
    this.mpi.allreduce(this.handle, buf, op);
  }
  iallreduce(buf: Exclude<MpiBuffer, Uint8Array>, op: ReduceOp = "sum"): Request {
    const mpi = this.mpi;
    const id = mpi.iallreduce(this.handle, buf, op);
    let finished = false;
    return {
      test: () => finished || (finished = mpi.test(id)),
      wait: () => {
        if (!finished) mpi.wait(id);
        finished = true;
      },
    };
  }
  broadcast(buf: MpiBuffer, root = 0): void {
    this.mpi.broadcast(this.handle, buf, root);
  }
  allgather<T extends MpiBuffer>(send: T): T {
    const recv = make(send, send.length * this.size);
    this.mpi.allgather(this.handle, send, recv);
    return recv;
  }
  alltoall(send: MpiBuffer, recv: MpiBuffer): void {
    this.mpi.alltoall(this.handle, send, recv);
  }
  alltoallv(send: MpiBuffer, sendCounts: Int32Array, sendDispls: Int32Array, recv: MpiBuffer, recvCounts: Int32Array, recvDispls: Int32Array): void {
    this.mpi.alltoallv(this.handle, send, sendCounts, sendDispls, recv, recvCounts, recvDispls);
  }
  barrier(): void {
    this.mpi.barrier(this.handle);
  }
  split(color: number, key: number): Communicator | null {
    const h = this.mpi.split(this.handle, color, key);
    return h < 0 ? null : new MpiComm(this.mpi, h);
  }
  abort(code: number): never {
    this.mpi.abort(this.handle, code);
    // MPI_Abort does not return; should an implementation return anyway, this process still stops.
    process.exit(code);
  }
}

/** The processes of this job: the world communicator, and how to end MPI. */
export interface World {
  comm: Communicator;
  /** The launch the environment describes (null: a plain one-process run). */
  launch: Launch | null;
  /** The MPI library in use ("Open MPI v4.1.4, …"), or null without MPI. */
  library: string | null;
  /** Ends MPI cleanly (after a barrier); a no-op without MPI. */
  finalize(): void;
}

let world: World | null = null;

/** The world joinWorld made, or null before (or without) it. */
export function activeWorld(): World | null {
  return world;
}

/**
 * The world of this process, initialising MPI the first time when an MPI
 * launcher started it (thread level "funneled": only the main thread calls
 * MPI). A plain process gets the one-rank world without touching MPI; one
 * launched as a single rank too. A launched process without the MPI addon
 * gets a SigmaError naming what to install.
 */
export function joinWorld(): World {
  if (world) return world;
  const launch = detectLaunch();
  if (launch === null || launch.size === 1) {
    return (world = { comm: soloComm, launch, library: null, finalize() {} });
  }
  const mpi = requireMpi(launch);
  const init = mpi.initThread("funneled");
  if (init.provided === "single") {
    throw new SigmaError(`the MPI library provides only MPI_THREAD_SINGLE, Sigma needs MPI_THREAD_FUNNELED (${mpi.library().version})`, "use an MPI built with thread support (Debian's Open MPI is)");
  }
  const comm = new MpiComm(mpi, 0);
  if (launch.size !== null && launch.size !== comm.size) {
    throw new SigmaError(`the launcher says ${launch.size} processes (${launch.evidence}) but MPI sees ${comm.size}`, "Sigma's MPI addon must be built against the MPI whose launcher starts it: rebuild it (`npm rebuild sigma-moe`) on this machine");
  }
  let ended = false;
  return (world = {
    comm,
    launch,
    library: mpi.library().version,
    finalize() {
      if (ended) return;
      ended = true;
      mpi.barrier(0);
      mpi.finalize();
    },
  });
}
