/**
 * The learning-rate schedule: linear warm-up to the peak, then a decay to the
 * final rate (PanGu-Σ: warm-up 5,000 steps, decay over 180,000 to 2e-5 —
 * docs/design.md §7.2), then flat. A pure function of the step, so a resumed run
 * needs nothing but the step count to continue the schedule exactly.
 */
import type { TrainConfig } from "./config.js";

export interface Schedule {
  lr: number;
  minLr: number;
  warmupSteps: number;
  decaySteps: number;
  decay: "cosine" | "linear" | "constant";
}

export function scheduleOf(c: TrainConfig): Schedule {
  const o = c.optim;
  return { lr: o.lr, minLr: Math.min(o.minLr, o.lr), warmupSteps: o.warmupSteps, decaySteps: o.decaySteps ?? c.steps, decay: o.decay };
}

/** Learning rate of optimizer step `step` (0-based). */
export function learningRate(s: Schedule, step: number): number {
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  if (s.decay === "constant") return s.lr;
  const span = Math.max(1, s.decaySteps - s.warmupSteps);
  const p = Math.min(1, (step - s.warmupSteps) / span);
  const f = s.decay === "cosine" ? 0.5 * (1 + Math.cos(Math.PI * p)) : 1 - p;
  return s.minLr + (s.lr - s.minLr) * f;
}
