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
  /** A colour of its own; default: the next of the palette. */
  color?: string;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
/** Past ten series the colours repeat: each further ten get a stroke pattern of their own, so no two series look alike up to forty. */
const PATTERNS = ["", "7 3", "2 2", "9 3 2 3"];
const W = 720;
/** Height of a chart whose legend fits beside it; a longer legend makes its chart taller. */
const H = 360;
const M = { left: 60, right: 150, top: 36, bottom: 44 };
const LEGEND_ROW = 16;

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

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

/**
 * "Nice" tick values covering [lo, hi], and their labels: as many decimals as
 * the spacing needs, so neighbouring ticks never read alike (0.036, 0.038, …).
 */
function ticks(lo: number, hi: number, n = 5): { value: number; label: string }[] {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const decimals = Math.min(12, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  const out: { value: number; label: string }[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push({ value: v, label: (Math.abs(v) < step / 2 ? 0 : v).toFixed(decimals) });
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

/**
 * Where the legend goes: one column in the right margin, or two when the
 * names are short and one column would run past the chart; a legend that
 * still does not fit makes the chart taller.
 */
function legendLayout(names: string[]): { cols: number; colWidth: number; height: number } {
  const rowsFit = Math.floor((H - M.top - 10) / LEGEND_ROW);
  const longest = Math.max(0, ...names.map((n) => n.length));
  // About 6.5 px a character at 11 px, after a 24 px sample line and a gap.
  const cols = names.length > rowsFit && 30 + 6.5 * longest <= (M.right - 12) / 2 ? 2 : 1;
  const rows = Math.ceil(names.length / cols);
  return { cols, colWidth: (M.right - 12) / cols, height: Math.max(H, M.top + 10 + rows * LEGEND_ROW + 10) };
}

/** One chart as an SVG group of width W (no <svg> wrapper), and its height. */
function chartGroup(title: string, xLabel: string, yLabel: string, all: Series[]): { svg: string; height: number } {
  const series = all.map((s, i) => ({
    ...s,
    points: thin(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))),
    color: s.color ?? COLORS[i % COLORS.length]!,
    dash: s.dashed ? "6 4" : PATTERNS[Math.floor(i / COLORS.length) % PATTERNS.length]!,
  }));
  const legend = legendLayout(series.map((s) => s.name));
  const height = legend.height;
  const pts = series.flatMap((s) => s.points);
  const [x0, x1] = extent(pts.map((p) => p[0])) ?? [0, 1];
  let [y0, y1] = extent(pts.map((p) => p[1])) ?? [0, 1];
  const pad = (y1 - y0) * 0.05 || 0.5;
  y0 -= pad;
  y1 += pad;
  const pw = W - M.left - M.right;
  const ph = height - M.top - M.bottom;
  const sx = (x: number): number => M.left + (x1 === x0 ? pw / 2 : ((x - x0) / (x1 - x0)) * pw);
  const sy = (y: number): number => M.top + ph - ((y - y0) / (y1 - y0)) * ph;
  const dashAttr = (d: string): string => (d ? ` stroke-dasharray="${d}"` : "");
  const el: string[] = [];
  el.push(`<rect width="${W}" height="${height}" fill="white"/>`);
  el.push(`<text class="title" x="${W / 2 - M.right / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`);
  for (const t of ticks(y0, y1)) {
    el.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t.value).toFixed(1)}" y2="${sy(t.value).toFixed(1)}" stroke="#eee"/>`);
    el.push(`<text class="tick y" x="${M.left - 6}" y="${(sy(t.value) + 4).toFixed(1)}" text-anchor="end" font-size="11">${t.label}</text>`);
  }
  for (const t of ticks(x0, x1)) {
    el.push(`<line x1="${sx(t.value).toFixed(1)}" x2="${sx(t.value).toFixed(1)}" y1="${M.top + ph}" y2="${M.top + ph + 4}" stroke="#333"/>`);
    el.push(`<text class="tick x" x="${sx(t.value).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle" font-size="11">${t.label}</text>`);
  }
  el.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  el.push(`<text class="axis x" x="${M.left + pw / 2}" y="${height - 8}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`);
  el.push(`<text class="axis y" transform="translate(14 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const good = s.points;
    if (good.length > 0) {
      const d = good.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join("");
      el.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"${dashAttr(s.dash)}/>`);
      if (good.length === 1) el.push(`<circle cx="${sx(good[0]![0]).toFixed(1)}" cy="${sy(good[0]![1]).toFixed(1)}" r="3" fill="${s.color}"/>`);
    }
    // The legend fills its columns top to bottom.
    const rows = Math.ceil(series.length / legend.cols);
    const lx = W - M.right + 12 + Math.floor(i / rows) * legend.colWidth;
    const ly = M.top + 10 + (i % rows) * LEGEND_ROW;
    el.push(`<line x1="${lx}" x2="${lx + 20}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"${dashAttr(s.dash)}/>`);
    el.push(`<text class="legend" x="${lx + 25}" y="${ly + 4}" font-size="11">${esc(s.name)}</text>`);
  });
  return { svg: el.join("\n"), height };
}

