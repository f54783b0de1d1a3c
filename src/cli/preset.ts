/**
 * `sigma preset`: a preset architecture at a size as a model config (the
 * `model` section of a run config, docs/training.md), with its parameter
 * count and memory; `--list` shows every preset and size (docs/models.md).
 */
import type { Command } from "commander";
import { modelMemory, PRESETS, presetConfig } from "../models/presets.js";
import { writeFileAtomic } from "../util/fs.js";
import { SigmaError } from "../util/errors.js";

const int = (flag: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new SigmaError(`${flag} "${v}" is not a positive integer`, `pass a whole number, e.g. ${flag} 512`);
  return n;
};

const gib = (b: number): string => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(1)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);

export function register(program: Command): void {
  program
    .command("preset [name]")
    .description("print a preset model config (pangu-pro-moe: Pangu Pro MoE's block at any size; docs/models.md) for a run config's model section")
    .option("--size <size>", "the preset's size (--list shows them)", "tiny")
    .option("--vocab-size <n>", "vocabulary size (your tokenizer's)", int("--vocab-size"))
    .option("--seq-len <n>", "longest sequence", int("--seq-len"))
    .option("--domains <names>", "comma-separated domain names (default en)")
    .option("--out <file>", "write the config here instead of printing it")
    .option("--list", "list the presets and their sizes with parameters and memory")
    .action((name: string | undefined, o: { size: string; vocabSize?: number; seqLen?: number; domains?: string; out?: string; list?: boolean }) => {
      if (o.list || !name) {
        for (const [p, def] of Object.entries(PRESETS)) {
          console.log(`${p}: ${def.description}`);
          for (const size of Object.keys(def.sizes)) {
            const m = modelMemory(presetConfig(p, size));
            console.log(`  ${size.padEnd(7)} ${(m.parameters / 1e9).toFixed(3)}B parameters (${(m.active / 1e9).toFixed(3)}B active); train ${gib(m.train)} (f32 + AdamW), serve ${gib(m.serve.bf16)} (bf16) / ${gib(m.serve.q4)} (q4)`);
          }
        }
        return;
      }
      const config = presetConfig(name, o.size, {
        ...(o.vocabSize !== undefined ? { vocabSize: o.vocabSize } : {}),
        ...(o.seqLen !== undefined ? { seqLen: o.seqLen } : {}),
        ...(o.domains !== undefined ? { domains: o.domains.split(",").map((d) => d.trim()).filter((d) => d) } : {}),
      });
      const text = JSON.stringify(config, null, 2) + "\n";
      if (!o.out) return void process.stdout.write(text);
      writeFileAtomic(o.out, text);
      const m = modelMemory(config);
      console.log(`${o.out}: ${name} (${o.size}), ${m.parameters.toLocaleString("en-US")} parameters`);
    });
}
