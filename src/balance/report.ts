/**
 * Balance reports as text, JSON and pictures.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { distribution, type Distribution, type LayerBalance } from "./analysis.js";
import { groupedBarsSvg, histogramSvg } from "./svg.js";

export interface LayerSummary {
  layer: number;
  /** Share of all assignments each expert received. */
  expertShare: number[];
  /** Share of all assignments each device received. */
  deviceShare: number[];
  imbalance: Distribution;
  maxOverMean: Distribution;
  droppedFraction: number;
}

export function summarizeLayer(l: LayerBalance, layer: number): LayerSummary {
  const total = Math.max(1, l.perExpert.reduce((a, b) => a + b, 0));
  return {
    layer,
    expertShare: l.perExpert.map((c) => c / total),
    deviceShare: l.perDevice.map((c) => c / total),
    imbalance: distribution(l.imbalance),
    maxOverMean: distribution(l.maxOverMean),
    droppedFraction: l.dropped / Math.max(1, l.assignments),
  };
}

const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
const f3 = (v: number) => v.toFixed(3);

/** A plain-text report: one block per layer. */
export function formatBalance(head: string, summaries: LayerSummary[], capacityFactor: number | null): string {
  const lines = [head];
  for (const s of summaries) {
    const is = s.imbalance;
    lines.push(
      `layer ${s.layer}: IS mean ${f3(is.mean)}  p50 ${f3(is.p50)}  p90 ${f3(is.p90)}  max ${f3(is.max)}  batches with IS > 0: ${pct(is.fractionPositive)}`,
      `  max/mean device load: mean ${f3(s.maxOverMean.mean)}  max ${f3(s.maxOverMean.max)}` +
        (capacityFactor === null ? "" : `   dropped at capacity factor ${capacityFactor}: ${pct(s.droppedFraction)} of assignments`),
      `  device share: ${s.deviceShare.map(pct).join(" ")}`,
      `  expert share: ${s.expertShare.map(pct).join(" ")}`,
    );
  }
  return lines.join("\n");
}

/** Writes device-loads.svg and imbalance.svg under `dir`; returns their paths. */
export function writeBalancePictures(dir: string, title: string, summaries: LayerSummary[], layers: LayerBalance[]): string[] {
  mkdirSync(dir, { recursive: true });
  const D = summaries[0]?.deviceShare.length ?? 0;
  const loads = join(dir, "device-loads.svg");
  writeFileSync(
    loads,
    groupedBarsSvg({
      title: `${title}: share of token-expert computations per device`,
      xLabel: "device",
      yLabel: "share of assignments",
      categories: Array.from({ length: D }, (_, d) => String(d)),
      series: summaries.map((s) => ({ name: `layer ${s.layer}`, values: s.deviceShare })),
      reference: { value: 1 / Math.max(1, D), label: "balanced" },
    }),
  );
  const is = join(dir, "imbalance.svg");
  writeFileSync(is, histogramSvg(`${title}: imbalance score per batch`, "IS = (max_d T_d − min_d T_d) / |X|", layers.map((l, i) => ({ name: `layer ${summaries[i]!.layer}`, values: l.imbalance }))));
  return [loads, is];
}
