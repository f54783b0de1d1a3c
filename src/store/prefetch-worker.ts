/**
 * The prefetch worker: reads expert records from the store file into shared
 * buffers while the main thread computes, and checks each against the index
 * entry it was sent with. Per request item it stores 1 (ready) or 2
 * (unusable: the main thread re-reads it and reports why) into the status
 * word and wakes the waiter.
 */
import { parentPort, workerData } from "node:worker_threads";
import { closeSync, openSync, readSync } from "node:fs";
import { checkRecord, type IndexEntry } from "./format.js";

export interface PrefetchItem {
  layer: number;
  expert: number;
  offset: number;
  floats: number;
  entry: IndexEntry;
  buf: Uint8Array;
}

export type PrefetchMessage = { kind: "open"; path: string } | { kind: "read"; items: PrefetchItem[]; status: Int32Array } | { kind: "close" };

let fd = -1;
Atomics.store((workerData as { alive: Int32Array }).alive, 0, 1);
parentPort!.on("message", (msg: PrefetchMessage) => {
  if (msg.kind === "open") {
    if (fd >= 0) closeSync(fd);
    fd = openSync(msg.path, "r");
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
