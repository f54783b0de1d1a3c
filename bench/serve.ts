/**
 * `npm run bench -- serve [--json] [--tokens=N]`: `sigma serve` on the
 * reference config R with 8 experts, top-2 (d=512, 8 heads, 2 dense + 2
 * sparse layers, F=2048, V=8192, T=256), over loopback HTTP with 1, 4, 8 and
 * 16 concurrent streamed completions of N tokens each:
 *
 *   - aggregate generated tokens/s, and its ratio to one stream's (the issue
 *     asks for ≥ 2× at 8 streams);
 *   - time to first token (median over the streams of a level);
 *   - bytes of weights one step reads: every dense matrix once, the experts
 *     the step's rows were routed to (counted from the routing), the tied
 *     output matrix once — and the bound these put on tokens/s at this
 *     machine's memory read bandwidth, probed in the same run (sumSquares over
 *     256 MiB, the backend's threads), with the fraction of it reached.
 *
 * The model is untrained (speed does not depend on the weights' values) and
 * its tokenizer synthetic (bytes plus pairs of printable characters up to
 * V = 8192), so the bench needs no data.
 */
import { Model } from "../src/api/model.js";
import { serve } from "../src/api/serve.js";
import { getBackend } from "../src/backend/index.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { Tokenizer } from "../src/tokenizer/codec.js";
import { BYTE_TO_CHAR } from "../src/tokenizer/pretokenize.js";
import { median, native, randomArray, table, timeMs } from "./util.js";

const R = { width: 512, heads: 8, dense: 2, sparse: 2, experts: 8, k: 2, ffn: 2048, vocab: 8192, T: 256 };
const LEVELS = [1, 4, 8, 16];
const DOMAINS = ["zh", "en", "bi", "code"];

/** A tokenizer of exactly `vocab` ids: the specials, the 256 bytes, then merges of printable-character pairs. */
function syntheticTokenizer(vocab: number): Tokenizer {
  const specials = 2 + DOMAINS.length;
  const merges: [string, string][] = [];
  for (let a = 33; a < 127 && merges.length < vocab - specials - 256; a++) {
    for (let b = 33; b < 127 && merges.length < vocab - specials - 256; b++) merges.push([BYTE_TO_CHAR[a]!, BYTE_TO_CHAR[b]!]);
  }
  return new Tokenizer({ domains: DOMAINS, langs: [], tokens: [...BYTE_TO_CHAR, ...merges.map(([l, r]) => l + r)], merges });
}

interface Level {
  streams: number;
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
  ttftMs: number;
  steps: number;
  meanBatch: number;
  weightBytesPerStep: number;
  bandwidthBoundTokensPerSecond: number;
  fractionOfBound: number;
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes("--json");
  const perStream = Number(args.find((a) => a.startsWith("--tokens="))?.slice(9) ?? 64);
  const log = (s: string) => {
    if (!json) console.log(s);
  };
  const b = native();
  const threads = getBackend().getThreads();
  const big = randomArray(64 << 20, 9);
  const bandwidth = big.byteLength / (timeMs(() => b.sumSquares(big, big.length), 5) / 1000); // bytes/s

  const config = parseModelConfig({
    vocabSize: R.vocab, width: R.width, heads: R.heads, seqLen: R.T, ffnWidth: R.ffn, denseLayers: R.dense, sparseLayers: R.sparse,
    domains: DOMAINS.map((name, i) => ({ name, slot: 0, group: i })), experts: { count: R.experts, router: { kind: "topk", k: R.k } },
  });
  const net = new PanguSigma(config);
  const model = new Model(net, syntheticTokenizer(R.vocab), null, 0, null, null);

  // Weights one step reads, in floats: all dense ones (attention, dense FFNs, the query layer, the tied output
  // matrix), plus each sparse layer's experts in use — counted by watching the routers.
  const C = R.width, F = R.ffn;
  const attention = 4 * (C * C + C);
  const ffn = 2 * C * F + F + C;
  const denseFloats = (R.dense + R.sparse + 1) * attention + (R.dense + 1) * ffn + R.vocab * C + R.sparse * R.experts * C;
  let expertFloats = 0;
  for (const block of net.blocks) {
    const moe = block.moe;
    if (!moe) continue;
    const route = moe.router.route.bind(moe.router);
    moe.router.route = (input) => {
      const r = route(input);
      let used = 0;
      for (let e = 0; e < R.experts; e++) if (r.counts[e]! > 0) used++;
      expertFloats += used * ffn;
      return r;
    };
  }

