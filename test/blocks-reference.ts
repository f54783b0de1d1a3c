// A plain-TypeScript reference forward of a Sigma model with any block
// options (docs/design.md §1.7), written from the equations, loop by loop,
// in float64, independently of src/ops and src/nn: it reads the parameters
// by name and computes the logits of one sequence. The model tests compare
// PanguSigma.forward with it.
import type { ModelConfig } from "../src/models/config.js";
import type { PanguSigma } from "../src/models/pangu-sigma.js";

type Vec = Float64Array;

export function referenceLogits(model: PanguSigma, tokens: number[], domain = 0): Vec[] {
  const c: ModelConfig = model.config;
  const P = new Map([...model.namedParameters()].map(([n, p]) => [n, Float64Array.from(p.tensor.data)]));
  const get = (n: string): Vec => {
    const v = P.get(n);
    if (!v) throw new Error(`reference: no parameter ${n}`);
    return v;
  };
  const opt = (n: string): Vec | null => P.get(n) ?? null;
  const C = c.width, H = c.heads, D = c.headDim ?? C / H, G = c.kvHeads ?? H, V = c.vocabSize, T = tokens.length;
  const slot = c.domains[domain]!.slot;
  const eps = c.layerNormEps;

  // y = W·x + b for W [out, in] stored row-major (offset: a slice of a stacked tensor).
  const lin = (x: Vec, W: Vec, out: number, b: Vec | null, off = 0, boff = 0): Vec => {
    const n = x.length, y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = b ? b[boff + o]! : 0;
      for (let i = 0; i < n; i++) s += W[off + o * n + i]! * x[i]!;
      y[o] = s;
    }
    return y;
  };
  const norm = (x: Vec, prefix: string): Vec => {
    const g = get(`${prefix}.gamma`), n = x.length, y = new Float64Array(n);
    if (c.norm === "rmsnorm") {
      let ss = 0;
      for (const v of x) ss += v * v;
      const r = 1 / Math.sqrt(ss / n + eps);
      for (let i = 0; i < n; i++) y[i] = x[i]! * r * g[i]!;
      return y;
    }
    const b = get(`${prefix}.beta`);
    let m = 0;
    for (const v of x) m += v / n;
    let varr = 0;
    for (const v of x) varr += (v - m) ** 2 / n;
    for (let i = 0; i < n; i++) y[i] = ((x[i]! - m) / Math.sqrt(varr + eps)) * g[i]! + b[i]!;
    return y;
  };
  const rmsGain = (x: Vec, g: Vec): Vec => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const r = 1 / Math.sqrt(ss / x.length + eps);
    return x.map((v, i) => v * r * g[i]!);
  };
  // HF Llama: emb = cat(freqs, freqs); x·cos + rotate_half(x)·sin with rotate_half(x) = cat(−x2, x1).
  const rotary = (x: Vec, pos: number): Vec => {
    const half = D / 2, y = new Float64Array(D);
    for (let i = 0; i < D; i++) {
      const f = pos / Math.pow(c.ropeTheta, (2 * (i % half)) / D);
      const rot = i < half ? -x[i + half]! : x[i - half]!;
      y[i] = x[i]! * Math.cos(f) + rot * Math.sin(f);
    }
    return y;
  };
  const act = (v: number): number => {
    switch (c.activation) {
      case "fastgelu":
        return v / (1 + Math.exp(-1.702 * v));
      case "gelu_tanh":
        return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
      case "gelu": {
        // Φ via erf's Abramowitz–Stegun 7.1.26 would be too coarse: integrate instead (Simpson, fine enough for a test).
        const z = v / Math.SQRT2;
        const n = 2000, h = z / n;
        let s = 0;
        for (let k = 0; k <= n; k++) s += (k === 0 || k === n ? 1 : k % 2 ? 4 : 2) * Math.exp(-((k * h) ** 2));
        return v * 0.5 * (1 + (2 / Math.sqrt(Math.PI)) * (s * h) / 3);
      }
    }
  };
  const silu = (v: number): number => v / (1 + Math.exp(-v));
  // One FFN from matrices fc1 [F,C] (gate), fc3 [F,C] (up), fc2 [C,F] (down) at offsets (stacked experts).
  const ffn = (x: Vec, F: number, m: { w1: Vec; w2: Vec; w3: Vec | null; b1: Vec | null; b2: Vec | null; b3: Vec | null; o: number }): Vec => {
    const a = lin(x, m.w1, F, m.b1, m.o * F * C, m.o * F);
    let h: Vec;
    if (c.ffn === "swiglu") {
      const u = lin(x, m.w3!, F, m.b3, m.o * F * C, m.o * F);
      h = a.map((v, i) => silu(v) * u[i]!);
    } else h = a.map(act);
    return lin(h, m.w2, C, m.b2, m.o * C * F, m.o * C);
  };
  const dense = (x: Vec, prefix: string, F: number): Vec =>
    ffn(x, F, { w1: get(`${prefix}.fc1.weight`), w2: get(`${prefix}.fc2.weight`), w3: opt(`${prefix}.fc3.weight`), b1: opt(`${prefix}.fc1.bias`), b2: opt(`${prefix}.fc2.bias`), b3: opt(`${prefix}.fc3.bias`), o: 0 });

  // Causal self-attention over rows xs (queries qs: same rows, or the query layer's table rows).
  const attention = (qsrc: Vec[], kvsrc: Vec[], prefix: string): Vec[] => {
    const qn = opt(`${prefix}.qNorm.gamma`), kn = opt(`${prefix}.kNorm.gamma`);
    const heads = (v: Vec, n: number, g: Vec | null, t: number): Vec[] =>
      Array.from({ length: n }, (_, h) => {
        let e: Vec = v.slice(h * D, (h + 1) * D);
        if (g) e = rmsGain(e, g);
        if (c.position === "rope") e = rotary(e, t);
        return e;
      });
    const q = qsrc.map((x, t) => heads(lin(x, get(`${prefix}.q.weight`), H * D, opt(`${prefix}.q.bias`)), H, qn, t));
    const k = kvsrc.map((x, t) => heads(lin(x, get(`${prefix}.k.weight`), G * D, opt(`${prefix}.k.bias`)), G, kn, t));
    // Values are neither normed nor rotated.
    const vp = kvsrc.map((x) => lin(x, get(`${prefix}.v.weight`), G * D, opt(`${prefix}.v.bias`)));
    return q.map((qt, t) => {
      const o = new Float64Array(H * D);
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / (H / G));
        const s = Array.from({ length: t + 1 }, (_, j) => {
          let d = 0;
          for (let i = 0; i < D; i++) d += qt[h]![i]! * k[j]![g]![i]!;
          return d / Math.sqrt(D);
        });
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= t; j++) for (let i = 0; i < D; i++) o[h * D + i] += (e[j]! / z) * vp[j]![g * D + i]!;
      }
      return lin(o, get(`${prefix}.o.weight`), C, opt(`${prefix}.o.bias`));
    });
  };

  const moe = (x: Vec, l: number): Vec => {
    const ex = c.experts!, E = ex.count, Fe = ex.width ?? c.ffnWidth, r = ex.router;
    const pre = `blocks.${l}.moe`;
    const logits = lin(x, get(`${pre}.router.weight`), E, null);
    const m = Math.max(...logits);
    const z = logits.reduce((a, v) => a + Math.exp(v - m), 0);
    const p = logits.map((v) => Math.exp(v - m) / z);
    const byProb = (ids: number[]) => [...ids].sort((a, b) => p[b]! - p[a]! || a - b);
    let chosen: { e: number; w: number }[];
    if (r.kind === "topk") {
      const top = byProb(Array.from({ length: E }, (_, e) => e)).slice(0, r.k);
      const sum = top.reduce((a, e) => a + p[e]!, 0);
      chosen = top.map((e) => ({ e, w: r.renormalize ? p[e]! / sum : p[e]! }));
    } else if (r.kind === "moge") {
      const per = E / r.groups, scale = get(`${pre}.router.scale`);
      chosen = [];
      for (let g = 0; g < r.groups; g++) for (const e of byProb(Array.from({ length: per }, (_, i) => g * per + i)).slice(0, r.perGroup)) chosen.push({ e, w: p[e]! * scale[e]! });
    } else throw new Error("reference: RRE is not needed here");
    const y = new Float64Array(C);
    const w = { w1: get(`${pre}.w1`), w2: get(`${pre}.w2`), w3: opt(`${pre}.w3`), b1: opt(`${pre}.b1`), b2: opt(`${pre}.b2`), b3: opt(`${pre}.b3`) };
    for (const { e, w: a } of chosen) ffn(x, Fe, { ...w, o: e }).forEach((v, i) => (y[i] += a * v));
    if (opt(`${pre}.shared.fc1.weight`)) {
      const Fs = get(`${pre}.shared.fc1.weight`).length / C;
      const s = dense(x, `${pre}.shared`, Fs);
      const gw = opt(`${pre}.sharedGate.weight`);
      const gate = gw ? 1 / (1 + Math.exp(-lin(x, gw, 1, null)[0]!)) : 1;
      s.forEach((v, i) => (y[i] += gate * v));
    }
    return y;
  };

  const emb = get("tokenEmbedding"), pos = opt("positionEmbedding");
  let h: Vec[] = tokens.map((tok, t) => {
    const row = emb.slice((slot * V + tok) * C, (slot * V + tok + 1) * C);
    if (pos) for (let i = 0; i < C; i++) row[i] += pos[t * C + i]!;
    return row;
  });
  for (let l = 0; l < c.denseLayers + c.sparseLayers; l++) {
    const a = h.map((x) => norm(x, `blocks.${l}.ln1`));
    const att = attention(a, a, `blocks.${l}.attn`);
    h = h.map((x, t) => x.map((v, i) => v + att[t]![i]!));
    h = h.map((x) => {
      const n = norm(x, `blocks.${l}.ln2`);
      const f = l < c.denseLayers ? dense(n, `blocks.${l}.ffn`, c.ffnWidth) : moe(n, l);
      return x.map((v, i) => v + f[i]!);
    });
  }
  h = h.map((x) => norm(x, "finalNorm"));
  if (c.queryLayer) {
    const qe = get("queryEmbedding");
    const qs = tokens.map((_, t) => qe.slice(t * C, (t + 1) * C));
    const a = h.map((x) => norm(x, "queryLayer.ln1"));
    const att = attention(qs, a, "queryLayer.attn");
    h = h.map((x, t) => x.map((v, i) => v + att[t]![i]!));
    h = h.map((x) => {
      const f = dense(norm(x, "queryLayer.ln2"), "queryLayer.ffn", c.ffnWidth);
      return x.map((v, i) => v + f[i]!);
    });
  }
  const out = opt("outputEmbedding") ?? emb;
  return h.map((x) => lin(x, out, V, null, slot * V * C));
}
