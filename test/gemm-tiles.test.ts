// The GEMM's foundation for per-CPU tuning (issue 21): what cpuid says about
// the caches and cores, the cache blocking derived from it, and every
// registered register tile. Each tile runs under a few blockings — the rule's
// and tiny ones that make nearly every block an edge block — on odd shapes and
// all four transposes, on every kernel path this CPU runs, and must agree with
// the TypeScript reference. `blockedOnly` sends every product through the
// blocked path, so that a tile is reached even with one row or one column.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { kernelPathSetting, loadNative, type NativeBackend } from "../src/backend/native/index.js";
import { referenceBackend as ref } from "../src/backend/reference/index.js";
import { Rng } from "../src/util/rng.js";

// The rule's blocking is checked below: a tuning file in the developer's cache must not apply here.
process.env.SIGMA_TUNE = "off";
const load = loadNative();
const skip = !load.backend && process.env.SIGMA_ALLOW_NO_NATIVE === "1" ? `native backend unavailable: ${load.error}` : false;

interface Tile { name: string; mr: number; nr: number; isa: string; runnable: boolean }
interface GemmConfig { tile: string; mr: number; nr: number; mc: number; kc: number; nc: number; tileOverride: boolean; blockingOverride: boolean; blockedOnly: boolean; tuned: boolean; smallMRowsNT: number; smallMRowsNN: number }
type Gemm = NativeBackend & {
  gemmTiles(): Tile[];
  gemmConfig(K?: number, threads?: number): GemmConfig;
  setGemmConfig(tile: string, mc: number, kc: number, nc: number, blockedOnly: boolean): void;
};
const native = () => {
  assert.ok(load.backend, `native backend unavailable: ${load.error}`);
  return load.backend as Gemm;
};
const isPow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;

test("cpuInfo: cache sizes and core counts are plausible", { skip }, () => {
  const c = native().cpuInfo();
  assert.ok(c.logicalCores >= 1 && c.physicalCores >= 1 && c.physicalCores <= c.logicalCores, JSON.stringify(c));
  assert.equal(c.physicalCores * c.threadsPerCore <= c.logicalCores + c.threadsPerCore, true);
  if (process.arch === "x64") {
    assert.match(c.vendor, /^[ -~]{12}$/, "the vendor string is 12 printable characters");
    assert.ok(c.family > 0, "family from cpuid leaf 1");
  }
  const known = [c.l1d, c.l2, c.l3].filter((s) => s > 0);
  if (known.length === 0) {
    console.log(`# cpuInfo reports no cache sizes (${c.cacheSource}): only the blocking rule's defaults are checked`);
    return;
  }
  assert.ok(isPow2(c.line) && c.line >= 16 && c.line <= 256, `line size ${c.line}`);
  for (const s of known) {
    assert.ok(s % c.line === 0, `a cache of ${s} bytes is not a whole number of ${c.line}-byte lines`);
    assert.ok(s >= 4096 && s <= 2 ** 32, `cache size ${s}`);
  }
  if (c.l1d > 0 && c.l2 > 0) assert.ok(c.l1d <= c.l2, `L1d ${c.l1d} > L2 ${c.l2}`);
  if (c.l2 > 0 && c.l3 > 0) assert.ok(c.l2 <= c.l3, `L2 ${c.l2} > L3 ${c.l3}`);
  if (c.l1d > 0) assert.ok(isPow2(c.l1d) || c.l1d % 16384 === 0, `L1d ${c.l1d}`);
});

