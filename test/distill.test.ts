// Distillation (src/train/distill.ts): a model that also learns a teacher's
// next-token distributions — how a draft for speculative decoding is made to
// agree with its target.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { noGrad } from "../src/autograd/tape.js";
import * as ops from "../src/ops/index.js";
import { Tensor } from "../src/tensor/tensor.js";
import { Trainer } from "../src/train/trainer.js";
import { train } from "../src/api/train.js";
import { openModelSource } from "../src/serve/open.js";
import { SigmaError } from "../src/util/errors.js";
import { Rng } from "../src/util/rng.js";
import { existsSync } from "node:fs";
import { Model } from "../src/api/model.js";
import { soloComm, type Communicator } from "../src/comm/comm.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { ROUTERS, cleanup, root, tinyConfig, tinyData } from "./train-fixture.js";

after(cleanup);
const data = await tinyData();
/** A teacher: a wider model trained a few steps on the fixture data. */
const teacherRun = await train(tinyConfig(data, join(root, "teacher"), ROUTERS.rre!, { model: { ...tinyConfig(data, "x", ROUTERS.rre!).model, width: 48, seed: 11 }, steps: 30, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 } }));

test("softCrossEntropy: against a point mass it is the cross-entropy, against the model's own softmax its entropy", () => {
  const rng = new Rng(2);
  const [R, V] = [4, 9];
  const logits = Tensor.from(Float32Array.from({ length: R * V }, () => rng.normal() * 2), [R, V]);
  const targets = Int32Array.of(3, 0, 8, 3);
  const onehot = new Float32Array(R * V);
  targets.forEach((t, r) => (onehot[r * V + t] = 1));
  assert.ok(Math.abs(ops.softCrossEntropy(logits, onehot).item() - ops.crossEntropy(logits, targets).item()) < 1e-5);
  const q = ops.softmax(logits).data as Float32Array;
  let entropy = 0;
  for (let i = 0; i < R * V; i++) entropy -= q[i]! * Math.log(q[i]!);
  assert.ok(Math.abs(ops.softCrossEntropy(logits, q).item() - entropy / R) < 1e-5);
  assert.throws(() => ops.softCrossEntropy(logits, new Float32Array(5)), /5 target probabilities for 4 rows/);
});


/** Mean KL(teacher ‖ model) over a batch of the fixture's validation-like tokens, both on the same inputs. */
function klToTeacher(model: ReturnType<typeof openModelSource>["model"]): number {
  const teacher = openModelSource(teacherRun.checkpoint).model.eval();
  const rng = new Rng(5);
  const [B, T] = [4, 16];
  const tokens = Int32Array.from({ length: B * T }, () => 10 + rng.int(300));
  const domains = Int32Array.of(0, 1, 2, 3);
  const p = ops.softmax(noGrad(() => teacher.forward({ tokens, domains, B, T })).logits).data;
  const wasTraining = model.training;
  model.eval();
  const q = ops.softmax(noGrad(() => model.forward({ tokens, domains, B, T })).logits).data;
  model.train(wasTraining);
  let kl = 0;
  for (let i = 0; i < p.length; i++) kl += p[i]! * (Math.log(p[i]!) - Math.log(q[i]!));
  return kl / (B * T);
}

test("a distilled model ends nearer its teacher's distributions than one trained on the data alone, same steps and seeds", () => {
  const run = (distill: Record<string, unknown> | undefined, name: string) => {
    const t = new Trainer(tinyConfig(data, join(root, name), ROUTERS.rre!, { steps: 40, ...(distill ? { distill } : {}) }));
    try {
      for (let s = 0; s < 40; s++) t.trainStep();
      return klToTeacher(t.model);
    } finally {
      t.close();
    }
  };
  const alone = run(undefined, "alone");
  const distilled = run({ teacher: teacherRun.checkpoint, weight: 1 }, "distilled");
  const warm = run({ teacher: teacherRun.checkpoint, weight: 0.9, temperature: 2 }, "warm");
  assert.ok(distilled < 0.6 * alone, `KL to the teacher: distilled ${distilled.toFixed(4)}, data alone ${alone.toFixed(4)}`);
  assert.ok(warm < alone, `KL to the teacher: T = 2 ${warm.toFixed(4)}, data alone ${alone.toFixed(4)}`);
});

