/**
 * Batches of packed sequences from a prepared data folder.
 *
 * Each domain's shards (of one split) form one token stream in which
 * documents follow each other, each ending in <|endoftext|>: a window of
 * T+1 tokens from it is a packed sequence. For every row of a batch the
 * loader draws a domain with probability proportional to its weight, then a
 * window start uniformly in that domain's stream (sampling with replacement,
 * as nanoGPT does), and reads the window with positioned reads — memory is
 * one batch, whatever the corpus size.
 *
 * A batch: x [B, T] input ids, y [B, T] the ids one step later, and
 * domain [B] the domain id of each row (RRE routes every token of a row on
 * it). Everything is drawn from one seeded Rng, so the same seed and
 * options give the same batches; `getState`/`setState` resume a run exactly.
 */
import { join } from "node:path";
import { SigmaError } from "../util/errors.js";
import { Rng } from "../util/rng.js";
import { loadTokenizer } from "../tokenizer/hfjson.js";
import { readManifest, windowTokens, type Manifest } from "./manifest.js";
import { openShard, type ShardReader, type Split } from "./shards.js";

export interface LoaderOptions {
  split: Split;
  /** Sequence length T. */
  seqLen: number;
  /** Rows per batch B. */
  batchSize: number;
  seed: number;
  /**
   * Sampling weight per domain name (need not sum to 1; missing domains get 0).
   * Default: each domain's share of the split's tokens.
   */
  weights?: Record<string, number>;
  /**
   * Data parallel: this rank's rows of every batch, `count` rows from row
   * `first`. The loader still draws every row's domain and window (so that
   * every rank's generator stays in step with a one-process run's), but
   * reads only its own rows' tokens: the batch it returns has `count` rows.
   */
  slice?: { first: number; count: number };
}

export interface Batch {
  /** [B, T] input token ids. */
  x: Int32Array;
  /** [B, T] target ids (x shifted by one). */
  y: Int32Array;
  /** [B] domain id of each row. */
  domain: Int32Array;
  B: number;
  T: number;
}

interface DomainStream {
  id: number;
  name: string;
  shards: ShardReader[];
  /** starts[i] = first stream position of shard i; starts[n] = total tokens. */
  starts: number[];
}

export class Loader {
  readonly manifest: Manifest;
  readonly streams: DomainStream[];
  /** Normalised weights, parallel to `streams`. */
  readonly probs: number[];
  private readonly rng: Rng;
  private readonly window: Int32Array;

