// A tiny prepared data folder (three domains, a 320-token vocabulary) and a
// tiny train config over it, shared by the training tests.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WordCounter, trainBpe } from "../src/tokenizer/trainer.js";
import { saveTokenizer } from "../src/tokenizer/hfjson.js";
import { prepareData } from "../src/data/prepare.js";
import { parseTrainConfig, type TrainConfig } from "../src/train/config.js";
import type { RouterConfig } from "../src/models/config.js";

// Tests run the heavy commands (sigma train, demo) many times: no first-use
// GEMM tuning there, and no tuning file from the developer's cache
// (test/tune.test.ts tests both on its own files).
process.env.SIGMA_TUNE ??= "off";

const ZH = ["学而时习之，不亦说乎？", "有朋自远方来，不亦乐乎？", "人不知而不愠，不亦君子乎？", "温故而知新，可以为师矣。", "三人行，必有我师焉。"];
const EN = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.", "Call me Ishmael.", "All happy families are alike."];
const CODE = ["export const add = (a: number, b: number) => a + b;\n", "function f(x) {\n  return x * 2;\n}\n", "for (let i = 0; i < n; i++) sum += a[i];\n"];

export const root = mkdtempSync(join(tmpdir(), "sigma-train-"));
export const cleanup = (): void => rmSync(root, { recursive: true, force: true });

/** Prepares the data once per process; returns its folder. */
export async function tinyData(): Promise<string> {
  const dir = join(root, "data");
  const corpus = join(root, "corpus");
  for (const [domain, texts] of [["zh", ZH], ["en", EN], ["code", CODE]] as const) {
    mkdirSync(join(corpus, domain), { recursive: true });
    // Many short documents in varied order, so both splits get every domain.
    const docs: string[] = [];
    for (let i = 0; i < 40; i++) docs.push(JSON.stringify({ text: `${texts[i % texts.length]} ${texts[(i * 7 + 3) % texts.length]} #${i}` }));
    writeFileSync(join(corpus, domain, "docs.jsonl"), docs.join("\n") + "\n");
  }
  const wc = new WordCounter();
  for (const t of [...ZH, ...EN, ...CODE]) wc.add(t.repeat(3));
  const tok = join(root, "tokenizer.json");
  saveTokenizer(trainBpe(wc, { vocabSize: 320, domains: ["zh", "en", "bi", "code"], langs: ["zh", "en"] }), tok);
  await prepareData({ corpus, tokenizer: tok, out: dir, valFraction: 0.25, seed: 1 });
  return dir;
}

export const ROUTERS: Record<string, RouterConfig | null> = {
  dense: null,
  rre: { kind: "rre", groups: 2, seed: 5 },
  moge: { kind: "moge", groups: 2, perGroup: 1, auxLossCoef: 0.01, sharedExperts: 1 },
  topk: { kind: "topk", k: 2, renormalize: true, auxLossCoef: 0.01, zLossCoef: 0.001, capacityFactor: null },
};

/** A tiny mixed-mode run over the fixture data (width 32, T 16). */
export function tinyConfig(dataDir: string, out: string, router: RouterConfig | null, extra: Record<string, unknown> = {}): TrainConfig {
  return parseTrainConfig({
    name: "tiny",
    model: {
      vocabSize: 320,
      width: 32,
      heads: 2,
      denseLayers: 1,
      sparseLayers: router ? 1 : 0,
      seqLen: 16,
      ffnWidth: 64,
      embeddingSlots: 2,
      domains: ["zh", "en", "bi", "code"].map((name, i) => ({ name, slot: name === "code" ? 1 : 0, group: i % 2 })),
      experts: router ? { count: 4, router } : undefined,
      seed: 7,
    },
    data: { dir: dataDir },
    batchSize: 4,
    steps: 8,
    optim: { lr: 3e-3, warmupSteps: 2 },
    eval: { every: 4, batches: 1 },
    checkpoint: { every: 4, keep: 2 },
    out,
    ...extra,
  });
}
