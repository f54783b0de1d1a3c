// Hardening of flags, output folders and output I/O errors (issue "Hardening"):
// every bad --out (under /proc, /sys or /dev, a file, a read-only or
// unwritable folder), every store path that is a folder, every numeric flag
// out of range, ends as one `sigma:` line naming the flag — exit 1, never a
// stack trace, a hang or a giant allocation; a full disk or an I/O error on
// metrics.jsonl or a plot stops the run with an error naming the file and
// the errno, and the newest checkpoint stays complete and resumable.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs, { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join, sep } from "node:path";
import { openCheckpointFolder } from "../src/checkpoint/folder.js";
import { resumeTrainer } from "../src/train/checkpoint.js";
import { MetricsLog, readMetrics } from "../src/train/metrics.js";
import { writePlots } from "../src/train/run.js";
import { ensureWritableDir, ensureWritableFile } from "../src/util/fs.js";
import { SigmaError } from "../src/util/errors.js";
import { sigma } from "./cli-harness.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();

/** Exit 1 with one `sigma:` line (plus a hint) that matches `re`: no internal error, no stack trace. */
async function refused(args: string[], re: RegExp): Promise<string> {
  const r = await sigma(...args);
  assert.equal(r.code, 1, `${args.join(" ")} → exit ${r.code}:\n${r.out}`);
  assert.match(r.out, re, args.join(" "));
  assert.doesNotMatch(r.out, /internal error|\n\s+at /, args.join(" "));
  return r.out;
}

/** A train config file over the fixture data; `extra` overrides fields. */
function configFile(name: string, extra: Record<string, unknown> = {}, router = ROUTERS.rre!): { path: string; out: string } {
  const out = join(root, `${name}-run`);
  const path = join(root, `${name}.json`);
  writeFileSync(path, JSON.stringify({ ...tinyConfig(data, out, router), ...extra }));
  return { path, out: (extra.out as string | undefined) ?? out };
}

/** Runs `fn` with fs[name] replaced (ESM named imports of node:fs follow via syncBuiltinESMExports). */
async function withFs<K extends keyof typeof fs>(name: K, fake: (typeof fs)[K], fn: () => Promise<void> | void): Promise<void> {
  const real = fs[name];
  (fs as Record<string, unknown>)[name] = fake;
  syncBuiltinESMExports();
  try {
    await fn();
  } finally {
    (fs as Record<string, unknown>)[name] = real;
    syncBuiltinESMExports();
  }
}

const sigmaErrorOf = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

const errno = (code: string, syscall: string, path: string): NodeJS.ErrnoException =>
  Object.assign(new Error(`${code}: simulated, ${syscall} '${path}'`), { code, syscall, path, errno: -1 });

