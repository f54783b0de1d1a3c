/**
 * Reference causal attention: one query at a time, its row of scores held in a
 * small array. q, out [B,Tq,H,D]; k, v [B,kvCap,H,D], first Tk positions used;
 * query i sits at position Tk − Tq + i and sees keys 0..Tk − Tq + i.
 */
import type { Buf } from "../backend.js";
import { halfBits, halfValue } from "../quant.js";
import { need } from "./check.js";

function checkSizes(kernel: string, q: Buf, k: Buf, v: Buf, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number): void {
  if (Tq > Tk || Tk > kvCap) throw new RangeError(`${kernel}: need Tq <= Tk <= kvCap, got Tq = ${Tq}, Tk = ${Tk}, kvCap = ${kvCap}`);
  need(kernel, "q", q, B * Tq * H * D);
  need(kernel, "k", k, B * kvCap * H * D);
  need(kernel, "v", v, B * kvCap * H * D);
}

export function attention(out: Buf, lse: Buf, q: Buf, k: Buf, v: Buf, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number, kvHeads = H): void {
  const G = kvHeads;
  if (G !== H && !(Number.isInteger(G) && G >= 1 && H % G === 0)) throw new RangeError(`attention: kvHeads must divide H = ${H}, got ${G}`);
  if (Tq > Tk || Tk > kvCap) throw new RangeError(`attention: need Tq <= Tk <= kvCap, got Tq = ${Tq}, Tk = ${Tk}, kvCap = ${kvCap}`);
  need("attention", "q", q, B * Tq * H * D);
  need("attention", "k", k, B * kvCap * G * D);
  need("attention", "v", v, B * kvCap * G * D);
  const rep = G === H ? 1 : H / G;
  need("attention", "out", out, B * Tq * H * D);
  need("attention", "lse", lse, B * H * Tq);
  const s = new Float64Array(Tk);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tq; i++) {
        const qo = ((b * Tq + i) * H + h) * D;
        const last = Tk - Tq + i;
        let m = -Infinity;
        for (let j = 0; j <= last; j++) {
          const ko = ((b * kvCap + j) * G + Math.floor(h / rep)) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d]! * k[ko + d]!;
          s[j] = scale * dot;
          m = Math.max(m, s[j]!);
        }
        let sum = 0;
        for (let j = 0; j <= last; j++) sum += Math.exp(s[j]! - m);
        const l = m + Math.log(sum);
        acc.fill(0);
        for (let j = 0; j <= last; j++) {
          const p = Math.exp(s[j]! - l);
          const vo = ((b * kvCap + j) * G + Math.floor(h / rep)) * D;
          for (let d = 0; d < D; d++) acc[d]! += p * v[vo + d]!;
        }
        for (let d = 0; d < D; d++) out[qo + d] = acc[d]!;
        lse[(b * H + h) * Tq + i] = l;
      }
    }
  }
}

/** attention over an f16 cache: the halves' values as f32, then attention. */
export function attentionHalf(out: Buf, lse: Buf, q: Buf, k: Uint16Array, v: Uint16Array, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number, kvHeads: number): void {
  if (!(Number.isInteger(kvHeads) && kvHeads >= 1 && H % kvHeads === 0)) throw new RangeError(`attentionHalf: kvHeads must divide H = ${H}, got ${kvHeads}`);
  const n = B * kvCap * kvHeads * D;
  need("attentionHalf", "k", k, n);
  need("attentionHalf", "v", v, n);
  const [kf, vf] = [new Float32Array(n), new Float32Array(n)];
  fromHalf(kf, k, n);
  fromHalf(vf, v, n);
  attention(out, lse, q, kf, vf, B, Tq, Tk, H, D, kvCap, scale, kvHeads);
}

export function toHalf(dst: Uint16Array, src: Buf, n: number): void {
  need("toHalf", "dst", dst, n);
  need("toHalf", "src", src, n);
  for (let i = 0; i < n; i++) dst[i] = halfBits(src[i]!);
}

export function fromHalf(dst: Buf, src: Uint16Array, n: number): void {
  need("fromHalf", "dst", dst, n);
  need("fromHalf", "src", src, n);
  for (let i = 0; i < n; i++) dst[i] = halfValue(src[i]!);
}

export function attentionBackward(dq: Buf, dk: Buf, dv: Buf, dout: Buf, q: Buf, k: Buf, v: Buf, out: Buf, lse: Buf, B: number, Tq: number, Tk: number, H: number, D: number, kvCap: number, scale: number): void {
  checkSizes("attentionBackward", q, k, v, B, Tq, Tk, H, D, kvCap);
  need("attentionBackward", "dq", dq, B * Tq * H * D);
  need("attentionBackward", "dk", dk, B * kvCap * H * D);
  need("attentionBackward", "dv", dv, B * kvCap * H * D);
  need("attentionBackward", "dout", dout, B * Tq * H * D);
  need("attentionBackward", "out", out, B * Tq * H * D);
  need("attentionBackward", "lse", lse, B * H * Tq);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tq; i++) {
        const qo = ((b * Tq + i) * H + h) * D;
        const l = lse[(b * H + h) * Tq + i]!;
        // delta = Σ_j p_j·(dout·v_j) = dout·out
        let delta = 0;
        for (let d = 0; d < D; d++) delta += dout[qo + d]! * out[qo + d]!;
        for (let j = 0; j <= Tk - Tq + i; j++) {
          const ko = ((b * kvCap + j) * H + h) * D;
          let dot = 0;
          let dp = 0;
          for (let d = 0; d < D; d++) {
            dot += q[qo + d]! * k[ko + d]!;
            dp += dout[qo + d]! * v[ko + d]!;
          }
          const p = Math.exp(scale * dot - l);
          const ds = p * (dp - delta) * scale;
          for (let d = 0; d < D; d++) {
            dv[ko + d]! += p * dout[qo + d]!;
            dq[qo + d]! += ds * k[ko + d]!;
            dk[ko + d]! += ds * q[qo + d]!;
          }
        }
      }
    }
  }
}