/** Charts stacked vertically in one SVG document. */
export function svgCharts(charts: { title: string; xLabel: string; yLabel: string; series: Series[] }[]): string {
  let top = 0;
  const body = charts
    .map((c) => {
      const g = chartGroup(c.title, c.xLabel, c.yLabel, c.series);
      const out = `<g class="chart" transform="translate(0 ${top})">\n${g.svg}\n</g>`;
      top += g.height;
      return out;
    })
    .join("\n");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${top}" viewBox="0 0 ${W} ${top}" font-family="sans-serif">\n${body}\n</svg>\n`;
}

/**
 * Training loss, and per domain its validation loss (solid) beside its
 * unigram baseline (dashed, the same colour), so a domain's two lines pair up.
 */
export function lossChart(records: MetricRecord[], baselines: Record<string, number> = {}, title = "loss"): string {
  const train = records.filter((r) => r.kind === "train").map((r) => [r.step, r.lm as number] as [number, number]).filter(([, y]) => Number.isFinite(y));
  const evals = records.filter((r) => r.kind === "eval") as (MetricRecord & { domains: Record<string, { loss: number }> })[];
  const domains = [...new Set(evals.flatMap((e) => Object.keys(e.domains)))];
  const w = windowFor(train.length);
  const series: Series[] = [{ name: w > 1 ? `train (mean of ${w})` : "train", points: movingMean(train, w), color: "#222" }];
  const lastStep = Math.max(1, extent(records.map((r) => r.step))?.[1] ?? 1);
  domains.forEach((d, k) => {
    const color = COLORS[k % COLORS.length]!;
    series.push({ name: `val ${d}`, points: evals.filter((e) => e.domains[d]).map((e) => [e.step, e.domains[d]!.loss]), color });
    if (baselines[d] !== undefined) series.push({ name: `unigram ${d}`, points: [[0, baselines[d]!], [lastStep, baselines[d]!]], dashed: true, color });
  });
  return svgCharts([{ title, xLabel: "step", yLabel: "loss (nats / token)", series }]);
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
    // The share each expert would have under perfect balance.
    const steps = extent(routing.map((r) => r.step))!;
    series.push({ name: `even share (1/${E})`, points: [[steps[0], 1 / E], [steps[1], 1 / E]], dashed: true, color: "#000" });
    const title = `sparse layer ${l}: per-expert load${w > 1 ? ` (mean of ${w} steps)` : ""}`;
    charts.push({ title, xLabel: "step", yLabel: "share of routed tokens", series });
  }
  return svgCharts(charts.length ? charts : [{ title: "per-expert load (no sparse layers)", xLabel: "step", yLabel: "share", series: [] }]);
}