test("cpuInfo: cache sizes match Linux sysfs where it lists them", { skip }, (t) => {
  const dir = "/sys/devices/system/cpu/cpu0/cache";
  if (!existsSync(dir)) {
    t.skip(`${dir} is not there (not Linux, or sysfs without cache information)`);
    return;
  }
  const c = native().cpuInfo();
  const sysfs: Record<string, number> = {};
  for (const idx of readdirSync(dir).filter((d) => d.startsWith("index"))) {
    const read = (f: string) => (existsSync(join(dir, idx, f)) ? readFileSync(join(dir, idx, f), "utf8").trim() : "");
    const m = /^(\d+)([KMG]?)$/.exec(read("size"));
    if (!m) continue;
    const bytes = Number(m[1]) * ({ "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as Record<string, number>)[m[2]!]!;
    const level = read("level"), type = read("type");
    if (level === "1" && type === "Data") sysfs.l1d = bytes;
    if (level === "2" && type !== "Instruction") sysfs.l2 = bytes;
    if (level === "3" && type !== "Instruction") sysfs.l3 = bytes;
  }
  if (Object.keys(sysfs).length === 0) {
    t.skip(`${dir} lists no cache sizes`);
    return;
  }
  for (const [k, v] of Object.entries(sysfs)) {
    const ours = c[k as "l1d" | "l2" | "l3"];
    if (ours === 0) continue;  // cpuid did not report this level: nothing to compare
    assert.equal(ours, v, `${k}: cpuid (${c.cacheSource}) says ${ours} bytes, sysfs ${v}`);
  }
});

test("the blocking follows the documented rule for the chosen tile", { skip }, () => {
  const n = native();
  const c = n.cpuInfo();
  const g = n.gemmConfig();
  assert.equal(g.tileOverride || g.blockingOverride || g.blockedOnly, false, "no override is set at start");
  assert.ok(g.mc % g.mr === 0 && g.nc % g.nr === 0, JSON.stringify(g));
  assert.ok(g.kc % 32 === 0 && g.kc >= 64 && g.kc <= 1024, `kc ${g.kc}`);
  const l1 = c.l1d || 32768, l2 = c.l2 || 1 << 20;
  assert.ok(g.kc * g.nr * 4 <= Math.max(l1, 64 * g.nr * 4), `one B micro-panel (${g.kc}×${g.nr}) fits the L1d (${l1})`);
  assert.ok(g.mc * g.kc * 4 <= Math.max((l2 * 3) / 16, g.mr * g.kc * 4), `the A block fits 3/16 of L2`);
  // This project's reference machine (Zen 4: 32 KiB L1d, 1 MiB L2, 32 MiB L3) keeps the blocking it was tuned with.
  if (c.l1d === 32768 && c.l2 === 1 << 20 && c.l3 === 32 << 20 && g.tile.endsWith("6x16")) {
    assert.deepEqual([g.mc, g.kc, g.nc], [96, 512, 1024]);
  }
});

test("setGemmConfig: overrides show in gemmConfig, bad ones are errors naming the argument, auto restores", { skip }, () => {
  const n = native();
  try {
    n.setGemmConfig("auto", 5, 7, 9, true);
    assert.deepEqual([n.gemmConfig().mc, n.gemmConfig().kc, n.gemmConfig().nc, n.gemmConfig().blockedOnly], [5, 7, 9, true]);
    assert.throws(() => n.setGemmConfig("no-such-tile", 0, 0, 0, false), (e: Error) => e instanceof RangeError && /^setGemmConfig: argument "tile" no tile "no-such-tile"; the tiles are .*portable-6x16/.test(e.message));
    assert.throws(() => n.setGemmConfig("auto", 70000, 0, 0, false), /^RangeError: setGemmConfig: argument "mc" must be at most 65536/);
    assert.throws(() => n.setGemmConfig("auto", 0, 65536, 65536, false), /^RangeError: setGemmConfig: argument "kc" times mc or nc/);
    assert.throws(() => n.setGemmConfig("auto", -1, 0, 0, false), /^RangeError: setGemmConfig: argument "mc"/);
    assert.throws(() => (n.setGemmConfig as (...a: unknown[]) => void)(3, 0, 0, 0, false), TypeError);
    for (const t of n.gemmTiles().filter((t) => !t.runnable)) {
      assert.throws(() => n.setGemmConfig(t.name, 0, 0, 0, false), new RegExp(`needs ${t.isa}, which this CPU lacks`));
    }
    // A tile above the kernel path held as the ceiling gives way to that path's default.
    const wide = n.gemmTiles().find((t) => t.isa === "avx512" && t.runnable);
    if (wide) {
      n.setGemmConfig(wide.name, 0, 0, 0, false);
      assert.equal(n.gemmConfig().tile, wide.name);
      n.setKernelPath("avx2-fma");
      assert.equal(n.gemmConfig().tile, "avx2-6x16");
      n.setKernelPath("auto");
      assert.equal(n.gemmConfig().tile, wide.name);
    }
  } finally {
    n.setGemmConfig("auto", 0, 0, 0, false);
    n.setKernelPath(kernelPathSetting().path);
  }
  assert.equal(n.gemmConfig().tileOverride || n.gemmConfig().blockingOverride || n.gemmConfig().blockedOnly, false);
});

const rng = new Rng(2121);
const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() * 2 - 1);
function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(1, Math.abs(b[i]!)));
  return worst;
}

