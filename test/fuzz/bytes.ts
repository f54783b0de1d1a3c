/**
 * Byte-level mutation: bit flips, interesting bytes, insertions, deletions,
 * truncation, duplicated chunks, garbage appended, and integers written over
 * a named field of a binary header (little-endian u32 / u64).
 */
import type { FuzzRng } from "./rng.js";

export interface Mutated {
  bytes: Uint8Array;
  what: string;
}

/** Integers that break a reader's assumptions, as u64 (BigInt) so both widths can take them. */
export function interestingInts(r: FuzzRng, current: bigint): bigint {
  const fixed = [0n, 1n, 2n, 3n, 4n, 7n, 8n, 15n, 16n, 255n, 256n, 4095n, 4096n, 65535n, 65536n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 2n ** 53n - 1n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n];
  return r.pick<() => bigint>([
    () => r.pick(fixed),
    () => r.pick(fixed),
    () => current + 1n,
    () => (current > 0n ? current - 1n : 2n ** 64n - 1n),
    () => current * 2n,
    () => current * 1000n,
    () => current / 2n,
  ])();
}

export interface Field {
  name: string;
  offset: number;
  width: 4 | 8;
}

/** Writes an interesting integer over one field (values wider than the field wrap). */
export function mutateField(r: FuzzRng, buf: Uint8Array, f: Field): Mutated {
  const out = Uint8Array.from(buf);
  if (f.offset + f.width > out.length) return { bytes: out, what: `field ${f.name}: past the end, unchanged` };
  const dv = new DataView(out.buffer);
  const cur = f.width === 4 ? BigInt(dv.getUint32(f.offset, true)) : dv.getBigUint64(f.offset, true);
  const v = interestingInts(r, cur) & (f.width === 4 ? 0xffffffffn : 2n ** 64n - 1n);
  if (f.width === 4) dv.setUint32(f.offset, Number(v), true);
  else dv.setBigUint64(f.offset, v, true);
  return { bytes: out, what: `field ${f.name} (offset ${f.offset}, u${f.width * 8}) ${cur} → ${v}` };
}

/** A position in [0, n), biased towards the start (where headers are) half of the time. */
function position(r: FuzzRng, n: number, headerBytes = 0): number {
  if (n === 0) return 0;
  if (headerBytes > 0 && r.chance(0.5)) return r.int(Math.min(n, headerBytes));
  return r.int(n);
}

/** One byte-level mutation; `headerBytes` biases positions into the first bytes. */
export function mutateBytes(r: FuzzRng, buf: Uint8Array, headerBytes = 0): Mutated {
  const n = buf.length;
  const op = r.weighted<string>([
    [5, "flip"],
    [3, "byte"],
    [2, "insert"],
    [2, "delete"],
    [3, "truncate"],
    [1, "duplicate"],
    [1, "append"],
    [1, "int"],
    [1, "empty"],
  ]);
  switch (op) {
    case "flip": {
      const out = Uint8Array.from(buf);
      const k = r.pick([1, 1, 2, 4, 8]);
      const at: number[] = [];
      for (let i = 0; i < k && n > 0; i++) {
        const p = position(r, n, headerBytes);
        const bit = r.int(8);
        out[p] ^= 1 << bit;
        at.push(p * 8 + bit);
      }
      return { bytes: out, what: `flipped bit(s) ${at.join(", ")}` };
    }
    case "byte": {
      const out = Uint8Array.from(buf);
      if (n === 0) return { bytes: out, what: "empty, unchanged" };
      const p = position(r, n, headerBytes);
      const len = Math.min(n - p, r.pick([1, 1, 2, 4, 8, 16]));
      const v = r.pick([0x00, 0xff, 0x7f, 0x80, 0x20, 0x22, 0x5c, 0x7b, 0x7d, 0x30, 0x39]);
      out.fill(v, p, p + len);
      return { bytes: out, what: `set ${len} byte(s) at ${p} to 0x${v.toString(16)}` };
    }
    case "insert": {
      const p = position(r, n + 1, headerBytes);
      const ins = r.chance(0.5) ? r.bytes(r.pick([1, 3, 8, 64])) : new Uint8Array(r.pick([1, 7, 4096])).fill(r.pick([0x00, 0x20, 0xff]));
      const out = new Uint8Array(n + ins.length);
      out.set(buf.subarray(0, p));
      out.set(ins, p);
      out.set(buf.subarray(p), p + ins.length);
      return { bytes: out, what: `inserted ${ins.length} byte(s) at ${p}` };
    }
    case "delete": {
      const p = position(r, n, headerBytes);
      const len = Math.min(n - p, r.pick([1, 2, 4, 8, 100, 4096]));
      const out = new Uint8Array(n - len);
      out.set(buf.subarray(0, p));
      out.set(buf.subarray(p + len), p);
      return { bytes: out, what: `deleted ${len} byte(s) at ${p}` };
    }
    case "truncate": {
      const p = position(r, n, headerBytes);
      return { bytes: buf.slice(0, p), what: `truncated to ${p} of ${n} bytes` };
    }
    case "duplicate": {
      const p = position(r, n, headerBytes);
      const len = Math.min(n - p, r.pick([4, 16, 256, 4096]));
      const out = new Uint8Array(n + len);
      out.set(buf.subarray(0, p + len));
      out.set(buf.subarray(p, p + len), p + len);
      out.set(buf.subarray(p + len), p + 2 * len);
      return { bytes: out, what: `duplicated ${len} byte(s) at ${p}` };
    }
    case "append": {
      const extra = r.chance(0.5) ? r.bytes(r.pick([1, 16, 1000])) : new Uint8Array(r.pick([1, 4096, 1 << 20]));
      const out = new Uint8Array(n + extra.length);
      out.set(buf);
      out.set(extra, n);
      return { bytes: out, what: `appended ${extra.length} byte(s)` };
    }
    case "int": {
      const width = r.pick([4, 8] as const);
      if (n < width) return { bytes: Uint8Array.from(buf), what: "too short for an integer, unchanged" };
      const p = position(r, n - width + 1, headerBytes);
      return mutateField(r, buf, { name: `@${p}`, offset: p, width });
    }
    default:
      return { bytes: new Uint8Array(0), what: "emptied (0 bytes)" };
  }
}
