// A domain too small for the validation split must not vanish from evaluation unnoticed:
// prepareData returns warnings naming it (sigma data prepare prints them), and so does
// configWarnings for a run over such data (sigma train prints them).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareData, splitWarnings } from "../src/data/prepare.js";
import { readManifestIfPresent } from "../src/data/manifest.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { configWarnings } from "../src/train/config.js";
import { Trainer } from "../src/train/trainer.js";
import { register as registerData } from "../src/cli/data.js";
import { runCli, sigma } from "./cli-harness.js";
import { ROUTERS, tinyConfig } from "./train-fixture.js";

const root = mkdtempSync(join(tmpdir(), "sigma-data-warnings-"));
after(() => rmSync(root, { recursive: true, force: true }));

const ZH = "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？";
const EN = "The quick brown fox jumps over the lazy dog, and the dog does not mind.";
const corpus = join(root, "corpus");
// zh and en: 60 documents each; code: three short ones; bi: none.
for (const [domain, docs] of [["zh", Array.from({ length: 60 }, (_, i) => `${ZH} ${i}`)], ["en", Array.from({ length: 60 }, (_, i) => `${EN} ${i}`)], ["code", ["let a = 1;", "f(x);", "return y;"]]] as const) {
  mkdirSync(join(corpus, domain), { recursive: true });
  writeFileSync(join(corpus, domain, "docs.jsonl"), docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
}
const tokenizer = join(root, "tokenizer.json");
{
  const wc = new WordCounter();
  for (const t of [ZH, EN, "let a = 1; f(x); return y;"]) wc.add(t.repeat(3));
  saveTokenizer(trainBpe(wc, { vocabSize: 320, domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] }), tokenizer);
}
const data = join(root, "data");
const prepared = await prepareData({ corpus, tokenizer, out: data, valFraction: 0.1, seed: 1, seqLen: 16 });

test("prepareData warns about the domain whose validation split is under one sequence: its size, the size it needed, what to do", () => {
  const code = prepared.manifest.domains.find((d) => d.name === "code")!;
  assert.ok(code.val.tokens < 17 && code.train.tokens >= 17, `the fixture's code domain: ${code.train.tokens} training, ${code.val.tokens} validation tokens`);
  const w = prepared.warnings.filter((l) => l.startsWith('domain "code"'));
  assert.equal(w.length, 1, prepared.warnings.join("\n"));
  const total = code.train.tokens + code.val.tokens;
  assert.match(w[0]!, new RegExp(`^domain "code" has ${total} tokens in 3 documents, and its validation split got ${code.val.tokens} \\(val fraction 0\\.1\\); evaluating it needs 17 \\(one sequence of 16 \\+ 1\\), so it will be left out of evaluation`));
  assert.match(w[0]!, /add text to "code", or train with a shorter model\.seqLen \(--seq-len here\)$/);
  // A domain with no documents at all, and nothing for the domains that are large enough.
  assert.ok(prepared.warnings.some((l) => /^domain "bi" has no documents/.test(l)));
  assert.ok(!prepared.warnings.some((l) => /^domain "(zh|en)"/.test(l)), prepared.warnings.join("\n"));
});

test("the sequence length decides: a longer one finds more domains too small, for validation and for training", () => {
  const m = prepared.manifest;
  const zh = m.domains.find((d) => d.name === "zh")!;
  const code = m.domains.find((d) => d.name === "code")!;
  // One token more than the zh validation split holds: zh is warned about; one less: it is not.
  assert.ok(splitWarnings(m, zh.val.tokens).some((l) => l.startsWith('domain "zh"') && /validation split got/.test(l)));
  assert.deepEqual(splitWarnings(m, zh.val.tokens - 1).filter((l) => l.startsWith('domain "zh"')), []);
  // The training split: a sequence the code domain cannot fill once.
  const train = splitWarnings(m, code.train.tokens).filter((l) => l.startsWith('domain "code"') && /training tokens/.test(l));
  assert.equal(train.length, 1);
  assert.match(train[0]!, new RegExp(`^domain "code" has ${code.train.tokens} training tokens, fewer than one sequence of ${code.train.tokens} \\+ 1 = ${code.train.tokens + 1}: training on it stops with an error`));
  assert.deepEqual(splitWarnings(m, code.train.tokens - 1).filter((l) => /training tokens/.test(l)), []);
  // Plenty of text and a small share: raising the val fraction is suggested.
  const en = m.domains.find((d) => d.name === "en")!;
  assert.match(splitWarnings(m, en.val.tokens + 10).find((l) => l.startsWith('domain "en"'))!, /raise --val-fraction \(to about 0\.\d+\)/);
});

test("val fraction 0: one warning that nothing can be evaluated, not one per domain", async () => {
  const r = await prepareData({ corpus, tokenizer, out: join(root, "nov"), valFraction: 0, seed: 1, seqLen: 16 });
  assert.equal(r.warnings.filter((l) => /validation/.test(l)).length, 1, r.warnings.join("\n"));
  assert.match(r.warnings[0]!, /^no validation split \(val fraction 0\): no domain can be evaluated; prepare again with --val-fraction 0\.02/);
});

test("sigma data prepare prints the warnings", async () => {
  const out = await runCli([registerData], ["data", "prepare", "--corpus", corpus, "--tokenizer", tokenizer, "--out", join(root, "cli"), "--val-fraction", "0.1", "--seq-len", "16"]);
  assert.match(out, /^warning: domain "code" has \d+ tokens in 3 documents, and its validation split got \d+ \(val fraction 0\.1\); evaluating it needs 17/m);
  assert.match(out, /^warning: domain "bi" has no documents/m);
});

test("a run over such data: configWarnings names exactly the model's domains that evaluation leaves out", () => {
  const cfg = tinyConfig(data, join(root, "run"), ROUTERS.rre!);
  const w = configWarnings(cfg, readManifestIfPresent(data));
  const named = w.map((l) => /^domain "([^"]+)" has \d+ validation tokens/.exec(l)?.[1]).filter(Boolean);
  const t = new Trainer(cfg);
  try {
    const evaluated = t.evaluate().map((e) => e.domain);
    const left = cfg.model.domains.map((d) => d.name).filter((d) => !evaluated.includes(d));
    const empty = w.map((l) => /^domain "([^"]+)" has no documents in /.exec(l)?.[1]).filter(Boolean);
    assert.deepEqual([...named, ...empty].sort(), left.sort());
    assert.deepEqual(empty, ["bi"]);
    assert.ok(left.includes("code") && left.includes("bi"), left.join());
  } finally {
    t.close();
  }
  assert.match(w.find((l) => l.startsWith('domain "code"'))!, /fewer than one sequence of model\.seqLen 16 \+ 1: it will not be evaluated \(no validation loss for it\); prepare the data again with more text for "code" or a larger --val-fraction \(now 0\.1\), or use a shorter model\.seqLen$/);
  assert.equal(readManifestIfPresent(join(root, "no-such-data")), null);
});

test("sigma train prints them before it starts", async () => {
  const file = join(root, "run.json");
  writeFileSync(file, JSON.stringify(tinyConfig(data, join(root, "cli-run"), ROUTERS.rre!, { steps: 1, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 } })));
  const r = await sigma("train", "--config", file);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^warning: domain "code" has \d+ validation tokens in .*data, fewer than one sequence of model\.seqLen 16 \+ 1/m);
});