// Odd shapes: 1, 3, 17, 257 and sizes that are not multiples of any MR
// (6, 12), NR (16, 32) or KC; the last ones span several blocks of the rule's
// blocking too (M > MC, K > KC).
const SHAPES: [number, number, number][] = [[1, 1, 1], [1, 3, 17], [3, 17, 1], [17, 257, 3], [257, 17, 33], [13, 35, 70], [29, 33, 257], [200, 75, 530]];
// Blockings as [mc, kc, nc] (0: the rule's): the rule's, and tiny ones that
// are not multiples of the tile, so blocks end mid-tile in every direction;
// then per tile the extremes the tuner may choose (tune.ts, neighbour():
// KC 32–2048, MC a multiple of MR, NC of NR, at least one tile each).
const BLOCKINGS: [number, number, number][] = [[0, 0, 0], [5, 7, 9], [13, 16, 35], [25, 64, 50]];
const tunerBlockings = (t: Tile): [number, number, number][] => [[t.mr, 32, t.nr], [t.mr * 2, 48, t.nr * 3], [t.mr * 40, 2048, t.nr * 256]];
const ALL_PATHS = ["auto", "avx2-fma", "portable"] as const;
const RANK: Record<string, number> = { portable: 0, "avx2-fma": 1, avx512: 2 };

test("every tile × blocking × transpose × odd shape agrees with the reference, on every kernel path", { skip }, () => {
  const n = native();
  const cases = SHAPES.flatMap(([M, N, K]) => [false, true].flatMap((ta) => [false, true].map((tb) => {
    const a = f32(M * K), b = f32(K * N), c0 = f32(M * N), acc = rng.uniform() < 0.5;
    const want = c0.slice();
    ref.matmul(want, a, b, M, N, K, ta, tb, acc);
    return { M, N, K, ta, tb, acc, a, b, c0, want };
  })));
  const paths = ALL_PATHS.slice(ALL_PATHS.indexOf(kernelPathSetting().path));
  let runs = 0;
  try {
    for (const path of paths) {
      n.setKernelPath(path);
      const level = n.cpuFeatures().path;
      for (const tile of n.gemmTiles().filter((t) => t.runnable && RANK[t.isa]! <= RANK[level]!)) {
        for (const [mc, kc, nc] of [...BLOCKINGS, ...tunerBlockings(tile)]) {
          n.setGemmConfig(tile.name, mc, kc, nc, true);
          assert.equal(n.gemmConfig().tile, tile.name, `${tile.name} is the tile in use on the ${level} path`);
          for (const threads of [1, 2]) {
            n.setThreads(threads);
            for (const { M, N, K, ta, tb, acc, a, b, c0, want } of cases) {
              const got = c0.slice();
              n.matmul(got, a, b, M, N, K, ta, tb, acc);
              runs++;
              const d = maxRelDiff(got, want);
              assert.ok(d <= 1e-5 * Math.sqrt(K), `${tile.name} (${level} path) mc=${mc} kc=${kc} nc=${nc} ${threads}t: ${M}x${N}x${K} ta=${ta} tb=${tb} acc=${acc} differs from the reference by ${d.toExponential(2)}`);
            }
          }
        }
      }
    }
  } finally {
    n.setGemmConfig("auto", 0, 0, 0, false);
    n.setKernelPath(kernelPathSetting().path);
  }
  console.log(`# ${runs} products checked`);
});

// The forced tile under the ordinary dispatch (thin and small-M paths left in
// place): batched and grouped products, whose slices and experts each take the plan.
test("each tile in ordinary dispatch: matmul, bmm and groupedMatmul agree with the reference", { skip }, () => {
  const n = native();
  try {
    for (const tile of n.gemmTiles().filter((t) => t.runnable)) {
      n.setGemmConfig(tile.name, 0, 0, 0, false);
      for (const threads of [1, 2]) {
        n.setThreads(threads);
        const [M, N, K] = [131, 1041, 530];
        const a = f32(M * K), b = f32(K * N), got = new Float32Array(M * N), want = new Float32Array(M * N);
        n.matmul(got, a, b, M, N, K, false, true, false);
        ref.matmul(want, a, b, M, N, K, false, true, false);
        assert.ok(maxRelDiff(got, want) <= 1e-5 * Math.sqrt(K), `${tile.name} matmul ${threads}t`);
        const S = 3, [m, nn, k] = [100, 45, 37];
        const ba = f32(S * m * k), bb = f32(S * k * nn), bg = new Float32Array(S * m * nn), bw = new Float32Array(S * m * nn);
        n.bmm(bg, ba, bb, S, m, nn, k, true, false, false);
        ref.bmm(bw, ba, bb, S, m, nn, k, true, false, false);
        assert.ok(maxRelDiff(bg, bw) <= 1e-5 * Math.sqrt(k), `${tile.name} bmm ${threads}t`);
        const counts = [0, 130, 7, 99], R = 236, E = 4, GN = 70, GK = 33;
        const offsets = Int32Array.from([0, ...counts.map((_, i) => counts.slice(0, i + 1).reduce((x, y) => x + y, 0))]);
        const x = f32(R * GK), w = f32(E * GN * GK), yg = new Float32Array(R * GN), yw = new Float32Array(R * GN);
        n.groupedMatmul(yg, x, w, offsets, E, GN, GK, true, false);
        ref.groupedMatmul(yw, x, w, offsets, E, GN, GK, true, false);
        assert.ok(maxRelDiff(yg, yw) <= 1e-5 * Math.sqrt(GK), `${tile.name} groupedMatmul ${threads}t`);
      }
    }
  } finally {
    n.setGemmConfig("auto", 0, 0, 0, false);
  }
});

