// PanGu-Σ's 40 domains (4 major, 36 small): a corpus of 40 small synthetic
// domains goes through the whole pipeline — tokenizer, prepare, a few
// training steps with per-domain evaluation, RRE routing into 40 groups,
// `sigma balance`, and an exact extraction of a small domain that shares
// its embedding slot.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { extract } from "../src/api/extract.js";
import { openModel } from "../src/api/model.js";
import { noGrad } from "../src/autograd/tape.js";
import { prepareData } from "../src/data/prepare.js";
import { parseModelConfig, perDomainSlots } from "../src/models/config.js";
import { demoConfig } from "../src/cli/demo.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";
import { parseTrainConfig } from "../src/train/config.js";
import { runTraining } from "../src/train/run.js";
import { Trainer } from "../src/train/trainer.js";
import { Rng } from "../src/util/rng.js";
import { register as registerBalance } from "../src/cli/balance.js";
import { runCli } from "./cli-harness.js";

process.env.SIGMA_TUNE ??= "off";
const root = mkdtempSync(join(tmpdir(), "sigma-40-"));
after(() => rmSync(root, { recursive: true, force: true }));

const D = 40;
/** Four major domains, 36 small ones: names as a user's folders would be. */
const NAMES = ["zh", "en", "bi", "code", ...Array.from({ length: D - 4 }, (_, i) => `small${String(i).padStart(2, "0")}`)];
const SMALL = NAMES.slice(4);
/** Each domain's text: words from its own little alphabet, so domains differ. */
function domainText(d: number, doc: number): string {
  const rng = new Rng(1000 + d * 97 + doc);
  const letters = "abcdefghijklmnopqrstuvwxyz".slice(d % 20, (d % 20) + 6);
  return Array.from({ length: 12 }, () => Array.from({ length: 2 + rng.int(4) }, () => letters[rng.int(letters.length)]).join("")).join(" ") + ".";
}

let data: string;
let ckpt: string;

before(async () => {
  const corpus = join(root, "corpus");
  const wc = new WordCounter();
  NAMES.forEach((name, d) => {
    mkdirSync(join(corpus, name), { recursive: true });
    const docs = Array.from({ length: 16 }, (_, i) => domainText(d, i));
    for (const t of docs) wc.add(t);
    writeFileSync(join(corpus, name, "docs.jsonl"), docs.map((text) => JSON.stringify({ text })).join("\n") + "\n");
  });
  const tok = join(root, "tokenizer.json");
  saveTokenizer(trainBpe(wc, { vocabSize: 400, domains: NAMES, langs: [] }), tok);
  data = join(root, "data");
  const { manifest } = await prepareData({ corpus, tokenizer: tok, out: data, valFraction: 0.25, seed: 1, seqLen: 16 });
  assert.equal(manifest.domains.length, D);
  for (const d of manifest.domains) assert.ok(d.train.tokens > 17 && d.val.tokens > 17, `${d.name}: ${d.train.tokens} / ${d.val.tokens} tokens`);

  const slots = perDomainSlots(NAMES, SMALL);
  const cfg = parseTrainConfig({
    model: {
      vocabSize: manifest.tokenizer.vocabSize, width: 16, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 16, ffnWidth: 32,
      embeddingSlots: slots.embeddingSlots,
      domains: NAMES.map((name, i) => ({ name, slot: slots.slots[i]!, group: i })),
      experts: { count: 2 * D, router: { kind: "rre", groups: D, seed: 3 } },
      seed: 5,
    },
    data: { dir: data },
    batchSize: 8,
    steps: 3,
    optim: { lr: 3e-3, warmupSteps: 1 },
    eval: { every: 3, batches: 1 },
    checkpoint: { every: 3, keep: 1 },
    out: join(root, "run"),
  });
  const t = new Trainer(cfg);
  const r = await runTraining(t, {});
  t.close();
  assert.equal(r.finalEval!.length, D, "every domain is evaluated");
  ckpt = r.checkpoint;
});

test("40 domains: per-domain slots for the 4 major ones, one shared by the 36 small ones", () => {
  const s = perDomainSlots(NAMES, SMALL);
  assert.equal(s.embeddingSlots, 5);
  assert.deepEqual(s.slots.slice(0, 5), [0, 1, 2, 3, 4]);
  assert.ok(s.slots.slice(4).every((x) => x === 4));
  // Without small domains every domain has its own slot.
  assert.deepEqual(perDomainSlots(["a", "b", "c"]), { embeddingSlots: 3, slots: [0, 1, 2] });
});

