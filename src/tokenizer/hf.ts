/**
 * Hugging Face tokenizer.json files of other layouts than Sigma's own: the
 * BPE tokenizers of the models people download.
 *
 * Two families are read, with the semantics of the Rust `tokenizers` crate
 * (which the Python `transformers` runs):
 *   - byte-level BPE (GPT-2, Llama-3, Qwen2/Qwen3): a ByteLevel
 *     pre-tokenizer, alone with its GPT-2 regex (use_regex) or after a
 *     Split with the model's own regex; the BPE runs on the UTF-8 bytes of
 *     each piece, spelled with GPT-2's byte characters.
 *   - SentencePiece-style BPE with byte fallback (Llama-2, Mistral,
 *     Mixtral): spaces become "▁" (a Prepend + Replace normalizer, or a
 *     Metaspace pre-tokenizer); the BPE runs on characters, and a character
 *     outside the vocabulary becomes its UTF-8 bytes as <0xXX> tokens.
 *
 * Encoding a text:
 *   1. Added tokens (special or not) are cut out first, leftmost-longest:
 *      those marked `normalized: false` on the raw text, the others on the
 *      normalized text of each remaining section. lstrip / rstrip swallow
 *      the whitespace beside a match.
 *   2. Each other section is normalized, then pre-tokenized into pieces.
 *   3. Each piece goes through the BPE model (merges.ts), its ids cached.
 * Decoding maps ids to token strings and runs the decoder chain on them.
 *
 * Any component, option or regex construct outside what is listed in
 * SUPPORTED (and oniguruma.ts) is refused with a SigmaError naming it and
 * the file, never run with a different meaning.
 */
import { SigmaError } from "../util/errors.js";
import { showJson } from "../util/strict-json.js";
import type { DecodeOptions, EncodeOptions, TextStreamDecoder, TextTokenizer } from "./codec.js";
import { MAX_MERGE_ID, MergeTable } from "./merges.js";
import { onigurumaToRegExp } from "./oniguruma.js";
import { BYTE_TO_CHAR, CHAR_TO_BYTE, wellFormed } from "./pretokenize.js";

/** The components Sigma reads, by tokenizer.json section. */
export const SUPPORTED = {
  model: ["BPE"],
  normalizer: ["Sequence", "Prepend", "Replace", "NFC", "NFD", "NFKC", "NFKD"],
  pre_tokenizer: ["Sequence", "Split", "ByteLevel", "Metaspace"],
  decoder: ["Sequence", "ByteLevel", "Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"],
  post_processor: ["TemplateProcessing", "ByteLevel", "Sequence"],
} as const;

type Section = keyof typeof SUPPORTED;

/** Special tokens that end a document, in the order one is chosen when the caller names none. */
const EOS_NAMES = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>", "<eos>"];

/** GPT-2's pre-tokenizer regex (ByteLevel with use_regex), \s read as Oniguruma reads it (White_Space). */
const GPT2_REGEX = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
const WHITE_SPACE = /\p{White_Space}/u;

const CACHE_LIMIT = 200_000; // piece → ids entries; cleared when full to bound memory
const CACHE_PIECE = 256; // longer pieces (a SentencePiece sentence) are not cached

/** Receives the pieces a pre-tokenizer makes; `first` when the piece starts at offset 0 of the input (Metaspace's "first"). */
type Emit = (piece: string, first: boolean) => void;
/** A pre-tokenizer: cuts `text` and hands each piece on, without building lists. */
type PreTokenizer = (text: string, first: boolean, emit: Emit) => void;

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
}

export interface HfTokenizerOptions {
  /** The token that ends a document (tokenizer_config.json's eos_token); default: the first of EOS_NAMES present. */
  eos?: string;
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x);
const show = (x: unknown): string => showJson(x, 60);

export class HfTokenizer implements TextTokenizer {
  readonly kind = "hf" as const;
  readonly domains: readonly string[] = [];
  readonly langs: readonly string[] = [];
  readonly specials: readonly string[];
  readonly vocab: readonly string[];
  readonly eotId: number;
  /** Whether the model works on bytes (a ByteLevel pre-tokenizer) rather than characters. */
  readonly byteLevel: boolean;
  /** The ids the post-processor puts before and after a text (encode with addSpecial). */
  readonly prefixIds: readonly number[];
  readonly suffixIds: readonly number[];

