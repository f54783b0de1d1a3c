/**
 * Prefetch: reads of the records the next step needs, done by a worker
 * thread while the main thread computes the current step (the kernels are
 * synchronous native calls on the main thread, so the worker's file I/O runs
 * beside them, never on the event-loop thread). Waiting is synchronous
 * (Atomics.wait on a shared status word), so a synchronous training step can
 * collect a prefetched expert without yielding to the event loop.
 */
import { Worker } from "node:worker_threads";
import type { IndexEntry } from "./format.js";
import { CANCELLED, DONE, FAILED, PENDING } from "./io-status.js";
import type { PrefetchMessage, WriteItem } from "./prefetch-worker.js";

export interface Pending {
  layer: number;
  expert: number;
  buf: Uint8Array;
  entry: IndexEntry;
  status: Int32Array;
  i: number;
  /** [0] becomes 1 once the worker has loaded, −1 if it failed. */
  alive: Int32Array;
}

/**
 * Waits for item `i` of `status` to finish; true when it did (DONE or
 * FAILED), false when the worker is out of the picture and the item was
 * cancelled, so that its buffer is the caller's again: the worker never came
 * up (5 s), failed, or has not started the item within a minute. An item the
 * worker has claimed is always waited for, since the worker is using its
 * buffer (an I/O call cannot hang forever without the process hanging too).
 */
function finish(status: Int32Array, i: number, alive: Int32Array): boolean {
  const t0 = Date.now();
  for (;;) {
    const s = Atomics.load(status, i);
    if (s === DONE || s === FAILED) return true;
    if (s === PENDING) {
      const waited = Date.now() - t0;
      const gone = Atomics.load(alive, 0) === -1 || (waited > 5000 && Atomics.load(alive, 0) === 0) || waited > 60000;
      // Cancelled only if the worker has not claimed it in between.
      if (gone && Atomics.compareExchange(status, i, PENDING, CANCELLED) === PENDING) return false;
    }
    Atomics.wait(status, i, s, 50);
  }
}

/** The worker script next to this file (.ts under tsx, .js once compiled). */
const underTsx = import.meta.url.endsWith(".ts");
const workerUrl = new URL(underTsx ? "./prefetch-worker.ts" : "./prefetch-worker.js", import.meta.url);

/**
 * Under tsx (tests, benches) the loader hooks of the main thread do not reach
 * workers, so a .ts worker is started by a small script that registers tsx first.
 */
function startWorker(alive: Int32Array): Worker {
  if (!underTsx) return new Worker(workerUrl, { workerData: { alive } });
  const api = import.meta.resolve("tsx/esm/api");
  const boot = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(workerUrl.href)}); });`;
  return new Worker(boot, { eval: true, workerData: { alive } });
}

export class Prefetcher {
  private worker: Worker | null;
  private readonly alive = new Int32Array(new SharedArrayBuffer(4));

  constructor(path: string) {
    this.worker = startWorker(this.alive);
    // A worker that fails to load sets nothing; wait() notices and the reads happen on demand instead.
    this.worker.on("error", () => {});
    // The worker must not keep a finished run alive.
    this.worker.unref();
    this.post({ kind: "open", path });
  }

  private post(msg: PrefetchMessage): void {
    this.worker!.postMessage(msg);
  }

  /** Starts reading each item into its buffer; returns one Pending per item. */
  request(items: { layer: number; expert: number; offset: number; floats: number; entry: IndexEntry; buf: Uint8Array }[]): Pending[] {
    if (items.length === 0) return [];
    const status = new Int32Array(new SharedArrayBuffer(4 * items.length));
    this.post({ kind: "read", items, status });
    return items.map((it, i) => ({ layer: it.layer, expert: it.expert, buf: it.buf, entry: it.entry, status, i, alive: this.alive }));
  }

  /** Hands a record to the worker to seal and write; wait with Prefetcher.waitWrite(status). */
  write(item: Omit<WriteItem, "status">): Int32Array {
    const status = new Int32Array(new SharedArrayBuffer(8));
    this.post({ kind: "write", item: { ...item, status } });
    return status;
  }

  /**
   * Blocks until a write is on disk; returns its crc32, or null when the
   * worker failed it or was cancelled out of it (see finish): the caller then
   * writes the record itself, and the worker will not touch the buffer again.
   */
  waitWrite(status: Int32Array): number | null {
    if (!finish(status, 0, this.alive)) return null;
    return Atomics.load(status, 0) === DONE ? Atomics.load(status, 1) >>> 0 : null;
  }

  /** True once a write is finished, well or not (does not block). */
  static written(status: Int32Array): boolean {
    const s = Atomics.load(status, 0);
    return s === DONE || s === FAILED;
  }

  /**
   * Blocks until the item is read; true when it checked out. False when the
   * read failed or was cancelled (see finish): the caller then reads the
   * record itself, and the worker will not touch the buffer again.
   */
  static wait(p: Pending): boolean {
    return finish(p.status, p.i, p.alive) && Atomics.load(p.status, p.i) === DONE;
  }

  async close(): Promise<void> {
    if (!this.worker) return;
    const w = this.worker;
    this.worker = null;
    w.postMessage({ kind: "close" } satisfies PrefetchMessage);
    await w.terminate();
  }
}