test("models get a slot per domain by default (the demo, a config that names no slot); small domains share one; written-out layouts mean what they say", () => {
  const demo = (o: { sharedEmbedding?: boolean; codeSlot?: boolean }) => parseTrainConfig(demoConfig(320, ["zh", "en", "bi", "code"], { out: join(root, "demo"), data: join(root, "no-data"), minutes: 1, steps: 10, width: 32, seed: 1, ...o })).model;
  const m = demo({});
  assert.equal(m.embeddingSlots, 4);
  assert.deepEqual(m.domains.map((d) => d.slot), [0, 1, 2, 3]);
  assert.deepEqual(demo({ sharedEmbedding: true }).domains.map((d) => d.slot), [0, 0, 0, 0]);
  assert.deepEqual(demo({ codeSlot: true }).domains.map((d) => d.slot), [0, 0, 0, 1]);
  // A config that names no slot: PanGu-Σ's layout, the small domains sharing one slot after the major ones.
  const cfg = (domains: object[], over: object = {}) => parseModelConfig({ vocabSize: 320, width: 16, heads: 2, denseLayers: 1, sparseLayers: 0, seqLen: 8, ffnWidth: 32, domains, ...over });
  const plain = cfg([{ name: "zh" }, { name: "en" }]);
  assert.equal(plain.embeddingSlots, 2);
  assert.deepEqual(plain.domains, [{ name: "zh", slot: 0 }, { name: "en", slot: 1 }]);
  const small = cfg([{ name: "law", small: true }, { name: "zh" }, { name: "poems", small: true }, { name: "en" }]);
  assert.equal(small.embeddingSlots, 3);
  assert.deepEqual(small.domains.map((d) => d.slot), [2, 0, 2, 1]);
  assert.equal(cfg([{ name: "en" }]).embeddingSlots, 1, "one domain, one slot");
  // Written out: one shared table; or slots named, S their largest + 1, an unnamed domain slot 0.
  const shared = cfg([{ name: "zh" }, { name: "en" }], { embeddingSlots: 1 });
  assert.deepEqual([shared.embeddingSlots, shared.domains.map((d) => d.slot)], [1, [0, 0]]);
  const named = cfg([{ name: "zh" }, { name: "en", slot: 2 }, { name: "code", slot: 1 }]);
  assert.deepEqual([named.embeddingSlots, named.domains.map((d) => d.slot)], [3, [0, 2, 1]]);
  assert.throws(() => cfg([{ name: "zh", slot: 2 }], { embeddingSlots: 2 }), /domains\.0\.slot.*2 is not an embedding slot/s);
  // What a model stores is the parsed config: parsing it again gives the same bytes (a model file's metadata, a GGUF's sigma.config).
  assert.equal(JSON.stringify(parseModelConfig(JSON.parse(JSON.stringify(small)))), JSON.stringify(small));
});

test("40 domains: RRE sends each domain's tokens to its own group, and the small domain's sub-model is exact", async () => {
  const model = await openModel(ckpt);
  assert.equal(model.domains.length, D);
  const rng = new Rng(2);
  const T = 16;
  const tokens = Int32Array.from({ length: D * T }, () => rng.int(model.config.vocabSize));
  const domains = Int32Array.from({ length: D }, (_, d) => d);
  const out = noGrad(() => model.network.eval().forward({ tokens, domains, B: D, T }));
  const ids = out.routings[0]!.expertIds;
  for (let r = 0; r < D * T; r++) {
    const g = Math.floor(r / T);
    assert.ok(ids[r]! >= 2 * g && ids[r]! < 2 * g + 2, `row ${r} of domain ${g} went to expert ${ids[r]}`);
  }
  const sub = extract(model, { domain: "small31" });
  assert.equal(sub.maxLogitGap, 0);
  assert.equal(sub.model.config.experts!.count, 2);
});

test("40 domains: sigma balance routes real batches of every domain", async () => {
  const text = await runCli([registerBalance], ["balance", "--ckpt", ckpt, "--data", data, "--batches", "3", "--batch-size", "8", "--devices", "8", "--out", join(root, "balance"), "--json"]);
  const rep = JSON.parse(text.slice(text.indexOf("{"), text.lastIndexOf("}") + 1)) as { router: string; experts: number; devices: number; layers: { imbalancePerBatch: number[] }[] };
  assert.equal(rep.router, "rre");
  assert.equal(rep.experts, 2 * D);
  assert.equal(rep.layers[0]!.imbalancePerBatch.length, 3);
});