  private readonly where: string;
  private readonly idOf = new Map<string, number>();
  /** The model vocabulary's token of each id (added tokens not laid over it). */
  private readonly tokenOf: string[] = [];
  private readonly added: AddedToken[] = [];
  private readonly specialIds = new Set<number>();
  /** Added-token matchers: [raw text, normalized text] × [all, non-special only]. */
  private readonly rawAll: Trie;
  private readonly rawOrdinary: Trie;
  private readonly normAll: Trie;
  private readonly normOrdinary: Trie;
  private readonly normalizer: ((s: string) => string) | null;
  private readonly preTokenizer: PreTokenizer;
  private readonly decoder: ((tokens: string[]) => string[]) | null;
  private readonly merges: MergeTable;
  /** Byte-level: the id of each byte's character token (-1: none). */
  private readonly byteIds = new Int32Array(256).fill(-1);
  /** Byte fallback: the id of each <0xXX> token (-1: none). */
  private readonly fallbackIds = new Int32Array(256).fill(-1);
  private readonly byteFallback: boolean;
  private readonly unkId: number;
  private readonly fuseUnk: boolean;
  private readonly ignoreMerges: boolean;
  private readonly cache = new Map<string, number[]>();
  private readonly utf8 = new TextEncoder();

  /** The tokenizer.json text this tokenizer was read from (saved with a model as is). */
  readonly sourceText: string;

  /** `json`: the parsed tokenizer.json (`text`, its source, when read from a file); `where` names the file in errors. */
  constructor(json: unknown, where: string, opts: HfTokenizerOptions = {}, text?: string) {
    this.where = where;
    this.sourceText = text ?? JSON.stringify(json);
    if (!isObject(json)) this.fail("the file is not a JSON object");
    const j = json as Record<string, unknown>;
    if (j.truncation != null || j.padding != null) this.fail("truncation or padding settings (Sigma encodes whole texts; drop them from the file)");

    // The model: vocabulary, merges and options.
    const m = j.model;
    if (!isObject(m)) this.fail(`model is ${show(m)}, not an object`);
    const model = m as Record<string, unknown>;
    if (model.type !== "BPE") this.unsupported("model", model.type);
    if (model.dropout != null && model.dropout !== 0) this.fail(`model.dropout ${show(model.dropout)} (BPE dropout samples merges at random; Sigma encodes deterministically)`);
    if (model.continuing_subword_prefix != null && model.continuing_subword_prefix !== "") this.fail(`model.continuing_subword_prefix ${show(model.continuing_subword_prefix)}`);
    if (model.end_of_word_suffix != null && model.end_of_word_suffix !== "") this.fail(`model.end_of_word_suffix ${show(model.end_of_word_suffix)}`);
    this.byteFallback = this.flag(model, "byte_fallback", "model");
    this.fuseUnk = this.flag(model, "fuse_unk", "model");
    this.ignoreMerges = this.flag(model, "ignore_merges", "model");
    if (!isObject(model.vocab)) this.fail("model.vocab is not an object of token → id");
    const tokens: string[] = [];
    for (const [t, id] of Object.entries(model.vocab as Record<string, unknown>)) {
      if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= MAX_MERGE_ID) this.fail(`model.vocab entry ${show(t)} has id ${show(id)}, not an integer in [0, 2^21)`);
      const k = id as number;
      if (tokens[k] !== undefined) this.fail(`model.vocab id ${k} is used twice (${show(tokens[k])} and ${show(t)})`);
      tokens[k] = t;
      this.tokenOf[k] = t;
      this.idOf.set(t, k);
    }
    if (model.unk_token != null) {
      if (typeof model.unk_token !== "string" || !this.idOf.has(model.unk_token)) this.fail(`model.unk_token ${show(model.unk_token)} is not in the vocabulary`);
      this.unkId = this.idOf.get(model.unk_token as string)!;
    } else this.unkId = -1;
    const raw = Array.isArray(model.merges) ? (model.merges as unknown[]) : this.fail("model.merges is not a list");
    this.merges = new MergeTable(raw.length);
    raw.forEach((x, rank) => {
      let pair: [string, string] | null = null;
      if (Array.isArray(x) && x.length === 2 && typeof x[0] === "string" && typeof x[1] === "string" && x[0] && x[1]) pair = [x[0], x[1]];
      else if (typeof x === "string") {
        const parts = x.split(" ");
        if (parts.length === 2 && parts[0] && parts[1]) pair = [parts[0], parts[1]];
      }
      if (pair === null) return this.fail(`model.merges[${rank}] (${show(x)}) is neither ["a", "b"] nor "a b" with non-empty a and b`);
      const a = this.idOf.get(pair[0]);
      const b = this.idOf.get(pair[1]);
      const c = this.idOf.get(pair[0] + pair[1]);
      if (a === undefined || b === undefined || c === undefined) this.fail(`model.merges[${rank}] (${show(pair[0])}, ${show(pair[1])}) uses or makes a token missing from the vocabulary`);
      this.merges.set(rank, a!, b!, c!);
    });

