/**
 * The parsed formats the fuzzer mutates, and for each: which seed file, how it
 * is mutated (bytes, JSON structure, the safetensors header, the store header,
 * the shard header), which checksums are fixed up so the mutant reaches the
 * parser instead of only the checksum test, and which `sigma` commands load it.
 *
 * A mutant is a pure function of (run seed, format, index) and the seed files:
 * `makeMutant` draws everything from FuzzRng.for(seed, format, index).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { mutateBytes, mutateField, type Field } from "./bytes.js";
import { crc32 } from "./crc32.js";
import { mutateJsonText, mutateTree, serialize, showPath } from "./json.js";
import { pathString, type PathContext } from "./paths.js";
import { FuzzRng } from "./rng.js";
import { CKPT, SEED_STEP, SRUN_CKPT, STORE_FILE } from "./seeds.js";

export interface Mutant {
  format: string;
  index: number;
  /** The mutated seed file (relative to the job folder). */
  target: string;
  /** Seed entries copied into the job folder before the mutated files are written. */
  uses: string[];
  /** Files written over the copies (the mutant, and fixed-up state.json). */
  files: Map<string, Uint8Array>;
  argv: string[];
  /** What was done, in order. */
  what: string[];
  /** Instead of other bytes, the target becomes another kind of file (made by the harness when it writes the job). */
  special?: Special;
  /** A shorter bound for this job (a FIFO: a reader that does not check blocks forever). */
  timeoutMs?: number;
}

/**
 * Another kind of file at the target's path: a symbolic link (to the watched victim's keep.txt, to a valid
 * copy beside it, to nothing), a directory, or a FIFO with no writer (only for files Sigma finds inside a
 * folder: a FIFO named on the command line is the user's own pipe).
 */
export type Special = { kind: "link"; to: string } | { kind: "dir" } | { kind: "fifo" };

/** The seed files, read once. */
export class Seeds {
  private cache = new Map<string, Uint8Array>();
  constructor(readonly dir: string) {}
  get(rel: string): Uint8Array {
    let b = this.cache.get(rel);
    if (!b) this.cache.set(rel, (b = new Uint8Array(readFileSync(join(this.dir, rel)))));
    return b;
  }
}

type Mutator = (r: FuzzRng, bytes: Uint8Array, ctx: PathContext, what: string[]) => Uint8Array;

interface Variant {
  /** Relative frequency among the format's variants (default 1). */
  weight?: number;
  target: string | ((r: FuzzRng) => string);
  uses: string[];
  mutate: Mutator;
  /** The checkpoint folder holding `target`, whose state.json records its size and hash. */
  inCheckpoint?: string;
  /** The target is a path given on the command line (no FIFO mutants: a FIFO there is the user's pipe). */
  named?: boolean;
  /** Also fix state.json's tokenizer.sha256 (the tokenizer of a checkpoint). */
  tokenizerHash?: boolean;
  commands: string[][];
}

export interface Format {
  name: string;
  description: string;
  variants: Variant[];
}

const text = (b: Uint8Array): string => Buffer.from(b).toString("utf8");
const bytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "utf8"));
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

type JsonPath = (string | number)[];

/**
 * JSON files: mostly structural mutations, sometimes raw bytes; `pathFields`
 * (fields holding a path the program reads or writes) get a traversal /
 * absolute / odd path string 15% of the time.
 */
function jsonMutator(opts: { avoid?: (p: JsonPath) => boolean; pathFields?: (root: unknown) => JsonPath[] } = {}): Mutator {
  return (r, b, ctx, what) => {
    const fields = opts.pathFields ? opts.pathFields(JSON.parse(text(b))) : [];
    if (fields.length && r.chance(0.15)) {
      const root = JSON.parse(text(b)) as Record<string, unknown>;
      const p = r.pick(fields);
      let parent: Record<string | number, unknown> = root;
      for (const k of p.slice(0, -1)) parent = (parent[k] ??= {}) as Record<string | number, unknown>;
      const v = pathString(r, ctx);
      parent[p[p.length - 1]!] = v;
      what.push(`${showPath(p)}: path ${JSON.stringify(v)}`);
      return bytes(JSON.stringify(root, null, 1));
    }
    if (r.chance(0.8)) {
      const m = mutateJsonText(r, text(b), ctx, opts);
      if (m) {
        what.push(...m.what);
        return bytes(m.text);
      }
    }
    const m = mutateBytes(r, b);
    what.push(m.what);
    return m.bytes;
  };
}