test("--out under /proc, /sys or /dev (also through a link, or the config's out) is refused before anything is written", async () => {
  const { path: cfg } = configFile("pseudo");
  await refused(["train", "--config", cfg, "--out", "/proc/sigma-run"], /--out \/proc\/sigma-run is under \/proc: that is the kernel's process information filesystem/);
  await refused(["train", "--config", cfg, "--out", "/sys/kernel/sigma-run"], /--out \/sys\/kernel\/sigma-run is under \/sys/);
  await refused(["train", "--config", cfg, "--out", "/dev/sigma-run"], /--out \/dev\/sigma-run is under \/dev/);
  // A link into /proc is followed before the check.
  const link = join(root, "to-proc");
  symlinkSync("/proc/self", link);
  await refused(["train", "--config", cfg, "--out", join(link, "run")], /--out .*to-proc\/run is under \/proc \(it resolves to \/proc\/\d+\/run\)/);
  // The config's own out field is named as such.
  const { path: viaConfig } = configFile("pseudo-cfg", { out: "/sys/sigma-run" });
  await refused(["train", "--config", viaConfig], new RegExp(`out in ${viaConfig.replaceAll("/", "\\/")} /sys/sigma-run is under /sys`));
  for (const [args, flag] of [
    [["demo", "--out", "/proc/sigma-demo"], "--out"],
    [["data", "prepare", "--corpus", join(root, "corpus"), "--tokenizer", join(root, "tokenizer.json"), "--out", "/proc/sigma-data"], "--out"],
    [["tokenizer", "train", "--corpus", join(root, "corpus"), "--out", "/proc/tokenizer.json"], "--out"],
    [["upcycle", "--from", join(root, "none"), "--config", cfg, "--out", "/proc/sigma-up"], "--out"],
    [["extract", "--ckpt", join(root, "none"), "--domain", "en", "--out", "/sys/sigma-x"], "--out"],
    [["import", "gpt2", "--from", join(root, "none"), "--out", "/dev/sigma-import"], "--out"],
    [["store", "convert", "--from", join(root, "none"), "--to", "ram", "--out", "/proc/sigma-conv"], "--out"],
    [["balance", "--ckpt", join(root, "none"), "--out", "/proc/sigma-balance"], "--out"],
    [["simulate", "--devices", "8", "--out", "/sys/sigma-sim"], "--out"],
  ] as const) {
    await refused([...args], new RegExp(`${flag} /(proc|sys|dev)/\\S+ is under /(proc|sys|dev)`));
  }
  assert.ok(!existsSync("/proc/sigma-run") && !existsSync("/dev/sigma-run"));
});

test("--out that is a file, or that runs through a file, names the flag", async () => {
  const file = join(root, "a-file");
  writeFileSync(file, "not a folder\n");
  const { path: cfg } = configFile("file-out");
  await refused(["train", "--config", cfg, "--out", file], /--out .*a-file is a file, not a folder/);
  await refused(["train", "--config", cfg, "--out", join(file, "run")], /--out .*a-file\/run: .*a-file is a file, not a folder/);
  await refused(["extract", "--ckpt", join(root, "none"), "--domain", "en", "--out", file], /--out .*a-file is a file, not a folder/);
  await refused(["data", "prepare", "--corpus", join(root, "corpus"), "--tokenizer", join(root, "tokenizer.json"), "--out", file], /--out .*a-file is a file, not a folder/);
  await refused(["simulate", "--devices", "8", "--out", file], /--out .*a-file is a file, not a folder/);
  // A file flag given a folder.
  await refused(["tokenizer", "train", "--corpus", join(root, "corpus"), "--out", root], /--out .* is a folder, not a file/);
  assert.equal(readFileSync(file, "utf8"), "not a folder\n");
});

test("a store path that is a folder names --store or the config's store.path", async () => {
  const dir = join(root, "store-dir");
  mkdirSync(dir, { recursive: true });
  const { path: cfg, out } = configFile("store-dir");
  await refused(["train", "--config", cfg, "--store", dir], /--store .*store-dir is a folder, not a file/);
  const { path: viaConfig } = configFile("store-dir-cfg", { store: { enabled: true, path: dir } });
  await refused(["train", "--config", viaConfig], /store\.path in .*store-dir-cfg\.json .*store-dir is a folder, not a file/);
  // The default store path <out>/experts.sgxs, taken by a folder.
  mkdirSync(join(out, "experts.sgxs"), { recursive: true });
  await refused(["train", "--config", cfg, "--store"], /the store path \(out in .*\)\S* .*experts\.sgxs is a folder, not a file/);
  await refused(["store", "convert", "--from", join(root, "none"), "--to", "store", "--out", join(root, "conv"), "--store", dir], /--store .*store-dir is a folder, not a file/);
});

test("a read-only or unwritable --out is refused (simulated: access(2) says EROFS / EACCES)", async () => {
  const { path: cfg } = configFile("ro");
  const ro = join(root, "ro-folder");
  mkdirSync(ro, { recursive: true });
  const realAccess = fs.accessSync;
  for (const [code, re] of [
    ["EROFS", /--out .*ro-folder\/run is on a read-only filesystem \(the nearest existing folder, .*ro-folder, refuses writes\)/],
    ["EACCES", /--out .*ro-folder\/run is not writable: permission denied/],
  ] as const) {
    await withFs("accessSync", ((p: fs.PathLike, mode?: number) => {
      if (String(p).startsWith(ro)) throw errno(code, "access", String(p));
      return realAccess(p, mode);
    }) as typeof fs.accessSync, async () => {
      await refused(["train", "--config", cfg, "--out", join(ro, "run")], re);
      await refused(["upcycle", "--from", join(root, "none"), "--config", cfg, "--out", join(ro, "run")], re);
    });
  }
  assert.ok(!existsSync(join(ro, "run")));
});

// Root ignores permission bits, so the real cases run in a child process: a
// read-only tmpfs in a private mount namespace (unshare), and an unprivileged
// user (setpriv). Skipped where those tools or privileges are missing.
const tool = (name: string): boolean => spawnSync("sh", ["-c", `command -v ${name}`]).status === 0;
const isRoot = process.getuid?.() === 0;
const fsModule = new URL("../src/util/fs.ts", import.meta.url).pathname;
const probe = (path: string, flag: string): string =>
  `import { ensureWritableDir } from ${JSON.stringify(fsModule)}; try { ensureWritableDir(${JSON.stringify(path)}, ${JSON.stringify(flag)}); console.log("ok"); } catch (e) { console.log(e.message); }`;

test("a real read-only filesystem (tmpfs mounted ro in a private namespace) is refused", { skip: !isRoot || !tool("unshare") ? "needs root and unshare" : false }, (t) => {
  const mnt = join(root, "ro-mount");
  mkdirSync(mnt, { recursive: true });
  const script = join(root, "ro-probe.ts");
  writeFileSync(script, probe(join(mnt, "run"), "--out"));
  const r = spawnSync("unshare", ["-m", "sh", "-c", `mount -t tmpfs -o ro tmpfs ${mnt} && exec node --import tsx ${script}`], { encoding: "utf8" });
  if (r.status !== 0 && /mount|unshare/.test(r.stderr)) return t.skip(`mount namespaces are not available here: ${r.stderr.trim()}`);
  assert.match(r.stdout, /--out .*ro-mount\/run is on a read-only filesystem/, r.stderr);
});

test("a folder the user may not write (a real unprivileged user) is refused", { skip: !isRoot || !tool("setpriv") ? "needs root and setpriv" : false }, () => {
  const locked = join(root, "locked");
  mkdirSync(locked, { recursive: true, mode: 0o755 });
  fs.chmodSync(root, 0o755);
  const script = join(root, "eacces-probe.ts");
  writeFileSync(script, probe(join(locked, "run"), "--out"));
  fs.chmodSync(script, 0o644);
  const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "node", "--import", "tsx", script], { encoding: "utf8", env: { ...process.env, HOME: "/tmp" } });
  assert.match(r.stdout, /--out .*locked\/run is not writable: permission denied/, r.stderr);
});

