// The expert tier on its own (src/store/tier.ts), without a model: records
// kept within the byte budget, least recently used evicted first, pinned ones
// never; a dirty record evicted is written back (on this thread or by the I/O
// worker) and read again with its new bytes; reads ahead are counted as hits.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ExpertStoreFile } from "../src/store/file.js";
import { ExpertTier } from "../src/store/tier.js";

const root = mkdtempSync(join(tmpdir(), "sigma-tier-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

// One record is one page here (4096 bytes): a budget of 2 records holds two experts.
const LAYERS = [{ experts: 4, width: 4, expertWidth: 8 }, { experts: 3, width: 4, expertWidth: 8 }];
function tier(records: number, worker: boolean): { t: ExpertTier; rec: number } {
  const s = ExpertStoreFile.create(join(root, `t${n++}.sgxs`), LAYERS, (l, e, p) => p.fill(10 * l + e));
  const rec = s.recordBytes(0);
  assert.equal(rec, s.recordBytes(1));
  return { t: new ExpertTier(s, records * rec, worker), rec };
}

/** The record of (layer, expert) as the file holds it now (its live version, checked). */
function onDisk(t: ExpertTier, layer: number, expert: number): { first: number; step: number } {
  const buf = new Uint8Array(t.store.recordBytes(layer));
  const entry = t.store.read(layer, expert, buf);
  return { first: new Float32Array(buf.buffer, 64, 1)[0]!, step: entry.step };
}

for (const worker of [false, true]) {
  test(`${worker ? "worker" : "main thread"}: an evicted dirty record is written back, and acquiring it again gives its new bytes and step`, () => {
    const { t } = tier(2, worker);
    const r = t.acquire(0, 1, true);
    assert.equal(r.payload[0], 1);
    r.payload.fill(0.5);
    r.step = 3;
    r.dirty = true;
    t.endStep();
    // Two other experts need the room: expert 1 is the least recently used, and goes.
    t.acquire(0, 2, true);
    t.acquire(1, 0, true);
    t.endStep();
    assert.equal(t.cache.has(t.key(0, 1)), false, "expert 1 should have been evicted");
    assert.equal(t.stats().writeBacks, 1);
    if (worker) t.flush(); // settles the worker's write
    assert.deepEqual(onDisk(t, 0, 1), { first: 0.5, step: 3 });
    // Its buffer went back to the pool and is reused; the next acquire reads the file.
    t.acquire(0, 3, true);
    t.endStep();
    const again = t.acquire(0, 1, true);
    assert.equal(again.payload[0], 0.5);
    assert.equal(again.payload[again.payload.length - 1], 0.5, "the moments too");
    assert.equal(again.step, 3);
    assert.equal(again.dirty, false);
    t.endStep();
    t.close();
  });
}

test("worker: a record evicted and asked for again while its write is in flight comes back with its new bytes", () => {
  const { t } = tier(1, true);
  const r = t.acquire(0, 0, true);
  r.payload.fill(7);
  r.step = 1;
  r.dirty = true;
  t.endStep();
  t.acquire(0, 1, true); // evicts expert 0: written back by the worker
  t.endStep();
  const back = t.acquire(0, 0, true);
  assert.equal(back.payload[0], 7);
  assert.equal(back.step, 1);
  t.endStep();
  t.flush();
  assert.deepEqual(onDisk(t, 0, 0), { first: 7, step: 1 });
  t.close();
});

test("the budget holds after every step; least recently used goes first, pinned records never", () => {
  const { t, rec } = tier(2, false);
  let rng = 1;
  const draw = (k: number) => {
    rng ^= rng << 13;
    rng ^= rng >>> 17;
    rng ^= rng << 5;
    return (rng >>> 0) % k;
  };
  for (let step = 0; step < 40; step++) {
    for (let i = 0; i < 2; i++) {
      const l = draw(2);
      const r = t.acquire(l, draw(LAYERS[l]!.experts), true);
      r.dirty = draw(2) === 1;
    }
    t.endStep();
    const s = t.stats();
    assert.ok(s.residentBytes <= 2 * rec, `step ${step}: ${s.residentBytes} resident bytes over the budget`);
    assert.ok(s.peakBytes <= 2 * rec, `step ${step}: peak ${s.peakBytes}`);
  }
  assert.equal(t.stats().overBudget, 0);
  assert.ok(t.stats().evictions > 0);

  // LRU: with (0,0) and (0,1) resident, touching (0,0) makes (0,1) the one to go.
  t.acquire(0, 0, false);
  t.acquire(0, 1, false);
  t.acquire(0, 0, false);
  t.acquire(0, 2, false);
  assert.deepEqual([0, 1, 2].map((e) => t.cache.has(t.key(0, e))), [true, false, true]);

  // A step that pins three records keeps all three (over budget, counted), and drops back after it.
  const pinned = [t.acquire(1, 0, true), t.acquire(1, 1, true), t.acquire(1, 2, true)];
  assert.ok(pinned.every((r) => t.cache.has(r.key)), "a pinned record was evicted");
  assert.equal(t.stats().residentBytes, 3 * rec);
  t.endStep();
  assert.equal(t.stats().overBudget, 1);
  assert.equal(t.stats().residentBytes, 2 * rec);
  t.close();
});

test("worker: the next step's records read ahead are hits, and a restore is refused once records are resident", () => {
  const { t } = tier(4, true);
  t.prefetch([new Set([1, 3]), new Set()]);
  assert.equal(t.stats().prefetchRequested, 2);
  const a = t.acquire(0, 3, true);
  assert.equal(a.payload[0], 3);
  t.acquire(0, 1, true);
  t.acquire(1, 2, true); // not read ahead: a miss
  t.endStep();
  const s = t.stats();
  assert.deepEqual([s.hits, s.prefetchHits, s.misses, s.io.reads], [2, 2, 1, 1]);
  const index = t.flush();
  assert.throws(() => t.restore(index, "test"), /already resident/);
  t.close();
});