    // Added tokens: cut out before everything else, their ids beside (or over) the model's.
    const addedList = j.added_tokens == null ? [] : Array.isArray(j.added_tokens) ? j.added_tokens : this.fail("added_tokens is not a list");
    addedList.forEach((t: unknown, i: number) => {
      if (!isObject(t) || typeof t.content !== "string" || t.content === "") this.fail(`added_tokens[${i}] is not an object with a non-empty string "content"`);
      const o = t as Record<string, unknown>;
      if (!Number.isInteger(o.id) || (o.id as number) < 0 || (o.id as number) >= MAX_MERGE_ID) this.fail(`added_tokens[${i}] (${show(o.content)}) has id ${show(o.id)}, not an integer in [0, 2^21)`);
      const what = `added_tokens[${i}]`;
      if (this.flag(o, "single_word", what)) this.fail(`${what} (${show(o.content)}) has single_word: true, which Sigma does not read`);
      const special = this.flag(o, "special", what);
      const tok: AddedToken = {
        id: o.id as number,
        content: o.content as string,
        special,
        lstrip: this.flag(o, "lstrip", what),
        rstrip: this.flag(o, "rstrip", what),
        normalized: o.normalized === undefined ? !special : this.flag(o, "normalized", what),
      };
      this.added.push(tok);
      if (special) this.specialIds.add(tok.id);
      tokens[tok.id] = tok.content;
    });
    const vocab: string[] = new Array<string>(tokens.length);
    for (let i = 0; i < tokens.length; i++) vocab[i] = tokens[i] ?? "";
    this.vocab = vocab;
    this.specials = [...this.specialIds].sort((a, b) => a - b).map((id) => vocab[id]!);

    this.normalizer = j.normalizer == null ? null : this.readNormalizer(j.normalizer, "normalizer");
    const pre = j.pre_tokenizer == null ? null : this.readPreTokenizer(j.pre_tokenizer, "pre_tokenizer", true);
    this.preTokenizer = pre?.run ?? ((text, first, emit) => emit(text, first));
    this.byteLevel = pre?.byteLevel ?? false;
    this.decoder = j.decoder == null ? null : this.readDecoder(j.decoder, "decoder");
    const post = j.post_processor == null ? { prefix: [], suffix: [] } : this.readPostProcessor(j.post_processor, "post_processor");
    this.prefixIds = post.prefix;
    this.suffixIds = post.suffix;

    // Which added tokens are matched on raw text: those not normalized, or all of them without a normalizer.
    const onRaw = (t: AddedToken): boolean => !t.normalized || this.normalizer === null;
    this.rawAll = new Trie(this.added.filter(onRaw));
    this.rawOrdinary = new Trie(this.added.filter((t) => onRaw(t) && !t.special));
    this.normAll = new Trie(this.added.filter((t) => !onRaw(t)), this.normalizer);
    this.normOrdinary = new Trie(this.added.filter((t) => !onRaw(t) && !t.special), this.normalizer);

