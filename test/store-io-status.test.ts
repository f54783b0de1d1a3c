// The claim protocol between the main thread and the store's I/O worker:
// whoever swaps an item's status first owns its buffer, so a read or write
// the main thread gave up on is never done late by the worker.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Prefetcher, type Pending } from "../src/store/prefetch.js";
import { CANCELLED, DONE, FAILED, PENDING } from "../src/store/io-status.js";
import type { IndexEntry } from "../src/store/format.js";

const pending = (state: number, alive: number): Pending => {
  const status = new Int32Array(new SharedArrayBuffer(4));
  status[0] = state;
  const a = new Int32Array(new SharedArrayBuffer(4));
  a[0] = alive;
  return { layer: 0, expert: 0, buf: new Uint8Array(8), entry: {} as IndexEntry, status, i: 0, alive: a };
};

test("waiting: a finished item is the worker's answer; with the worker gone a pending item is cancelled, and the caller owns it", () => {
  assert.equal(Prefetcher.wait(pending(DONE, 1)), true);
  assert.equal(Prefetcher.wait(pending(FAILED, 1)), false);
  const p = pending(PENDING, -1); // the worker reported a failure
  assert.equal(Prefetcher.wait(p), false);
  assert.equal(p.status[0], CANCELLED, "the worker must see the item as cancelled");
});

test("the worker skips an item the main thread cancelled: its buffer is left alone", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sigma-io-"));
  try {
    const file = join(dir, "x.bin");
    writeFileSync(file, new Uint8Array(4096).fill(7));
    const pf = new Prefetcher(file);
    const post = (pf as unknown as { post(m: unknown): void }).post.bind(pf);
    // Shared buffers, as the resident set's are (a plain one would be copied to the worker).
    const shared = () => new Uint8Array(new SharedArrayBuffer(64));
    const cancelled = shared().fill(1);
    const st1 = new Int32Array(new SharedArrayBuffer(4));
    st1[0] = CANCELLED;
    const item = (buf: Uint8Array) => ({ layer: 0, expert: 0, offset: 0, floats: 1, entry: {} as IndexEntry, buf });
    post({ kind: "read", items: [item(cancelled)], status: st1 });
    // A second read behind it (messages are handled in order): once it is answered, the first was seen.
    const [p2] = pf.request([item(shared())]);
    // The worker answers it and fails it (the file is no store, so the record check fails); wait says so.
    assert.equal(Prefetcher.wait(p2!), false);
    assert.equal(Atomics.load(p2!.status, 0), FAILED, "the worker did not answer the live item");
    assert.equal(st1[0], CANCELLED);
    assert.ok(cancelled.every((b) => b === 1), "the worker read into a cancelled item's buffer");
    assert.ok(p2!.buf.every((b) => b === 7), "the live item was read");
    await pf.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
