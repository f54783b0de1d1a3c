/**
 * `sigma import gpt2`: a Hugging Face GPT-2-style model (config.json +
 * model.safetensors) as a dense Sigma checkpoint, ready for `sigma upcycle`.
 */
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { importGpt2 } from "../models/import/gpt2.js";
import { parseTokenizerJson } from "../tokenizer/hfjson.js";
import { SigmaError } from "../util/errors.js";
import { writeModelFolder } from "../api/model.js";
import { millions } from "./format.js";
import { parseList } from "./tokenizer.js";
import { ensureWritableDir } from "../util/fs.js";
import { importGguf } from "../api/gguf.js";
import { importHf } from "../api/hf.js";
import { HF_ARCHITECTURES } from "../models/import/hf.js";

export function register(program: Command): void {
  const imp = program.command("import").description("bring a model in from another format (an explicit adapter per format)");
  imp
    .command("gpt2")
    .description("import a GPT-2-style model (HF config.json + model.safetensors, float32) as a dense Sigma checkpoint")
    .requiredOption("--from <dir>", "folder with config.json and model.safetensors")
    .requiredOption("--out <dir>", "where the checkpoint goes (<out>/step-00000000/)")
    .option("--domains <list>", "domain names the model will serve (all share GPT-2's one embedding)", parseList, ["en"])
    .option("--tokenizer <file>", "a tokenizer.json of the model's vocabulary to carry along (GPT-2's own from Hugging Face, or a Sigma one)")
    .action((o: { from: string; out: string; domains: string[]; tokenizer?: string }) => {
      ensureWritableDir(o.out, "--out");
      const model = importGpt2(o.from, { domains: o.domains });
      let tokenizerText: string | null = null;
      if (o.tokenizer) {
        tokenizerText = readFileSync(o.tokenizer, "utf8");
        const tok = parseTokenizerJson(tokenizerText, o.tokenizer);
        if (tok.kind === "hf" ? tok.vocabSize > model.config.vocabSize : tok.vocabSize !== model.config.vocabSize) throw new SigmaError(`${o.tokenizer} has ${tok.vocabSize} tokens but the model's vocabulary is ${model.config.vocabSize}`, "pass a tokenizer of the model's vocabulary, or none");
      }
      const c = model.config;
      const path = writeModelFolder(o.out, 0, model, tokenizerText, { format: "sigma-import", from: o.from, source: "gpt2" });
      console.log(`GPT-2: ${c.denseLayers} layers, width ${c.width}, ${c.heads} heads, vocabulary ${c.vocabSize}, ${c.seqLen} positions, activation ${c.activation}: ${millions(model.parameterCount())} parameters`);
      console.log(`checkpoint: ${path}`);
      if (!tokenizerText) console.log("no tokenizer carried: `sigma upcycle --from` this checkpoint works as is; eval and generate need the model's tokenizer.json (pass --tokenizer)");
    });
  imp
    .command("hf")
    .description(`import a Hugging Face model folder (config.json + model.safetensors or shards + tokenizer.json) of ${HF_ARCHITECTURES.join(", ")}`)
    .requiredOption("--from <dir>", "folder with config.json, model.safetensors (or model.safetensors.index.json and its shards) and tokenizer.json")
    .requiredOption("--out <dir>", "where the checkpoint goes (<out>/step-00000000/)")
    .option("--domains <list>", "domain names the model will serve (all share its one embedding)", parseList, ["en"])
    .option("--seq-len <n>", "context length (default max_position_embeddings, capped at 8192)", (v: string) => Number(v))
    .option("--json", "print JSON")
    .action((o: { from: string; out: string; domains: string[]; seqLen?: number; json?: boolean }) => {
      ensureWritableDir(o.out, "--out");
      const r = importHf(o.from, { out: o.out, domains: o.domains, ...(o.seqLen !== undefined ? { seqLen: o.seqLen } : {}) });
      if (o.json) return console.log(JSON.stringify(r, null, 2));
      console.log(`${r.architecture}: ${millions(r.parameters)} parameters`);
      for (const n of r.notes) console.log(`note: ${n}`);
      if (r.tokenizerNote) console.log(`tokenizer: ${r.tokenizerNote}`);
      if (r.chatTemplate) console.log("chat template: kept (GGUF and HF export write it)");
      console.log(`checkpoint: ${r.checkpoint}`);
    });
  imp
    .command("gguf")
    .description("import a GGUF file of an architecture Sigma writes (gpt2, llama, qwen2, qwen2moe, qwen3moe; docs/gguf.md) as a Sigma checkpoint")
    .requiredOption("--from <file>", "the .gguf file (F32, F16, BF16 or Q8_0 tensors)")
    .requiredOption("--out <dir>", "where the checkpoint goes (<out>/step-00000000/)")
    .action((o: { from: string; out: string }) => {
      ensureWritableDir(o.out, "--out");
      const r = importGguf(o.from, { out: o.out });
      console.log(`GGUF ${r.architecture}: ${millions(r.parameters)} parameters`);
      console.log(`checkpoint: ${r.checkpoint}`);
      if (!r.tokenizer) console.log(`no tokenizer carried (${r.tokenizerNote}); eval and generate need a Sigma tokenizer of the same vocabulary`);
    });
}
