/**
 * SVG line charts of a run, written by hand (a chart is a few dozen
 * elements; no library needed): training and per-domain validation loss
 * against the unigram baselines, and each sparse layer's per-expert share of
 * the routed tokens over the run.
 */
import type { MetricRecord } from "./metrics.js";

export interface Series {
  name: string;
  points: [number, number][];
  dashed?: boolean;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const W = 720;
const H = 360;
const M = { left: 60, right: 150, top: 36, bottom: 44 };

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const fmt = (v: number): string => (Number.isInteger(v) || Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Moving mean over `w` points (centred at the window's end), for per-step series that jitter batch to batch. */
export function movingMean(points: [number, number][], w: number): [number, number][] {
  if (w <= 1) return points;
  let acc = 0;
  return points.map(([x, y], i) => {
    acc += y;
    if (i >= w) acc -= points[i - w]![1];
    return [x, acc / Math.min(i + 1, w)];
  });
}

/** A window of about 2% of the run, so a curve keeps its shape but loses the batch noise. */
const windowFor = (n: number): number => Math.max(1, Math.round(n / 50));

/** "Nice" tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(v);
  return out;
}

/** Most points drawn per series: a chart is 510 px wide, so more only makes the file larger. */
const MAX_DRAWN = 2000;

/** Every k-th point (and the last), so that at most MAX_DRAWN remain. */
function thin(points: [number, number][]): [number, number][] {
  if (points.length <= MAX_DRAWN) return points;
  const k = Math.ceil(points.length / MAX_DRAWN);
  const out = points.filter((_, i) => i % k === 0);
  if ((points.length - 1) % k !== 0) out.push(points[points.length - 1]!);
  return out;
}

/** [min, max] of a long list (no spread: a run may log more points than a call takes arguments). */
function extent(values: Iterable<number>): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

/** One chart as an SVG group of size W×H (no <svg> wrapper). */
function chartGroup(title: string, xLabel: string, yLabel: string, all: Series[]): string {
  const series = all.map((s) => ({ ...s, points: thin(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))) }));
  const pts = series.flatMap((s) => s.points);
  const [x0, x1] = extent(pts.map((p) => p[0])) ?? [0, 1];
  let [y0, y1] = extent(pts.map((p) => p[1])) ?? [0, 1];
  const pad = (y1 - y0) * 0.05 || 0.5;
  y0 -= pad;
  y1 += pad;
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number): number => M.left + (x1 === x0 ? pw / 2 : ((x - x0) / (x1 - x0)) * pw);
  const sy = (y: number): number => M.top + ph - ((y - y0) / (y1 - y0)) * ph;
  const el: string[] = [];
  el.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  el.push(`<text x="${W / 2 - M.right / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`);
  for (const t of ticks(y0, y1)) {
    el.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#eee"/>`);
    el.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end" font-size="11">${fmt(t)}</text>`);
  }
  for (const t of ticks(x0, x1)) {
    el.push(`<text x="${sx(t).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle" font-size="11">${fmt(t)}</text>`);
  }
  el.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  el.push(`<text x="${M.left + pw / 2}" y="${H - 8}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`);
  el.push(`<text transform="translate(14 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length]!;
    const good = s.points;
    if (good.length === 0) return;
    const d = good.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join("");
    el.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`);
    if (good.length === 1) el.push(`<circle cx="${sx(good[0]![0]).toFixed(1)}" cy="${sy(good[0]![1]).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = M.top + 10 + i * 18;
    el.push(`<line x1="${W - M.right + 12}" x2="${W - M.right + 36}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`);
    el.push(`<text x="${W - M.right + 42}" y="${ly + 4}" font-size="11">${esc(s.name)}</text>`);
  });
  return el.join("\n");
}

/** Charts stacked vertically in one SVG document. */
export function svgCharts(charts: { title: string; xLabel: string; yLabel: string; series: Series[] }[]): string {
  const body = charts.map((c, i) => `<g transform="translate(0 ${i * H})">\n${chartGroup(c.title, c.xLabel, c.yLabel, c.series)}\n</g>`).join("\n");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H * charts.length}" viewBox="0 0 ${W} ${H * charts.length}" font-family="sans-serif">\n${body}\n</svg>\n`;
}

/** Training loss, per-domain validation loss and (dashed) each domain's unigram baseline. */
export function lossChart(records: MetricRecord[], baselines: Record<string, number> = {}, title = "loss"): string {
  const train = records.filter((r) => r.kind === "train").map((r) => [r.step, r.lm as number] as [number, number]).filter(([, y]) => Number.isFinite(y));
  const evals = records.filter((r) => r.kind === "eval") as (MetricRecord & { domains: Record<string, { loss: number }> })[];
  const domains = [...new Set(evals.flatMap((e) => Object.keys(e.domains)))];
  const w = windowFor(train.length);
  const series: Series[] = [{ name: w > 1 ? `train (mean of ${w})` : "train", points: movingMean(train, w) }];
  const lastStep = Math.max(1, extent(records.map((r) => r.step))?.[1] ?? 1);
  for (const d of domains) series.push({ name: `val ${d}`, points: evals.filter((e) => e.domains[d]).map((e) => [e.step, e.domains[d]!.loss]) });
  for (const d of domains) if (baselines[d] !== undefined) series.push({ name: `unigram ${d}`, points: [[0, baselines[d]!], [lastStep, baselines[d]!]], dashed: true });
  return svgCharts([{ title, xLabel: "step", yLabel: "nats / token", series }]);
}

/** Per sparse layer: each expert's share of the routed assignments, step by step. */
export function expertLoadChart(records: MetricRecord[]): string {
  const all = records.filter((r) => r.kind === "routing") as (MetricRecord & { layers: { tokensPerExpert: number[] }[] })[];
  // The layout of the first record; a record of another layout (a damaged line) is left out.
  const shape = (r: (typeof all)[number]): string => r.layers.map((l) => l.tokensPerExpert.length).join(",");
  const routing = all.filter((r) => shape(r) === shape(all[0]!));
  const layers = routing[0]?.layers.length ?? 0;
  const charts = [];
  for (let l = 0; l < layers; l++) {
    const E = routing[0]!.layers[l]!.tokensPerExpert.length;
    const series: Series[] = [];
    const w = windowFor(routing.length);
    for (let e = 0; e < E; e++) {
      const share = routing.map((r): [number, number] => {
        const c = r.layers[l]!.tokensPerExpert;
        const total = c.reduce((a, b) => a + b, 0);
        return [r.step, total ? c[e]! / total : 0];
      });
      series.push({ name: `expert ${e}`, points: movingMean(share, w) });
    }
    const title = `sparse layer ${l}: per-expert load${w > 1 ? ` (mean of ${w} steps)` : ""}`;
    charts.push({ title, xLabel: "step", yLabel: "share of routed tokens", series });
  }
  return svgCharts(charts.length ? charts : [{ title: "per-expert load (no sparse layers)", xLabel: "step", yLabel: "share", series: [] }]);
}
