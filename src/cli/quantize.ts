/**
 * `sigma quantize`: the library's quantize (src/api/quantize.ts) on files —
 * a checkpoint whose matrices are stored in bf16, f16, q8 or q4 for
 * inference (docs/decode.md), loadable by every command.
 */
import type { Command } from "commander";
import { quantize } from "../api/quantize.js";
import { WEIGHT_FORMATS, type WeightFormat } from "../backend/quant.js";
import type { OpenModelOptions } from "../api/model.js";
import { KV_FORMATS, type KVFormat } from "../nn/attention.js";
import { parseKVFormat } from "../serve/open.js";
import { parseWeightFormat } from "../models/quantize.js";
import { ensureWritableDir } from "../util/fs.js";

/** The `--weights <format>` option of the inference commands (generate, eval; serve and chat take it the same way). */
export function weightsOption(cmd: Command): Command {
  return cmd.option("--weights <format>", `weights for inference, converted at load: ${WEIGHT_FORMATS.join(", ")} (docs/decode.md; default: as stored — an f32 model's decoding takes the f32 decode kernels)`, (v: string) => parseWeightFormat(v, "--weights"));
}

/** The `--kv-cache <format>` option of the decoding commands (generate, chat, serve). */
export function kvCacheOption(cmd: Command): Command {
  return cmd.option("--kv-cache <format>", `how decoding keeps keys and values: ${KV_FORMATS.join(", ")} (f16: half the bytes; docs/decode.md)`, (v: string) => parseKVFormat(v, "--kv-cache"), "f32");
}

/**
 * openModel's options from the inference flags; `decoding` (generate, chat,
 * serve): without --weights an f32 model decodes through the decode step.
 */
export function openOptions(o: { weights?: WeightFormat; kvCache?: KVFormat }, decoding = false): OpenModelOptions {
  return { ...(o.weights ? { weights: o.weights } : decoding ? { decodeStep: true } : {}), ...(o.kvCache ? { kvCache: o.kvCache } : {}) };
}

export function register(program: Command): void {
  program
    .command("quantize")
    .description("write a checkpoint with the model's matrices stored in bf16, f16, q8 or q4 for inference (docs/decode.md)")
    .requiredOption("--ckpt <path>", "checkpoint folder (a run's checkpoints/ gives its newest) or a model .safetensors")
    .requiredOption("--to <format>", `the stored format: ${WEIGHT_FORMATS.join(", ")}`, (v: string) => parseWeightFormat(v, "--to"))
    .requiredOption("--out <dir>", "where the checkpoint goes (a step-NNNNNNNN folder inside it)")
    .option("--json", "print JSON")
    .action(async (o: { ckpt: string; to: (typeof WEIGHT_FORMATS)[number]; out: string; json?: boolean }) => {
      ensureWritableDir(o.out, "--out");
      const r = await quantize(o.ckpt, { to: o.to, out: o.out });
      if (o.json) return console.log(JSON.stringify(r, null, 2));
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
      console.log(`matrices: ${mib(r.matrices.f32Bytes)} in f32 → ${mib(r.matrices.storedBytes)} in ${r.weights} (${((100 * r.matrices.storedBytes) / r.matrices.f32Bytes).toFixed(1)}%); model file ${mib(r.fileBytes)}`);
      console.log(`checkpoint: ${r.checkpoint}`);
    });
}
