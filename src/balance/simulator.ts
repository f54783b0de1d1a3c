/**
 * A step-time model of expert-parallel execution on D devices.
 *
 * Layout: the N tokens of a step are split evenly over the devices (token r
 * lives on device ⌊r·D/N⌋) for attention, dense FFNs, shared experts and the
 * router (data parallel); each routed expert lives on one device (the
 * placement). A sparse layer runs as four phases, each ending at a barrier:
 *
 *   dense    t = max_d roofline(n_d·(f_attn + f_shared + f_router), w_attn + w_shared + w_router)
 *   dispatch t = λ + max_d max(out_d, in_d)·C·b / β
 *   experts  t = max_d roofline(Σ_{e on d} c_e·f_expert, a_d·w_expert)
 *   combine  t = the same as dispatch (the outputs travel back)
 *
 * with roofline(f, w) = max(f / FLOPS, w / memBW): a device is bound either
 * by its arithmetic or by reading the weights (small batches — decoding — are
 * weight-bound). Per token and per assignment, with C width, F_e expert width,
 * m matrices per FFN, L context, E experts, b bytes per value:
 *   f_attn = 8C² + 4·L·C        (Q, K, V, O projections; QKᵀ and AV)
 *   f_expert = 2·m·C·F_e        f_shared = shared · f_expert        f_router = 2·C·E
 *   w_attn = 4C²·b   w_expert = m·C·F_e·b   w_shared = shared·w_expert   w_router = C·E·b
 * n_d = tokens on device d, c_e = assignments to expert e, a_d = experts on d
 * with at least one assignment, out_d / in_d = assignments that leave / reach
 * device d (one C-vector each, not deduplicated per token; assignments to an
 * expert on the token's own device do not travel), λ and β the link latency
 * and bandwidth. A dense layer is one phase, roofline(n_d·(f_attn + 2·m·C·F),
 * w_attn + m·C·F·b). The output projection adds roofline(n_d·2·C·V, C·V·b).
 * Activations' memory traffic, the KV cache and overlap of communication with
 * compute are left out [ours: the simplest model that shows imbalance].
 *
 * Training multiplies compute phases by 3 (backward ≈ twice forward) and the
 * all-to-alls by 2 (the backward pass sends gradients along the same routes).
 *
 * Time lost to imbalance: the step time minus the time of the same step with
 * every per-device quantity (each phase's time on each device, and each
 * device's all-to-all bytes) replaced by its mean over devices.
 */
import type { RoutedBatch } from "./analysis.js";
import type { Hardware } from "./hardware.js";
import type { Placement } from "./placement.js";
import type { SimShape } from "./shape.js";
import { SigmaError } from "../util/errors.js";

export type SimMode = "infer" | "train";

export interface LayerTime {
  dense: number;
  dispatch: number;
  experts: number;
  combine: number;
  total: number;
  /** The same layer with per-device work at its mean. */
  balanced: number;
  /** Expert-phase time of each device. */
  expertPerDevice: number[];
}

export interface StepTime {
  tokens: number;
  seconds: number;
  balancedSeconds: number;
  lostToImbalance: number;
  tokensPerSecond: number;
  /** One entry per sparse layer. */
  sparse: LayerTime[];
  /** Time of all dense layers plus the output projection. */
  denseSeconds: number;
}

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const max = (v: number[]) => Math.max(...v);

/** Tokens on each device when N tokens are split evenly (token r on device ⌊r·D/N⌋). */
export function tokensPerDevice(N: number, D: number): number[] {
  const n = new Array<number>(D).fill(0);
  for (let r = 0; r < N; r++) n[Math.floor((r * D) / N)]++;
  return n;
}

/**
 * Simulated time of one step whose sparse layers route as `routings` (one per
 * sparse layer, all over the same N tokens).
 */
