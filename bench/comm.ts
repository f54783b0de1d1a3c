/**
 * `npm run bench -- comm [--ranks=N] [--max=BYTES] [--json]`: MPI allreduce and
 * all-to-all(v) latency and bandwidth on this machine, over message sizes from
 * 8 B to --max (default 16 MiB), on N ranks (default 2) that it starts itself
 * with mpirun. Without MPI (no addon, no mpirun) it says so in one line and
 * measures nothing.
 *
 * Per size: the median time of one call over repetitions (at least 5, and
 * enough for ~0.1 s), the algorithm bandwidth (bytes per rank / time) and
 * the bus bandwidth — what each rank's link carries: allreduce moves
 * 2(N−1)/N of the buffer in and out of every rank (ring), all-to-all (N−1)/N.
 * The ceiling beside them is this machine's memory copy bandwidth, measured in
 * the same run: ranks on one machine talk through shared memory, so a copy is
 * the most a byte can cost less than. A fit t = latency + bytes / bandwidth
 * over the sizes (least squares on the large sizes for the slope, the smallest
 * for the latency) is what the expert-parallel simulator takes
 * (`sigma balance scale --comm FILE`, src/balance/interconnect.ts).
 *
 * With --json, stdout is one JSON object:
 *   { comm: { ranks, library, memcpyGBs, allreduce: { fit: { latencyUs, busGBs },
 *     sizes: [{ bytes, us, algGBs, busGBs }] }, alltoall: {…}, alltoallv: {…} } }
 *   or { comm: { skipped: "<why>" } } without MPI.
 */
import { spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { joinWorld, type Communicator } from "../src/comm/comm.js";
import { loadMpi } from "../src/comm/mpi.js";
import { median, table } from "./util.js";

export interface CommSize {
  bytes: number;
  us: number;
  algGBs: number;
  busGBs: number;
}
export interface CommOp {
  fit: { latencyUs: number; busGBs: number };
  sizes: CommSize[];
}
export interface CommResult {
  ranks: number;
  library: string | null;
  memcpyGBs: number;
  allreduce: CommOp;
  alltoall: CommOp;
  alltoallv: CommOp;
}

/** Why MPI cannot run here, or null. */
export function mpiMissing(): string | null {
  const m = loadMpi();
  if (!m.addon) return m.error;
  const r = spawnSync("mpirun", ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) return "mpirun is not on PATH (apt-get install openmpi-bin)";
  return null;
}

/** Open MPI on a small machine, possibly as root: allowed, and more ranks than cores. */
export const MPIRUN_ENV = { OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1", OMPI_MCA_rmaps_base_oversubscribe: "1" };

/** Median seconds of fn over reps chosen for ~budget seconds (at least 5), every rank agreeing on the count. */
function timeCollective(comm: Communicator, fn: () => void, budget = 0.1): number {
  comm.barrier();
  const t0 = performance.now();
  fn();
  const once = Float64Array.of((performance.now() - t0) / 1000);
  comm.allreduce(once, "max");
  const reps = Math.max(5, Math.min(1000, Math.ceil(budget / Math.max(once[0]!, 1e-7))));
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    comm.barrier();
    const t = performance.now();
    fn();
    times.push((performance.now() - t) / 1000);
  }
  const m = Float64Array.of(median(times));
  comm.allreduce(m, "max");
  return m[0]!;
}

/** Latency from the smallest size, bandwidth from a least-squares slope over the sizes of 64 KiB and up. */
function fit(sizes: CommSize[], busFactor: number): CommOp["fit"] {
  const big = sizes.filter((s) => s.bytes >= 65536);
  const pts = big.length >= 2 ? big : sizes.slice(-2);
  const xs = pts.map((p) => p.bytes * busFactor);
  const ys = pts.map((p) => p.us / 1e6);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  const slope = xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  return { latencyUs: sizes[0]!.us, busGBs: 1 / Math.max(slope, 1e-15) / 1e9 };
}

/** One rank's part: every size of every collective. Rank 0 returns the result. */
function measure(maxBytes: number): CommResult | null {
  const world = joinWorld();
  const comm = world.comm;
  const N = comm.size;
  const sizes: number[] = [];
  for (let b = 8; b <= maxBytes; b *= 4) sizes.push(b);
  const ops = {} as Record<"allreduce" | "alltoall" | "alltoallv", CommOp>;
  const factor = { allreduce: (2 * (N - 1)) / N, alltoall: (N - 1) / N, alltoallv: (N - 1) / N };
  for (const op of ["allreduce", "alltoall", "alltoallv"] as const) {
    const rows: CommSize[] = [];
    for (const bytes of sizes) {
      // Each rank's buffer is `bytes`; the all-to-alls cut it into N blocks (floats, rounded down, at least one each).
      const n = Math.max(N, Math.floor(bytes / 4 / N) * N);
      const send = new Float32Array(n).fill(1);
      const recv = new Float32Array(n);
      const counts = new Int32Array(N).fill(n / N);
      const displs = Int32Array.from({ length: N }, (_, q) => (q * n) / N);
      const fn = op === "allreduce" ? () => comm.allreduce(send) : op === "alltoall" ? () => comm.alltoall(send, recv) : () => comm.alltoallv(send, counts, displs, recv, counts, displs);
      const s = timeCollective(comm, fn);
      const real = n * 4;
      rows.push({ bytes: real, us: s * 1e6, algGBs: real / s / 1e9, busGBs: (real * factor[op]) / s / 1e9 });
    }
    ops[op] = { fit: fit(rows, factor[op]), sizes: rows };
  }
  // The ceiling: a memory copy of the largest buffer on this rank.
  const a = new Float32Array(Math.max(1, maxBytes / 4)).fill(1);
  const b = new Float32Array(a.length);
  const copies: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t = performance.now();
    b.set(a);
    copies.push((performance.now() - t) / 1000);
  }
  const memcpyGBs = a.byteLength / median(copies) / 1e9;
  const library = world.library;
  world.finalize();
  return comm.rank === 0 ? { ranks: N, library, memcpyGBs, ...ops } : null;
}

