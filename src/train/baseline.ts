/**
 * The unigram baseline of a domain: the cross-entropy of its validation
 * tokens under the token frequencies of its training tokens (add-one
 * smoothed, so a token unseen in training costs log(N + V) rather than ∞).
 * A model that has learned nothing beyond token frequencies sits here; one
 * that uses context goes below it.
 */
import { join } from "node:path";
import { readManifest } from "../data/manifest.js";
import { openShard } from "../data/shards.js";

export interface UnigramBaseline {
  domain: string;
  /** Nats per validation token. */
  crossEntropy: number;
  trainTokens: number;
  valTokens: number;
}

export function unigramBaselines(dataDir: string): UnigramBaseline[] {
  const m = readManifest(join(dataDir, "manifest.json"));
  const V = m.tokenizer.vocabSize;
  const read = (domainId: number, split: "train" | "val"): Int32Array[] =>
    m.shards
      .filter((s) => s.domainId === domainId && s.split === split)
      .map((s) => {
        const r = openShard(dataDir, m, s); // checks every id against the vocabulary, so counts[id] below is in range
        try {
          return r.readAll();
        } finally {
          r.close();
        }
      });
  const out: UnigramBaseline[] = [];
  for (const d of m.domains) {
    const counts = new Float64Array(V);
    let n = 0;
    for (const ids of read(d.id, "train")) for (let i = 0; i < ids.length; i++) (counts[ids[i]!]++, n++);
    let nll = 0;
    let nv = 0;
    const logZ = Math.log(n + V);
    for (const ids of read(d.id, "val")) for (let i = 0; i < ids.length; i++) (nll += logZ - Math.log(counts[ids[i]!]! + 1), nv++);
    if (nv > 0) out.push({ domain: d.name, crossEntropy: nll / nv, trainTokens: n, valTokens: nv });
  }
  return out;
}
