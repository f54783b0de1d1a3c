// `sigma domain add` (src/api/domain.ts): every old domain's RRE sub-model
// is byte for byte the one extracted before, old domains' loss stays, only
// the new parameters move, the new domain's loss falls; MoGE / top-k get new
// experts with frozen old rows and a measured cost to the old domains.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { addDomain } from "../src/api/domain.js";
import { extract } from "../src/api/extract.js";
import { openModel, type Model } from "../src/api/model.js";
import { noGrad } from "../src/autograd/tape.js";
import { newIdsOfOld, vocabMapping } from "../src/models/vocab-map.js";
import { growDomain } from "../src/models/domain-add.js";
import { modelRouter } from "../src/models/config.js";
import { domainValLoss, trainNewParts } from "../src/train/domain-train.js";
import { Trainer } from "../src/train/trainer.js";
import { runTraining } from "../src/train/run.js";
import { parseTrainConfig } from "../src/train/config.js";
import { Tokenizer } from "../src/tokenizer/codec.js";
import { Rng } from "../src/util/rng.js";
import { cleanup, root, ROUTERS, tinyConfig, tinyData } from "./train-fixture.js";
import { runCli } from "./cli-harness.js";
import { register as registerDomain } from "../src/cli/domain.js";

const LAW = ["The court held that the contract was void.", "A party may appeal within thirty days.", "The statute applies to every tenant.", "Damages shall be paid in full."];

let data: string;
let lawCorpus: string;
const trained = new Map<string, Model>();

/** A tiny model trained 40 steps on the fixture data; "rre-shared": one embedding slot for all domains. */
async function trainedModel(router: "rre" | "rre-shared" | "topk" | "moge"): Promise<Model> {
  if (!trained.has(router)) {
    let cfg = tinyConfig(data, join(root, `base-${router}`), ROUTERS[router === "rre-shared" ? "rre" : router]!, { steps: 40, eval: { every: 40, batches: 1 } });
    if (router === "rre-shared") cfg = parseTrainConfig({ ...cfg, model: { ...cfg.model, embeddingSlots: 1, domains: cfg.model.domains.map((d) => ({ ...d, slot: 0 })) } });
    const t = new Trainer(cfg);
    const r = await runTraining(t, {});
    t.close();
    trained.set(router, await openModel(r.checkpoint));
  }
  return trained.get(router)!;
}

before(async () => {
  data = await tinyData();
  lawCorpus = join(root, "law-corpus");
  mkdirSync(lawCorpus, { recursive: true });
  const docs = Array.from({ length: 60 }, (_, i) => JSON.stringify({ text: `${LAW[i % 4]} ${LAW[(i * 3 + 1) % 4]} §${i}` }));
  writeFileSync(join(lawCorpus, "docs.jsonl"), docs.join("\n") + "\n");
});
after(cleanup);

const OLD = ["zh", "en", "bi", "code"];
const bytesOf = (dir: string, f: string): Buffer => readFileSync(join(dir, f));

/** The old model's validation loss on `domain` against the grown model's on the same windows (old ids renumbered). */
function oldDomainLosses(old: Model, grown: Model, domain: string): { old: number; grown: number } {
  const toNew = newIdsOfOld(vocabMapping(old.tokenizer as Tokenizer, grown.tokenizer as Tokenizer));
  const o = { batches: 2, batchSize: 4, seed: 3 };
  const d = old.domains.indexOf(domain);
  return { old: domainValLoss(old.network, data, domain, d, o), grown: domainValLoss(grown.network, data, domain, d, o, (t) => toNew[t]!) };
}

