// sigma finetune: records checked line by line, rendered with serve's chat
// template, the loss masked to the assistant's tokens (hand-computed), what
// each --freeze / --lora trains, and resuming bit for bit.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { backward, gradOf } from "../src/autograd/tape.js";
import { Model, openModel } from "../src/api/model.js";
import { finetune } from "../src/api/finetune.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import * as ops from "../src/ops/index.js";
import { chatPrompt } from "../src/serve/chat.js";
import { encodePrompt } from "../src/serve/prompt.js";
import { Tensor } from "../src/tensor/tensor.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { maskedTargets, parseRecords, renderRecord } from "../src/train/finetune-data.js";
import { FinetuneTrainer } from "../src/train/finetune.js";
import { SigmaError } from "../src/util/errors.js";
import { sigma } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "sigma-finetune-"));
after(() => rmSync(root, { recursive: true, force: true }));

const TEXTS = ["User: What is two plus two?\n\nAssistant: Four.", "User: Say hi.\n\nAssistant: Hi there!", "System: Be terse.\n\n", "The quick brown fox jumps over the lazy dog."];
const wc = new WordCounter();
for (const t of TEXTS) wc.add(t.repeat(3));
const tok = trainBpe(wc, { vocabSize: 320, domains: ["en", "code"], langs: ["en"] });

/** A tiny mixed model (one dense block, one RRE block of 4 experts), fresh each call. */
function tinyModel(): Model {
  const config = parseModelConfig({
    vocabSize: 320,
    width: 32,
    heads: 2,
    denseLayers: 1,
    sparseLayers: 1,
    seqLen: 64,
    ffnWidth: 64,
    embeddingSlots: 1,
    domains: [{ name: "en", slot: 0, group: 0 }, { name: "code", slot: 0, group: 1 }],
    experts: { count: 4, router: { kind: "rre", groups: 2, seed: 5 } },
    seed: 3,
  });
  return new Model(new PanguSigma(config, "float32"), tok, null, 0, null, null, toHfJson(tok));
}

const RECORDS = [
  { prompt: "What is two plus two?", completion: "Four." },
  { messages: [{ role: "system", content: "Be terse." }, { role: "user", content: "Say hi." }, { role: "assistant", content: "Hi there!" }] },
  { messages: [{ role: "user", content: "Say hi." }, { role: "assistant", content: "Hi." }, { role: "user", content: "Again?" }, { role: "assistant", content: "Hi there!" }] },
];
const dataFile = join(root, "train.jsonl");
writeFileSync(dataFile, RECORDS.map((r) => JSON.stringify(r)).join("\n") + "\n");

const sigmaError = (re: RegExp) => (e: unknown) => e instanceof SigmaError && re.test(e.message);

test("bad records are rejected with the line number and the field", () => {
  const cases: [string, RegExp][] = [
    ['{"prompt": "a"}', /f line 2: "completion" must be a string \(it is missing\)/],
    ['{"messages": [{"role": "bot", "content": "x"}]}', /f line 2: messages\[0\]\.role is "bot", not one of system, user, assistant/],
    ['{"messages": [{"role": "assistant", "content": 3}]}', /f line 2: "messages\[0\]\.content" must be a string/],
    ['{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}', /f line 2: messages\[1\] is the user's: a record ends with the assistant's reply/],
    ['{"prompt": "a", "completion": "b", "label": 1}', /f line 2: unknown field "label"/],
    ['{"prompt": "a", "completion": "b"', /f line 2: not valid JSON/],
    ['[1]', /f line 2: not a JSON object/],
    ['{"prompt": "a", "completion": " "}', /f line 2: "completion" is empty/],
  ];
  for (const [line, re] of cases) assert.throws(() => parseRecords(`{"prompt": "ok", "completion": "ok"}\n${line}\n`, "f"), sigmaError(re), line);
  assert.throws(() => parseRecords("\n\n", "f"), sigmaError(/f holds no records/));
  // A domain the model lacks names the record's line.
  const m = tinyModel();
  const recs = parseRecords(`{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", "completion": "b", "domain": "law"}\n`, "d.jsonl");
  assert.throws(() => new FinetuneTrainer(cfg({ records: "d.jsonl" }), base(m), recs), sigmaError(/d\.jsonl line 3: "domain" is "law", which the model does not have/));
});

