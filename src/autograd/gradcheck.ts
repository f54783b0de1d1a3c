/**
 * Finite-difference gradient check. Build inputs in float64 (they then run on
 * the reference backend) and compare the tape's gradients with central
 * differences of a scalar L = Σ f(inputs) ⊙ R, with R a fixed random tensor so
 * that every output element matters.
 */
import { Rng } from "../util/rng.js";
import { Tensor } from "../tensor/tensor.js";
import { backward, clearTape, noGrad, zeroGrad } from "./tape.js";

export interface GradcheckOptions {
  /** Finite-difference step. */
  eps?: number;
  atol?: number;
  rtol?: number;
  /** At most this many elements per input are perturbed (chosen at random); the rest are trusted to the same code path. */
  maxPerInput?: number;
  seed?: number;
}

export interface GradcheckResult {
  ok: boolean;
  /** Largest |analytic − numeric| / (atol + rtol·max(|analytic|, |numeric|)); ok when ≤ 1. */
  worst: number;
  /** Where the worst element sits, for the failure message. */
  where: string;
  checked: number;
}

export function gradcheck(f: (inputs: Tensor[]) => Tensor, inputs: Tensor[], opts: GradcheckOptions = {}): GradcheckResult {
  const eps = opts.eps ?? 1e-6;
  const atol = opts.atol ?? 1e-7;
  const rtol = opts.rtol ?? 1e-5;
  const maxPer = opts.maxPerInput ?? 40;
  const rng = new Rng(opts.seed ?? 1234);
  for (const t of inputs) {
    if (t.dtype !== "float64") throw new TypeError(`gradcheck: inputs must be float64 (got ${t}); finite differences in float32 are too coarse`);
    t.requiresGrad = true;
  }
  zeroGrad(inputs, true);

  // Analytic gradients.
  const y = f(inputs);
  const R = Tensor.randn(y.shape, rng, 1, "float64");
  const weighted = (out: Tensor): number => {
    let s = 0;
    const a = out.data;
    const r = R.data;
    for (let i = 0; i < a.length; i++) s += a[i]! * r[i]!;
    return s;
  };
  backward(y, R);
  clearTape();
  const analytic = inputs.map((t) => (t.grad ? Float64Array.from(t.grad.data) : new Float64Array(t.size)));

  // Numeric gradients on a sample of elements.
  let worst = 0;
  let where = "";
  let checked = 0;
  noGrad(() => {
    inputs.forEach((t, ti) => {
      const d = t.data;
      const picks = d.length <= maxPer ? [...Array(d.length).keys()] : Array.from({ length: maxPer }, () => rng.int(d.length));
      for (const i of picks) {
        const orig = d[i]!;
        d[i] = orig + eps;
        const plus = weighted(f(inputs));
        d[i] = orig - eps;
        const minus = weighted(f(inputs));
        d[i] = orig;
        const num = (plus - minus) / (2 * eps);
        const ana = analytic[ti]![i]!;
        const err = Math.abs(ana - num) / (atol + rtol * Math.max(Math.abs(ana), Math.abs(num)));
        checked++;
        if (err > worst || Number.isNaN(err)) {
          worst = Number.isNaN(err) ? Infinity : err;
          where = `input ${ti} ${t.name ?? ""} element ${i}: analytic ${ana}, numeric ${num}`;
        }
      }
    });
  });
  for (const t of inputs) {
    t.requiresGrad = false;
    t.grad = null;
  }
  return { ok: worst <= 1, worst, where, checked };
}
