/**
 * `npm run bench -- <name> [args]`: runs one benchmark, or all with no name.
 * Each benchmark validates its kernels before it times them and reports
 * ratios to ceilings measured in the same run.
 */
type Bench = { run(args: string[]): Promise<void> };

const BENCHES: Record<string, () => Promise<Bench>> = {
  gemm: () => import("./gemm.js"),
  model: () => import("./model.js"),
  tokenizer: () => import("./tokenizer.js"),
  train: () => import("./train.js"),
  balance: () => import("./balance.js"),
  upcycle: () => import("./upcycle.js"),
  ecss: () => import("./ecss.js"),
  blas: () => import("./blas.js"),
};

const [name, ...args] = process.argv.slice(2);
if (name !== undefined && !(name in BENCHES)) {
  console.error(`unknown benchmark "${name}"; known: ${Object.keys(BENCHES).join(", ")}`);
  process.exit(2);
}
for (const n of name ? [name] : Object.keys(BENCHES)) {
  console.log(`\n=== bench ${n} ===`);
  await (await BENCHES[n]!()).run(args);
}