for (const kind of ["rre", "rre-shared"] as const) test(`RRE (${kind === "rre" ? "per-domain slots" : "one shared slot"}): every old domain's sub-model is byte-identical after a domain is added; the new domain learns`, async () => {
  const base = await trainedModel(kind);
  const beforeDir = join(root, `sub-before-${kind}`);
  const subsBefore = OLD.map((d) => extract(base, { domain: d }).model.save(join(beforeDir, d)));
  const r = await addDomain(base, { name: "law", data: lawCorpus, dataOut: join(root, `law-data-${kind}`), steps: 30, batchSize: 4, lr: 1e-2 });
  assert.equal(r.experts.after, r.experts.before + 2);
  assert.deepEqual(r.slot, kind === "rre" ? { index: 2, fresh: true } : { index: 0, fresh: false });
  assert.equal(r.vocabulary.new, r.vocabulary.old + 1);
  const grownDir = r.model.save(join(root, `grown-${kind}`));
  const grown = await openModel(grownDir);
  assert.deepEqual(grown.domains, [...OLD, "law"]);
  assert.ok(r.valLoss.after < r.valLoss.before - 0.1, `new domain's loss ${r.valLoss.before} → ${r.valLoss.after}`);
  OLD.forEach((d, i) => {
    const after = extract(grown, { domain: d });
    assert.equal(after.maxLogitGap, 0, `${d}: the sub-model computes the full model's logits`);
    const dir = after.model.save(join(root, `sub-after-${kind}`, d));
    for (const f of ["model.safetensors", "tokenizer.json"]) assert.ok(bytesOf(subsBefore[i]!, f).equals(bytesOf(dir, f)), `${d}: ${f} differs after adding a domain`);
  });
  // The new domain's own sub-model keeps its control token, and is exact too.
  const law = extract(grown, { domain: "law" });
  assert.equal(law.maxLogitGap, 0);
  assert.equal(law.model.config.vocabSize, r.vocabulary.new);
  if (kind === "rre") {
    // A second added domain leaves the first one's sub-model (and the old ones') byte-identical too.
    const lawDir = law.model.save(join(root, "law-before"));
    const r2 = await addDomain(grown, { name: "tax", data: lawCorpus, dataOut: join(root, "tax-data"), steps: 5, batchSize: 4 });
    const twice = extract(r2.model, { domain: "law" });
    assert.equal(twice.maxLogitGap, 0);
    const dir = twice.model.save(join(root, "law-after"));
    for (const f of ["model.safetensors", "tokenizer.json"]) assert.ok(bytesOf(lawDir, f).equals(bytesOf(dir, f)), `law: ${f} differs after adding tax`);
    const en = extract(r2.model, { domain: "en" }).model.save(join(root, "en-after-tax"));
    assert.ok(bytesOf(subsBefore[1]!, "model.safetensors").equals(bytesOf(en, "model.safetensors")), "en after two added domains");
  }
  // Old domains on the full grown model: the same loss up to the new control token's share of the softmax.
  const moved = ["zh", "en", "code"].map((d) => ({ d, ...oldDomainLosses(base, grown, d) }));
  console.log(`${kind}: old domains' validation loss on the full model before → after adding "law" (30 steps): ${moved.map((m) => `${m.d} ${m.old.toFixed(4)} → ${m.grown.toFixed(4)}`).join(", ")}`);
  for (const m of moved) assert.ok(Math.abs(m.grown - m.old) < 0.02, `${m.d}: ${m.old} → ${m.grown}`);
});

test("RRE --experts-from: the new domain starts as that domain's model (same logits), and only new ranges train", async () => {
  const base = await trainedModel("rre");
  const tok = base.tokenizer as Tokenizer;
  const newTok = new Tokenizer({ domains: [...tok.domains, "law"], langs: tok.langs, tokens: tok.vocab.slice(tok.specials.length), merges: [...tok.merges] });
  const vocab = vocabMapping(tok, newTok);
  const g = growDomain(base.network, { name: "law", from: "en", vocab });
  const rng = new Rng(5);
  const T = 16;
  const tokens = Int32Array.from({ length: 2 * T }, () => rng.int(vocab.newSize));
  const run = (d: number) => noGrad(() => g.model.eval().forward({ tokens, domains: Int32Array.of(d, d), B: 2, T }).logits.data);
  assert.deepEqual(run(4), run(1), "law copies en: experts, table row and embedding slot");
  // Nothing outside the new ranges is trainable.
  const E = base.config.experts!.count;
  for (const r of g.trainable) {
    if (r.name === "tokenEmbedding") assert.equal(r.start, 2 * vocab.newSize * base.config.width);
    else assert.ok(/moe\.(w1|b1|w2|b2)$/.test(r.name) && r.start >= (E * g.model.namedParameters().get(r.name)!.tensor.size) / (E + 2), r.name);
  }
  // Training: the frozen parameters get no gradient at all; the ones holding new ranges do.
  const params = g.model.namedParameters();
  const live = new Set(g.trainable.map((r) => r.name));
  const lawData = join(root, "law-data-rre"); // prepared by the first test
  let checked = 0;
  trainNewParts(g.model, g.trainable, {
    dataDir: lawData, domain: "law", domainIndex: g.domain, steps: 2, lr: 1e-3, batchSize: 2, seed: 1,
    onStep: () => {
      for (const [name, p] of params) assert.equal(p.tensor.grad !== null, live.has(name), `${name}: gradient ${p.tensor.grad ? "computed" : "absent"}`);
      checked++;
    },
  });
  assert.equal(checked, 2);
  for (const p of params.values()) assert.ok(p.tensor.requiresGrad && p.tensor.grad === null, "after training every parameter is trainable again, gradients dropped");
});

