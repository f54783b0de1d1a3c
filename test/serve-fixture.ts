// A minimal scheduler over the server's batched step (src/serve/batch.ts),
// shared by the tests of the batched decode core and of the f16 pool. Not a test file.
import assert from "node:assert/strict";
import { headDim, kvHeads } from "../src/models/config.js";
import type { PanguSigma } from "../src/models/pangu-sigma.js";
import type { KVFormat } from "../src/nn/attention.js";
import { attentionLayers, forwardBatch, type BatchItem } from "../src/serve/batch.js";
import { KVPool, type KVSeq } from "../src/serve/kv-pool.js";
import { argmax } from "../src/serve/sampling.js";

export interface Job {
  prompt: number[];
  domain: number;
  /** Step at which the sequence joins. */
  joins: number;
  steps: number;
}

/** Key/value numbers per position: G·D. */
export const kvWidth = (model: PanguSigma) => kvHeads(model.config) * headDim(model.config);

/**
 * Greedy decoding of `jobs` by a minimal scheduler over forwardBatch: each
 * step a joined sequence brings one token, or the next ≤ `chunk` tokens of
 * its prompt. Returns each job's generated ids and whether any sequence's
 * blocks were not consecutive in the pool (the copying path), and the pool (its keys and values in `format`), empty again.
 */
export function decodeAll(model: PanguSigma, jobs: Job[], chunk: number, blockSize = 4, width = model.config.width, format: KVFormat = "f32"): { out: number[][]; scattered: boolean; pool: KVPool } {
  const pool = new KVPool(attentionLayers(model), width, blockSize, 64, "float32", format);
  const state = jobs.map(() => ({ seq: null as KVSeq | null, fed: 0, out: [] as number[], next: -1, done: false }));
  let scattered = false;
  for (let step = 0; state.some((s) => !s.done); step++) {
    const items: (BatchItem & { j: number })[] = [];
    jobs.forEach((job, j) => {
      const s = state[j]!;
      if (s.done || step < job.joins) return;
      s.seq ??= pool.open(job.prompt.length + job.steps);
      assert.ok(s.seq, "the pool has room");
      if (s.fed < job.prompt.length) {
        const part = job.prompt.slice(s.fed, s.fed + chunk);
        s.fed += part.length;
        items.push({ j, seq: s.seq, tokens: part, domain: job.domain, logits: s.fed === job.prompt.length });
      } else items.push({ j, seq: s.seq, tokens: [s.next], domain: job.domain, logits: true });
    });
    if (items.length === 0) continue;
    const logits = forwardBatch(model, pool, items);
    items.forEach((it, i) => {
      const s = state[it.j]!;
      const t = it.seq.table;
      if (t.some((b, x) => x > 0 && b !== t[0]! + x)) scattered = true;
      if (!logits[i]) return;
      s.next = argmax(logits[i]!);
      s.out.push(s.next);
      if (s.out.length === jobs[it.j]!.steps) {
        pool.close(it.seq);
        s.done = true;
      }
    });
  }
  assert.equal(pool.used, 0, "every block is back");
  assert.equal(pool.sequences, 0);
  assert.equal(pool.available, pool.blocks);
  return { out: state.map((s) => s.out), scattered, pool };
}

