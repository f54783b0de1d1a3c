// The training benchmarks prepare their data on demand (bench/data.ts over ensurePrepared):
// into the folder they expect, atomically, reusing it while it is whole.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { benchData } from "../bench/data.js";
import { checkPrepared } from "../src/data/prepare.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { SigmaError } from "../src/util/errors.js";

const root = mkdtempSync(join(tmpdir(), "sigma-bench-data-"));
after(() => rmSync(root, { recursive: true, force: true }));

const TEXTS = ["The quick brown fox jumps over the lazy dog.", "学而时习之，不亦说乎？", "export const f = (x) => x + 1;"];
const corpus = join(root, "corpus");
for (const [i, domain] of ["en", "zh", "code"].entries()) {
  mkdirSync(join(corpus, domain), { recursive: true });
  writeFileSync(join(corpus, domain, "docs.jsonl"), Array.from({ length: 30 }, (_, k) => JSON.stringify({ text: `${TEXTS[i]} #${k}` })).join("\n") + "\n");
}
const tokenizer = join(root, "tokenizer.json");
{
  const wc = new WordCounter();
  for (const t of TEXTS) wc.add(t.repeat(3));
  saveTokenizer(trainBpe(wc, { vocabSize: 300, domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] }), tokenizer);
}

/** benchData on `dir` with the fixture corpus; returns the lines it printed. */
async function run(dir: string, c = corpus): Promise<string[]> {
  const lines: string[] = [];
  await benchData(dir, { corpus: c, tokenizer, log: (l) => lines.push(l) });
  return lines;
}
const siblings = (dir: string): string[] => readdirSync(join(dir, "..")).filter((f) => f.startsWith(`${join(dir).split("/").pop()}.`));

test("missing data is prepared once, with one line saying so, and reused after", async () => {
  const dir = join(root, "a", "data");
  const first = await run(dir);
  assert.equal(first.length, 1);
  assert.match(first[0]!, /^prepared the benchmark data in .*a\/data \(.*has no manifest\.json\): [\d,]+ tokens of .* later runs reuse it$/);
  assert.ok("manifest" in checkPrepared(dir), "the folder holds whole prepared data");
  assert.deepEqual(siblings(dir), [], "no temp or old folder is left beside it");
  const before = statSync(join(dir, "manifest.json"));
  // Reused: the corpus is not even read (this one does not exist), and nothing is printed.
  assert.deepEqual(await run(dir, join(root, "no-such-corpus")), []);
  const afterwards = statSync(join(dir, "manifest.json"));
  assert.equal(afterwards.ino, before.ino, "reused: the manifest is the same file");
  assert.equal(afterwards.mtimeMs, before.mtimeMs);
});

test("data that is not whole (a truncated shard) is prepared again; a dead run's leftovers go", async () => {
  const dir = join(root, "b", "data");
  await run(dir);
  const shard = readdirSync(join(dir, "shards"))[0]!;
  truncateSync(join(dir, "shards", shard), 100);
  mkdirSync(join(root, "b", "data.tmp-999999999"));
  const lines = await run(dir);
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, new RegExp(`prepared the benchmark data in .*\\(.*${shard.replace(/\./g, "\\.")}`), "the line says what was wrong");
  assert.ok("manifest" in checkPrepared(dir));
  assert.deepEqual(siblings(dir), []);
});

test("a failed preparation leaves no half folder", async () => {
  const bad = join(root, "bad-corpus");
  mkdirSync(join(bad, "en"), { recursive: true });
  writeFileSync(join(bad, "en", "r.jsonl"), '{"text": "fine"}\nnot json\n');
  const dir = join(root, "c", "data");
  await assert.rejects(run(dir, bad), (e: unknown) => e instanceof SigmaError && /r\.jsonl line 2/.test(e.message));
  assert.equal(existsSync(dir), false, "the data folder was never created");
  assert.deepEqual(siblings(dir), []);
});

test("a folder holding other files is refused, not replaced", async () => {
  const dir = join(root, "d", "data");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "notes.txt"), "mine");
  await assert.rejects(run(dir), (e: unknown) => e instanceof SigmaError && /holds other files \(notes\.txt\)/.test(e.message));
  assert.deepEqual(readdirSync(dir), ["notes.txt"]);
});
