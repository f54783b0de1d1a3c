// The draft-length choice of speculative decoding (src/serve/draft-length.ts):
// against simulated targets whose verification costs and acceptance are known,
// it settles on the k that emits the most tokens per millisecond, measures
// every k again now and then, and is not held by one slow measurement.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DraftLength } from "../src/serve/draft-length.js";
import { Rng } from "../src/util/rng.js";

/** Runs `steps` steps against a target whose r-row verification costs cost(r) ms and whose drafts are each kept with probability a; returns the k chosen at each step. */
function simulate(dl: DraftLength, steps: number, cost: (r: number) => number, a: number, draftMs = 0, seed = 1): number[] {
  const rng = new Rng(seed);
  const chosen: number[] = [];
  for (let s = 0; s < steps; s++) {
    const k = dl.next();
    chosen.push(k);
    let accepted = 0;
    while (accepted < k && rng.uniform() < a) accepted++;
    dl.observe({ proposed: k, accepted, draftMs: draftMs * k, verifyMs: cost(k + 1) });
  }
  return chosen;
}

const count = (xs: number[], v: number) => xs.filter((x) => x === v).length;

test("a verification that costs as much per row as plain steps, and drafts mostly wrong: plain steps, but for the probes", () => {
  const dl = new DraftLength(4);
  const chosen = simulate(dl, 200, (r) => r, 0.3).slice(50);
  assert.ok(count(chosen, 0) >= 0.85 * chosen.length, `k chosen: ${chosen.join(" ")}`);
  assert.ok(dl.acceptance() < 0.5);
});

test("a verification that costs little more than a plain step, and drafts mostly right: the most drafts", () => {
  const dl = new DraftLength(4);
  const chosen = simulate(dl, 200, (r) => 1 + 0.05 * (r - 1), 0.9).slice(50);
  assert.ok(count(chosen, 4) >= 0.85 * chosen.length, `k chosen: ${chosen.join(" ")}`);
  assert.ok(dl.acceptance() > 0.8);
});

test("in between, the k of the best expected rate: with a = 0.6 and a 2-row verification at 1.2 plain steps, rows after that at 1 step each, k = 1", () => {
  // Rates: k = 0: 1/1; k = 1: 1.6/1.2 = 1.33; k = 2: 1.96/2.2 = 0.89 — one draft a step.
  const dl = new DraftLength(4);
  const chosen = simulate(dl, 300, (r) => (r === 1 ? 1 : 1.2 + (r - 2)), 0.6).slice(100);
  assert.ok(count(chosen, 1) >= 0.8 * chosen.length, `k chosen: ${chosen.join(" ")}`);
});

test("the draft's own cost counts: a draft token as dear as a plain step is not worth drafting at a = 0.5", () => {
  const cheap = simulate(new DraftLength(4), 200, (r) => 1 + 0.05 * (r - 1), 0.5, 0).slice(50);
  const dear = simulate(new DraftLength(4), 200, (r) => 1 + 0.05 * (r - 1), 0.5, 1).slice(50);
  assert.ok(count(cheap, 0) < 0.2 * cheap.length, `cheap draft, k chosen: ${cheap.join(" ")}`);
  assert.ok(count(dear, 0) >= 0.8 * dear.length, `dear draft, k chosen: ${dear.join(" ")}`);
  // While k* stays 0 the probes (which pay for the draft) grow further apart: a handful in 500 steps.
  const long = simulate(new DraftLength(4), 700, (r) => 1 + 0.05 * (r - 1), 0.5, 1).slice(200);
  assert.ok(long.length - count(long, 0) <= 8, `dear draft, k chosen: ${long.join(" ")}`);
});

test("every k is measured again now and then, and one slow measurement does not stay", () => {
  const dl = new DraftLength(4);
  const chosen = simulate(dl, 120, (r) => r, 0.3);
  for (let k = 0; k <= 4; k++) assert.ok(count(chosen, k) >= 1, `k = ${k} never tried: ${chosen.join(" ")}`);
  // A 100 ms outlier (a garbage collection, a descheduled thread), then the usual 5 ms.
  dl.observe({ proposed: 4, accepted: 0, draftMs: 0, verifyMs: 100 });
  assert.ok(dl.verifyMs(5) > 30);
  dl.observe({ proposed: 4, accepted: 0, draftMs: 0, verifyMs: 5 });
  assert.equal(dl.verifyMs(5), 5);
});

test("drafts that come in runs: the first draft's rate and the rate after a kept one are told apart", () => {
  // Half the steps inside a repeated passage (every draft right), half outside (the first wrong).
  const dl = new DraftLength(4);
  const rng = new Rng(5);
  const chosen: number[] = [];
  for (let s = 0; s < 300; s++) {
    const k = dl.next();
    if (s >= 100) chosen.push(k);
    const accepted = rng.uniform() < 0.5 ? k : 0;
    dl.observe({ proposed: k, accepted, draftMs: 0, verifyMs: 1 + 0.1 * k });
  }
  assert.ok(Math.abs(dl.acceptance(0) - 0.5) < 0.25, `first: ${dl.acceptance(0)}`);
  assert.ok(dl.acceptance(1) > 0.9, `after a kept one: ${dl.acceptance(1)}`);
  // E(4) / v(5) = 3 / 1.4 against E(1) / v(2) = 1.5 / 1.1: the most drafts.
  assert.ok(count(chosen, 4) >= 0.7 * chosen.length, `k chosen: ${chosen.join(" ")}`);
});

test("row counts not measured yet are estimated from their neighbours", () => {
  const dl = new DraftLength(4);
  assert.equal(dl.next(), 4, "nothing measured: the most drafts, as a fixed k");
  // A row count's first verification pays one-time costs (packing the weights on their first product): dropped.
  dl.observe({ proposed: 4, accepted: 4, draftMs: 0, verifyMs: 500 });
  assert.ok(Number.isNaN(dl.verifyMs(5)));
  assert.equal(dl.next(), 4, "still nothing measured");
  dl.observe({ proposed: 4, accepted: 4, draftMs: 0, verifyMs: 5 });
  assert.equal(dl.verifyMs(5), 5);
  assert.equal(dl.verifyMs(1), 1, "below the only measurement: in proportion to rows");
  dl.observe({ proposed: 0, accepted: 0, draftMs: 0, verifyMs: 2 });
  dl.observe({ proposed: 0, accepted: 0, draftMs: 0, verifyMs: 2 });
  assert.equal(dl.verifyMs(3), 3.5, "between two: linear");
  assert.throws(() => new DraftLength(0), /positive integer/);
});
