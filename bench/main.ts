/**
 * `npm run bench -- <name> [args]`: runs one benchmark; `all` runs every one
 * in turn. With no name it lists them (name, what it measures, roughly how
 * long it takes) and runs nothing: all of them together take well over ten
 * minutes. Each benchmark validates its kernels before it times them and
 * reports ratios to ceilings measured in the same run. With --json, blas,
 * train, ecss, comm and decode print one JSON object on stdout and their tables on stderr.
 */
import { SigmaError } from "../src/util/errors.js";
type Bench = { run(args: string[]): Promise<void> };

interface Entry {
  load: () => Promise<Bench>;
  about: string;
  /** Rough wall time on a 2-core machine with the defaults. */
  takes: string;
}

/** In the order `all` runs them. */
const BENCHES: Record<string, Entry> = {
  gemm: { load: () => import("./gemm.js"), about: "our matmul as a fraction of the FMA peak; thin products against memory bandwidth", takes: "2–4 min" },
  model: { load: () => import("./model.js"), about: "forward+backward tokens/s of reference config R, each router and the dense twin", takes: "1–3 min" },
  tokenizer: { load: () => import("./tokenizer.js"), about: "tokenizer training time and encode MB/s on the default corpus", takes: "1–3 min" },
  train: { load: () => import("./train.js"), about: "end-to-end training tokens/s and peak RSS of config R, each router (prepares the default data if missing)", takes: "2–5 min" },
  balance: { load: () => import("./balance.js"), about: "Pangu Pro MoE's finding: IS > 0 for top-8 vs MoGE, simulated tokens/s", takes: "1–2 min" },
  upcycle: { load: () => import("./upcycle.js"), about: "validation loss of upcycled RRE vs RRE from scratch vs dense continued (prepares the default data if missing)", takes: "10–20 min" },
  ecss: { load: () => import("./ecss.js"), about: "ECSS: sparse step vs ordinary MoE, a model over its expert budget, hit rates (prepares the default data if missing)", takes: "5–15 min" },
  ops: { load: () => import("./ops.js"), about: "the non-GEMM kernels of a training step at config R's shapes, AVX2 beside AVX-512 where the CPU has it", takes: "0–1 min" },
  comm: { load: () => import("./comm.js"), about: "MPI allreduce and all-to-all(v) latency and bandwidth over message sizes on 2 ranks (skips without MPI)", takes: "0–1 min" },
  serve: { load: () => import("./serve.js"), about: "sigma serve on config R (top-2 of 8): aggregate tokens/s at 1, 4, 8, 16 streams, TTFT, weight bytes per step vs the bandwidth bound", takes: "1–3 min" },
  decode: { load: () => import("./decode.js"), about: "KV-cache decoding of config R's shape in f32, bf16, f16, q8, q4: tokens/s at batch 1 and 8, bytes per token, fraction of the read bandwidth; speculative decoding (n-gram and model drafts): speedup and acceptance", takes: "1–2 min" },
  llamacpp: { load: () => import("./llamacpp.js"), about: "batch-1 decode tokens/s beside llama.cpp (node-llama-cpp, CPU) on a 133 MB Llama-shaped MoE, f32 / f16 / q8 (Q8_0)", takes: "2–4 min" },
  blas: { load: () => import("./blas.js"), about: "our GEMM beside OpenBLAS's sgemm (needs libopenblas-dev; skips without it)", takes: "1–3 min" },
};

/** The listing printed when no benchmark is named. */
function listing(): string {
  const w = Math.max(...Object.keys(BENCHES).map((n) => n.length), 3);
  const lines = ["usage: npm run bench -- <name> [args]   (npm run bench -- all: every benchmark in turn, 30–60 min)", ""];
  for (const [name, b] of Object.entries(BENCHES)) lines.push(`  ${name.padEnd(w)}  ${b.about} [rough: ${b.takes}]`);
  return lines.join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined) {
    console.log(listing());
    return 0;
  }
  if (name !== "all" && !(name in BENCHES)) {
    console.error(`unknown benchmark "${name}"; known: ${Object.keys(BENCHES).join(", ")}, or all`);
    return 2;
  }
  for (const n of name === "all" ? Object.keys(BENCHES) : [name]) {
    // With --json a benchmark's stdout is its one JSON object: the banner goes to stderr.
    (args.includes("--json") ? console.error : console.log)(`\n=== bench ${n} ===`);
    try {
      await (await BENCHES[n]!.load()).run(args);
    } catch (e) {
      // A bad option is one line naming it (and what to give instead), not a stack trace.
      if (!(e instanceof SigmaError)) throw e;
      console.error(e.message); // the message carries its hint line
      return 1;
    }
  }
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
