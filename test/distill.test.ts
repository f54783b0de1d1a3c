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
});