test("ensureWritableDir / ensureWritableFile accept ordinary paths and create nothing", () => {
  const fresh = join(root, "fresh", "deeper", "run");
  ensureWritableDir(fresh, "--out");
  assert.ok(!existsSync(join(root, "fresh")));
  ensureWritableDir(root, "--out");
  ensureWritableFile(join(root, "fresh", "tok.json"), "--out");
  if (existsSync("/dev/shm")) ensureWritableDir("/dev/shm/sigma-test-not-created", "--out");
  // A dangling link would make the later mkdir fail with EEXIST.
  const dangling = join(root, "dangling");
  symlinkSync(join(root, "nowhere"), dangling);
  assert.throws(() => ensureWritableDir(join(dangling, "run"), "--out"), (e: unknown) => e instanceof SigmaError && /--out .*dangling\/run: .*dangling is a symbolic link to nothing/.test(e.message));
});

test("numeric flags: 0, negative, fractional, NaN, Infinity and huge values name the flag", async () => {
  const ck = join(root, "none");
  const { path: cfg } = configFile("flags");
  const cases: [string[], RegExp][] = [
    [["eval", "--ckpt", ck, "--batches", "0"], /--batches must be an integer from 1 to 1000000, got "0"/],
    [["eval", "--ckpt", ck, "--batches", "1.5"], /--batches must be an integer/],
    [["eval", "--ckpt", ck, "--batch-size", "1e9"], /--batch-size must be an integer from 1 to 65536, got "1e9"/],
    [["eval", "--ckpt", ck, "--batch-size", ""], /--batch-size must be an integer/],
    [["generate", "--ckpt", ck, "--max-tokens", "0"], /--max-tokens must be an integer from 1 to 1000000/],
    [["generate", "--ckpt", ck, "--max-tokens", "1e12"], /--max-tokens must be an integer from 1 to 1000000/],
    [["generate", "--ckpt", ck, "--temperature", "NaN"], /--temperature must be a number from 0 to 1000000, got "NaN"/],
    [["generate", "--ckpt", ck, "--temperature", "-1"], /--temperature must be a number from 0/],
    [["generate", "--ckpt", ck, "--top-p", "0"], /--top-p must be a number above 0 and at most 1/],
    [["generate", "--ckpt", ck, "--top-k", "-1"], /--top-k must be an integer from 0/],
    [["train", "--config", cfg, "--steps", "0"], /--steps must be an integer from 1 to 1000000000/],
    [["train", "--config", cfg, "--steps", "1e12"], /--steps must be an integer from 1 to 1000000000/],
    [["demo", "--width", "0"], /--width must be an integer from 4 to 4096/],
    [["demo", "--width", "1e9"], /--width must be an integer from 4 to 4096/],
    [["demo", "--width", "130"], /--width must be a multiple of 4/],
    [["demo", "--minutes", "Infinity"], /--minutes must be a number above 0/],
    [["demo", "--minutes", "0"], /--minutes must be a number above 0/],
    [["demo", "--steps", "0"], /--steps must be an integer from 1/],
    [["data", "prepare", "--vocab", "0"], /--vocab must be an integer from 1 to 2097152/],
    [["tokenizer", "train", "--vocab", "1e12"], /--vocab must be an integer from 1 to 2097152/],
    [["tokenizer", "train", "--max-bytes", "0"], /--max-bytes must be an integer from 1/],
    [["balance", "--ckpt", ck, "--batches", "0"], /--batches must be an integer from 1/],
    [["balance", "--ckpt", ck, "--devices", "0"], /--devices must be an integer from 1 to 65536/],
    [["balance", "--ckpt", ck, "--seq-len", "0"], /--seq-len must be an integer from 1/],
    [["balance", "--ckpt", ck, "--capacity-factor", "Infinity"], /--capacity-factor must be a positive number up to 65536/],
    [["simulate", "--devices", "8", "--tokens", "1e12"], /--tokens: "1e12" is not a positive integer of at most 1048576/],
    [["simulate", "--devices", "8", "--steps", "0"], /--steps must be an integer from 1 to 10000/],
    [["simulate", "--devices", "8", "--k", "0"], /--k must be an integer from 1/],
    [["simulate", "--devices", "8", "--skew", "NaN"], /--skew must be a number from 0 to 100/],
    [["extract", "--ckpt", ck, "--domain", "en", "--out", join(root, "x"), "--batches", "0"], /--batches must be an integer from 1/],
    [["extract", "--ckpt", ck, "--domain", "en", "--out", join(root, "x"), "--experts", "0"], /--experts must be an integer from 1/],
    [["upcycle", "--from", ck, "--config", cfg, "--out", join(root, "x"), "--noise", "Infinity"], /--noise must be a number from 0 to 1000/],
    // Named formats, not numbers, but refused the same way (before the checkpoint is looked at).
    [["generate", "--ckpt", ck, "--kv-cache", "f8"], /--kv-cache "f8" is not a KV cache format/],
    [["serve", "--ckpt", ck, "--kv-cache", "bf16"], /--kv-cache "bf16" is not a KV cache format/],
    [["chat", "--ckpt", ck, "--kv-cache", ""], /--kv-cache "" is not a KV cache format/],
  ];
  for (const [args, re] of cases) await refused(args, re);
});

