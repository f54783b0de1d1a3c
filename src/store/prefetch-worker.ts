/**
 * The store's I/O worker: reads expert records from the store file into
 * shared buffers while the main thread computes, checking each against the
 * index entry it was sent with (status 1 ready, 2 unusable: the main thread
 * re-reads it and reports why), and writes evicted records back (sealing
 * them: header and crc32), so neither checksums nor writes run on the main
 * thread. Messages are handled in order, so a read queued after a write of
 * the same record sees it.
 *
 * Every item's status word goes PENDING → CLAIMED (this worker, by
 * compare-and-swap) → DONE or FAILED; the main thread may instead swap
 * PENDING → CANCELLED when it gives up waiting, and then does the I/O itself.
 * The swap decides who owns the buffer: a cancelled item is skipped here, and
 * a claimed one is finished before the main thread touches its buffer.
 */
import { parentPort, workerData } from "node:worker_threads";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { checkRecord, sealRecord, type IndexEntry } from "./format.js";
import { CLAIMED, DONE, FAILED, PENDING } from "./io-status.js";

export interface PrefetchItem {
  layer: number;
  expert: number;
  offset: number;
  floats: number;
  entry: IndexEntry;
  buf: Uint8Array;
}

export interface WriteItem {
  layer: number;
  expert: number;
  offset: number;
  generation: number;
  step: number;
  floats: number;
  buf: Uint8Array;
  /** [0]: PENDING, CLAIMED, DONE (written), FAILED or CANCELLED; [1]: the record's crc32 (as int32). */
  status: Int32Array;
  /** Test seam: SIGKILL the process with half the record written. */
  tear: boolean;
}

export type PrefetchMessage = { kind: "open"; path: string } | { kind: "read"; items: PrefetchItem[]; status: Int32Array } | { kind: "write"; item: WriteItem } | { kind: "close" };

let fd = -1;
const alive = (workerData as { alive: Int32Array }).alive;
Atomics.store(alive, 0, 1);
parentPort!.on("message", (msg: PrefetchMessage) => {
  try {
    handle(msg);
  } catch {
    // Unexpected: say so (the main thread stops waiting for this worker and does its I/O itself).
    Atomics.store(alive, 0, -1);
    Atomics.notify(alive, 0);
  }
});

function handle(msg: PrefetchMessage): void {
  if (msg.kind === "open") {
    if (fd >= 0) closeSync(fd);
    fd = -1;
    try {
      fd = openSync(msg.path, "r+");
    } catch {
      // Every item then fails; the main thread does the I/O and reports the error (it opened the same file).
    }
  } else if (msg.kind === "write") {
    const w = msg.item;
    if (Atomics.compareExchange(w.status, 0, PENDING, CLAIMED) !== PENDING) return; // cancelled
    try {
      const crc = sealRecord(w.buf, w.layer, w.expert, w.generation, w.step, w.floats);
      const half = w.buf.length >> 1;
      let off = 0;
      while (off < w.buf.length) {
        off += writeSync(fd, w.buf, off, (off < half ? half : w.buf.length) - off, w.offset + off);
        if (w.tear && off >= half) process.kill(process.pid, "SIGKILL");
      }
      Atomics.store(w.status, 1, crc | 0);
      Atomics.store(w.status, 0, DONE);
    } catch {
      Atomics.store(w.status, 0, FAILED); // the main thread writes it again itself and reports the error
    }
    Atomics.notify(w.status, 0);
  } else if (msg.kind === "close") {
    if (fd >= 0) closeSync(fd);
    fd = -1;
    parentPort!.close();
  } else {
    msg.items.forEach((it, i) => {
      if (Atomics.compareExchange(msg.status, i, PENDING, CLAIMED) !== PENDING) return; // cancelled
      let ok = false;
      try {
        let off = 0;
        while (off < it.buf.length) {
          const n = readSync(fd, it.buf, off, it.buf.length - off, it.offset + off);
          if (n === 0) break;
          off += n;
        }
        ok = checkRecord(it.buf, it.layer, it.expert, it.entry, it.floats) === null;
      } catch {
        ok = false;
      }
      Atomics.store(msg.status, i, ok ? DONE : FAILED);
      Atomics.notify(msg.status, i);
    });
  }
}