/** Runs the measurement under mpirun with `ranks` ranks; null (and the reason) without MPI. */
export async function runComm(ranks: number, maxBytes: number): Promise<{ result: CommResult | null; skipped: string | null }> {
  const missing = mpiMissing();
  if (missing) return { result: null, skipped: `MPI is not available: ${missing}` };
  const self = fileURLToPath(import.meta.url);
  const out = await new Promise<string>((resolve, reject) => {
    const p = spawn("mpirun", ["--oversubscribe", "-np", String(ranks), "-x", "SIGMA_THREADS=1", process.execPath, "--import", "tsx", self, "--rank", String(maxBytes)], { env: { ...process.env, ...MPIRUN_ENV }, stdio: ["ignore", "pipe", "inherit"] });
    let text = "";
    p.stdout.on("data", (d) => (text += d));
    p.on("close", (code) => (code === 0 ? resolve(text) : reject(new Error(`bench comm: mpirun exited with ${code}`))));
  });
  return { result: JSON.parse(out.trim().split("\n").pop()!) as CommResult, skipped: null };
}

const human = (b: number) => (b >= 2 ** 20 ? `${b / 2 ** 20} MiB` : b >= 1024 ? `${b / 1024} KiB` : `${b} B`);

export async function run(args: string[]): Promise<void> {
  const json = args.includes("--json");
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const ranks = Number(args.find((a) => a.startsWith("--ranks="))?.slice(8) ?? 2);
  const maxBytes = Number(args.find((a) => a.startsWith("--max="))?.slice(6) ?? 16 * 2 ** 20);
  if (!Number.isInteger(ranks) || ranks < 2) throw new Error("--ranks must be an integer of 2 or more");
  const { result, skipped } = await runComm(ranks, maxBytes);
  if (!result) {
    say(`bench comm: skipped: ${skipped}`);
    if (json) console.log(JSON.stringify({ comm: { skipped } }));
    return;
  }
  say(`${result.ranks} ranks on this machine (${result.library ?? "MPI"}); memory copy ceiling ${result.memcpyGBs.toFixed(1)} GB/s; median of ≥ 5 calls per size\n`);
  for (const op of ["allreduce", "alltoall", "alltoallv"] as const) {
    const o = result[op];
    say(`${op}: latency ${o.fit.latencyUs.toFixed(1)} µs, bus bandwidth ${o.fit.busGBs.toFixed(2)} GB/s (${((100 * o.fit.busGBs) / result.memcpyGBs).toFixed(0)}% of a memory copy)`);
    say(table(["bytes per rank", "µs", "alg GB/s", "bus GB/s", "bus / memcpy"], o.sizes.map((s) => [human(s.bytes), s.us.toFixed(1), s.algGBs.toFixed(3), s.busGBs.toFixed(3), `${((100 * s.busGBs) / result.memcpyGBs).toFixed(1)}%`])));
    say("");
  }
  if (json) console.log(JSON.stringify({ comm: result }));
}

if (process.argv[2] === "--rank") {
  const r = measure(Number(process.argv[3]));
  if (r) console.log(JSON.stringify(r));
}
