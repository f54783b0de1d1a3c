// Hostile or damaged prepared data (manifest.json, token shards) and a
// `sigma data prepare` that fails mid-write: errors name the file and what is
// wrong, nothing outside the data folder is ever opened, an out-of-range
// token id never reaches training or a baseline, and a failed prepare leaves
// no temporary (or orphaned) shard behind.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readManifest } from "../src/data/manifest.js";
import { Loader } from "../src/data/loader.js";
import { ShardReader } from "../src/data/shards.js";
import { prepareData } from "../src/data/prepare.js";
import { unigramBaselines } from "../src/train/baseline.js";
import { SigmaError } from "../src/util/errors.js";
import { assertRefused, cli, errnoError, failures, sigmaError, withFs } from "./formats-helpers.js";
import { cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
const corpus = join(root, "corpus");
const tokenizer = join(root, "tokenizer.json");
let n = 0;
/** A fresh copy of the prepared data folder. */
const copy = (): string => {
  const d = join(root, `copy-${n++}`);
  cpSync(data, d, { recursive: true });
  return d;
};
const manifestOf = (d: string) => JSON.parse(readFileSync(join(d, "manifest.json"), "utf8"));
/** A copy whose manifest.json is the original changed by `edit`. */
const withManifest = (edit: (m: any) => void): string => {
  const d = copy();
  const m = manifestOf(d);
  edit(m);
  writeFileSync(join(d, "manifest.json"), JSON.stringify(m, null, 2));
  return d;
};
/** A copy in which the first train shard's bytes are changed by `edit`; returns the folder and that shard's path. */
const withShard = (edit: (b: Buffer) => Buffer | void): { dir: string; shard: string } => {
  const dir = copy();
  const s = manifestOf(dir).shards.find((x: any) => x.split === "train");
  const shard = join(dir, s.file);
  const b = readFileSync(shard);
  writeFileSync(shard, edit(b) ?? b);
  return { dir, shard };
};
const train = (dir: string) => new Loader(dir, { split: "train", seqLen: 8, batchSize: 2, seed: 1 });

test("manifest: shard and tokenizer names cannot point outside the data folder; fields and totals are checked", () => {
  const mf = (d: string) => join(d, "manifest.json");
  const cases: [string, (m: any) => void, RegExp][] = [
    ["a shard path with ..", (m) => (m.shards[0].file = "../../../etc/passwd"), /shards\.0\.file: not a shard file name/],
    ["an absolute shard path", (m) => (m.shards[0].file = "/etc/passwd"), /shards\.0\.file: not a shard file name/],
    ["a shard path that climbs back out", (m) => (m.shards[0].file = "shards/../../x.sgtk"), /shards\.0\.file: not a shard file name/],
    ["a shard in a subfolder", (m) => (m.shards[0].file = `shards/x/${m.shards[0].file.slice(7)}`), /shards\.0\.file: not a shard file name/],
    ["a shard named for another domain", (m) => (m.shards[0].file = m.shards[0].file.replace(m.shards[0].domain, "other")), /is named for other\//],
    ["a shard listed twice", (m) => m.shards.push(m.shards[0]), /is listed twice/],
    ["a tokenizer elsewhere", (m) => (m.tokenizer.file = "../tokenizer.json"), /tokenizer\.file: Invalid literal value, expected "tokenizer\.json"/],
    ["a domain id out of place", (m) => (m.domains[1].id = 7), /domains\.1\.id: 7; domain ids are their positions/],
    ["a duplicate domain", (m) => (m.domains[1].name = m.domains[0].name), /domains\.1\.name: duplicate domain/],
    ["a bad domain name", (m) => (m.domains[0].name = "../zh"), /domains\.0\.name: not a domain name/],
    ["a shard of an unknown domain id", (m) => (m.shards[0].domainId = 99), /shards\.0\.domainId: 99 is not a domain id/],
    ["a shard whose domain disagrees with its id", (m) => (m.shards[0].domainId = (m.shards[0].domainId + 1) % m.domains.length), /shards\.0\.domain: "\w+", but domain id \d+ is/],
    ["domain totals that do not add up", (m) => (m.domains[0].train.tokens += 1), /domains\.0\.train: \d+ tokens in \d+ documents, but its shards hold/],
    ["more documents than tokens", (m) => (m.shards[0].docs = m.shards[0].tokens + 1), /documents cannot fit in/],
    ["a count beyond 2^53", (m) => (m.shards[0].tokens = 1e300), /shards\.0\.tokens: Number must be less than or equal to/],
    ["a vocabulary beyond 2^21", (m) => (m.tokenizer.vocabSize = 2 ** 22), /tokenizer\.vocabSize/],
    ["no domains", (m) => (m.domains = []), /domains: Array must contain at least 1/],
  ];
  const fl = failures(
    cases.map(([what, edit, re]) => {
      const d = withManifest(edit);
      return [what, () => assert.throws(() => readManifest(mf(d)), sigmaError(mf(d), re))];
    }),
  );
  // A repeated key: JSON.parse would keep the second silently.
  const d = copy();
  const text = readFileSync(mf(d), "utf8").replace('"controlTokens": true', '"controlTokens": true, "controlTokens": false');
  writeFileSync(mf(d), text);
  fl.push(...failures([["a repeated key", () => assert.throws(() => readManifest(mf(d)), sigmaError(mf(d), /the key "controlTokens" appears twice/))]]));
  assert.deepEqual(fl, []);
});

test("manifest: the loader refuses a path outside the folder before opening anything", () => {
  const d = withManifest((m) => (m.shards[0].file = "../../outside.sgtk"));
  // A file that would pass every shard check, outside the data folder.
  cpSync(join(data, manifestOf(data).shards[0].file), join(d, "..", "..", "outside.sgtk"));
  assert.throws(() => train(d), sigmaError(join(d, "manifest.json"), /not a shard file name/));
});

test("shards: every header field is checked, against the file and against the manifest", () => {
  const cases: [string, (b: Buffer) => Buffer | void, RegExp][] = [
    ["a split code that is neither train nor val", (b) => void b.writeUInt32LE(7, 32), /has split code 7/],
    ["non-zero reserved bytes", (b) => void (b[50] = 1), /non-zero bytes in its reserved header field/],
    ["a vocabulary the manifest does not have", (b) => void b.writeUInt32LE(321, 36), /has vocabulary size 321, the manifest says 320/],
    ["4-byte tokens for a small vocabulary", (b) => void b.writeUInt32LE(4, 8), /stores 4-byte tokens for a vocabulary of 320/],
    ["more documents than tokens", (b) => void b.writeBigUInt64LE(1n << 40n, 24), /documents in \d+ tokens/],
    ["a token count of 2^63", (b) => void b.writeBigUInt64LE(1n << 63n, 16), /is truncated: the header says 9223372036854775808 tokens/],
    ["fewer tokens than the manifest lists (header and size agreeing)", (b) => {
      const tokens = Number(b.readBigUInt64LE(16));
      b.writeBigUInt64LE(BigInt(tokens - 1), 16);
      return b.subarray(0, b.length - 2);
    }, /holds \d+ tokens, the manifest says \d+/],
  ];
  assert.deepEqual(failures(cases.map(([what, edit, re]) => {
    const { dir, shard } = withShard(edit);
    return [what, () => assert.throws(() => train(dir), sigmaError(shard, re))];
  })), []);
});

test("shards: a token id outside the vocabulary is refused when the shard is opened (loader, baselines), never a NaN", () => {
  const { dir, shard } = withShard((b) => void b.writeUInt16LE(65000, 96 + 2 * 10));
  assert.throws(() => train(dir), sigmaError(shard, /token 10 has id 65000, outside the vocabulary \[0, 320\)/));
  assert.throws(() => unigramBaselines(dir), sigmaError(shard, /token 10 has id 65000/));
  assert.throws(() => new ShardReader(shard), sigmaError(shard, /token 10 has id 65000/));
  // The last id of the vocabulary is fine.
  const ok = withShard((b) => void b.writeUInt16LE(319, 96 + 2 * 10));
  const baselines = unigramBaselines(ok.dir);
  assert.ok(baselines.length > 0 && baselines.every((x) => Number.isFinite(x.crossEntropy)), JSON.stringify(baselines));
});

test("CLI: sigma data stats and sigma train refuse damaged data with one line naming the file", async () => {
  const bad = withManifest((m) => (m.shards[0].file = "../../../etc/passwd"));
  assertRefused(await cli(["data", "stats", "--data", bad]), join(bad, "manifest.json"), /not a shard file name/);
  const { dir, shard } = withShard((b) => void b.writeUInt16LE(65000, 96 + 2 * 10));
  const cfgPath = join(root, `cfg-${n++}.json`);
  const cfg = tinyConfig(dir, join(root, `run-${n++}`), null);
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, steps: 1 }));
  assertRefused(await cli(["train", "--config", cfgPath]), shard, /token 10 has id 65000, outside the vocabulary/);
});

