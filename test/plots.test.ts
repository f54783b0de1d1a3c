// The run's plots read on their own: axis titles, tick labels that differ, and a legend
// naming every series that stays inside its chart, however many experts a layer has.
import { test } from "node:test";
import assert from "node:assert/strict";
import { expertLoadChart, lossChart } from "../src/train/plots.js";
import type { MetricRecord } from "../src/train/metrics.js";

interface Text {
  cls: string;
  x: number;
  y: number;
  text: string;
  /** The <line> drawn just before it (a legend's sample line). */
  line?: Record<string, string>;
}
interface Chart {
  height: number;
  texts: Text[];
}

const attrs = (s: string): Record<string, string> => Object.fromEntries([...s.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
const unesc = (s: string): string => s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");

/** The charts of an SVG written by svgCharts, each with its height and texts (positions within the chart). */
function parse(svg: string): { height: number; charts: Chart[] } {
  const height = Number(attrs(/<svg [^>]*>/.exec(svg)![0]).height);
  const charts: Chart[] = [];
  let top = 0;
  for (const g of svg.split(/<g class="chart" /).slice(1)) {
    const offset = Number(/^transform="translate\(0 ([\d.]+)\)"/.exec(g)![1]);
    assert.equal(offset, top, "each chart starts where the one above it ends");
    const h = Number(attrs(/<rect [^>]*>/.exec(g)![0]).height);
    top += h;
    const texts: Text[] = [];
    let line: Record<string, string> | undefined;
    for (const m of g.matchAll(/<line ([^>]*)\/>|<text ([^>]*)>([^<]*)<\/text>/g)) {
      if (m[1] !== undefined) {
        line = attrs(m[1]);
        continue;
      }
      const a = attrs(m[2]!);
      const rot = /translate\(([\d.]+) ([\d.]+)\)/.exec(a.transform ?? "");
      texts.push({ cls: a.class ?? "", x: Number(a.x ?? rot?.[1]), y: Number(a.y ?? rot?.[2]), text: unesc(m[3]!), line });
    }
    charts.push({ height: h, texts });
  }
  assert.equal(top, height, "the document is as tall as its charts");
  return { height, charts };
}

const of = (c: Chart, cls: string): Text[] => c.texts.filter((t) => t.cls === cls);

/** A legend stays inside its chart, no two entries share a place, and no two series look alike. */
function checkLegend(c: Chart): void {
  const legend = of(c, "legend");
  const places = new Set(legend.map((t) => `${t.x},${t.y}`));
  assert.equal(places.size, legend.length, "every legend entry has a place of its own");
  for (const t of legend) {
    assert.ok(t.y > 0 && t.y + 4 <= c.height, `legend "${t.text}" at y ${t.y} is inside the chart (height ${c.height})`);
    assert.ok(t.x > 0 && t.x + 6.5 * t.text.length <= 720, `legend "${t.text}" at x ${t.x} is inside the chart`);
  }
  const looks = legend.map((t) => `${t.line!.stroke} ${t.line!["stroke-dasharray"] ?? "solid"}`);
  assert.equal(new Set(looks).size, looks.length, `every series has its own colour and pattern: ${looks.join(" | ")}`);
}

/** Tick labels exist on both axes and neighbouring ones never read alike. */
function checkTicks(c: Chart): void {
  for (const axis of ["tick x", "tick y"]) {
    const labels = of(c, axis).map((t) => t.text);
    assert.ok(labels.length >= 3, `${axis}: ${labels.join(", ")}`);
    assert.equal(new Set(labels).size, labels.length, `${axis} labels differ: ${labels.join(", ")}`);
    for (const l of labels) assert.match(l, /^-?\d+(\.\d+)?$/);
  }
}

const routing = (step: number, layers: number[][]): MetricRecord => ({ kind: "routing", step, layers: layers.map((tokensPerExpert) => ({ tokensPerExpert })) });

test("experts.svg: one chart per sparse layer with axis titles, tick labels and a legend naming every expert", () => {
  const records: MetricRecord[] = [];
  for (let s = 1; s <= 200; s++) {
    // Layer 0: 8 experts drifting apart; layer 1: 24 experts within a narrow band of shares (ticks 0.002 apart).
    records.push(routing(s, [Array.from({ length: 8 }, (_, e) => 100 + e * s), Array.from({ length: 24 }, (_, e) => 100 + e)]));
  }
  const { charts } = parse(expertLoadChart(records));
  assert.equal(charts.length, 2);
  charts.forEach((c, l) => {
    const E = l === 0 ? 8 : 24;
    assert.match(of(c, "title")[0]!.text, new RegExp(`^sparse layer ${l}: per-expert load`));
    assert.deepEqual(of(c, "axis x").map((t) => t.text), ["step"]);
    assert.deepEqual(of(c, "axis y").map((t) => t.text), ["share of routed tokens"]);
    assert.deepEqual(of(c, "legend").map((t) => t.text), [...Array.from({ length: E }, (_, e) => `expert ${e}`), `even share (1/${E})`]);
    checkLegend(c);
    checkTicks(c);
  });
});

test("experts.svg with 64 experts: the legend still fits (two columns, a taller chart)", () => {
  const records = [1, 2, 3].map((s) => routing(s, [Array.from({ length: 64 }, (_, e) => 1 + ((e * s) % 7))]));
  const [c] = parse(expertLoadChart(records)).charts;
  assert.equal(of(c!, "legend").length, 65);
  for (const t of of(c!, "legend")) assert.ok(t.y + 4 <= c!.height, `legend "${t.text}" inside the chart`);
  assert.equal(new Set(of(c!, "legend").map((t) => `${t.x},${t.y}`)).size, 65);
});

test("loss.svg: axis titles, tick labels, and a legend with train, each domain's validation loss and its baseline in the same colour", () => {
  const domains = ["zh", "en", "bi", "code"];
  const records: MetricRecord[] = [];
  for (let s = 1; s <= 300; s++) {
    records.push({ kind: "train", step: s, lm: 8 - Math.log(s) });
    if (s % 50 === 0) records.push({ kind: "eval", step: s, domains: Object.fromEntries(domains.map((d, i) => [d, { loss: 7 - Math.log(s) + i / 3 }])) });
  }
  const baselines = { zh: 6, en: 5.5, bi: 5, code: 4 };
  const { charts } = parse(lossChart(records, baselines, "demo: loss"));
  const c = charts[0]!;
  assert.equal(charts.length, 1);
  assert.deepEqual(of(c, "axis x").map((t) => t.text), ["step"]);
  assert.deepEqual(of(c, "axis y").map((t) => t.text), ["loss (nats / token)"]);
  const legend = of(c, "legend");
  assert.deepEqual(legend.map((t) => t.text), ["train (mean of 6)", ...domains.flatMap((d) => [`val ${d}`, `unigram ${d}`])]);
  checkLegend(c);
  checkTicks(c);
  for (const d of domains) {
    const val = legend.find((t) => t.text === `val ${d}`)!.line!;
    const uni = legend.find((t) => t.text === `unigram ${d}`)!.line!;
    assert.equal(uni.stroke, val.stroke, `${d}: its baseline is drawn in its colour`);
    assert.equal(val["stroke-dasharray"], undefined, `val ${d} is solid`);
    assert.ok(uni["stroke-dasharray"], `unigram ${d} is dashed`);
  }
});