    for (let b = 0; b < 256; b++) {
      this.byteIds[b] = this.idOf.get(BYTE_TO_CHAR[b]!) ?? -1;
      this.fallbackIds[b] = this.idOf.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`) ?? -1;
    }

    if (opts.eos !== undefined) {
      const id = this.idOf.get(opts.eos) ?? this.added.find((t) => t.content === opts.eos)?.id;
      if (id === undefined) throw new SigmaError(`${where}: the end-of-text token ${show(opts.eos)} is not in the vocabulary`, "name a token of the tokenizer (tokenizer_config.json's eos_token)");
      this.eotId = id;
    } else {
      const name = EOS_NAMES.find((n) => this.added.some((t) => t.content === n));
      this.eotId = name === undefined ? -1 : this.added.find((t) => t.content === name)!.id;
    }
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** The merges as token pairs in rank order (read-only; GGUF export writes them as "a b"). */
  mergePairs(): [string, string][] {
    const out: [string, string][] = new Array(this.merges.size);
    for (let r = 0; r < this.merges.size; r++) {
      const [a, b] = this.merges.pair(r);
      out[r] = [this.tokenOf[a]!, this.tokenOf[b]!];
    }
    return out;
  }

  /** The added tokens (id, text, whether special, whether they swallow whitespace beside them), in the file's order. */
  addedTokens(): { id: number; content: string; special: boolean; lstrip: boolean; rstrip: boolean }[] {
    return this.added.map((t) => ({ id: t.id, content: t.content, special: t.special, lstrip: t.lstrip, rstrip: t.rstrip }));
  }

  /** The model's unknown token (model.unk_token), or -1. */
  get unknownId(): number {
    return this.unkId;
  }

  /** The model vocabulary's token of `id` (an added token laid over it not counted), or undefined. */
  modelToken(id: number): string | undefined {
    return this.tokenOf[id];
  }

  /** Whether a piece found whole in the vocabulary skips the merges (model.ignore_merges). */
  get ignoresMerges(): boolean {
    return this.ignoreMerges;
  }

  /** Whether the model falls back to <0xXX> byte tokens (SentencePiece-style). */
  get hasByteFallback(): boolean {
    return this.byteFallback;
  }

  domainId(name: string): number {
    throw new SigmaError(`${this.where} is a Hugging Face tokenizer with no domain tokens, so it has no domain "${name}"`, "use a Sigma tokenizer (`sigma tokenizer train --domains`) for domain routing");
  }
  domainTokenId(name: string): number {
    return this.domainId(name);
  }
  langTokenId(tag: string): number {
    throw new SigmaError(`${this.where} is a Hugging Face tokenizer with no language tags, so it has no tag "${tag}"`, "use a Sigma tokenizer (`sigma tokenizer train --langs`) for translation pairs");
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Token ids for `text`: added tokens, then normalizer, pre-tokenizer and BPE (see the file comment). */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    text = wellFormed(text, opts.invalid);
    const ordinary = opts.allowSpecial === false;
    const out: number[] = opts.addSpecial ? [...this.prefixIds] : [];
    const sections = splitAdded(text, ordinary ? this.rawOrdinary : this.rawAll);
    for (const sec of sections) {
      if (sec.token !== null) {
        out.push(sec.token.id);
        continue;
      }
      const normalized = this.normalizer === null ? sec.text : this.normalizer(sec.text);
      for (const sub of splitAdded(normalized, ordinary ? this.normOrdinary : this.normAll)) {
        if (sub.token !== null) out.push(sub.token.id);
        else this.encodePieces(sub.text, sec.start === 0 && sub.start === 0, out);
      }
    }
    if (opts.addSpecial) out.push(...this.suffixIds);
    return out;
  }

  /** Token ids for `text` with special-token strings treated as plain text (non-special added tokens still match). */
  encodeOrdinary(text: string, opts: Omit<EncodeOptions, "allowSpecial"> = {}): number[] {
    return this.encode(text, { ...opts, allowSpecial: false });
  }

  /** The pieces the pre-tokenizer cuts a (normalized) section into; for tests and tools. */
  preTokenize(text: string, first = true): string[] {
    const out: string[] = [];
    this.preTokenizer(text, first, (p) => out.push(p));
    return out;
  }

  private encodePieces(text: string, first: boolean, out: number[]): void {
    this.preTokenizer(text, first, (piece) => {
      if (piece === "") return;
      let ids = this.cache.get(piece);
      if (ids === undefined) {
        ids = this.model(piece);
        if (piece.length <= CACHE_PIECE) {
          if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
          this.cache.set(piece, ids);
        }
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    });
  }

  /** The BPE model on one piece: its symbols (bytes or characters), then the merges. */
  private model(piece: string): number[] {
    const w: number[] = [];
    if (this.byteLevel) {
      const bytes = this.utf8.encode(piece);
      if (this.ignoreMerges) {
        let spelled = "";
        for (let i = 0; i < bytes.length; i++) spelled += BYTE_TO_CHAR[bytes[i]!];
        const id = this.idOf.get(spelled);
        if (id !== undefined) return [id];
      }
      let unk = false;
      for (let i = 0; i < bytes.length; i++) {
        const id = this.byteIds[bytes[i]!]!;
        if (id >= 0) {
          w.push(id);
          unk = false;
        } else unk = this.pushUnknown(w, Uint8Array.of(bytes[i]!), unk);
      }
      return this.merges.apply(w);
    }
    if (this.ignoreMerges) {
      const id = this.idOf.get(piece);
      if (id !== undefined) return [id];
    }
    let unk = false;
    for (const ch of piece) {
      const id = this.idOf.get(ch);
      if (id !== undefined) {
        w.push(id);
        unk = false;
      } else unk = this.pushUnknown(w, this.utf8.encode(ch), unk);
    }
    return this.merges.apply(w);
  }

  /**
   * A symbol missing from the vocabulary: its bytes as <0xXX> tokens (byte
   * fallback, when all exist), else the unknown token (one for a run when
   * fuse_unk), else nothing. Returns whether `w` now ends with an unknown.
   */
  private pushUnknown(w: number[], bytes: Uint8Array, afterUnk: boolean): boolean {
    if (this.byteFallback && bytes.every((b) => this.fallbackIds[b]! >= 0)) {
      for (const b of bytes) w.push(this.fallbackIds[b]!);
      return false;
    }
    if (this.unkId < 0) return false;
    if (!(this.fuseUnk && afterUnk)) w.push(this.unkId);
    return true;
  }

  /** Text of `ids`: token strings through the decoder chain (joined by spaces when the file has no decoder). */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const tokens: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocab.length || (this.vocab[id] === "" && !this.idOf.has(""))) {
        throw new SigmaError(`Token id ${id} is outside the vocabulary of ${this.where} [0, ${this.vocab.length})`);
      }
      if (opts.skipSpecial && this.specialIds.has(id)) continue;
      tokens.push(this.vocab[id]!);
    }
    return this.decoder === null ? tokens.join(" ") : this.decoder(tokens).join("");
  }

  /**
   * Decodes ids as they arrive. A decoder may treat the first token
   * specially (Strip, Metaspace) and a character may span tokens (bytes), so
   * each new id is decoded together with the previous chunk as context, and
   * text is released once it no longer ends in an unfinished character.
   */
  streamDecoder(opts: DecodeOptions = {}): TextStreamDecoder {
    let context: number[] = [];
    let pending: number[] = [];
    let prefix = "";
    const release = (final: boolean): string => {
      const text = this.decode([...context, ...pending]);
      if (!text.startsWith(prefix) || (!final && (text.length <= prefix.length || text.endsWith("\uFFFD")))) return "";
      context = pending;
      pending = [];
      const out = text.slice(prefix.length);
      prefix = this.decode(context);
      return out;
    };
    return {
      push: (id: number): string => {
        if (opts.skipSpecial && this.specialIds.has(id)) return "";
        pending.push(id);
        return release(false);
      },
      end: (): string => {
        const out = pending.length > 0 ? release(true) : "";
        context = [];
        pending = [];
        prefix = "";
        return out;
      },
    };
  }

  // ---- Reading the components ----

  private fail(what: string, hint = "Sigma reads byte-level BPE (GPT-2, Llama-3, Qwen) and SentencePiece-style BPE with byte fallback (Llama-2, Mistral)"): never {
    throw new SigmaError(`${this.where}: unsupported tokenizer.json: ${what}`, hint);
  }

  private unsupported(section: Section, type: unknown, at: string = section): never {
    return this.fail(`${at} type ${show(type)}`, `supported ${section.replace("_", "-")}s: ${SUPPORTED[section].join(", ")}`);
  }

  private flag(o: Record<string, unknown>, key: string, at: string): boolean {
    const v = o[key];
    if (v === undefined || v === null) return false;
    if (typeof v !== "boolean") this.fail(`${at}.${key} is ${show(v)}, not true or false`);
    return v as boolean;
  }

  private str(o: Record<string, unknown>, key: string, at: string, fallback?: string): string {
    const v = o[key] ?? fallback;
    if (typeof v !== "string") this.fail(`${at}.${key} is ${show(o[key])}, not a string`);
    return v as string;
  }

  /** A {String: s} or {Regex: r} pattern as a global RegExp. */
  private pattern(p: unknown, at: string): RegExp {
    if (isObject(p) && typeof p.String === "string" && p.Regex === undefined) return new RegExp(p.String.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&"), "gu");
    if (isObject(p) && typeof p.Regex === "string" && p.String === undefined) return onigurumaToRegExp(p.Regex, `${this.where}: ${at}`);
    return this.fail(`${at}.pattern is ${show(p)}, not {"String": …} or {"Regex": …}`);
  }

  private readNormalizer(n: unknown, at: string): (s: string) => string {
    if (!isObject(n)) return this.fail(`${at} is ${show(n)}, not an object`);
    switch (n.type) {
      case "Sequence": {
        const list = Array.isArray(n.normalizers) ? n.normalizers : this.fail(`${at}.normalizers is not a list`);
        const steps = list.map((x, i) => this.readNormalizer(x, `${at}.normalizers[${i}]`));
        return (s) => steps.reduce((t, f) => f(t), s);
      }
      case "Prepend": {
        const p = this.str(n, "prepend", at);
        return (s) => (s === "" ? s : p + s);
      }
      case "Replace": {
        const re = this.pattern(n.pattern, at);
        const content = this.str(n, "content", at);
        return (s) => s.replace(re, () => content);
      }
      case "NFC":
      case "NFD":
      case "NFKC":
      case "NFKD": {
        const form = n.type;
        return (s) => s.normalize(form);
      }
      default:
        return this.unsupported("normalizer", n.type, at);
    }
  }

  /** A pre-tokenizer; `last`: whether it may be a ByteLevel (which must come last: it respells its pieces). */
  private readPreTokenizer(p: unknown, at: string, last: boolean): { run: PreTokenizer; byteLevel: boolean } {
    if (!isObject(p)) return this.fail(`${at} is ${show(p)}, not an object`);
    switch (p.type) {
      case "Sequence": {
        const list = Array.isArray(p.pretokenizers) ? p.pretokenizers : this.fail(`${at}.pretokenizers is not a list`);
        const steps = list.map((x, i) => this.readPreTokenizer(x, `${at}.pretokenizers[${i}]`, last && i === list.length - 1));
        // Each step hands its pieces to the next one.
        const run = steps.reduceRight<PreTokenizer>(
          (next, step) => (text, first, emit) => step.run(text, first, (piece, f) => next(piece, f, emit)),
          (text, first, emit) => emit(text, first),
        );
        return { run, byteLevel: steps.some((s) => s.byteLevel) };
      }
      case "Split": {
        const re = this.pattern(p.pattern, at);
        const behavior = p.behavior;
        if (behavior !== "Isolated" && behavior !== "Removed") {
          this.fail(`${at}.behavior ${show(behavior)}`, 'supported Split behaviors: "Isolated", "Removed"');
        }
        const invert = this.flag(p, "invert", at);
        // Isolated keeps matches and the text between them as pieces (inverting changes nothing);
        // Removed drops the matches, or with invert the text between them.
        const keepMatches = behavior === "Isolated" || invert;
        const keepGaps = behavior === "Isolated" || !invert;
        return { run: (text, first, emit) => splitPiece(text, first, re, keepMatches, keepGaps, emit), byteLevel: false };
      }
      case "ByteLevel": {
        if (!last) this.fail(`${at}: a ByteLevel pre-tokenizer before another one (it must come last: it respells its pieces in byte characters)`);
        const prefixSpace = this.flag(p, "add_prefix_space", at);
        const useRegex = p.use_regex === undefined ? true : this.flag(p, "use_regex", at);
        // The respelling in byte characters happens in the model, on the piece's UTF-8 bytes.
        return {
          run: (text, first, emit) => {
            if (prefixSpace && !text.startsWith(" ")) text = ` ${text}`;
            if (useRegex) splitPiece(text, first, GPT2_REGEX, true, true, emit);
            else emit(text, first);
          },
          byteLevel: true,
        };
      }
      case "Metaspace": {
        const rep = this.str(p, "replacement", at, "\u2581");
        if ([...rep].length !== 1) this.fail(`${at}.replacement ${show(rep)} is not one character`);
        let scheme = p.prepend_scheme;
        if (scheme === undefined) scheme = p.add_prefix_space === false ? "never" : "always";
        if (scheme !== "always" && scheme !== "first" && scheme !== "never") this.fail(`${at}.prepend_scheme ${show(scheme)}`, 'supported: "always", "first", "never"');
        const split = p.split === undefined ? true : this.flag(p, "split", at);
        return {
          run: (piece, first, emit) => {
            let text = piece.replaceAll(" ", rep);
            if (!text.startsWith(rep) && (scheme === "always" || (scheme === "first" && first))) text = rep + text;
            if (!split) return emit(text, first);
            // Cut before each replacement character: every piece but the first starts with it.
            let start = 0;
            for (let i = text.indexOf(rep, 1); i >= 0; i = text.indexOf(rep, i + rep.length)) {
              if (i > start) emit(text.slice(start, i), first && start === 0);
              start = i;
            }
            if (start < text.length) emit(text.slice(start), first && start === 0);
          },
          byteLevel: false,
        };
      }
      default:
        return this.unsupported("pre_tokenizer", p.type, at);
    }
  }

  private readDecoder(d: unknown, at: string): (tokens: string[]) => string[] {
    if (!isObject(d)) return this.fail(`${at} is ${show(d)}, not an object`);
    switch (d.type) {
      case "Sequence": {
        const list = Array.isArray(d.decoders) ? d.decoders : this.fail(`${at}.decoders is not a list`);
        const steps = list.map((x, i) => this.readDecoder(x, `${at}.decoders[${i}]`));
        return (tokens) => steps.reduce((t, f) => f(t), tokens);
      }
      case "ByteLevel":
        // All tokens' bytes, read as UTF-8 (a broken sequence becomes U+FFFD). A token
        // with a character outside the byte alphabet (an added token) gives its own UTF-8.
        return (tokens) => {
          const bytes: number[] = [];
          for (const t of tokens) {
            const mapped: number[] = [];
            let ok = true;
            for (const ch of t) {
              const b = CHAR_TO_BYTE.get(ch);
              if (b === undefined) {
                ok = false;
                break;
              }
              mapped.push(b);
            }
            for (const b of ok ? mapped : this.utf8.encode(t)) bytes.push(b);
          }
          // ignoreBOM: a text that starts with U+FEFF keeps it (a TextDecoder drops it by default).
          return [new TextDecoder("utf-8", { ignoreBOM: true }).decode(Uint8Array.from(bytes))];
        };
      case "Replace": {
        const re = this.pattern(d.pattern, at);
        const content = this.str(d, "content", at);
        return (tokens) => tokens.map((t) => t.replace(re, () => content));
      }
      case "ByteFallback":
        // Runs of <0xXX> tokens become the text of their bytes; a run that is not
        // UTF-8 gives one U+FFFD token per byte (as the Rust decoder does).
        return (tokens) => {
          const out: string[] = [];
          let run: number[] = [];
          const flush = (): void => {
            if (run.length === 0) return;
            try {
              out.push(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(Uint8Array.from(run)));
            } catch {
              for (let k = 0; k < run.length; k++) out.push("\uFFFD");
            }
            run = [];
          };
          for (const t of tokens) {
            const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
            if (m) run.push(Number.parseInt(m[1]!, 16));
            else {
              flush();
              out.push(t);
            }
          }
          flush();
          return out;
        };
      case "Fuse":
        return (tokens) => [tokens.join("")];
      case "Strip": {
        const content = this.str(d, "content", at);
        const start = d.start ?? 0;
        const stop = d.stop ?? 0;
        if (!Number.isInteger(start) || !Number.isInteger(stop) || (start as number) < 0 || (stop as number) < 0) this.fail(`${at}: start ${show(start)} and stop ${show(stop)} must be counts`);
        return (tokens) =>
          tokens.map((t) => {
            const chars = [...t];
            let a = 0;
            while (a < (start as number) && a < chars.length && chars[a] === content) a++;
            let b = chars.length;
            while (chars.length - b < (stop as number) && b > a && chars[b - 1] === content) b--;
            return chars.slice(a, b).join("");
          });
      }
      case "Metaspace": {
        const rep = this.str(d, "replacement", at, "\u2581");
        let scheme = d.prepend_scheme;
        if (scheme === undefined) scheme = d.add_prefix_space === false ? "never" : "always";
        // Every replacement character becomes a space, except in the first token, where (unless
        // nothing was ever prepended) all of them are dropped — the Rust decoder's rule.
        return (tokens) => tokens.map((t, i) => t.replaceAll(rep, i === 0 && scheme !== "never" ? "" : " "));
      }
      default:
        return this.unsupported("decoder", d.type, at);
    }
  }

  private readPostProcessor(p: unknown, at: string): { prefix: number[]; suffix: number[] } {
    if (!isObject(p)) return this.fail(`${at} is ${show(p)}, not an object`);
    switch (p.type) {
      case "ByteLevel":
        return { prefix: [], suffix: [] }; // offsets only: no ids change
      case "Sequence": {
        const list = Array.isArray(p.processors) ? p.processors : this.fail(`${at}.processors is not a list`);
        const parts = list.map((x, i) => this.readPostProcessor(x, `${at}.processors[${i}]`));
        // Each processor wraps what the previous ones made.
        return parts.reduce((acc, x) => ({ prefix: [...x.prefix, ...acc.prefix], suffix: [...acc.suffix, ...x.suffix] }), { prefix: [], suffix: [] });
      }
      case "TemplateProcessing": {
        const single = Array.isArray(p.single) ? p.single : this.fail(`${at}.single is not a list`);
        const specials = isObject(p.special_tokens) ? p.special_tokens : {};
        const prefix: number[] = [];
        const suffix: number[] = [];
        let seenA = false;
        single.forEach((item: unknown, i: number) => {
          const seq = isObject(item) && isObject(item.Sequence) ? item.Sequence : null;
          const sp = isObject(item) && isObject(item.SpecialToken) ? item.SpecialToken : null;
          if (seq !== null && seq.id === "A" && !seenA) seenA = true;
          else if (sp !== null && typeof sp.id === "string") {
            const entry = specials[sp.id];
            const ids = isObject(entry) && Array.isArray(entry.ids) && entry.ids.every((x) => Number.isInteger(x) && x >= 0 && x < this.vocab.length) ? (entry.ids as number[]) : this.fail(`${at}.special_tokens has no valid ids for ${show(sp.id)}`);
            (seenA ? suffix : prefix).push(...ids);
          } else this.fail(`${at}.single[${i}] is ${show(item)}, not {"SpecialToken": …} or {"Sequence": {"id": "A"}}`);
        });
        if (!seenA) this.fail(`${at}.single has no {"Sequence": {"id": "A"}}`);
        return { prefix, suffix };
      }
      default:
        return this.unsupported("post_processor", p.type, at);
    }
  }
}

/** Cuts `text` by a global regex: matches and the text between them, each kept (emitted) or dropped. */
function splitPiece(text: string, first: boolean, re: RegExp, keepMatches: boolean, keepGaps: boolean, emit: Emit): void {
  // The position is kept here, not in re.lastIndex alone: a later stage may run the same RegExp inside emit.
  let prev = 0;
  let pos = 0;
  while (pos <= text.length) {
    re.lastIndex = pos;
    const m = re.exec(text);
    if (m === null) break;
    const at = m.index;
    const len = m[0].length;
    if (len === 0) {
      pos = at + (text.codePointAt(at)! > 0xffff ? 2 : 1); // an empty match cuts nothing
      continue;
    }
    pos = at + len;
    if (keepGaps && at > prev) emit(text.slice(prev, at), first && prev === 0);
    if (keepMatches) emit(m[0], first && at === 0);
    prev = pos;
  }
  if (keepGaps && prev < text.length) emit(text.slice(prev), first && prev === 0);
}

/** A section of text between added tokens, or an added token; `start` is its offset in the text. */
interface Cut {
  text: string;
  start: number;
  token: AddedToken | null;
}

/** A character trie of added-token contents for leftmost-longest matching. */
class Trie {
  private readonly root = new Map<string, TrieNode>();
  readonly empty: boolean;
  /** Finds the next character that starts some token: the scan jumps there instead of trying every position. */
  readonly starts: RegExp;
  constructor(tokens: AddedToken[], normalize: ((s: string) => string) | null = null) {
    for (const t of tokens) {
      const key = normalize ? normalize(t.content) : t.content;
      if (key === "") continue;
      let level = this.root;
      let node: TrieNode | undefined;
      for (const ch of key) {
        node = level.get(ch);
        if (node === undefined) {
          node = { next: new Map(), token: null };
          level.set(ch, node);
        }
        level = node.next;
      }
      if (node!.token === null) node!.token = t; // the first listed wins a tie, as in HF
    }
    this.empty = this.root.size === 0;
    this.starts = new RegExp(`[${[...this.root.keys()].map((c) => `\\u{${c.codePointAt(0)!.toString(16)}}`).join("")}]`, "gu");
  }
  /** The longest token starting at `text[i]` and its length, or null. */
  longestAt(text: string, i: number): [AddedToken, number] | null {
    let level = this.root;
    let best: [AddedToken, number] | null = null;
    let j = i;
    while (j < text.length) {
      const ch = String.fromCodePoint(text.codePointAt(j)!);
      const node = level.get(ch);
      if (node === undefined) break;
      j += ch.length;
      if (node.token !== null) best = [node.token, j - i];
      level = node.next;
    }
    return best;
  }
}

interface TrieNode {
  next: Map<string, TrieNode>;
  token: AddedToken | null;
}

/** `text` cut at the added tokens of `trie`, leftmost-longest; lstrip/rstrip take the whitespace beside a match. */
function splitAdded(text: string, trie: Trie): Cut[] {
  if (trie.empty) return text === "" ? [] : [{ text, start: 0, token: null }];
  const cuts: Cut[] = [];
  let start = 0;
  for (let i = 0; i < text.length; ) {
    trie.starts.lastIndex = i;
    const next = trie.starts.exec(text);
    if (next === null) break;
    i = next.index;
    const hit = trie.longestAt(text, i);
    if (hit === null) {
      i += next[0].length;
      continue;
    }
    const [token, len] = hit;
    let from = i;
    let to = i + len;
    if (token.lstrip) while (from > start && WHITE_SPACE.test(text[from - 1]!)) from--;
    if (token.rstrip) while (to < text.length && WHITE_SPACE.test(text[to]!)) to++;
    if (from > start) cuts.push({ text: text.slice(start, from), start, token: null });
    cuts.push({ text: text.slice(i, i + len), start: i, token });
    start = to;
    i = to;
  }
  if (start < text.length) cuts.push({ text: text.slice(start), start, token: null });
  return cuts;
}