/** Every file under `dir`, recursively, relative to it. */
const filesUnder = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath ?? e.path, e.name).slice(dir.length + 1)) : []);

/**
 * Runs `fn` with writes to shard temp files failing with ENOSPC from the
 * `failAt`-th one on (earlier writes, and every other file, go through).
 */
async function withFullDisk<T>(failAt: number, fn: () => Promise<T>): Promise<T> {
  const shardFds = new Set<number>();
  let writes = 0;
  return withFs(
    "openSync",
    (orig, path, ...rest) => {
      const fd = orig(path, ...rest);
      if (String(path).includes(".sgtk.tmp-")) shardFds.add(fd);
      return fd;
    },
    () => withFs("writeSync", (orig, fd, ...rest) => {
      if (shardFds.has(fd) && ++writes >= failAt) throw errnoError("ENOSPC", "no space left on device, write");
      return orig(fd, ...rest);
    }, fn),
  );
}

test("prepare: a full disk while writing shards is a clear error, leaves no new shard behind, and the data prepared before stays whole", async () => {
  const out = join(root, `prep-${n++}`);
  await prepareData({ corpus, tokenizer, out, valFraction: 0.25, seed: 1 });
  assert.ok(existsSync(join(out, "manifest.json")));
  const before = { manifest: readFileSync(join(out, "manifest.json")), shards: filesUnder(join(out, "shards")) };
  // Small shards, so that several are published before the one that fails.
  for (const failAt of [1, 7]) {
    await assert.rejects(
      withFullDisk(failAt, () => prepareData({ corpus, tokenizer, out, valFraction: 0.25, seed: 1, shardTokens: 50 })),
      (e: unknown) => e instanceof SigmaError && /could not write shard .*\/[\w.-]+\.sgtk: ENOSPC/.test(e.message) && /the disk is full/.test(e.message),
    );
    assert.deepEqual(filesUnder(join(out, "shards")), before.shards, `failAt ${failAt}`);
    assert.deepEqual(readFileSync(join(out, "manifest.json")), before.manifest, "the earlier data's manifest is kept");
    assert.deepEqual(readdirSync(out).filter((f) => f.startsWith(".shards-new-")), [], "no staging folder is left");
    readManifest(join(out, "manifest.json"));
  }
  // The same folder prepares again once there is space.
  await prepareData({ corpus, tokenizer, out, valFraction: 0.25, seed: 1, shardTokens: 50 });
  assert.ok(readManifest(join(out, "manifest.json")).shards.length > 6);
});

