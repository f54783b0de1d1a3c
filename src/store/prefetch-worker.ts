/**
 * The store's I/O worker: reads expert records from the store file into
 * shared buffers while the main thread computes, checking each against the
 * index entry it was sent with (status 1 ready, 2 unusable: the main thread
 * re-reads it and reports why), and writes evicted records back (sealing
 * them: header and crc32), so neither checksums nor writes run on the main
 * thread. Messages are handled in order, so a read queued after a write of
 * the same record sees it.
 */
import { parentPort, workerData } from "node:worker_threads";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { checkRecord, sealRecord, type IndexEntry } from "./format.js";

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
  /** [0]: 0 pending, 1 written, 2 failed; [1]: the record's crc32 (as int32). */
  status: Int32Array;
  /** Test seam: SIGKILL the process with half the record written. */
  tear: boolean;
}

export type PrefetchMessage = { kind: "open"; path: string } | { kind: "read"; items: PrefetchItem[]; status: Int32Array } | { kind: "write"; item: WriteItem } | { kind: "close" };

let fd = -1;
Atomics.store((workerData as { alive: Int32Array }).alive, 0, 1);
parentPort!.on("message", (msg: PrefetchMessage) => {
  if (msg.kind === "open") {
    if (fd >= 0) closeSync(fd);
    fd = openSync(msg.path, "r+");
  } else if (msg.kind === "write") {
    const w = msg.item;
    try {
      const crc = sealRecord(w.buf, w.layer, w.expert, w.generation, w.step, w.floats);
      const half = w.buf.length >> 1;
      let off = 0;
      while (off < w.buf.length) {
        off += writeSync(fd, w.buf, off, (off < half ? half : w.buf.length) - off, w.offset + off);
        if (w.tear && off >= half) process.kill(process.pid, "SIGKILL");
      }
      Atomics.store(w.status, 1, crc | 0);
      Atomics.store(w.status, 0, 1);
    } catch {
      Atomics.store(w.status, 0, 2); // the main thread writes it again itself and reports the error
    }
    Atomics.notify(w.status, 0);
  } else if (msg.kind === "close") {
    if (fd >= 0) closeSync(fd);
    fd = -1;
    parentPort!.close();
  } else {
    msg.items.forEach((it, i) => {
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
      Atomics.store(msg.status, i, ok ? 1 : 2);
      Atomics.notify(msg.status, i);
    });
  }
});