test("records render with serve's chat template; the mask covers the replies and the closing <|endoftext|> only", () => {
  const [pc, sys, multi] = parseRecords(RECORDS.map((r) => JSON.stringify(r)).join("\n"), "f");
  // prompt/completion: serve's prompt for the user turn, then " Four." and <|endoftext|>.
  const r = renderRecord(tok, pc!, "en", 0, 1000);
  const prompt = encodePrompt(tok, "en", chatPrompt([{ role: "user", content: "What is two plus two?" }]));
  const reply = tok.encode(" Four.");
  assert.deepEqual([...r.ids], [...prompt, ...reply, tok.eotId]);
  assert.deepEqual([...r.mask], [...prompt.map(() => 0), ...reply.map(() => 1), 1]);
  // With a system turn: the masked-out part decodes to exactly serve's prompt text.
  const s = renderRecord(tok, sys!, "en", 0, 1000);
  const off = [...s.ids].filter((_, i) => !s.mask[i]);
  assert.equal(tok.decode(off, { skipSpecial: true }), "System: Be terse.\n\nUser: Say hi.\n\nAssistant:");
  assert.equal(tok.decode([...s.ids].filter((_, i) => s.mask[i]), { skipSpecial: true }), " Hi there!");
  // Two assistant turns: both replies are targets, the user turn between them is not.
  const m = renderRecord(tok, multi!, "en", 0, 1000);
  assert.equal(tok.decode([...m.ids].filter((_, i) => m.mask[i]), { skipSpecial: true }), " Hi. Hi there!");
  assert.equal(tok.decode([...m.ids], { skipSpecial: true }), chatPrompt([{ role: "user", content: "Say hi." }, { role: "assistant", content: "Hi." }, { role: "user", content: "Again?" }]) + " Hi there!");
  // Too long for the model: the line is named.
  assert.throws(() => renderRecord(tok, pc!, "en", 0, 8, "f.jsonl"), sigmaError(/f\.jsonl line 1: the record is \d+ tokens with the chat template, more than the model's seqLen \+ 1 \(8\)/));
});

test("masked positions add exactly zero to the loss and its gradient (hand-computed)", () => {
  // Tokens 2 3 4 5, the last two are the reply: targets are [ignored, 4, 5].
  const ids = Int32Array.of(2, 3, 4, 5);
  const mask = Uint8Array.of(0, 0, 1, 1);
  const y = maskedTargets(ids, mask);
  assert.deepEqual([...y], [-1, 4, 5]);
  // Logits over V = 10: row 0 (predicting the masked token 3) is far from uniform, rows 1 and 2 are uniform.
  const logits = Tensor.zeros([3, 10], "float32");
  logits.data[0 * 10 + 7] = 9;
  logits.requiresGrad = true;
  const loss = ops.crossEntropy(logits, y);
  // Two unmasked rows, each −log(1/10): the mean is ln 10, whatever row 0 holds.
  assert.ok(Math.abs(loss.item() - Math.log(10)) < 1e-6, `loss ${loss.item()}`);
  backward(loss);
  const g = gradOf(logits).data;
  // Row 0: exactly zero. Rows 1, 2: (softmax − onehot) / 2 = 0.05, and −0.45 at the target.
  for (let v = 0; v < 10; v++) assert.equal(g[v], 0);
  for (const [r, t] of [[1, 4], [2, 5]] as const) for (let v = 0; v < 10; v++) assert.ok(Math.abs(g[r * 10 + v]! - (v === t ? -0.45 : 0.05)) < 1e-6, `row ${r} col ${v}: ${g[r * 10 + v]}`);
});

/** A full fine-tuning config for direct FinetuneTrainer tests. */
function cfg(over: Record<string, unknown> = {}) {
  return { records: dataFile, recordsSha256: "0".repeat(64), base: "mem", domain: "en", steps: 4, batchSize: 2, accumSteps: 1, lr: 3e-3, minLr: 3e-4, warmupSteps: 1, decay: "cosine" as const, weightDecay: 0, clip: 1, freeze: "none" as const, lora: null, seed: 1, checkpointEvery: 0, keep: 2, out: join(root, "x"), ...over };
}
const base = (m: Model) => ({ network: m.network, tokenizer: tok, tokenizerText: toHfJson(tok), dataDir: null });

test("the model's loss on a fine-tuning batch is the mean cross-entropy over the reply tokens alone", () => {
  const m = tinyModel();
  // One micro-batch of all three records.
  const t = new FinetuneTrainer(cfg({ batchSize: 3 }), base(m), parseRecords(readFileSync(dataFile, "utf8"), "f"));
  const b = t.batch(0);
  // Targets: the reply tokens and <|endoftext|> (the mask), −1 on prompts and padding.
  const targets = [...b.y].filter((v) => v >= 0).length;
  assert.equal(targets, t.rows.reduce((s, r) => s + r.mask.reduce((a, v) => a + v, 0), 0));
  assert.ok(targets < t.rows.reduce((s, r) => s + r.ids.length - 1, 0));
  m.network.eval();
  const out = m.network.forward({ tokens: b.x, domains: b.domains, B: b.B, T: b.T });
  const V = m.config.vocabSize;
  let sum = 0;
  let n = 0;
  for (let r = 0; r < b.y.length; r++) {
    if (b.y[r]! < 0) continue;
    const row = out.logits.data.subarray(r * V, (r + 1) * V);
    const max = Math.max(...row);
    let z = 0;
    for (const v of row) z += Math.exp(v - max);
    sum += max + Math.log(z) - row[b.y[r]!]!;
    n++;
  }
  const lm = m.network.loss({ tokens: b.x, domains: b.domains, B: b.B, T: b.T }, b.y).lm.item();
  assert.ok(Math.abs(lm - sum / n) < 1e-4, `${lm} vs ${sum / n}`);
});

test("--freeze and --lora train what they say", () => {
  const records = parseRecords(readFileSync(dataFile, "utf8"), "f");
  const snapshot = (m: Model) => new Map([...m.network.namedParameters()].map(([n, p]) => [n, Float32Array.from(p.tensor.data as Float32Array)]));
  const moved = (m: Model, before: Map<string, Float32Array>) => [...m.network.namedParameters()].filter(([n, p]) => !before.get(n)!.every((v, i) => v === p.tensor.data[i])).map(([n]) => n);
  for (const [over, expect] of [
    [{ freeze: "experts" }, (n: string) => !n.includes(".moe.w") && !n.includes(".moe.b")],
    [{ freeze: "dense" }, (n: string) => n.includes(".moe.")],
    [{ lora: 2 }, (n: string) => n.includes(".moe.") || n.endsWith(".weight")],
  ] as const) {
    const m = tinyModel();
    const before = snapshot(m);
    const t = new FinetuneTrainer(cfg(over), base(m), records);
    t.trainStep();
    t.trainStep();
    const changed = moved(m, before);
    assert.ok(changed.length > 0, JSON.stringify(over));
    for (const n of changed) assert.ok(expect(n), `${JSON.stringify(over)} changed ${n}`);
    if ("lora" in over) {
      // Every adapted weight holds W0 + BA, and some moved; norms, biases and embeddings did not.
      assert.ok(changed.some((n) => n.endsWith("attn.q.weight")));
      for (const l of t.lora!.layers) {
        const W = l.weight.data;
        for (let i = 0; i < 5; i++) {
          const [o, c] = [i % l.out, (i * 7) % l.in];
          let ba = 0;
          for (let k = 0; k < 2; k++) ba += l.B.data[o * 2 + k]! * l.A.data[k * l.in + c]!;
          assert.ok(Math.abs(W[o * l.in + c]! - (l.base[o * l.in + c]! + ba)) < 1e-6);
        }
      }
    }
  }
  assert.throws(() => new FinetuneTrainer(cfg({ lora: 2, freeze: "dense" }), base(tinyModel()), records), sigmaError(/--lora trains the dense part through adapters, but --freeze dense/));
});

test("an interrupted fine-tuning run resumed from its checkpoint ends bit for bit where an uninterrupted one does (full and LoRA)", async () => {
  for (const lora of [null, 3]) {
    const opts = { data: dataFile, steps: 5, batchSize: 2, lr: 3e-3, checkpointEvery: 2, lora };
    const given = tinyModel();
    const whole = await finetune({ ...opts, ckpt: given, out: join(root, `whole-${lora}`) });
    // The model handed over is trained in place, and handed back trainable in full (LoRA froze most of it meanwhile).
    assert.ok(given.network.parameters().every((p) => p.requiresGrad));
    const cut = await finetune({ ...opts, ckpt: tinyModel(), out: join(root, `cut-${lora}`), stopAtStep: 3 });
    assert.equal(cut.stopped, "stopAtStep");
    assert.equal(cut.steps, 3);
    const resumed = await finetune({ data: dataFile, out: join(root, `cut-${lora}`), resume: true });
    assert.equal(resumed.steps, 5);
    assert.equal(resumed.loss, whole.loss);
    for (const f of ["model.safetensors", "optimizer.safetensors", ...(lora ? ["lora.safetensors"] : [])]) {
      assert.ok(readFileSync(join(whole.checkpoint, f)).equals(readFileSync(join(resumed.checkpoint, f))), `${f} (lora ${lora})`);
    }
  }
  // A resume with other settings, or another data file, is refused naming them.
  await assert.rejects(finetune({ data: dataFile, out: join(root, "cut-null"), resume: true, lr: 1 }), sigmaError(/other settings:\n {2}lr: 0\.003 vs 1/));
  const other = join(root, "other.jsonl");
  writeFileSync(other, '{"prompt": "x", "completion": "y"}\n');
  await assert.rejects(finetune({ data: other, out: join(root, "cut-null"), resume: true }), sigmaError(/is not the file the checkpoint .* was fine-tuned on/));
  // A fresh run into a folder that holds one is refused.
  await assert.rejects(finetune({ data: dataFile, ckpt: tinyModel(), out: join(root, "cut-null") }), sigmaError(/already holds a run/));
});

test("a fine-tuned checkpoint chats: serve's template gives back the reply it learned", async () => {
  const one = join(root, "one.jsonl");
  writeFileSync(one, JSON.stringify({ prompt: "What is two plus two?", completion: "Four." }) + "\n");
  const r = await finetune({ data: one, ckpt: tinyModel(), out: join(root, "chat"), steps: 40, batchSize: 1, lr: 1e-2, warmupSteps: 2 });
  const m = await openModel(r.checkpoint);
  let text = "";
  for await (const p of m.chat([{ role: "user", content: "What is two plus two?" }], { temperature: 0, maxTokens: 12 })) text += p.text;
  assert.equal(text, "Four.");
});

test("sigma finetune: the CLI runs the library call, and a bad record is one error line", async () => {
  const ckpt = tinyModel().save(join(root, "base"));
  const ok = await sigma("finetune", "--ckpt", ckpt, "--data", dataFile, "--out", join(root, "cli"), "--steps", "2", "--batch-size", "2", "--lora", "2", "--freeze", "experts");
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /finished at step 2/);
  assert.match(ok.out, /checkpoint: .*step-00000002/);
  const bad = join(root, "bad.jsonl");
  writeFileSync(bad, '{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "user"}]}\n');
  const r = await sigma("finetune", "--ckpt", ckpt, "--data", bad, "--out", join(root, "cli-bad"));
  assert.equal(r.code, 1);
  assert.match(r.out, /bad\.jsonl line 2: "messages\[0\]\.content" must be a string \(it is missing\)/);
  assert.doesNotMatch(r.out, /at .*\.ts:\d+/);
});
