/**
 * The only loader of the optional MPI addon (build/Release/sigma_mpi.node,
 * native/src/mpi/mpi_napi.cpp), and the one place that reads what an MPI
 * launcher (mpirun, srun, a Kubeflow MPIJob) put in the environment.
 *
 * The addon is built only where mpi.h was found (scripts/mpi-detect.cjs), so
 * it may be missing: a process that was launched as one of several ranks and
 * cannot load it gets a SigmaError saying that distributed runs need Open MPI
 * and how to install it. A process that was not launched by MPI never loads
 * it (a one-process run needs no MPI at all).
 *
 * The addon is loaded with RTLD_GLOBAL: Open MPI opens its own plugins with
 * dlopen, and they resolve symbols of libmpi that a local load would hide.
 */
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { packageRoot } from "../util/package-root.js";

/** Element arrays MPI moves without copies. */
export type MpiBuffer = Float32Array | Float64Array | Int32Array | Uint32Array | Uint8Array;
export type ReduceOp = "sum" | "max" | "min";

/** What sigma_mpi.node exports (the C++ file documents each). Communicators and requests are integer handles; 0 is the world. */
export interface MpiAddon {
  initThread(level: "single" | "funneled" | "serialized" | "multiple"): { provided: string; rank: number; size: number };
  state(): "uninitialized" | "initialized" | "finalized";
  rank(comm: number): number;
  size(comm: number): number;
  allreduce(comm: number, buf: MpiBuffer, op: ReduceOp): void;
  iallreduce(comm: number, buf: MpiBuffer, op: ReduceOp): number;
  test(request: number): boolean;
  wait(request: number): void;
  broadcast(comm: number, buf: MpiBuffer, root: number): void;
  allgather(comm: number, send: MpiBuffer, recv: MpiBuffer): void;
  alltoall(comm: number, send: MpiBuffer, recv: MpiBuffer): void;
  alltoallv(comm: number, send: MpiBuffer, sendCounts: Int32Array, sendDispls: Int32Array, recv: MpiBuffer, recvCounts: Int32Array, recvDispls: Int32Array): void;
  barrier(comm: number): void;
  split(comm: number, color: number, key: number): number;
  free(comm: number): void;
  abort(comm: number, code: number): void;
  finalize(): void;
  wtime(): number;
  library(): { version: string; standard: string; processor?: string };
}

/** How to get MPI, for every message that needs it. */
export const MPI_INSTALL_HINT =
  "distributed runs need Open MPI: on Debian or Ubuntu `apt-get install openmpi-bin libopenmpi-dev`, then rebuild Sigma's addons (`npm rebuild sigma-moe`, or `npm run build:native` in a checkout); `node scripts/mpi-detect.cjs explain` shows what the build looks for";

export interface MpiLoad {
  addon: MpiAddon | null;
  /** Why the addon cannot be used (null when it loaded). */
  error: string | null;
  path: string | null;
}


let cached: MpiLoad | undefined;

/**
 * Loads the MPI addon once. Never throws. SIGMA_NO_MPI=1 makes it report the
 * addon as missing (the same switch the build's detection honours), to test
 * the path a machine without MPI takes.
 */
export function loadMpi(): MpiLoad {
  if (cached) return cached;
  if (process.env.SIGMA_NO_MPI === "1") return (cached = { addon: null, path: null, error: "SIGMA_NO_MPI=1 is set" });
  const root = packageRoot();
  const candidates = [join(root, "build", "Release", "sigma_mpi.node"), join(root, "build", "Debug", "sigma_mpi.node")];
  const path = candidates.find((p) => existsSync(p)) ?? null;
  if (path === null) return (cached = { addon: null, path: null, error: `the MPI addon is not built (no ${candidates[0]}: the build found no mpi.h)` });
  try {
    const module = { exports: {} as Record<string, unknown> };
    process.dlopen(module, path, constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL);
    const missing = ["initThread", "allreduce", "iallreduce", "alltoallv", "split", "abort", "finalize"].filter((n) => typeof module.exports[n] !== "function");
    if (missing.length) return (cached = { addon: null, path, error: `${path} lacks ${missing.join(", ")} (an old build): rebuild it` });
    return (cached = { addon: module.exports as unknown as MpiAddon, path, error: null });
  } catch (e) {
    return (cached = { addon: null, path, error: `${path} did not load: ${(e as Error).message.split("\n")[0]}` });
  }
}

/** What the environment says about an MPI launch. */
export interface Launch {
  /** The launcher's variable that gave it away, e.g. "OMPI_COMM_WORLD_SIZE=4". */
  evidence: string;
  /** Processes in the job, when the environment says (null: launched, size unknown). */
  size: number | null;
  /** This process's rank, when the environment says. */
  rank: number | null;
}

const intVar = (env: NodeJS.ProcessEnv, name: string): number | null => {
  const v = env[name];
  return v !== undefined && /^\d{1,9}$/.test(v) ? Number(v) : null;
};

/**
 * Whether this process was started by an MPI launcher, from the variables
 * the launchers set: Open MPI's mpirun (OMPI_COMM_WORLD_SIZE/RANK), PMI-1/2
 * as used by MPICH, Intel MPI and Slurm's srun --mpi=pmi2 (PMI_SIZE/PMI_RANK),
 * and PMIx (PMIX_RANK; Slurm's srun --mpi=pmix adds SLURM_STEP_NUM_TASKS).
 * null when none is there: a plain one-process run.
 */
export function detectLaunch(env: NodeJS.ProcessEnv = process.env): Launch | null {
  const ompi = intVar(env, "OMPI_COMM_WORLD_SIZE");
  if (ompi !== null) return { evidence: `OMPI_COMM_WORLD_SIZE=${ompi}`, size: ompi, rank: intVar(env, "OMPI_COMM_WORLD_RANK") };
  const pmi = intVar(env, "PMI_SIZE");
  if (pmi !== null) return { evidence: `PMI_SIZE=${pmi}`, size: pmi, rank: intVar(env, "PMI_RANK") };
  const pmix = intVar(env, "PMIX_RANK");
  if (pmix !== null) return { evidence: `PMIX_RANK=${pmix}`, size: intVar(env, "SLURM_STEP_NUM_TASKS"), rank: pmix };
  return null;
}

/**
 * The MPI addon for a process that an MPI launcher started, or a SigmaError
 * that says what is missing and how to get it.
 */
export function requireMpi(launch: Launch): MpiAddon {
  const m = loadMpi();
  if (m.addon) return m.addon;
  const who = launch.rank !== null && launch.size !== null ? `rank ${launch.rank} of ${launch.size}` : "one of several processes";
  throw new SigmaError(`this process was started by an MPI launcher (${launch.evidence}: ${who}), but Sigma's MPI support is not available: ${m.error}`, MPI_INSTALL_HINT);
}
