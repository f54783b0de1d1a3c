/**
 * The byte-level BPE codec: text → token ids → text.
 *
 * Vocabulary layout (V ids):
 *   [0, S)          special tokens (see specials.ts)
 *   [S, S+256)      the 256 single bytes, in byte order
 *   [S+256, V)      tokens made by merges, in the order they were learned
 * A merge is a pair of ids (a, b) whose rank is its position in the merge
 * list; it produces the token spelled a+b. Two merges may produce the same
 * spelling ("ab"+"c" and "a"+"bc"); they then share one id, as in HF.
 *
 * Encoding applies merges lowest rank first, leftmost first among equals —
 * the rule of the HF `tokenizers` BPE model, so ids agree with it.
 *
 * Lone surrogates: JS strings may hold UTF-16 code units that encode no
 * character. They have no UTF-8 bytes, so `encode` throws a SigmaError naming
 * the index of the first one, unless called with `{ invalid: "replace" }`,
 * which encodes each as U+FFFD (the caller can count them with
 * `replaceLoneSurrogates`). For every well-formed string,
 * decode(encode(s)) === s.
 */
import { SigmaError } from "../util/errors.js";
import { BYTE_TO_CHAR, pretokenize, wellFormed } from "./pretokenize.js";
import { MergeTable } from "./merges.js";
import { EOT, PAD, domainToken, langToken, specialTokens, type SpecialSpec } from "./specials.js";

/** What a trained tokenizer is: its specials, non-special token spellings and merges. */
export interface BpeData extends SpecialSpec {
  /** Byte-level spellings of ids S…V-1: the 256 bytes first, then merged tokens. */
  tokens: string[];
  /** Merges in rank order, as pairs of byte-level spellings. */
  merges: [string, string][];
}

export interface DecodeOptions {
  /** Leave special tokens (<|endoftext|>, <|domain:…|>, <|lang:…|>, <|pad|>) out of the text. Default false. */
  skipSpecial?: boolean;
}

export interface EncodeOptions {
  /** Recognise special-token strings in the text (HF does). Default true. */
  allowSpecial?: boolean;
  /** What to do with lone surrogates: throw (default) or encode U+FFFD. */
  invalid?: "throw" | "replace";
  /**
   * Add what the tokenizer's post-processor adds around a text (a Hugging
   * Face tokenizer's TemplateProcessing: Llama's <|begin_of_text|> or <s>).
   * Default false; Sigma's own tokenizers have no post-processor.
   */
  addSpecial?: boolean;
}

/**
 * What the rest of Sigma needs of a tokenizer: implemented by Sigma's own
 * byte-level BPE (`Tokenizer`, below) and by a Hugging Face tokenizer.json of
 * another layout (`HfTokenizer`, hf.ts). A Hugging Face tokenizer has no
 * domain or language tokens (its `domains` and `langs` are empty).
 */
export interface TextTokenizer {
  /** "sigma": Sigma's own layout (specials first, then the 256 bytes); "hf": any other tokenizer.json. */
  readonly kind: "sigma" | "hf";
  readonly domains: readonly string[];
  readonly langs: readonly string[];
  /** The special tokens' text, in id order. */
  readonly specials: readonly string[];
  /** Spelling of every id, as tokenizer.json writes it ("" for an id no token has). */
  readonly vocab: readonly string[];
  readonly vocabSize: number;
  /** The token that ends a document: generation stops there (-1 when the tokenizer has none). */
  readonly eotId: number;
  domainId(name: string): number;
  domainTokenId(name: string): number;
  langTokenId(tag: string): number;
  encode(text: string, opts?: EncodeOptions): number[];
  encodeOrdinary(text: string, opts?: Omit<EncodeOptions, "allowSpecial">): number[];
  isSpecial(id: number): boolean;
  decode(ids: ArrayLike<number>, opts?: DecodeOptions): string;
  streamDecoder(opts?: DecodeOptions): TextStreamDecoder;
}

/** Text of ids as they arrive: push(id) returns the newly completed text; end() what is held back. */
export interface TextStreamDecoder {
  push(id: number): string;
  end(): string;
}

const CACHE_LIMIT = 200_000; // pre-token → ids entries; cleared when full to bound memory