test("distill.weight 0 trains exactly as without a teacher (the teacher's term adds nothing)", () => {
  const losses = (distill: Record<string, unknown> | undefined, name: string) => {
    const t = new Trainer(tinyConfig(data, join(root, name), ROUTERS.topk!, { steps: 3, ...(distill ? { distill } : {}) }));
    try {
      return [0, 1, 2].map(() => t.trainStep().loss);
    } finally {
      t.close();
    }
  };
  assert.deepEqual(losses({ teacher: teacherRun.checkpoint, weight: 0 }, "w0"), losses(undefined, "w0-plain"));
});

test("a teacher with another vocabulary or without the run's domains is refused, naming distill.teacher", async () => {
  const other = await train(tinyConfig(data, join(root, "teacher-2dom"), null, {
    model: { ...tinyConfig(data, "x", null).model, domains: [{ name: "zh", slot: 0, group: 0 }, { name: "en", slot: 0, group: 0 }], embeddingSlots: 1 },
    data: { dir: data, weights: { zh: 1, en: 1, bi: 0, code: 0 } }, steps: 1, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 },
  }));
  assert.throws(() => new Trainer(tinyConfig(data, join(root, "refused-dom"), null, { distill: { teacher: other.checkpoint } })), (e: unknown) => e instanceof SigmaError && /distill\.teacher .* has no domain "bi"/.test(e.message));
  const wide = tinyConfig(data, join(root, "refused-vocab"), null, { distill: { teacher: teacherRun.checkpoint } });
  assert.throws(() => new Trainer({ ...wide, model: { ...wide.model, vocabSize: 400 } }), (e: unknown) => e instanceof SigmaError && /(distill\.teacher .* vocabulary of 320 tokens|model\.vocabSize is 400)/.test(e.message));
  // Another tokenizer of the same size: the same ids would be other tokens.
  const model = openModelSource(teacherRun.checkpoint).model;
  const wc = new WordCounter();
  const letters = new Rng(13);
  for (let i = 0; i < 400; i++) wc.add(Array.from({ length: 3 + letters.int(6) }, () => String.fromCharCode(97 + letters.int(26))).join("") + " ");
  const otherTok = trainBpe(wc, { vocabSize: 320, domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] });
  const otherDir = join(root, "teacher-other-tok");
  new Model(model, otherTok, null, 1, null, null, toHfJson(otherTok)).save(otherDir);
  assert.throws(() => new Trainer(tinyConfig(data, join(root, "refused-tok"), null, { distill: { teacher: otherDir } })), (e: unknown) => e instanceof SigmaError && /distill\.teacher .* another tokenizer than this run's data/.test(e.message));
  // A path that holds no model: the resolver's words, naming the setting.
  assert.throws(() => new Trainer(tinyConfig(data, join(root, "refused-path"), null, { distill: { teacher: join(root, "no-such-model") } })), (e: unknown) => e instanceof SigmaError && /^distill\.teacher: .*no-such-model does not exist/.test(e.message));
  // A shorter context than the run's.
  const long = tinyConfig(data, join(root, "refused-seq"), null, { distill: { teacher: teacherRun.checkpoint } });
  assert.throws(() => new Trainer({ ...long, model: { ...long.model, seqLen: 32 } }), (e: unknown) => e instanceof SigmaError && /reads 16 positions, fewer than this run's model\.seqLen 32/.test(e.message));
});

test("distillation with several ranks or the expert store is refused before anything is written", () => {
  const cfg = tinyConfig(data, join(root, "refused-modes"), ROUTERS.rre!, { distill: { teacher: teacherRun.checkpoint } });
  const twoRanks = { ...soloComm, size: 2 } as Communicator;
  assert.throws(() => new Trainer(cfg, undefined, twoRanks), (e: unknown) => e instanceof SigmaError && /distill\.teacher is set, but this run has 2 ranks/.test(e.message));
  const stored = tinyConfig(data, join(root, "refused-store"), ROUTERS.rre!, { distill: { teacher: teacherRun.checkpoint }, store: { enabled: true } });
  assert.throws(() => new Trainer(stored), (e: unknown) => e instanceof SigmaError && /with the expert store/.test(e.message));
  assert.ok(!existsSync(join(root, "refused-store", "experts.sgxs")), "no expert store was made");
});