  constructor(readonly dataDir: string, readonly opts: LoaderOptions) {
    const { seqLen: T, batchSize: B } = opts;
    if (!Number.isInteger(T) || T < 1 || !Number.isInteger(B) || B < 1) throw new SigmaError(`seqLen ${T} and batchSize ${B} must be positive integers`);
    const sl = opts.slice;
    if (sl && !(Number.isInteger(sl.first) && Number.isInteger(sl.count) && sl.first >= 0 && sl.count >= 1 && sl.first + sl.count <= B)) throw new RangeError(`Loader: rows ${sl.first} + ${sl.count} are not a slice of a batch of ${B}`);
    this.manifest = readManifest(join(dataDir, "manifest.json"));
    const tokPath = join(dataDir, this.manifest.tokenizer.file);
    const { tokenizer: tok, sha256: sha } = loadTokenizer(tokPath);
    if (sha !== this.manifest.tokenizer.sha256) {
      throw new SigmaError(`${tokPath} is not the tokenizer the manifest names (sha256 ${sha.slice(0, 12)}… vs ${this.manifest.tokenizer.sha256.slice(0, 12)}…)`, "prepare the data again with `sigma data prepare`");
    }
    const manifestPath = join(dataDir, "manifest.json");
    if (tok.vocabSize !== this.manifest.tokenizer.vocabSize) {
      throw new SigmaError(`${manifestPath} says the vocabulary has ${this.manifest.tokenizer.vocabSize} tokens, but its tokenizer ${tokPath} has ${tok.vocabSize}`, "prepare the data again with `sigma data prepare`");
    }
    const tokDomains = tok.domains.join(", ");
    if (this.manifest.domains.map((d) => d.name).join(", ") !== tokDomains) {
      throw new SigmaError(`${manifestPath} lists the domains ${this.manifest.domains.map((d) => d.name).join(", ")}, but its tokenizer ${tokPath} has ${tokDomains}`, "prepare the data again with `sigma data prepare`");
    }
    const names = this.manifest.domains.map((d) => d.name);
    const weights = opts.weights ?? Object.fromEntries(this.manifest.domains.map((d) => [d.name, d[opts.split].tokens]));
    for (const [name, w] of Object.entries(weights)) {
      if (!names.includes(name)) throw new SigmaError(`Unknown domain "${name}" in the mixing weights; known domains: ${names.join(", ")}`, "weights are keyed by the domain names in manifest.json");
      if (!(w >= 0 && Number.isFinite(w))) throw new SigmaError(`Mixing weight for "${name}" is ${w}; weights must be finite and ≥ 0`);
    }
    this.streams = [];
    const raw: number[] = [];
    const opened: ShardReader[] = [];
    try {
      for (const d of this.manifest.domains) {
        const w = weights[d.name] ?? 0;
        if (w === 0) continue;
        const shards: ShardReader[] = [];
        for (const s of this.manifest.shards) {
          if (s.domainId !== d.id || s.split !== opts.split) continue;
          const r = openShard(dataDir, this.manifest, s);
          opened.push(r);
          shards.push(r);
        }
        const starts = [0];
        for (const s of shards) starts.push(starts[starts.length - 1]! + s.tokens);
        const total = starts[starts.length - 1]!;
        if (total < windowTokens(T)) {
          throw new SigmaError(`Domain "${d.name}" has ${total} ${opts.split} tokens, fewer than one sequence of ${windowTokens(T)}`, `give it weight 0, use a shorter sequence length, or add text${opts.split === "val" ? " (or raise --val-fraction)" : ""}`);
        }
        this.streams.push({ id: d.id, name: d.name, shards, starts });
        raw.push(w);
      }
      if (this.streams.length === 0 || raw.reduce((a, b) => a + b, 0) === 0) throw new SigmaError("Every domain has weight 0: nothing to sample", "give at least one domain a positive weight");
    } catch (e) {
      for (const r of opened) r.close();
      throw e;
    }
    const sum = raw.reduce((a, b) => a + b, 0);
    this.probs = raw.map((w) => w / sum);
    this.rng = new Rng(opts.seed);
    this.window = new Int32Array(T + 1);
  }

  next(): Batch {
    const { seqLen: T, batchSize } = this.opts;
    const first = this.opts.slice?.first ?? 0;
    const B = this.opts.slice?.count ?? batchSize;
    const x = new Int32Array(B * T);
    const y = new Int32Array(B * T);
    const domain = new Int32Array(B);
    for (let row = 0; row < batchSize; row++) {
      const s = this.streams[this.pickDomain()]!;
      const total = s.starts[s.starts.length - 1]!;
      const start = this.rng.int(total - T); // windows [start, start + T + 1) all fit
      const b = row - first;
      if (b < 0 || b >= B) continue;
      this.read(s, start, this.window);
      x.set(this.window.subarray(0, T), b * T);
      y.set(this.window.subarray(1, T + 1), b * T);
      domain[b] = s.id;
    }
    return { x, y, domain, B, T };
  }

  private pickDomain(): number {
    let u = this.rng.uniform();
    for (let i = 0; i < this.probs.length - 1; i++) {
      u -= this.probs[i]!;
      if (u < 0) return i;
    }
    return this.probs.length - 1;
  }

  /** Reads stream positions [start, start + out.length), crossing shard boundaries as needed. */
  private read(s: DomainStream, start: number, out: Int32Array): void {
    let done = 0;
    let i = 0;
    while (s.starts[i + 1]! <= start) i++;
    while (done < out.length) {
      const shard = s.shards[i]!;
      const from = start + done - s.starts[i]!;
      const n = Math.min(out.length - done, shard.tokens - from);
      shard.read(from, out.subarray(done, done + n));
      done += n;
      i++;
    }
  }

  getState(): ReturnType<Rng["getState"]> {
    return this.rng.getState();
  }
  setState(state: ReturnType<Rng["getState"]>): void {
    this.rng.setState(state);
  }

  close(): void {
    for (const s of this.streams) for (const r of s.shards) r.close();
  }
}
