/**
 * What the rest of Sigma knows about a router: this interface, nothing else.
 *
 * A router kind (RRE, MoGE, learned top-k, …) is one file in this folder that
 * exports a `RouterKind`: the zod schema of its config (a strict object whose
 * `kind` is a literal) and `spec(config)`, which answers every question the
 * model, the trainer, the balance tools and the CLI ask about a router of that
 * config — how many experts a token gets, how to check the config against the
 * model, how much it stores, how to build the module that routes, how to cut
 * a domain's sub-model out of it. index.ts lists the kinds; adding one is a
 * new file and one line there.
 *
 * moe sits below models, so a router sees the model config through
 * `ModelView` (models/config.ts builds it), never the model's own types.
 */
import type { z } from "zod";
import type { InitOptions } from "../../nn/layers.js";
import type { Module } from "../../nn/module.js";
import type { RouterInput, Routing } from "../routing.js";

/** What a router sees of the model config. */
export interface ModelView {
  vocabSize: number;
  /** C: the model width. */
  width: number;
  /** E: routed experts per sparse layer. */
  experts: number;
  /** Hidden width of one expert. */
  expertWidth: number;
  /** The model's domains, in domain-index order; `group` is the domain's expert group (routers that route by domain). */
  domains: readonly { name: string; group?: number | undefined }[];
}

/** Reports a bad field: the path from the model config's root (["experts", "router", "k"]) and what is wrong, with the fix. */
export type ReportIssue = (path: (string | number)[], message: string) => void;

/** One tensor a router keeps per sparse layer, saved with the model as blocks.N.moe.router.<name>. */
export interface RouterTensor {
  name: string;
  elements: number;
  /** An int32 state buffer (drawn, saved, never trained) rather than a float parameter. */
  buffer: boolean;
  /** What it is, for messages ("the RRE table [groups·vocabSize]"). */
  what: string;
  /** The config fields that size it (paths from the model config's root), the one a size-limit error names first. */
  fields: (string | number)[][];
  /** What to lower when it is too large. */
  fix: string;
}

/** What the module that routes one sparse layer is built from. */
export interface RouterLayer {
  /** C. */
  width: number;
  /** E. */
  experts: number;
  vocabSize: number;
  /** Expert group of each domain index (routers that route by domain). */
  domainGroup: Int32Array;
  /** The block's index in the model (seeds per-layer state such as RRE's tables). */
  layer: number;
  init: InitOptions;
}

/** The routing module of one sparse layer; its parameters and buffers are the `RouterTensor`s of its spec. */
export interface RouterModule extends Module {
  route(input: RouterInput): Routing;
  /**
   * The experts a batch will use, from its token ids and domain indices alone
   * (before the forward pass): the expert store reads exactly these ahead.
   * Absent when the choice depends on the hidden states (learned routers).
   */
  expertsNeeded?(tokenIds: Int32Array, domainIds: Int32Array): Set<number>;
  /**
   * Extraction: sets this router, built for a sub-model, to the state of
   * `from` (the same layer's router of the full model) restricted to the
   * experts `kept` (full-model ids, ascending; the sub-model's expert i is
   * kept[i]) for the full model's domain index `domain`. `tokens` (when the
   * sub-model keeps only part of the vocabulary): the full model's id of each
   * sub-model token id, for routers whose state is indexed by token id.
   */
  copyKept(from: RouterModule, kept: readonly number[], domain: number, tokens?: Int32Array): void;
  /**
   * Growing by a domain (Growth): sets the state this router keeps in
   * buffers from `from` (the same layer's router before the growth).
   * `oldToken[t]`: the old id of token t (−1 for a new token); `copyDomain`:
   * the old domain whose routing the new domain starts with, or null.
   * Parameters (rows per expert) are copied by the caller.
   */
  growFrom?(from: RouterModule, oldToken: Int32Array, copyDomain: number | null): void;
}

/** How a domain's sub-model is cut out of a model routed by this router (`sigma extract`). */
export type Extraction<C> =
  /**
   * Each domain reaches only its own experts, the same in every layer: the
   * sub-model keeps them and computes exactly the full model's logits on
   * that domain. `router` is the sub-model's router config; `group` the
   * expert group of its one domain.
   */
  | { exact: true; experts(model: ModelView, domain: number): number[]; router: C; group: number }
  /**
   * No domain structure: the sub-model keeps, per layer, the experts the
   * domain's data used most, up to a budget; the router config stays.
   * `keep` returns the kept ids (ascending) of one layer from its usage
   * counts [E], or throws a SigmaError for a budget this router cannot use.
   */
  | { exact: false; keep(usage: Float64Array, budget: number): number[] };