export class Tokenizer implements TextTokenizer {
  readonly kind = "sigma" as const;
  readonly domains: readonly string[];
  readonly langs: readonly string[];
  readonly specials: readonly string[];
  /** Spelling of every id (specials as their content). */
  readonly vocab: readonly string[];
  readonly merges: readonly [string, string][];
  readonly eotId = 0;
  readonly padId = 1;
  private readonly idOf = new Map<string, number>();
  private readonly specialIds = new Map<string, number>();
  private readonly bytesOf: Uint8Array[] = [];
  private readonly mergeTable: MergeTable;
  private readonly cache = new Map<string, number[]>();
  private readonly utf8 = new TextEncoder();

  constructor(data: BpeData, where = "tokenizer") {
    this.domains = [...data.domains];
    this.langs = [...data.langs];
    this.specials = specialTokens(data);
    const S = this.specials.length;
    if (data.tokens.length < 256) throw new SigmaError(`${where}: expected at least 256 byte tokens, got ${data.tokens.length}`);
    for (let b = 0; b < 256; b++) {
      if (data.tokens[b] !== BYTE_TO_CHAR[b]) {
        throw new SigmaError(`${where}: token id ${S + b} should be byte 0x${b.toString(16)} spelled "${BYTE_TO_CHAR[b]}"`, "Sigma's vocabularies list the 256 byte tokens in byte order right after the specials");
      }
    }
    if (S + data.tokens.length > 2097152) throw new SigmaError(`${where}: vocabulary of ${S + data.tokens.length} is over the 2^21 limit`);
    for (let i = 256; i < data.tokens.length; i++) {
      const t = data.tokens[i];
      if (typeof t !== "string" || t.length < 2) throw new SigmaError(`${where}: token id ${S + i} is ${JSON.stringify(t)}; a merged token is at least two byte characters`);
      for (const ch of t) {
        if (!CHAR_INDEX.has(ch)) throw new SigmaError(`${where}: token id ${S + i} (${JSON.stringify(t.length > 40 ? `${t.slice(0, 40)}…` : t)}) has the character ${JSON.stringify(ch)}, which spells no byte`, "byte-level BPE spells every token with the 256 byte characters (GPT-2's byte-to-unicode table)");
      }
    }
    this.vocab = [...this.specials, ...data.tokens];
    this.specials.forEach((s, i) => this.specialIds.set(s, i));
    for (let i = 0; i < S; i++) this.bytesOf.push(this.utf8.encode(this.specials[i]!));
    for (let b = 0; b < 256; b++) this.bytesOf.push(Uint8Array.of(b));
    this.vocab.forEach((t, id) => {
      if (id < S) return;
      if (this.idOf.has(t)) throw new SigmaError(`${where}: token ${JSON.stringify(t)} appears twice in the vocabulary`);
      this.idOf.set(t, id);
    });
    this.merges = data.merges;
    this.mergeTable = new MergeTable(data.merges.length);
    data.merges.forEach(([l, r], rank) => {
      const a = this.idOf.get(l);
      const b = this.idOf.get(r);
      const c = this.idOf.get(l + r);
      if (a === undefined || b === undefined || c === undefined) {
        throw new SigmaError(`${where}: merge ${rank} ("${l}", "${r}") uses or makes a token missing from the vocabulary`);
      }
      this.mergeTable.set(rank, a, b, c);
    });
    // Bytes of merged tokens, in id order (a merged token's parts always have smaller ids).
    for (let id = S + 256; id < this.vocab.length; id++) {
      const t = this.vocab[id]!;
      const bytes = new Uint8Array(t.length);
      for (let i = 0; i < t.length; i++) bytes[i] = this.bytesOf[S + CHAR_INDEX.get(t[i]!)!]![0]!;
      this.bytesOf.push(bytes);
    }
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** Id of a domain's control token, and the domain id (its index) — throws on an unknown domain. */
  domainId(name: string): number {
    const i = this.domains.indexOf(name);
    if (i < 0) throw new SigmaError(`Unknown domain "${name}"; known domains: ${this.domains.join(", ")}`, "retrain the tokenizer with --domains to add one");
    return i;
  }
  domainTokenId(name: string): number {
    return this.specialIds.get(domainToken(this.domains[this.domainId(name)]!))!;
  }
  langTokenId(tag: string): number {
    const id = this.specialIds.get(langToken(tag));
    if (id === undefined) throw new SigmaError(`Unknown language tag "${tag}"; known tags: ${this.langs.join(", ")}`, "retrain the tokenizer with --langs to add one");
    return id;
  }

  /** Token ids for `text`. See the file comment for special tokens and lone surrogates. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    text = wellFormed(text, opts.invalid);
    const out: number[] = [];
    if (opts.allowSpecial === false || !text.includes("<|")) {
      this.encodeSection(text, out);
      return out;
    }
    // Leftmost, longest special-token match, like HF's added-token splitter.
    let start = 0;
    let i = text.indexOf("<|");
    while (i >= 0) {
      let hit: string | undefined;
      for (const s of this.specials) if (text.startsWith(s, i) && (hit === undefined || s.length > hit.length)) hit = s;
      if (hit === undefined) {
        i = text.indexOf("<|", i + 1);
        continue;
      }
      this.encodeSection(text.slice(start, i), out);
      out.push(this.specialIds.get(hit)!);
      start = i + hit.length;
      i = text.indexOf("<|", start);
    }
    this.encodeSection(text.slice(start), out);
    return out;
  }

  /** Token ids for `text` with special-token strings treated as plain text. */
  encodeOrdinary(text: string, opts: Omit<EncodeOptions, "allowSpecial"> = {}): number[] {
    return this.encode(text, { ...opts, allowSpecial: false });
  }

  /** Whether `id` is a special token (end of text, padding, a domain or language tag). */
  isSpecial(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && id < this.specials.length;
  }

  /**
   * The text of `ids`. Bytes that do not form UTF-8 (a sequence cut
   * mid-character) decode to U+FFFD. Special tokens decode to their text
   * (`<|endoftext|>`) unless `skipSpecial` leaves them out.
   */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    return new TextDecoder("utf-8").decode(this.decodeBytes(ids, opts));
  }

