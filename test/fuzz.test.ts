// Fuzzing as tests (issue 19): every parsed format — state.json, the train
// config, safetensors, tokenizer.json, the data manifest and shards, the
// expert store (header, index, stats), the optimizer's metadata, a run
// folder's run.json and metrics.jsonl — is mutated (bit flips, truncations,
// type swaps, huge numbers, path strings…) and loaded by the `sigma`
// commands that read it. Every outcome must be a success or one
// `sigma: …` line with exit code 1, within a time bound, and nothing outside
// the job's folder may change. The harness is in test/fuzz/ (README there);
// `npm run fuzz -- --count 10000` is the long run, and each failure below
// prints the command that re-runs it.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { classify } from "./fuzz/classify.js";
import { FORMATS, makeMutant, Seeds } from "./fuzz/formats.js";
import { WorkerSlot } from "./fuzz/pool.js";
import { formatCauses, formatTable, Lane, runFuzz } from "./fuzz/runner.js";

const SEED = 19;
const COUNT = 300;

const tmp = mkdtempSync(join(tmpdir(), "sigma-fuzz-test-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

test("the harness catches each kind of failure: internal error, stack trace, bad lines, crash, escaped exception, hang, writes outside the job", async () => {
  const slot = new WorkerSlot({ memoryKiB: 0, env: { SIGMA_FUZZ_SELFTEST: "1" } });
  const lane = new Lane(join(tmp, "selftest"), 0, slot);
  mkdirSync(lane.job, { recursive: true });
  const outcome = async (...argv: string[]) => classify(await slot.run(lane.job, ["__selftest", ...argv], 3000));
  try {
    assert.equal((await outcome("ok")).outcome, "success");
    const clean = await outcome("clean");
    assert.equal(clean.outcome, "error");
    assert.equal(clean.detail, "sigma: the file is bad");
    assert.equal((await outcome("internal")).outcome, "internal");
    assert.match((await outcome("stack")).detail, /stack trace/);
    assert.match((await outcome("two-lines")).detail, /2 sigma: lines/);
    assert.match((await outcome("silent-1")).detail, /exit 1 without a sigma: line/);
    assert.equal((await outcome("ok")).outcome, "success");
    const escaped = await outcome("async-throw");
    assert.equal(escaped.outcome, "crash");
    assert.match(escaped.detail, /uncaughtException escaped the command: late failure/);
    const crash = await outcome("abort");
    assert.equal(crash.outcome, "crash");
    assert.match(crash.detail, /SIGABRT/);
    const hang = await outcome("hang");
    assert.equal(hang.outcome, "hang");
    assert.equal((await outcome("ok")).outcome, "success", "a new worker takes over after a hang");

    // Writes outside the job's folder: into a sentinel, deleting one, and to a fresh path outside the run.
    assert.equal(lane.escapes([]), null);
    await outcome("write", "../victim/keep.txt");
    assert.match(lane.escapes([]) ?? "", /nest\/victim\/keep\.txt/);
    lane.reset();
    await outcome("delete", "../../victim");
    assert.match(lane.escapes([]) ?? "", /victim/);
    lane.reset();
    const probe = join(tmp, "outside", "probe");
    const watched = lane.watch([`../../../../outside/probe`]);
    assert.equal(watched[0]!.path, probe);
    await outcome("write", join(tmp, "outside-probe"));
    assert.equal(lane.escapes(watched), null, "an unrelated path is not reported");
    mkdirSync(join(tmp, "outside"));
    await outcome("write", probe);
    assert.match(lane.escapes(watched) ?? "", /created .*outside/);
  } finally {
    slot.close();
  }
});

test("a mutant is a function of the seed, the format and the index", () => {
  // The generator alone, on stand-in seed files (the campaign below builds the real ones).
  const json = new TextEncoder().encode(JSON.stringify({ a: 1, b: [1, 2, { c: "x" }], files: {}, tokenizer: { sha256: "0" }, shards: [{ file: "s" }] }));
  const seeds = { dir: tmp, get: (rel: string) => seedBytes(rel, json) } as Seeds;
  const ctx = () => ({ victimAbs: "/v", escapeAbs: "/e", injected: [] });
  const show = (m: ReturnType<typeof makeMutant>) => JSON.stringify([m.argv, m.what, [...m.files].map(([k, v]) => [k, Buffer.from(v).toString("base64")])]);
  for (const f of FORMATS) {
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const a = show(makeMutant(seeds, SEED, f, i, ctx()));
      assert.equal(show(makeMutant(seeds, SEED, f, i, ctx())), a, `${f.name} #${i}`);
      seen.add(a);
    }
    assert.ok(seen.size > 20, `${f.name}: only ${seen.size} distinct mutants of 30`);
  }
});

/** Stand-in seed bytes: JSON for JSON files, a small valid-looking binary for the others. */
function seedBytes(rel: string, json: Uint8Array): Uint8Array {
  if (rel.endsWith(".json")) return json;
  if (rel.endsWith(".safetensors")) {
    const h = Buffer.from(JSON.stringify({ __metadata__: { format: "sigma-model", config: "{}", step: "2" }, t: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }));
    const out = Buffer.alloc(8 + h.length + 8);
    out.writeBigUInt64LE(BigInt(h.length));
    h.copy(out, 8);
    return out;
  }
  if (rel.endsWith(".sgxs")) {
    const out = Buffer.alloc(8192);
    out.write("SGXS");
    const j = Buffer.from(JSON.stringify({ storeId: "x", layers: [] }));
    out.writeUInt32LE(1, 4);
    out.writeUInt32LE(j.length, 8);
    j.copy(out, 16);
    return out;
  }
  return new Uint8Array(readFileSync(new URL(import.meta.url)).subarray(0, 500));
}

test(`${COUNT} mutants per format (seed ${SEED}): every outcome is a success or one sigma: line with exit 1, in bounded time, with no write outside the job`, async () => {
  const summary = await runFuzz({ seed: SEED, count: COUNT, workers: Math.max(2, Math.min(availableParallelism(), 4)), timeoutMs: 30_000, memoryKiB: 3 << 20 });
  console.log(`${formatTable(summary)}\nseed ${SEED}, seeds ${summary.seedsFingerprint}, ${summary.wallSeconds.toFixed(1)} s`);
  for (const f of FORMATS) assert.ok(summary.formats[f.name]!.mutants >= COUNT, `${f.name}: ${summary.formats[f.name]!.mutants} mutants`);
  assert.equal(summary.total.failures, 0, `${summary.total.failures} failing mutants:\n${formatTable(summary)}\n\n${formatCauses(summary, 2)}`);
});
