/**
 * The `sigma` command line: demo, train, eval, generate, data, tokenizer,
 * info (backend, CPU features, threads).
 */
import { Command } from "commander";
import { readFileSync } from "node:fs";
import { getBackend } from "../backend/index.js";
import { loadNative } from "../backend/native/index.js";
import { SigmaError } from "../util/errors.js";
import { register as registerTokenizer } from "./tokenizer.js";
import { register as registerData } from "./data.js";
import { register as registerTrain } from "./train.js";
import { register as registerDemo } from "./demo.js";
import { register as registerBalance } from "./balance.js";
import { register as registerUpcycle } from "./upcycle.js";
import { register as registerExtract } from "./extract.js";
import { register as registerImport } from "./import.js";
import { register as registerStore } from "./store.js";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };

const program = new Command();
program.name("sigma").description("Sparse Mixture-of-Experts language models: PanGu-Σ (RRE, ECSS) and Pangu Pro MoE (MoGE)").version(pkg.version);
registerTokenizer(program);
registerData(program);
registerTrain(program);
registerDemo(program);
registerBalance(program);
registerUpcycle(program);
registerExtract(program);
registerImport(program);
registerStore(program);

program
  .command("info")
  .description("show the kernel backend in use, the CPU features it detected and the thread count")
  .option("--json", "print JSON")
  .action((opts: { json?: boolean }) => {
    const native = loadNative();
    const backend = getBackend();
    const info = {
      version: pkg.version,
      node: process.version,
      backend: backend.name,
      threads: backend.getThreads(),
      native: native.backend ? { path: native.path, cpu: native.backend.cpuFeatures() } : { error: native.error },
    };
    if (opts.json) {
      console.log(JSON.stringify(info, null, 2));
      return;
    }
    console.log(`sigma ${info.version} on Node ${info.node}`);
    console.log(`backend: ${info.backend}, ${info.threads} thread(s)`);
    if (native.backend) {
      const cpu = native.backend.cpuFeatures();
      console.log(`native addon: ${native.path}`);
      console.log(`kernel path: ${cpu.path} (avx2 ${cpu.avx2}, fma ${cpu.fma}, avx512f ${cpu.avx512f})`);
    } else {
      console.log(`native addon unavailable: ${native.error}`);
    }
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof SigmaError) {
    console.error(`sigma: ${e.message}`);
    process.exit(1);
  }
  throw e;
}