// The small-M kernels under the ordinary dispatch: 1–16 rows of x against a
// weight, x·Wᵀ (W [N,K], a batched decoding step through a linear layer) and
// x·W (W [K,N]), N and K odd and past a vector's width, accumulating or not,
// on every kernel path, 1 and 2 threads (the last shapes are big enough that
// two threads split N). Every row of C and the K tail must be right: a
// kernel that skips a block of rows, an N edge or the last k shows here.
test("small-M products (1–16 rows, odd N and K) agree with the reference on every kernel path", { skip }, () => {
  const n = native();
  const NK: [number, number][] = [[1, 1], [3, 17], [17, 3], [5, 33], [257, 513], [1031, 517], [513, 1029]];
  const cases = Array.from({ length: 16 }, (_, i) => i + 1).flatMap((M) => NK.flatMap(([N, K]) => [true, false].map((tb) => {
    const a = f32(M * K), b = f32(K * N), c0 = f32(M * N), acc = (M + N) % 2 === 1;
    const want = c0.slice();
    ref.matmul(want, a, b, M, N, K, false, tb, acc);
    return { M, N, K, tb, acc, a, b, c0, want };
  })));
  const paths = ALL_PATHS.slice(ALL_PATHS.indexOf(kernelPathSetting().path));
  try {
    for (const path of paths) {
      n.setKernelPath(path);
      for (const threads of [1, 2]) {
        n.setThreads(threads);
        for (const { M, N, K, tb, acc, a, b, c0, want } of cases) {
          const got = c0.slice();
          n.matmul(got, a, b, M, N, K, false, tb, acc);
          const d = maxRelDiff(got, want);
          assert.ok(d <= 1e-5 * Math.sqrt(K), `${path} path ${threads}t: ${M}x${N}x${K} tb=${tb} acc=${acc} differs from the reference by ${d.toExponential(2)}`);
        }
        // Experts with few rows each (a decoding step's expert products), y = x·W[e]ᵀ and x·W[e].
        const counts = [3, 0, 1, 16, 5, 9], E = counts.length, R = 34, GN = 257, GK = 129;
        const offsets = Int32Array.from([0, ...counts.map((_, i) => counts.slice(0, i + 1).reduce((x, y) => x + y, 0))]);
        for (const tw of [true, false]) {
          const x = f32(R * GK), w = f32(E * GN * GK), yg = new Float32Array(R * GN), yw = new Float32Array(R * GN);
          n.groupedMatmul(yg, x, w, offsets, E, GN, GK, tw, false);
          ref.groupedMatmul(yw, x, w, offsets, E, GN, GK, tw, false);
          assert.ok(maxRelDiff(yg, yw) <= 1e-5 * Math.sqrt(GK), `${path} path ${threads}t: groupedMatmul tw=${tw}`);
        }
      }
    }
  } finally {
    n.setKernelPath(kernelPathSetting().path);
    n.setThreads(2);
  }
});

// The tuner's choice as the addon applies it: a tile and blocking per shape
// class (K > 256, K ≤ 256) and thread bucket, and the small-M thresholds.
const tuningWith = (path: string, large: string, shortK: string, smallM: number, many?: { large: string; shortK: string; smallM: number }) => {
  const bucket = (l: string, s: string, rows: number) => ({
    large: { tile: l, mc: 37, kc: 96, nc: 70 },
    shortK: { tile: s, mc: 25, kc: 40, nc: 33 },
    smallMRowsNT: rows,
    smallMRowsNN: rows,
  });
  return { path, one: bucket(large, shortK, smallM), many: many ? bucket(many.large, many.shortK, many.smallM) : bucket(large, shortK, smallM) };
};