test("prepare: an error that is not I/O (a bad record after shards were published) also leaves no shard behind", async () => {
  const c = join(root, `corpus-${n++}`);
  cpSync(corpus, c, { recursive: true });
  writeFileSync(join(c, "zh", "zz-bad.jsonl"), '{"text": "ok"}\n{"nope": 1}\n');
  const out = join(root, `prep-${n++}`);
  await assert.rejects(prepareData({ corpus: c, tokenizer, out, shardTokens: 50 }), (e: unknown) => e instanceof SigmaError && /zz-bad\.jsonl/.test(e.message));
  assert.deepEqual(filesUnder(join(out, "shards")), []);
  // Into a folder prepared before, the failed run changes nothing: its data stays usable.
  const good = join(root, `prep-${n++}`);
  await prepareData({ corpus, tokenizer, out: good, valFraction: 0.25, seed: 1 });
  const before = filesUnder(good).map((f) => [f, readFileSync(join(good, f)).toString("base64")]);
  await assert.rejects(prepareData({ corpus: c, tokenizer, out: good, shardTokens: 50 }), (e: unknown) => e instanceof SigmaError && /zz-bad\.jsonl/.test(e.message));
  assert.deepEqual(filesUnder(good).map((f) => [f, readFileSync(join(good, f)).toString("base64")]), before);
});

test("CLI: sigma data prepare on a full disk exits 1 with one line naming the shard, and leaves nothing behind", async () => {
  const out = join(root, `prep-${n++}`);
  const r = await withFullDisk(1, () => cli(["data", "prepare", "--corpus", corpus, "--tokenizer", tokenizer, "--out", out]));
  assertRefused(r, out, /could not write shard .*\.sgtk: ENOSPC[^\n]*\n {2}hint: the disk is full/);
  assert.deepEqual(filesUnder(out).filter((f) => f.endsWith(".sgtk") || f.includes(".sgtk.tmp-")), []);
  assert.ok(!existsSync(join(out, "manifest.json")));
});
