/**
 * Small hand-written SVG charts: grouped bars (per-device loads) and
 * histograms built on them (IS distributions). No dependencies: the output is
 * a string, viewable in any browser.
 */

export interface BarSeries {
  name: string;
  values: number[];
}

export interface BarChart {
  title: string;
  xLabel: string;
  yLabel: string;
  /** One label per group of bars along x. */
  categories: string[];
  series: BarSeries[];
  /** A dashed horizontal reference line (e.g. the mean load). */
  reference?: { value: number; label: string };
}

const COLORS = ["#4878d0", "#ee854a", "#6acc64", "#d65f5f", "#956cb4", "#8c613c", "#dc7ec0", "#797979"];
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const num = (v: number) => (Math.abs(v) >= 1000 ? v.toFixed(0) : String(Number(v.toPrecision(3))));

export function groupedBarsSvg(c: BarChart): string {
  const W = 720, H = 400, left = 64, right = 16, top = 40, bottom = 64;
  const plotW = W - left - right, plotH = H - top - bottom;
  const all = c.series.flatMap((s) => s.values).concat(c.reference ? [c.reference.value] : []);
  const yMax = niceCeil(Math.max(1e-12, ...all));
  const y = (v: number) => top + plotH - (v / yMax) * plotH;
  const groupW = plotW / Math.max(1, c.categories.length);
  const barW = (groupW * 0.8) / Math.max(1, c.series.length);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(c.title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${num(v)}</text>`);
  }
  c.categories.forEach((cat, i) => {
    c.series.forEach((s, j) => {
      const v = s.values[i] ?? 0;
      const x = left + i * groupW + groupW * 0.1 + j * barW;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${barW.toFixed(1)}" height="${(top + plotH - y(v)).toFixed(1)}" fill="${COLORS[j % COLORS.length]}"><title>${esc(s.name)} ${esc(cat)}: ${num(v)}</title></rect>`);
    });
    // Label every category when they fit, else every n-th.
    const every = Math.ceil(c.categories.length / (c.categories.some((l) => l.length > 6) ? 6 : 24));
    if (i % every === 0) parts.push(`<text x="${(left + (i + 0.5) * groupW).toFixed(1)}" y="${top + plotH + 14}" text-anchor="middle">${esc(cat)}</text>`);
  });
  if (c.reference) {
    const ry = y(c.reference.value).toFixed(1);
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${ry}" y2="${ry}" stroke="black" stroke-dasharray="4 3"/>`);
    parts.push(`<text x="${W - right}" y="${Number(ry) - 4}" text-anchor="end">${esc(c.reference.label)}</text>`);
  }
  parts.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}" stroke="black"/>`);
  parts.push(`<line x1="${left}" x2="${W - right}" y1="${top + plotH}" y2="${top + plotH}" stroke="black"/>`);
  parts.push(`<text x="${left + plotW / 2}" y="${H - 28}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${top + plotH / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  c.series.forEach((s, j) => {
    const x = left + 8 + j * 150;
    parts.push(`<rect x="${x}" y="${H - 16}" width="10" height="10" fill="${COLORS[j % COLORS.length]}"/><text x="${x + 14}" y="${H - 7}">${esc(s.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

/**
 * Histogram of several samples over common bins: bin 0 holds exact zeros
 * (IS = 0 is the case that matters); the rest split [smallest positive value,
 * largest] evenly, so a narrow spread of positive values is still resolved.
 */
export function histogramSvg(title: string, xLabel: string, samples: BarSeries[], bins = 12): string {
  const positive = samples.flatMap((s) => s.values.filter((v) => v > 0));
  const lo = positive.length ? Math.min(...positive) : 0;
  const hi = positive.length ? Math.max(...positive) : 1;
  const n = hi > lo ? bins - 1 : 1;
  const width = (hi - lo) / n;
  const categories = ["0", ...Array.from({ length: n }, (_, i) => (n === 1 ? num(lo) : `${num(lo + i * width)}–${num(lo + (i + 1) * width)}`))];
  const series = samples.map((s) => {
    const counts = new Array<number>(n + 1).fill(0);
    for (const v of s.values) counts[v <= 0 ? 0 : 1 + Math.min(n - 1, width > 0 ? Math.floor((v - lo) / width) : 0)]++;
    return { name: s.name, values: counts.map((c) => c / Math.max(1, s.values.length)) };
  });
  return groupedBarsSvg({ title, xLabel, yLabel: "fraction of batches", categories, series });
}

function niceCeil(v: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