test("a full disk while appending to metrics.jsonl stops the run naming the file and the errno; the step-4 checkpoint resumes", async () => {
  const { path: cfg, out } = configFile("enospc", { steps: 8, checkpoint: { every: 4, keep: 2 }, eval: { every: 4, batches: 1 } });
  const metrics = join(out, "metrics.jsonl");
  const realAppend = fs.appendFileSync;
  let failed = 0;
  await withFs("appendFileSync", ((p: fs.PathOrFileDescriptor, d: string | Uint8Array, o?: fs.WriteFileOptions) => {
    if (p === metrics && String(d).includes('"kind":"train"') && String(d).includes('"step":6,')) {
      failed++;
      throw errno("ENOSPC", "write", String(p));
    }
    return realAppend(p, d, o);
  }) as typeof fs.appendFileSync, async () => {
    const msg = await refused(["train", "--config", cfg], /training stopped at step 6: could not append to .*metrics\.jsonl: ENOSPC: no space left on the device: the disk is full/);
    assert.match(msg, /hint: the newest checkpoint, .*step-00000004 \(step 4\), is complete: free some space, then continue with --resume/);
  });
  assert.equal(failed, 1);
  // The metrics up to the failure are intact; the newest checkpoint opens and resumes.
  assert.deepEqual([...new Set(readMetrics(metrics).map((r) => r.step))], [1, 2, 3, 4, 5]);
  assert.equal(openCheckpointFolder(join(out, "checkpoints")).state.step, 4);
  const t = resumeTrainer(join(out, "checkpoints"));
  assert.equal(t.step, 4);
  t.close();
  // With space again, the run continues from it to the end.
  const r = await sigma("train", "--config", cfg, "--resume");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /resumed from step 4/);
  assert.equal(openCheckpointFolder(join(out, "checkpoints")).state.step, 8);
  assert.deepEqual(readMetrics(metrics).filter((x) => x.kind === "train").map((x) => x.step), [1, 2, 3, 4, 5, 6, 7, 8]);
});