export function simulateStep(shape: SimShape, hw: Hardware, placement: Placement, routings: RoutedBatch[], mode: SimMode = "infer"): StepTime {
  const D = placement.devices;
  const { width: C, expertWidth: Fe, ffnMatrices: m, experts: E, bytesPerValue: b } = shape;
  if (routings.length !== shape.sparseLayers) {
    throw new SigmaError(`simulator: ${routings.length} routings for a shape with ${shape.sparseLayers} sparse layers`, "give one routing per sparse layer");
  }
  if (placement.deviceOf.length !== E) throw new SigmaError(`simulator: the placement covers ${placement.deviceOf.length} experts, the shape has ${E}`, "build the placement for this model's expert count");
  const N = routings[0]!.expertIds.length / routings[0]!.k;
  const computeX = mode === "train" ? 3 : 1;
  const commX = mode === "train" ? 2 : 1;
  const roofline = (flops: number, bytes: number) => computeX * Math.max(flops / hw.flops, bytes / hw.memoryBandwidth);
  const a2a = (vectors: number) => commX * (hw.linkLatency + (vectors * C * b) / hw.linkBandwidth);

  const n = tokensPerDevice(N, D);
  const fAttn = 8 * C * C + 4 * shape.context * C;
  const wAttn = 4 * C * C * b;
  const fExpert = 2 * m * C * Fe;
  const wExpert = m * C * Fe * b;
  const fRouter = shape.learnedRouter ? 2 * C * E : 0;
  const wRouter = shape.learnedRouter ? C * E * b : 0;

  const sparse = routings.map((rb): LayerTime => {
    if (rb.experts !== E || rb.expertIds.length / rb.k !== N) {
      throw new SigmaError(`simulator: a routing has ${rb.experts} experts and ${rb.expertIds.length / rb.k} tokens, expected ${E} and ${N}`, "route every layer over the same batch with the shape's expert count");
    }
    const count = new Float64Array(E);
    const out = new Array<number>(D).fill(0);
    const inn = new Array<number>(D).fill(0);
    for (let a = 0; a < rb.expertIds.length; a++) {
      const e = rb.expertIds[a]!;
      if (e >= E) continue; // dropped: not computed, not sent
      count[e]++;
      const src = Math.floor((Math.floor(a / rb.k) * D) / N);
      const dst = placement.deviceOf[e]!;
      if (src !== dst) {
        out[src]++;
        inn[dst]++;
      }
    }
    const flops = new Array<number>(D).fill(0);
    const active = new Array<number>(D).fill(0);
    for (let e = 0; e < E; e++) {
      const d = placement.deviceOf[e]!;
      flops[d] += count[e]! * fExpert;
      if (count[e]! > 0) active[d]++;
    }
    const denseD = n.map((nd) => roofline(nd * (fAttn + shape.sharedExperts * fExpert + fRouter), wAttn + shape.sharedExperts * wExpert + wRouter));
    const expertD = flops.map((f, d) => roofline(f, active[d]! * wExpert));
    const trafficD = out.map((o, d) => Math.max(o, inn[d]!));
    const dense = max(denseD);
    const dispatch = a2a(max(trafficD));
    const experts = max(expertD);
    const total = dense + 2 * dispatch + experts;
    const balanced = mean(denseD) + 2 * a2a(mean(trafficD)) + mean(expertD);
    return { dense, dispatch, experts, combine: dispatch, total, balanced, expertPerDevice: expertD };
  });

  const F = shape.ffnWidth;
  const denseLayerD = n.map((nd) => roofline(nd * (fAttn + 2 * m * C * F), wAttn + m * C * F * b));
  const logitsD = n.map((nd) => (shape.vocabSize ? roofline(nd * 2 * C * shape.vocabSize, C * shape.vocabSize * b) : 0));
  const denseSeconds = shape.denseLayers * max(denseLayerD) + max(logitsD);
  const denseBalanced = shape.denseLayers * mean(denseLayerD) + mean(logitsD);

  const seconds = denseSeconds + sparse.reduce((s, l) => s + l.total, 0);
  const balancedSeconds = denseBalanced + sparse.reduce((s, l) => s + l.balanced, 0);
  return { tokens: N, seconds, balancedSeconds, lostToImbalance: seconds - balancedSeconds, tokensPerSecond: N / seconds, sparse, denseSeconds };
}
