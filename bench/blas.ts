/**
 * `npm run bench -- blas [--rounds=N]`: our GEMM beside OpenBLAS's sgemm on
 * this machine, when the system has OpenBLAS (Debian: `apt install
 * libopenblas-dev`). Not needed by Sigma; a yardstick for the FMA-peak ratios
 * of `bench gemm`.
 *
 * bench/native/blas_compare.cpp is compiled with the addon's kernel sources
 * (with binding.gyp's flags) and linked to -lopenblas in a temporary
 * directory. Every round probes the FMA peak, runs our product, then
 * OpenBLAS's (results checked against each other first); the table gives
 * medians of both as fractions of the peak and the median per-round speed
 * ratio. OpenBLAS's idle workers busy-wait after a call and, on a 2-core
 * machine, take a core from the next product; OPENBLAS_THREAD_TIMEOUT=4 (its
 * shortest wait) keeps that from slowing our half of each round.
 *
 * With --json, stdout is one JSON object (human text goes to stderr):
 *   { blas: { ratioMedian: {"1": x, "2": y},   // ours/OpenBLAS GFLOP/s, median over the shapes
 *             ratioMin: {"1": …, "2": …},       // the worst shape per thread count
 *             shapes: [{ label, M, N, K, transB, threads, ratio, oursPeak, openblasPeak }],
 *             rounds, cpu: { brand, vendor, family, model, kernelPath }, gemmConfig } }
 * "ratio" is the median over rounds of OpenBLAS's time over ours (the same
 * as ours/OpenBLAS in GFLOP/s); oursPeak/openblasPeak: fractions of the FMA
 * peak probed each round. Skipped (no OpenBLAS): { blas: { skipped: why } }.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { median, native, table } from "./util.js";

const root = fileURLToPath(new URL("..", import.meta.url));

export async function run(args: string[]): Promise<void> {
  const roundsArg = args.find((a) => a.startsWith("--rounds="));
  const rounds = roundsArg ? Number(roundsArg.slice("--rounds=".length)) : 7;
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, got "${roundsArg}"`);
  const json = args.includes("--json");
  // With --json only the JSON object goes to stdout.
  const say = json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  // The addon's tuning (from the tuner's file, when there is one for this CPU and build), handed to the
  // comparison program so that it times what the addon runs; without one both use the cache-size rule.
  const addon = native(true);
  const cfg = addon.gemmConfig();
  const tuning = cfg.tuned ? addon.gemmTuning() : null;
  const flat = (t: NonNullable<typeof tuning>["one"]) =>
    [t.large, t.shortK].map((c) => `${c.tile}:${c.mc}:${c.kc}:${c.nc}`).concat([String(t.smallMRowsNT), String(t.smallMRowsNN)]).join(",");
  const tuningArg = tuning ? [`--tuning=${tuning.path}|${flat(tuning.one)}|${flat(tuning.many)}`] : [];
  const info = addon.cpuInfo();
  const cpu = { brand: info.brand, vendor: info.vendor, family: info.family, model: info.model, kernelPath: addon.cpuFeatures().path };

  const dir = mkdtempSync(join(tmpdir(), "sigma-blas-"));
  try {
    const kernels = join(root, "native/src/kernels");
    const sources = readdirSync(kernels).filter((f) => f.endsWith(".cpp")).map((f) => join(kernels, f));
    const exe = join(dir, "blas_compare");
    const cxx = process.env.CXX ?? "g++";
    // The addon's own C++ flags, so that the kernels compile here as they do there.
    const gyp = JSON.parse(readFileSync(join(root, "binding.gyp"), "utf8")) as { targets: { cflags_cc: string[] }[] };
    const build = spawnSync(cxx, [...gyp.targets[0]!.cflags_cc,
      `-I${join(root, "native/include")}`, `-I${kernels}`, join(root, "bench/native/blas_compare.cpp"), ...sources,
      "-o", exe, "-lopenblas"], { encoding: "utf8" });
    if (build.error || build.status !== 0) {
      const why = build.error ? build.error.message : build.stderr.trim().split("\n").slice(-3).join("\n");
      const skipped = `could not build against OpenBLAS with ${cxx} (install libopenblas-dev, or set CXX): ${why}`;
      if (json) console.log(JSON.stringify({ blas: { skipped, cpu } }));
      else console.log(`skipped: ${skipped}`);
      return;
    }

    const shapes: { label: string; spec: string }[] = [];
    for (const n of [512, 1024, 2048]) {
      shapes.push({ label: `square ${n}`, spec: `${n}:${n}:${n}:0` });
      shapes.push({ label: `square ${n} ·Bᵀ`, spec: `${n}:${n}:${n}:1` });
    }
    for (const rows of [64, 1024]) {
      shapes.push({ label: `x[${rows},512]·Wᵀ (W 2048x512)`, spec: `${rows}:2048:512:1` });
      shapes.push({ label: `x[${rows},2048]·W (W 2048x512)`, spec: `${rows}:512:2048:0` });
    }
    const results = new Map<string, { ours: number; openblas: number; speed: number }>();
    const used: Record<string, unknown>[] = [];
    for (const threads of [1, 2]) {
      const r = spawnSync(exe, [String(rounds), String(threads), ...tuningArg, ...shapes.map((s) => s.spec)], {
        encoding: "utf8",
        env: { ...process.env, OPENBLAS_THREAD_TIMEOUT: "4" },
      });
      if (r.status !== 0) throw new Error(`blas_compare failed (${r.status ?? r.signal}): ${r.stderr.trim()}`);
      for (const line of r.stdout.trim().split("\n")) {
        const head = JSON.parse(line) as { config?: Record<string, unknown> };
        if (head.config) {
          if (!used.some((u) => u.threads === threads && u.K === head.config!.K)) used.push({ threads, ...head.config });
          continue;
        }
        const o = head as unknown as { M: number; N: number; K: number; tb: number; threads: number; ours: number; openblas: number; speed: number };
        results.set(`${o.M}:${o.N}:${o.K}:${o.tb}/${o.threads}`, o);
      }
    }
    const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
    const rows = shapes.map((s) => {
      const cells: (string | number)[] = [s.label];
      for (const t of [1, 2]) {
        const o = results.get(`${s.spec}/${t}`)!;
        cells.push(pct(o.ours), pct(o.openblas), `${o.speed.toFixed(2)}×`);
      }
      return cells;
    });
    say(`CPU: ${cpu.brand} (${cpu.kernelPath} path); GEMM tile ${cfg.tile} (${cfg.mr}x${cfg.nr}), MC ${cfg.mc}, KC ${cfg.kc}, NC ${cfg.nc}`);
    say(`\nFraction of the FMA peak (probed each round), medians of ${rounds} interleaved rounds; "speed": OpenBLAS's time over ours (above 1: ours faster):\n`);
    say(table(["shape", "1 thr ours", "1 thr OpenBLAS", "1 thr speed", "2 thr ours", "2 thr OpenBLAS", "2 thr speed"], rows));
    const perShape = [1, 2].flatMap((t) =>
      shapes.map((s) => {
        const o = results.get(`${s.spec}/${t}`)!;
        const [M, N, K, tb] = s.spec.split(":").map(Number) as [number, number, number, number];
        return { label: s.label, M, N, K, transB: tb === 1, threads: t, ratio: o.speed, oursPeak: o.ours, openblasPeak: o.openblas };
      }),
    );
    const byThreads = (f: (xs: number[]) => number) => Object.fromEntries([1, 2].map((t) => [String(t), f(perShape.filter((x) => x.threads === t).map((x) => x.ratio))]));
    const ratioMedian = byThreads(median), ratioMin = byThreads((xs) => Math.min(...xs));
    say(`\nours/OpenBLAS, median over the shapes: 1 thread ${ratioMedian["1"]!.toFixed(2)}, 2 threads ${ratioMedian["2"]!.toFixed(2)}; worst shape ${ratioMin["1"]!.toFixed(2)} / ${ratioMin["2"]!.toFixed(2)}`);
    if (json) console.log(JSON.stringify({ blas: { ratioMedian, ratioMin, shapes: perShape, rounds, cpu, gemmConfig: { tuned: cfg.tuned, plans: used } } }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
