/**
 * `sigma export gguf`: a model as one GGUF file for llama.cpp and the tools
 * built on it (docs/gguf.md).
 */
import type { Command } from "commander";
import { exportGguf } from "../api/gguf.js";
import { exportHf, HF_EXPORT_DTYPES, type HfExportDtype } from "../api/hf.js";
import { HF_ARCHITECTURES } from "../models/import/hf.js";
import { GGUF_EXPORT_TYPES, type GgufExportType } from "../models/gguf.js";
import { SigmaError } from "../util/errors.js";
import { ensureWritableDir, ensureWritableFile } from "../util/fs.js";

function parseType(v: string): GgufExportType {
  if (!(GGUF_EXPORT_TYPES as readonly string[]).includes(v)) throw new SigmaError(`--type ${v} is not a GGUF export type`, `use one of ${GGUF_EXPORT_TYPES.join(", ")}`);
  return v as GgufExportType;
}

export function register(program: Command): void {
  const exp = program.command("export").description("write a model in another format (an explicit adapter per format)");
  exp
    .command("gguf")
    .description("write a model as a GGUF file for llama.cpp (gpt2, llama, qwen2, qwen2moe, qwen3moe: the one its blocks match; docs/gguf.md)")
    .requiredOption("--ckpt <path>", "checkpoint folder (a run's checkpoints/ gives its newest) or a model .safetensors")
    .requiredOption("--out <file>", "the .gguf file to write")
    .option("--type <type>", `type of the matrices: ${GGUF_EXPORT_TYPES.join(", ")} (norms and biases stay f32)`, parseType, "f32")
    .option("--name <name>", "general.name in the file", "sigma")
    .option("--json", "print JSON")
    .action(async (o: { ckpt: string; out: string; type: GgufExportType; name: string; json?: boolean }) => {
      ensureWritableFile(o.out, "--out");
      const r = await exportGguf(o.ckpt, { out: o.out, type: o.type, name: o.name });
      if (o.json) return console.log(JSON.stringify(r, null, 2));
      console.log(`GGUF ${r.architecture}, ${r.type}: ${r.tensors} tensors, ${(r.bytes / 2 ** 20).toFixed(1)} MiB of tensor data`);
      if (r.fallbacks.length) console.log(`written f16 instead of q8_0 (rows not whole 32-value blocks): ${r.fallbacks.join(", ")}`);
      console.log(`file: ${r.path}`);
    });
  exp
    .command("hf")
    .description(`write a model as a Hugging Face folder (config.json, model.safetensors, tokenizer.json) of the architecture its blocks match: ${HF_ARCHITECTURES.join(", ")}`)
    .requiredOption("--ckpt <path>", "checkpoint folder (a run's checkpoints/ gives its newest) or a model .safetensors")
    .requiredOption("--out <dir>", "the folder to write")
    .option("--dtype <type>", `tensor type of model.safetensors: ${Object.keys(HF_EXPORT_DTYPES).join(", ")} (bf16 halves the file, as Hub models are usually stored)`, "f32")
    .option("--json", "print JSON")
    .action(async (o: { ckpt: string; out: string; dtype: string; json?: boolean }) => {
      if (!Object.hasOwn(HF_EXPORT_DTYPES, o.dtype)) throw new SigmaError(`--dtype "${o.dtype}" is not a type sigma export hf writes`, `use one of ${Object.keys(HF_EXPORT_DTYPES).join(", ")}`);
      ensureWritableDir(o.out, "--out");
      const r = await exportHf(o.ckpt, { out: o.out, dtype: o.dtype as HfExportDtype });
      if (o.json) return console.log(JSON.stringify(r, null, 2));
      console.log(`${r.architecture}: ${r.tensors} tensors${r.tokenizer ? " and tokenizer.json" : " (no tokenizer)"}${r.chatTemplate ? ", tokenizer_config.json with the chat template" : ""}`);
      for (const n of r.notes) console.log(`note: ${n}`);
      console.log(`folder: ${r.path}`);
    });
}