for (const router of ["topk", "moge"] as const) {
  test(`${router}: new experts appended with the old router rows and experts frozen; the old domains' loss moves (measured)`, async () => {
    const base = await trainedModel(router);
    const r = await addDomain(base, { name: "law", data: lawCorpus, dataOut: join(root, `law-data-${router}`), steps: 30, batchSize: 4, lr: 1e-2 });
    assert.ok(r.valLoss.after < r.valLoss.before, `new domain's loss ${r.valLoss.before} → ${r.valLoss.after}`);
    const grown = r.model;
    // Old experts and old router rows: the same bytes at their (possibly moved) ids.
    const [op, np] = [base.network.namedParameters(), grown.network.namedParameters()];
    const bytes = (a: Float32Array | Float64Array, from = 0, to = a.length) => Buffer.from(a.buffer, a.byteOffset + from * a.BYTES_PER_ELEMENT, (to - from) * a.BYTES_PER_ELEMENT);
    const { spec, view } = modelRouter(base.config)!;
    const E = base.config.experts!.count;
    const oldIds = spec.growth!.oldIds(view, grown.config.experts!.count - E);
    let stacked = 0;
    for (const [name, p] of op) {
      if (name === "tokenEmbedding") continue;
      const q = np.get(name)!.tensor.data;
      if (q.length === p.tensor.size) assert.ok(bytes(q).equals(bytes(p.tensor.data)), name);
      else {
        // Per-expert rows (experts, router rows, MoGE scales): each old one unchanged at its new id.
        const n = p.tensor.size / E;
        oldIds.forEach((old, e) => old >= 0 && assert.ok(bytes(q, e * n, (e + 1) * n).equals(bytes(p.tensor.data, old * n, (old + 1) * n)), `${name}[${e}] ← old ${old}`));
        stacked++;
      }
    }
    assert.equal(stacked, router === "moge" ? 6 : 5, "experts w1 b1 w2 b2 and the router's rows were checked");
    if (router === "moge") {
      // Every old expert stays in its group (groups are contiguous id ranges), and each group gains one.
      const G = 2;
      const [per, perNew] = [E / G, oldIds.length / G];
      oldIds.forEach((old, e) => old >= 0 && assert.equal(Math.floor(old / per), Math.floor(e / perNew), `expert ${e} ← old ${old}`));
      for (let g = 0; g < G; g++) assert.equal(oldIds.slice(g * perNew, (g + 1) * perNew).filter((o) => o < 0).length, 1);
    }
    const moved = OLD.filter((d) => d !== "bi").map((d) => ({ d, ...oldDomainLosses(base, grown, d) }));
    console.log(`${router}: old domains' validation loss before → after adding "law" (30 steps): ${moved.map((m) => `${m.d} ${m.old.toFixed(4)} → ${m.grown.toFixed(4)}`).join(", ")}`);
    for (const m of moved) assert.ok(Math.abs(m.grown - m.old) < 0.5, `${m.d}: ${m.old} → ${m.grown}`);
  });
}

test("sigma domain add: the CLI adds a domain and refuses a bad request with a hint", async () => {
  const base = await trainedModel("rre");
  const out = await runCli([registerDomain], ["domain", "add", "--ckpt", base.path!, "--name", "law", "--data", lawCorpus, "--out", join(root, "cli-out"), "--steps", "5", "--batch-size", "4", "--experts-from", "en"]);
  assert.match(out, /domain "law" added \(rre\): experts per sparse layer 4 → 6 \(new ones copied from "en"\)/);
  assert.match(out, /checkpoint: /);
  // The checkpoint it wrote opens and generates in the new domain.
  const grown = await openModel(join(root, "cli-out"));
  assert.deepEqual(grown.domains, [...OLD, "law"]);
  assert.equal(typeof (await grown.complete("The ", { domain: "law", maxTokens: 3, temperature: 0 })), "string");
  await assert.rejects(runCli([registerDomain], ["domain", "add", "--ckpt", base.path!, "--name", "en", "--data", lawCorpus, "--out", join(root, "cli-out2")]), /already has a domain "en"/);
  await assert.rejects(runCli([registerDomain], ["domain", "add", "--ckpt", base.path!, "--name", "law", "--data", lawCorpus, "--out", join(root, "cli-out3"), "--experts-from", "fr"]), /no domain "fr"/);
});