/** Splits a safetensors file into its header JSON and data section. */
function splitSafetensors(b: Uint8Array): { header: Record<string, unknown>; hlen: number; data: Uint8Array } {
  const hlen = Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(0, true));
  return { header: JSON.parse(text(b.subarray(8, 8 + hlen))) as Record<string, unknown>, hlen, data: b.subarray(8 + hlen) };
}

function joinSafetensors(headerText: string, data: Uint8Array, lengthField: bigint | null): Uint8Array {
  const h = bytes(headerText);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/**
 * safetensors: the header JSON (tensor entries, offsets, shapes, dtypes,
 * __metadata__, and the model config JSON embedded in it), the length prefix,
 * or raw bytes biased into the header. `focus` weights the __metadata__.
 */
function safetensorsMutator(focus: "model" | "optimizer"): Mutator {
  return (r, b, ctx, what) => {
    const { header, hlen, data } = splitSafetensors(b);
    const meta = header.__metadata__ as Record<string, string>;
    const op = r.weighted<string>(
      focus === "optimizer"
        ? [[5, "metadata"], [3, "header"], [1, "length"], [2, "bytes"]]
        : [[4, "header"], [2, "config"], [1, "metadata"], [1, "length"], [3, "bytes"], [1, "data"]],
    );
    const keepLength = r.chance(0.1);
    const rejoin = (h: unknown): Uint8Array => {
      const t = serialize(h);
      if (keepLength) what.push("length prefix left at the old header length");
      return joinSafetensors(t, data, keepLength ? BigInt(hlen) : null);
    };
    switch (op) {
      case "header": {
        const m = mutateTree(r, header, ctx);
        what.push(`header ${m.what}`);
        return rejoin(m.root);
      }
      case "metadata": {
        const m = mutateTree(r, header, ctx, { avoid: (p) => p[0] !== "__metadata__" });
        what.push(`header ${m.what}`);
        return rejoin(m.root);
      }
      case "config": {
        let cfg: unknown = JSON.parse(meta.config ?? "{}");
        const n = r.range(1, 2);
        for (let i = 0; i < n; i++) {
          const m = mutateTree(r, cfg, ctx);
          cfg = m.root;
          what.push(`embedded config ${m.what}`);
        }
        return rejoin({ ...header, __metadata__: { ...meta, config: serialize(cfg) } });
      }
      case "length": {
        const m = mutateField(r, b, { name: "header length", offset: 0, width: 8 });
        what.push(m.what);
        return m.bytes;
      }
      case "data": {
        // Tensor values: NaN, ±Inf, huge; or an RRE table's ints out of range.
        const out = Uint8Array.from(b);
        const dv = new DataView(out.buffer);
        const start = 8 + hlen;
        const k = r.range(1, 16);
        const v = r.pick([NaN, Infinity, -Infinity, 3e38, -1, 1e6]);
        for (let i = 0; i < k && out.length - start >= 4; i++) {
          const at = start + 4 * r.int(Math.floor((out.length - start) / 4));
          if (r.chance(0.5)) dv.setFloat32(at, v, true);
          else dv.setInt32(at, r.pick([-1, 2 ** 31 - 1, 4, 1000, -(2 ** 31)]), true);
        }
        what.push(`${k} data word(s) set to odd floats / ints`);
        return out;
      }
      default: {
        const m = mutateBytes(r, b, 8 + hlen);
        what.push(m.what);
        return m.bytes;
      }
    }
  };
}

/** Expert store: the page-0 header JSON (checksum fixed up most of the time), its fixed fields, or raw bytes. */
const storeMutator: Mutator = (r, b, ctx, what) => {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const len = dv.getUint32(8, true);
  const op = r.weighted<string>([[6, "json"], [2, "field"], [2, "bytes"], [1, "file"]]);
  if (op === "json") {
    const m = mutateTree(r, JSON.parse(text(b.subarray(16, 16 + len))), ctx);
    what.push(`header ${m.what}`);
    const json = bytes(serialize(m.root));
    const out = new Uint8Array(Math.max(b.length, 16 + json.length));
    out.set(b);
    out.fill(0, 16, 16 + len);
    out.set(json, 16);
    const odv = new DataView(out.buffer);
    odv.setUint32(8, json.length, true);
    if (r.chance(0.9)) odv.setUint32(12, crc32(json), true);
    else what.push("header checksum left stale");
    if (16 + json.length > 4096) what.push(`header JSON of ${json.length} bytes runs past page 0`);
    return out;
  }
  if (op === "field") {
    const fields: Field[] = [
      { name: "magic", offset: 0, width: 4 },
      { name: "version", offset: 4, width: 4 },
      { name: "json length", offset: 8, width: 4 },
      { name: "crc32", offset: 12, width: 4 },
    ];
    const m = mutateField(r, b, r.pick(fields));
    what.push(m.what);
    return m.bytes;
  }
  const m = mutateBytes(r, b, op === "bytes" ? 16 + len : 0);
  what.push(m.what);
  // A byte-level change inside the header JSON: fix its checksum most of the time, so it reaches the JSON parser.
  if (op === "bytes" && m.bytes.length >= 16 + len && r.chance(0.7)) {
    const odv = new DataView(m.bytes.buffer, m.bytes.byteOffset, m.bytes.byteLength);
    const n = odv.getUint32(8, true);
    if (16 + n <= m.bytes.length) {
      odv.setUint32(12, crc32(m.bytes.subarray(16, 16 + n)), true);
      what.push("header checksum recomputed");
    }
  }
  return m.bytes;
};

/** experts.index: 16-byte entries (u8 slot + 3 pad, u32 generation, u32 crc32, u32 step), or raw bytes. */
const indexMutator: Mutator = (r, b, _ctx, what) => {
  if (r.chance(0.6) && b.length >= 16) {
    const e = r.int(b.length >> 4);
    const [name, off] = r.pick([["slot", 0], ["generation", 4], ["crc32", 8], ["step", 12]] as const);
    const m = mutateField(r, b, { name: `entry ${e} ${name}`, offset: 16 * e + off, width: 4 });
    what.push(m.what);
    return m.bytes;
  }
  const m = mutateBytes(r, b);
  what.push(m.what);
  return m.bytes;
};

/** metrics.jsonl: one line's JSON mutated, a line replaced by odd JSON, lines repeated, or raw bytes. */
const metricsMutator: Mutator = (r, b, ctx, what) => {
  const lines = text(b).split("\n");
  const i = r.int(Math.max(1, lines.length - 1));
  const op = r.weighted<string>([[5, "json"], [2, "odd"], [1, "repeat"], [2, "bytes"]]);
  if (op === "json") {
    const m = mutateJsonText(r, lines[i]!, ctx);
    if (m) {
      lines[i] = m.text.replaceAll("\n", " ");
      what.push(...m.what.map((w) => `line ${i + 1} ${w}`));
      return bytes(lines.join("\n"));
    }
  }
  if (op === "odd") {
    const odd = r.pick(["null", "[]", "1", '"x"', "{}", '{"kind":"train"}', '{"kind":"eval","step":2}', '{"kind":"eval","step":1,"domains":null}', '{"step":"x"}', '{"kind":"train","step":1e308,"loss":"NaN"}', '{"kind":"routing","step":1,"layers":[{}]}', "{".repeat(50_000)]);
    lines.splice(i, r.chance(0.5) ? 1 : 0, odd);
    what.push(`line ${i + 1} set or inserted: ${odd.slice(0, 60)}`);
    return bytes(lines.join("\n"));
  }
  if (op === "repeat") {
    const n = r.pick([1000, 100_000]);
    lines.splice(i, 0, ...Array<string>(n).fill(lines[i]!));
    what.push(`line ${i + 1} repeated ${n} times`);
    return bytes(lines.join("\n"));
  }
  const m = mutateBytes(r, b);
  what.push(m.what);
  return m.bytes;
};

/** Token shard: its 96-byte header's fields, or raw bytes biased into the header. */
const shardMutator: Mutator = (r, b, _ctx, what) => {
  if (r.chance(0.5)) {
    const fields: Field[] = [
      { name: "magic", offset: 0, width: 4 },
      { name: "version", offset: 4, width: 4 },
      { name: "bytes per token", offset: 8, width: 4 },
      { name: "domain id", offset: 12, width: 4 },
      { name: "token count", offset: 16, width: 8 },
      { name: "document count", offset: 24, width: 8 },
      { name: "split", offset: 32, width: 4 },
      { name: "vocabulary size", offset: 36, width: 4 },
      { name: "tokenizer sha256", offset: 64, width: 8 },
    ];
    const m = mutateField(r, b, r.pick(fields));
    what.push(m.what);
    return m.bytes;
  }
  if (r.chance(0.3)) {
    // Token ids past the vocabulary.
    const out = Uint8Array.from(b);
    const dv = new DataView(out.buffer);
    const k = r.range(1, 8);
    for (let i = 0; i < k && out.length > 98; i++) dv.setUint16(96 + 2 * r.int((out.length - 96) >> 1), r.pick([320, 321, 1000, 65535]), true);
    what.push(`${k} token id(s) set past the vocabulary`);
    return out;
  }
  const m = mutateBytes(r, b, 96);
  what.push(m.what);
  return m.bytes;
};

const EVAL = (ckpt: string, data?: string): string[] => ["eval", "--ckpt", ckpt, ...(data ? ["--data", data] : []), "--batches", "1", "--batch-size", "2"];
const RESUME = (cfg: string, ckpt: string, out = true): string[] => ["train", "--config", cfg, "--resume", ckpt, "--steps", String(SEED_STEP + 1), ...(out ? ["--out", "out"] : [])];
const GENERATE = (ckpt: string): string[] => ["generate", "--ckpt", ckpt, "--max-tokens", "2", "--prompt", "The <|lang:en|> 学", "--seed", "3"];
const TRAIN1 = (cfg: string): string[] => ["train", "--config", cfg, "--steps", "1", "--out", "out"];
const INIT = (model: string): string[] => ["train", "--config", "train.json", "--init", model, "--steps", "1", "--out", "out"];
const EXTRACT = (ckpt: string): string[] => ["extract", "--ckpt", ckpt, "--domain", "en", "--out", "ext"];
const TRAIN_INTO = (cfg: string): string[] => ["train", "--config", cfg, "--steps", "1", "--out", "killed"];
const TO_RAM = ["store", "convert", "--from", SRUN_CKPT, "--to", "ram", "--out", "conv"];
const RAM = [CKPT, "data", "train.json"];
const STATE_PATHS = (): JsonPath[] => [["config", "data", "dir"], ["config", "out"], ["config", "store", "path"], ["store", "path"]];
const CONFIG_PATHS = (): JsonPath[] => [["data", "dir"]];
const MANIFEST_PATHS = (m: unknown): JsonPath[] => [["tokenizer", "file"], ["corpus"], ...((m as { shards?: unknown[] }).shards ?? []).map((_, i): JsonPath => ["shards", i, "file"])];
const STORE = ["srun", "data", "store.json"];
const SHARDS = ["code-train-0000", "code-val-0000", "en-train-0000", "en-val-0000", "zh-train-0000", "zh-val-0000"].map((s) => `data/shards/${s}.sgtk`);

export const FORMATS: Format[] = [
  {
    name: "state.json",
    description: "a checkpoint's state.json (RAM and expert-store runs)",
    variants: [
      { target: `${CKPT}/state.json`, uses: RAM, mutate: jsonMutator({ pathFields: STATE_PATHS }), commands: [EVAL(CKPT, "data"), EVAL(CKPT), GENERATE(CKPT), RESUME("train.json", CKPT), EXTRACT(CKPT), INIT(CKPT)] },
      { target: `${SRUN_CKPT}/state.json`, uses: STORE, mutate: jsonMutator({ pathFields: STATE_PATHS }), commands: [EVAL(SRUN_CKPT), RESUME("store.json", SRUN_CKPT, false), ["store", "inspect", STORE_FILE, "--ckpt", SRUN_CKPT], TO_RAM] },
    ],
  },
  {
    name: "train-config",
    description: "the train config (sigma train --config); out and store.path are where the user asks to write, so no traversal strings go there",
    variants: [
      { target: "train.json", named: true, uses: ["data"], mutate: jsonMutator({ avoid: (p) => p[0] === "out" || (p[0] === "store" && p[1] === "path"), pathFields: CONFIG_PATHS }), commands: [TRAIN1("train.json")] },
      { target: "store.json", named: true, uses: ["data"], mutate: jsonMutator({ avoid: (p) => p[0] === "out" || (p[0] === "store" && p[1] === "path"), pathFields: CONFIG_PATHS }), commands: [TRAIN1("store.json")] },
    ],
  },
  {
    name: "safetensors",
    description: "model.safetensors: a bare model file, a checkpoint's (re-hashed), an expert-store checkpoint's dense part",
    variants: [
      { target: "bare/model.safetensors", named: true, uses: ["bare", "data", "train.json"], mutate: safetensorsMutator("model"), commands: [GENERATE("bare/model.safetensors"), EXTRACT("bare/model.safetensors"), INIT("bare/model.safetensors")] },
      { target: `${CKPT}/model.safetensors`, uses: RAM, inCheckpoint: CKPT, mutate: safetensorsMutator("model"), commands: [EVAL(CKPT, "data"), GENERATE(CKPT), RESUME("train.json", CKPT)] },
      { target: `${SRUN_CKPT}/model.safetensors`, uses: STORE, inCheckpoint: SRUN_CKPT, mutate: safetensorsMutator("model"), commands: [EVAL(SRUN_CKPT), RESUME("store.json", SRUN_CKPT, false)] },
    ],
  },
  {
    name: "tokenizer.json",
    description: "tokenizer.json: standalone, beside a bare model, inside a checkpoint (re-hashed)",
    variants: [
      {
        target: "tok.json",
        named: true,
        uses: ["corpus"],
        mutate: jsonMutator(),
        commands: [
          ["tokenizer", "encode", "--tokenizer", "tok.json", "héllo wörld, 你好 <|endoftext|> code(x) {}"],
          ["tokenizer", "decode", "--tokenizer", "tok.json", "0", "1", "2", "100", "255", "300", "319"],
          ["data", "prepare", "--corpus", "corpus", "--tokenizer", "tok.json", "--out", "prepared"],
        ],
      },
      { target: "bare/tokenizer.json", uses: ["bare"], mutate: jsonMutator(), commands: [GENERATE("bare/model.safetensors"), EXTRACT("bare/model.safetensors")] },
      { target: `${CKPT}/tokenizer.json`, uses: [CKPT], inCheckpoint: CKPT, tokenizerHash: true, mutate: jsonMutator(), commands: [GENERATE(CKPT)] },
    ],
  },
  {
    name: "manifest",
    description: "a data folder's manifest.json",
    variants: [{ target: "data/manifest.json", uses: RAM, mutate: jsonMutator({ pathFields: MANIFEST_PATHS }), commands: [["data", "stats", "--data", "data"], ["data", "stats", "--data", "data", "--json"], EVAL(CKPT, "data"), TRAIN1("train.json")] }],
  },
  {
    name: "shards",
    description: "a data folder's token shards (.sgtk)",
    variants: [{ target: (r) => r.pick(SHARDS), uses: RAM, mutate: shardMutator, commands: [EVAL(CKPT, "data"), TRAIN1("train.json")] }],
  },
  {
    name: "store-header",
    description: "the expert store: its page-0 header (JSON with its crc32, fixed up 90% of the time), a checkpoint's experts.index (re-hashed), the store's stats file",
    variants: [
      { weight: 4, target: STORE_FILE, uses: STORE, mutate: storeMutator, commands: [["store", "inspect", STORE_FILE], ["store", "inspect", STORE_FILE, "--verify", "--ckpt", SRUN_CKPT], EVAL(SRUN_CKPT), RESUME("store.json", SRUN_CKPT, false), TO_RAM] },
      { target: `${SRUN_CKPT}/experts.index`, uses: STORE, inCheckpoint: SRUN_CKPT, mutate: indexMutator, commands: [["store", "inspect", STORE_FILE, "--verify", "--ckpt", SRUN_CKPT], EVAL(SRUN_CKPT), RESUME("store.json", SRUN_CKPT, false), TO_RAM] },
      { target: `${STORE_FILE}.stats.json`, uses: STORE, mutate: jsonMutator(), commands: [["store", "inspect", STORE_FILE], ["store", "inspect", STORE_FILE, "--json"]] },
    ],
  },
  {
    name: "run-folder",
    description: "a run folder's run.json (the marker of a run killed before its first checkpoint) and metrics.jsonl (read back on resume)",
    variants: [
      {
        target: "killed/run.json",
        uses: ["killed", "data", "train.json", "store.json"],
        mutate: jsonMutator({ pathFields: () => [["store"]] }),
        commands: [TRAIN_INTO("train.json"), TRAIN_INTO("store.json"), [...TRAIN_INTO("store.json"), "--overwrite"]],
      },
      { target: "srun/metrics.jsonl", uses: STORE, mutate: metricsMutator, commands: [RESUME("store.json", SRUN_CKPT, false)] },
    ],
  },
  {
    name: "optimizer",
    description: "optimizer.safetensors, mostly its __metadata__ (format, step), re-hashed in state.json",
    variants: [
      { target: `${CKPT}/optimizer.safetensors`, uses: RAM, inCheckpoint: CKPT, mutate: safetensorsMutator("optimizer"), commands: [RESUME("train.json", CKPT)] },
      { target: `${SRUN_CKPT}/optimizer.safetensors`, uses: STORE, inCheckpoint: SRUN_CKPT, mutate: safetensorsMutator("optimizer"), commands: [RESUME("store.json", SRUN_CKPT, false)] },
    ],
  },
];

export const formatNames = FORMATS.map((f) => f.name);

/** Mutant `index` of `format` under run seed `seed`. */
export function makeMutant(seeds: Seeds, seed: number, format: Format, index: number, ctx: PathContext): Mutant {
  const r = FuzzRng.for(seed, format.name, index);
  const v = r.weighted(format.variants.map((x) => [x.weight ?? 1, x] as const));
  const target = typeof v.target === "string" ? v.target : v.target(r);
  const argv = r.pick(v.commands);
  const what: string[] = [];
  if (r.chance(0.04)) {
    // The file's kind instead of its bytes.
    const base = target.slice(target.lastIndexOf("/") + 1);
    const kinds: (() => Mutant)[] = [
      () => special({ kind: "link", to: `${ctx.victimAbs}/keep.txt` }, "a symbolic link to the victim's keep.txt"),
      () => special({ kind: "link", to: `${base}.orig` }, `a symbolic link to ${base}.orig, a valid copy`, new Map([[`${target}.orig`, seeds.get(target)]])),
      () => special({ kind: "link", to: "missing" }, "a dangling symbolic link"),
      () => special({ kind: "dir" }, "a directory"),
    ];
    if (!v.named) kinds.push(() => ({ ...special({ kind: "fifo" }, "a FIFO with no writer"), timeoutMs: 5000 }));
    return r.pick(kinds)();
  }
  function special(sp: Special, desc: string, files = new Map<string, Uint8Array>()): Mutant {
    return { format: format.name, index, target, uses: [...new Set([...v.uses, ...(v.inCheckpoint ? [v.inCheckpoint] : [])])], files, argv, what: [`${target} replaced by ${desc}`], special: sp };
  }
  const mutated = v.mutate(r, seeds.get(target), ctx, what);
  const files = new Map<string, Uint8Array>([[target, mutated]]);
  if (v.inCheckpoint) {
    // Keep the checkpoint's records in step with the mutant, so it reaches the parser (most of the time).
    if (r.chance(0.85)) {
      const sp = `${v.inCheckpoint}/state.json`;
      const state = JSON.parse(text(seeds.get(sp))) as { files: Record<string, { bytes: number; sha256: string }>; tokenizer: { sha256: string } };
      const name = target.slice(v.inCheckpoint.length + 1);
      state.files[name] = { bytes: mutated.length, sha256: sha256(mutated) };
      if (v.tokenizerHash) state.tokenizer.sha256 = sha256(mutated);
      files.set(sp, bytes(JSON.stringify(state, null, 1)));
      what.push(`state.json re-hashed for ${name}`);
    } else what.push("state.json left with the old hash");
  }
  return { format: format.name, index, target, uses: [...new Set([...v.uses, ...(v.inCheckpoint ? [v.inCheckpoint] : [])])], files, argv, what };
}
