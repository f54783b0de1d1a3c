/**
 * `npm run study -- NAME [options]`: longer experiments that write their
 * results into docs/ (not tests, not speed benchmarks). `npm run study`
 * alone lists them.
 */
const STUDIES: Record<string, { load: () => Promise<{ run: (args: string[]) => Promise<void> }>; about: string; takes: string }> = {
  routers: { load: () => import("./routers.js"), about: "dense vs top-k vs MoGE vs RRE (and upcycled RRE) at equal active parameters and training FLOPs, 3 seeds; writes docs/study.md", takes: "40–60 min on 2 cores" },
};

const [name, ...args] = process.argv.slice(2);
if (!name || !(name in STUDIES)) {
  if (name) console.error(`unknown study "${name}"`);
  console.log("npm run study -- NAME [options]\n");
  for (const [n, s] of Object.entries(STUDIES)) console.log(`  ${n.padEnd(10)} ${s.about} (${s.takes})`);
  process.exitCode = name ? 1 : 0;
} else {
  try {
    await (await STUDIES[name]!.load()).run(args);
  } catch (e) {
    // A bad flag is one line, not a stack trace.
    if (!(e instanceof Error) || !e.message.startsWith("study ")) throw e;
    console.error(e.message);
    process.exitCode = 1;
  }
}
