// Hostile or damaged expert stores (header page, index) and store paths that
// are folders or read-only files: SigmaErrors naming the file, through
// ExpertStoreFile.open / restore and `sigma store inspect`.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import zlib from "node:zlib";
import { ExpertStoreFile } from "../src/store/file.js";
import { PAGE, RECORD_HEADER, encodeHeader, encodeIndex, planLayout, type StoreHeader } from "../src/store/format.js";
import { assertRefused, cli, errnoError, failures, sigmaError, withFs } from "./formats-helpers.js";

const root = mkdtempSync(join(tmpdir(), "sigma-formats-store-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

const LAYERS = [{ experts: 3, width: 4, expertWidth: 8 }];
/** A fresh, valid store; returns its path and bytes. */
function makeStore(): { path: string; bytes: Buffer; header: StoreHeader } {
  const path = join(root, `s${n++}.sgxs`);
  const s = ExpertStoreFile.create(path, LAYERS, (l, e, payload) => payload.fill(l + e / 10));
  const header = s.header;
  s.close();
  return { path, bytes: readFileSync(path), header };
}
const crc32 = (b: Uint8Array): number => (zlib as unknown as { crc32(d: Uint8Array): number }).crc32(b) >>> 0;
/** `bytes` with page 0 holding this header JSON text under a valid crc32. */
function withHeaderText(bytes: Buffer, json: string): Buffer {
  const out = Buffer.from(bytes);
  const j = Buffer.from(json, "utf8");
  out.fill(0, 0, PAGE);
  out.write("SGXS", 0, "latin1");
  out.writeUInt32LE(1, 4);
  out.writeUInt32LE(j.length, 8);
  out.writeUInt32LE(crc32(j), 12);
  j.copy(out, 16);
  return out;
}
const write = (bytes: Uint8Array): string => {
  const p = join(root, `s${n++}.sgxs`);
  writeFileSync(p, bytes);
  return p;
};

test("store header: every field is checked — a crc-valid header that lies is refused, naming the file and the field", () => {
  const { bytes, header: h } = makeStore();
  const edited = (change: Partial<StoreHeader> | Record<string, unknown>) => write(Buffer.concat([encodeHeader({ ...h, ...change } as StoreHeader), bytes.subarray(PAGE)]));
  const cases: [string, string, RegExp][] = [
    ["record bytes other than the shapes give", edited({ recordBytes: [2 * PAGE] }), /recordBytes is \[8192\], but its layer shapes give \[4096\]/],
    ["a layer starting inside the index", edited({ layerStart: [PAGE] }), /layerStart is \[4096\], but its layer shapes give/],
    ["the index somewhere else", edited({ indexStart: 0 }), /indexStart is 0, but its layer shapes give 4096/],
    ["a file size that does not follow from the shapes", edited({ fileBytes: bytes.length - PAGE }), /fileBytes is \d+, but its layer shapes give \d+/],
    ["zero experts", edited({ layers: [{ ...LAYERS[0]!, experts: 0 }] }), /layers\.0\.experts: Number must be greater than or equal to 1/],
    ["a fractional width", edited({ layers: [{ ...LAYERS[0]!, width: 4.5 }] }), /layers\.0\.width: Expected integer/],
    ["a billion experts", edited({ layers: [{ ...LAYERS[0]!, experts: 1e9 }] }), /layers\.0\.experts: Number must be less than or equal to/],
    ["no layers", edited({ layers: [], recordBytes: [], layerStart: [] }), /layers: Array must contain at least 1/],
    ["another dtype", edited({ dtype: "float16" }), /dtype: Invalid literal value/],
    ["an unknown field", edited({ extra: 1 }), /Unrecognized key\(s\) in object: 'extra'/],
    ["a header JSON that does not parse (crc valid)", write(withHeaderText(bytes, "{nope")), /store header is not UTF-8 JSON/],
    ["a repeated key (crc valid)", write(withHeaderText(bytes, JSON.stringify(h).replace('"dtype"', '"indexStart":0,"dtype"'))), /the key "indexStart" appears twice/],
    ["a file longer than its header says", write(Buffer.concat([bytes, Buffer.alloc(PAGE)])), /is longer than its header says/],
    ["a file shorter than its header says", write(bytes.subarray(0, bytes.length - 1)), /is truncated: \d+ bytes, the header says/],
    ["a file shorter than a page", write(bytes.subarray(0, 100)), /shorter than its 4096-byte header page/],
  ];
  assert.deepEqual(failures(cases.map(([what, p, re]) => [what, () => assert.throws(() => ExpertStoreFile.open(p), sigmaError(p, re))])), []);
  // The layout the valid header gives is what planLayout gives.
  assert.deepEqual({ ...h, storeId: "x" }, { ...planLayout(LAYERS, "x" as never) });
});

test("store index: the store's own and a checkpoint's experts.index are checked entry by entry", () => {
  const { path, bytes, header: h } = makeStore();
  const entry = (i: number) => h.indexStart + 16 * i;
  const damaged = (edit: (b: Buffer) => void) => {
    const b = Buffer.from(bytes);
    edit(b);
    return write(b);
  };
  const cases: [string, string, RegExp][] = [
    ["slot 2", damaged((b) => (b[entry(1)] = 2)), /expert index entry 1 names slot 2/],
    ["non-zero padding", damaged((b) => (b[entry(2) + 2] = 9)), /expert index entry 2 has non-zero padding/],
    ["generation 0", damaged((b) => b.writeUInt32LE(0, entry(0) + 4)), /expert index entry 0 has generation 0/],
  ];
  const fl = failures(cases.map(([what, p, re]) => [what, () => assert.throws(() => ExpertStoreFile.open(p), sigmaError(`${p} (index)`, re))]));
  // A checkpoint's experts.index must have exactly one entry per expert.
  const s = ExpertStoreFile.open(path);
  const good = encodeIndex([0, 1, 2].map(() => ({ slot: 0, generation: 1, crc: 0, step: 0 })));
  const src = "ckpt/experts.index";
  fl.push(
    ...failures([
      ["an index with an extra entry", () => assert.throws(() => s.restore(Buffer.concat([good, good.subarray(0, 16)]), src), sigmaError(src, /is 64 bytes \(4 entries\), the store has 3 experts \(48 bytes\)/))],
      ["an index cut short", () => assert.throws(() => s.restore(good.subarray(0, 40), src), sigmaError(src, /is 40 bytes/))],
    ]),
  );
  s.restore(good, src);
  s.close();
  assert.deepEqual(fl, []);
});

test("store: shapes other than the model's, and a layer the store does not have, are errors naming the store", () => {
  const { path } = makeStore();
  assert.throws(() => ExpertStoreFile.open(path, { layers: [{ experts: 3, width: 4, expertWidth: 16 }] }), sigmaError(path, /holds layers \[\{"experts":3,"width":4,"expertWidth":8\}\], the model needs/));
  const s = ExpertStoreFile.open(path, { layers: LAYERS });
  assert.throws(() => s.layout(1), sigmaError(path, /has 1 sparse layer; sparse layer 1 is not in it/));
  assert.throws(() => s.recordBytes(-1), sigmaError(path, /sparse layer -1 is not in it/));
  s.close();
});

test("store path: a folder is a clear error; a read-only file opens read-only for inspection and refuses writes", async () => {
  const dir = join(root, `dir-${n++}.sgxs`);
  mkdirSync(dir);
  assert.throws(() => ExpertStoreFile.open(dir), sigmaError(dir, /is a directory, not a store file/));
  assertRefused(await cli(["store", "inspect", dir]), dir, /is a directory/);

  // Root ignores file permissions, so the refusal of O_RDWR is simulated: opening the store "r+" fails with EACCES.
  const { path } = makeStore();
  const readOnly = <T>(fn: () => T | Promise<T>) =>
    withFs("openSync", (orig, p, flags, ...rest) => {
      if (p === path && flags !== "r") throw errnoError("EACCES", `permission denied, open '${path}'`);
      return orig(p, flags, ...rest);
    }, fn);
  const r = await readOnly(() => cli(["store", "inspect", path, "--verify"]));
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /verify: all 3 live records intact/);
  await readOnly(() => assert.throws(() => ExpertStoreFile.open(path), sigmaError(path, /cannot open the expert store .* for reading and writing: EACCES[\s\S]*hint: training writes to the store/)));
  const s = ExpertStoreFile.open(path, { readOnly: true });
  const rec = new Uint8Array(s.recordBytes(0));
  s.read(0, 1, rec);
  assert.equal(new Float32Array(rec.buffer, RECORD_HEADER, 1)[0], Math.fround(0.1));
  assert.throws(() => s.write(0, 1, rec, 1), /expert store .* was opened read-only: writing layer 0 expert 1 is not allowed/);
  assert.throws(() => s.writeOwnIndex(), /was opened read-only: writing its index is not allowed/);
  s.close();
});

test("CLI: sigma store inspect on a damaged store exits 1 with one line naming the file", async () => {
  const { bytes, header: h } = makeStore();
  const p = write(withHeaderText(bytes, "{nope"));
  assertRefused(await cli(["store", "inspect", p]), p, /store header is not UTF-8 JSON/);
  const p2 = write(Buffer.concat([encodeHeader({ ...h, layerStart: [PAGE] }), bytes.subarray(PAGE)]));
  assertRefused(await cli(["store", "inspect", p2, "--verify"]), p2, /layerStart is \[4096\]/);
  const p3 = write(Buffer.concat([bytes, Buffer.alloc(10)]));
  appendFileSync(p3, "x");
  assertRefused(await cli(["store", "inspect", p3]), p3, /longer than its header says/);
});