  decodeBytes(ids: ArrayLike<number>, opts: DecodeOptions = {}): Uint8Array {
    const parts: Uint8Array[] = [];
    let n = 0;
    for (let i = 0; i < ids.length; i++) {
      const b = this.bytesFor(ids[i]!);
      if (opts.skipSpecial && ids[i]! < this.specials.length) continue;
      parts.push(b);
      n += b.length;
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const b of parts) {
      out.set(b, at);
      at += b.length;
    }
    return out;
  }

  /**
   * Decodes ids as they arrive (generation): push(id) returns the text that
   * is complete so far. A token may end in the middle of a character (a
   * byte-level token is any run of bytes): its first bytes are held back
   * until the rest arrive, so no broken character is ever returned; end()
   * returns what is still held (U+FFFD for a character that never completed).
   * The pieces joined equal decode(ids, opts).
   */
  streamDecoder(opts: DecodeOptions = {}): TokenStreamDecoder {
    return new TokenStreamDecoder(this, opts);
  }

  private bytesFor(id: number): Uint8Array {
    const b = this.bytesOf[id];
    if (b === undefined) throw new SigmaError(`Token id ${id} is outside the vocabulary [0, ${this.vocab.length})`);
    return b;
  }

  private encodeSection(text: string, out: number[]): void {
    if (text.length === 0) return;
    for (const piece of pretokenize(text)) {
      let ids = this.cache.get(piece);
      if (ids === undefined) {
        ids = this.bpe(this.utf8.encode(piece));
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(piece, ids);
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    }
  }

  /** Applies the merges to one pre-token's bytes. */
  bpe(bytes: Uint8Array): number[] {
    const S = this.specials.length;
    const w: number[] = new Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) w[i] = S + bytes[i]!;
    return this.mergeTable.apply(w);
  }

  /** The short-word merge rule (see merges.ts); public for the test that pins both rules equal. */
  bpeShort(w: number[]): number[] {
    return this.mergeTable.applyShort(w);
  }

  /** The long-word (heap) merge rule. */
  bpeLong(w: number[]): number[] {
    return this.mergeTable.applyLong(w);
  }
}

/** See Tokenizer.streamDecoder. */
export class TokenStreamDecoder implements TextStreamDecoder {
  /** A UTF-8 decoder in streaming mode keeps the bytes of an unfinished character for the next call. */
  private readonly utf8 = new TextDecoder("utf-8");

  constructor(private readonly tok: Tokenizer, private readonly opts: DecodeOptions = {}) {}

  /** The text that the token `id` completes (often all of it; empty while a character is unfinished). */
  push(id: number): string {
    return this.utf8.decode(this.tok.decodeBytes([id], this.opts), { stream: true });
  }

  /** What is still held: "" when every character completed, else U+FFFD for the unfinished one. */
  end(): string {
    return this.utf8.decode();
  }
}

const CHAR_INDEX: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

export { EOT, PAD };