  const server = await serve(model, { port: 0, maxBatch: 16, maxQueue: 64, name: "bench" });
  const levels: Level[] = [];
  try {
    const stream = async (i: number): Promise<{ tokens: number; ttft: number }> => {
      const t0 = performance.now();
      const r = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: `Request ${i}: the quick brown fox`, max_tokens: perStream, temperature: 1, seed: i, stream: true, stream_options: { include_usage: true } }),
      });
      const text = r.body!.pipeThrough(new TextDecoderStream());
      let ttft = NaN;
      let tokens = 0;
      let buf = "";
      for await (const piece of text) {
        if (Number.isNaN(ttft)) ttft = performance.now() - t0;
        buf += piece;
      }
      for (const e of buf.split("\n\n")) {
        if (!e.startsWith("data: {")) continue;
        const chunk = JSON.parse(e.slice(6)) as { usage?: { completion_tokens: number } | null };
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
      }
      return { tokens, ttft };
    };
    await Promise.all([0, 1].map(stream)); // warm-up
    for (const streams of LEVELS) {
      const stepsBefore = Number(/^sigma_steps_total (\d+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())![1]);
      expertFloats = 0;
      const t0 = performance.now();
      const rs = await Promise.all(Array.from({ length: streams }, (_, i) => stream(i)));
      const seconds = (performance.now() - t0) / 1000;
      const steps = Number(/^sigma_steps_total (\d+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())![1]) - stepsBefore;
      const tokens = rs.reduce((n, r) => n + r.tokens, 0);
      const weightBytesPerStep = (4 * (denseFloats * steps + expertFloats)) / steps;
      const meanBatch = tokens / steps;
      const bound = (meanBatch * bandwidth) / weightBytesPerStep;
      const tps = tokens / seconds;
      levels.push({ streams, tokens, seconds, tokensPerSecond: tps, ttftMs: median(rs.map((r) => r.ttft)), steps, meanBatch, weightBytesPerStep, bandwidthBoundTokensPerSecond: bound, fractionOfBound: tps / bound });
    }
  } finally {
    await server.close();
  }

  const one = levels[0]!.tokensPerSecond;
  const at8 = levels.find((l) => l.streams === 8)!.tokensPerSecond;
  const result = {
    bench: "serve",
    config: { ...R, router: "topk" },
    threads,
    tokensPerStream: perStream,
    memoryReadBandwidthGBs: bandwidth / 1e9,
    levels,
    speedupAt8: at8 / one,
    speedupAt8Target: 2,
  };
  if (json) {
    console.log(JSON.stringify(result));
    return;
  }
  log(`config R, 8 experts top-2 (d=${R.width}, ${R.dense} dense + ${R.sparse} sparse layers, F=${R.ffn}, V=${R.vocab}, T=${R.T}); ${threads} thread(s); ${perStream} tokens per stream`);
  log(`memory read bandwidth: ${(bandwidth / 1e9).toFixed(1)} GB/s (sumSquares over 256 MiB)\n`);
  log(
    table(
      ["streams", "tokens/s", "× one stream", "TTFT ms (median)", "steps", "rows/step", "MB of weights/step", "bandwidth bound tokens/s", "% of bound"],
      levels.map((l) => [l.streams, l.tokensPerSecond.toFixed(1), (l.tokensPerSecond / one).toFixed(2), l.ttftMs.toFixed(1), l.steps, l.meanBatch.toFixed(2), (l.weightBytesPerStep / 1e6).toFixed(1), l.bandwidthBoundTokensPerSecond.toFixed(1), (100 * l.fractionOfBound).toFixed(0)]),
    ),
  );
  log(`\naggregate at 8 streams: ${(at8 / one).toFixed(2)}× one stream (target ≥ 2×: ${at8 / one >= 2 ? "met" : "NOT met"})`);
}