test("an I/O error writing a plot stops with the file and the errno; the final checkpoint stays complete", async () => {
  const { path: cfg, out } = configFile("eio", { steps: 4, checkpoint: { every: 0, keep: 1 }, eval: { every: 0, batches: 1 } });
  const realOpen = fs.openSync;
  await withFs("openSync", ((p: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode) => {
    if (String(p).includes(`${sep}plots${sep}`)) throw errno("EIO", "open", String(p));
    return realOpen(p, flags ?? "r", mode);
  }) as typeof fs.openSync, async () => {
    const msg = await refused(["train", "--config", cfg], /training stopped at step 4: could not write .*plots\/loss\.svg: EIO: an input\/output error: the disk or its filesystem failed/);
    assert.match(msg, /hint: the newest checkpoint, .*step-00000004 \(step 4\), is complete: check the disk, then continue with --resume/);
  });
  assert.equal(openCheckpointFolder(join(out, "checkpoints")).state.step, 4);
  assert.ok(!existsSync(join(out, "plots", "loss.svg")));
  const t = resumeTrainer(join(out, "checkpoints"));
  assert.equal(t.step, 4);
  t.close();
});

test("a full disk when metrics.jsonl is created: nothing trained, no checkpoint, says so", async () => {
  const { path: cfg, out } = configFile("enospc-start", { steps: 2 });
  const metrics = join(out, "metrics.jsonl");
  const realWrite = fs.writeFileSync;
  await withFs("writeFileSync", ((p: fs.PathOrFileDescriptor, d: string | NodeJS.ArrayBufferView, o?: fs.WriteFileOptions) => {
    if (p === metrics) throw errno("ENOSPC", "open", String(p));
    return realWrite(p, d, o);
  }) as typeof fs.writeFileSync, async () => {
    const msg = await refused(["train", "--config", cfg], /training stopped at step 0: could not create .*metrics\.jsonl: ENOSPC/);
    assert.match(msg, /hint: no checkpoint was written: free some space, then start the run again/);
  });
});