test("setGemmTuning: each class and thread count takes its tuned tile and blocking, agreeing with the reference; overrides and other paths set it aside", { skip }, () => {
  const n = native() as Gemm & { setGemmTuning(t: unknown): void; gemmTuning(): unknown };
  const path = n.cpuFeatures().path;
  const tiles = n.gemmTiles().filter((t) => t.runnable && RANK[t.isa]! <= RANK[path]!);
  // Shapes in both classes (K 530 and 200), and rows that the small-M path takes unless the tuning says 0.
  const shapes: [number, number, number][] = [[200, 75, 530], [61, 257, 530], [91, 70, 200], [7, 33, 300]];
  try {
    for (let i = 0; i < tiles.length; i++) {
      const large = tiles[i]!.name, shortK = tiles[(i + 1) % tiles.length]!.name;
      const t = tuningWith(path, large, shortK, 0, { large: shortK, shortK: large, smallM: 96 });
      n.setGemmTuning(t);
      assert.deepEqual(n.gemmTuning(), t);
      for (const threads of [1, 2]) {
        n.setThreads(threads);
        const g = n.gemmConfig();
        const want = threads > 1 ? t.many : t.one;
        assert.equal(g.tuned, true);
        assert.deepEqual([g.tile, g.mc, g.kc, g.nc], [want.large.tile, 37, 96, 70], `gemmConfig at ${threads} thread(s)`);
        for (const [K, c] of [[257, want.large], [256, want.shortK], [1, want.shortK]] as const) {
          const p = n.gemmConfig(K, threads);
          assert.deepEqual([p.tile, p.mc, p.kc, p.nc, p.smallMRowsNT], [c.tile, c.mc, c.kc, c.nc, want.smallMRowsNT], `the plan for K ${K} on ${threads} thread(s)`);
        }
        for (const [M, N, K] of shapes) {
          for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]] as const) {
            const a = f32(M * K), b = f32(K * N), got = f32(M * N), want2 = got.slice();
            n.matmul(got, a, b, M, N, K, ta, tb, true);
            ref.matmul(want2, a, b, M, N, K, ta, tb, true);
            const d = maxRelDiff(got, want2);
            assert.ok(d <= 1e-5 * Math.sqrt(K), `tuned ${large}/${shortK} ${threads}t ${M}x${N}x${K} ta=${ta} tb=${tb}: ${d}`);
          }
        }
      }
    }
    // An override sets the tuned tile and blocking aside; clearing it brings them back.
    const t = tuningWith(path, tiles[0]!.name, tiles[0]!.name, 32);
    n.setThreads(1);
    n.setGemmTuning(t);
    n.setGemmConfig("auto", 0, 64, 0, false);
    assert.equal(n.gemmConfig().tuned, false);
    assert.equal(n.gemmConfig().kc, 64);
    n.setGemmConfig("auto", 0, 0, 0, false);
    assert.deepEqual([n.gemmConfig().tuned, n.gemmConfig().smallMRowsNT], [true, 32]);
    // Another kernel path: the rule (the tuning was measured on `path`).
    if (path !== "portable") {
      n.setKernelPath("portable");
      assert.deepEqual([n.gemmConfig().tuned, n.gemmConfig().tile, n.gemmConfig().smallMRowsNT], [false, "portable-6x16", 96]);
      n.setKernelPath("auto");
      assert.equal(n.gemmConfig().tuned, true);
    }
    // Bad tunings are errors naming the field; the tuning set before stays.
    const bad: [unknown, RegExp][] = [
      [{ ...t, path: "sse" }, /no kernel path "sse"/],
      [{ ...t, one: { ...t.one, large: { ...t.one.large, tile: "nope" } } }, /no tile "nope"/],
      [{ ...t, many: { ...t.many, shortK: { ...t.many.shortK, kc: 0 } } }, /many\.shortK\.kc must be an integer from 1 to 65536/],
      [{ ...t, one: { ...t.one, smallMRowsNN: 97 } }, /one\.smallMRowsNN must be an integer from 0 to 96/],
      [{ path, one: t.one }, /lacks many/],
      [[t], /must be an object or null/],
    ];
    for (const [v, re] of bad) assert.throws(() => n.setGemmTuning(v), (e: Error) => /^setGemmTuning: argument "tuning"/.test(e.message) && re.test(e.message), String(re));
    assert.deepEqual(n.gemmTuning(), t);
    n.setGemmTuning(null);
    assert.equal(n.gemmTuning(), null);
    assert.equal(n.gemmConfig().tuned, false);
  } finally {
    n.setGemmTuning(null);
    n.setGemmConfig("auto", 0, 0, 0, false);
    n.setKernelPath(kernelPathSetting().path);
  }
});