/**
 * How a trained model grows by one domain with this router (`sigma domain
 * add`, src/models/domain-add.ts): which experts it appends to every sparse
 * layer and where the old ones go.
 */
export interface Growth<C> {
  /**
   * true: the new domain gets experts no old domain reaches, so the old
   * domains' sub-models stay bit-identical; false: routing is shared, the new
   * experts join every token's choice and the old domains' loss moves.
   */
  exact: boolean;
  /** Experts appended per sparse layer, the grown router config and (routers by domain) the new domain's expert group. */
  grow(model: ModelView): { experts: number; router: C; group?: number };
  /** [E + experts]: the old id of each expert of the grown layer, −1 for a new one. */
  oldIds(model: ModelView, experts: number): Int32Array;
  /**
   * Routers by domain: [E + experts], the old expert each new one starts as
   * when the new domain starts from domain `from` (−1: keep its init).
   * Absent: experts belong to no domain, so there is nothing to copy.
   */
  copies?(model: ModelView, from: number, experts: number): Int32Array;
}

/** Everything the rest of Sigma needs to know about one router config. */
export interface RouterSpec<C = { kind: string }> {
  /** Experts each token is routed to (Routing.k). */
  k: number;
  /**
   * Always-on shared experts, each of the expert width, beside the routed
   * ones (0 for none). A router that has them names them by its config field
   * `sharedExperts`; the model builds and counts them.
   */
  sharedExperts: number;
  /**
   * Routes by a learned softmax over the E logits W·h of each token: the
   * E×C product costs FLOPs, and each token keeps 2·E values (logits and
   * probabilities) for backward.
   */
  learned: boolean;
  /** Devices the balance statistics (per-device load, imbalance score) spread the E experts over, in contiguous blocks. */
  devices(experts: number): number;
  /** Cross-field checks of the router config against the model. */
  check(model: ModelView, bad: ReportIssue): void;
  /** The tensors it keeps per sparse layer: parameter and buffer counts, size limits, the names it saves. */
  tensors(model: ModelView): RouterTensor[];
  /** Checks a state buffer read from a file (by name, as in `tensors`); null when it is valid, else what is wrong with it. */
  checkBuffer?(model: ModelView, name: string, values: Int32Array): string | null;
  /** The routing module of one sparse layer. */
  build(layer: RouterLayer): RouterModule;
  extraction: Extraction<C>;
  /** Growing the model by a domain; absent: this router cannot. */
  growth?: Growth<C>;
  /**
   * The combine weights of a token's experts sum to 1 at inference (and
   * nothing is dropped there), so a layer whose experts are copies of one FFN
   * computes that FFN: upcycling a dense model preserves its function.
   */
  weightsSumToOne: boolean;
  /** What a freshly built router draws that is worth telling the user (RRE: its tables' seed), or null. */
  drawn: string | null;
  /**
   * Routes as other formats describe routing by two numbers (llama.cpp's
   * GGUF, Hugging Face's Mixtral/Qwen MoE configs): softmax over all E
   * logits, the k largest, and whether their weights are divided by their
   * sum. null for any other routing (groups, tables).
   */
  softmaxTopk: { renormalize: boolean } | null;
}

/** The config schema of a router kind: a strict zod object with a literal `kind`. */
export type RouterSchemaOf<K extends string = string> = z.ZodObject<{ kind: z.ZodLiteral<K> } & z.ZodRawShape, "strict">;

/** A router kind: its config schema and what a config of it means. */
export interface RouterKind<S extends RouterSchemaOf = RouterSchemaOf> {
  schema: S;
  spec(config: z.infer<S>): RouterSpec<z.infer<S>>;
}

/** The most experts a sparse layer may have (the model config's bound on experts.count and on router fields sized by it). */
export const MAX_EXPERTS = 2 ** 16;

/** The check every grouped router makes: its `groups` divide E. */
export function checkGroupsDivide(groups: number, model: ModelView, bad: ReportIssue): void {
  if (model.experts % groups !== 0) bad(["experts", "router", "groups"], `${groups} groups do not divide ${model.experts} experts (allowed: a divisor of experts.count)`);
}