test("a damaged or very long metrics.jsonl: bad records are skipped on resume and in the plots, never an internal error", () => {
  const dir = join(root, "damaged-metrics");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, "metrics.jsonl");
  const routing = (step: number) => JSON.stringify({ kind: "routing", step, layers: [{ tokensPerExpert: [3, 1] }] });
  const lines = [
    JSON.stringify({ kind: "train", step: 1, lm: 5.5 }),
    routing(1),
    JSON.stringify({ kind: "eval", step: 1, domains: { en: { loss: 5.4, perplexity: 221 } } }),
    JSON.stringify({ kind: "eval", step: 2 }), // no domains
    JSON.stringify({ kind: "routing", step: 2, layers: [{}] }), // no counts
    JSON.stringify({ kind: "routing", step: 2, layers: [{ tokensPerExpert: "C:\\Windows" }] }),
    JSON.stringify({ kind: "routing", step: 2, layers: [{ tokensPerExpert: [1, 2, 3] }] }), // another layout
    JSON.stringify({ kind: "train", step: -1, lm: 1 }),
    JSON.stringify({ kind: "train", step: 2, lm: null }), // a NaN loss
    `{"kind":"train","step":3,"lm":${"9".repeat(17 * 2 ** 20)}}`, // past the longest line kept
    ...Array.from({ length: 150_000 }, (_, i) => JSON.stringify({ kind: "train", step: 3 + i, lm: 5 - i / 1e5 })),
    '{"kind":"train","st', // torn by a crash
  ];
  writeFileSync(path, lines.join("\n"));
  const records = readMetrics(path);
  // Kept: the first three, the routing record of another layout (the plots leave it out), the NaN loss, the long run.
  assert.equal(records.length, 5 + 150_000);
  const plots = writePlots(dir, "damaged", { en: 5.2 });
  const loss = readFileSync(plots[0]!, "utf8");
  assert.match(loss, /val en/);
  assert.ok(loss.length < 1e6, `${loss.length} bytes`);
  assert.match(readFileSync(plots[1]!, "utf8"), /expert 1/);
  // A resume rewrites the file with the records up to its step; damaged lines go.
  new MetricsLog(path, 2);
  assert.deepEqual(readMetrics(path).map((r) => `${r.kind}@${r.step}`), ["train@1", "routing@1", "eval@1", "routing@2", "train@2"]);
});

test("a FIFO or a link at metrics.jsonl is refused at once, never opened for a blocking read or write", { skip: !tool("mkfifo") ? "needs mkfifo" : false }, () => {
  const dir = join(root, "fifo-metrics");
  mkdirSync(dir, { recursive: true });
  const fifo = join(dir, "metrics.jsonl");
  assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
  const refusedFile = sigmaErrorOf(/metrics\.jsonl is not a regular file \(a link, FIFO or device\)/);
  assert.throws(() => readMetrics(fifo), refusedFile);
  assert.throws(() => new MetricsLog(fifo, 2), refusedFile);
  assert.throws(() => new MetricsLog(fifo), refusedFile);
  const link = join(dir, "link.jsonl");
  writeFileSync(join(dir, "elsewhere.jsonl"), "");
  symlinkSync(join(dir, "elsewhere.jsonl"), link);
  assert.throws(() => readMetrics(link), sigmaErrorOf(/link\.jsonl is not a regular file/));
  assert.throws(() => new MetricsLog(link), sigmaErrorOf(/link\.jsonl is not a regular file/));
});
