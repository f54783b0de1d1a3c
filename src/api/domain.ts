/**
 * `addDomain(model, options)`: a new domain for a trained model without
 * retraining it (docs/domains.md). The tokenizer gains the domain's control
 * token (old tokens keep their rows, matched by string, as in upcycling);
 * the model gains an expert group (RRE) or experts (MoGE, top-k) and, when
 * it has per-domain embedding slots, a slot (src/models/domain-add.ts); the
 * domain's corpus is prepared with the new tokenizer; then only the new
 * parameters train on it (src/train/domain-train.ts). The result says what
 * the new domain's validation loss was before and after.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { prepareData } from "../data/prepare.js";
import { readManifest, windowTokens } from "../data/manifest.js";
import { growDomain } from "../models/domain-add.js";
import { modelRouter } from "../models/config.js";
import { vocabMapping } from "../models/vocab-map.js";
import { Tokenizer } from "../tokenizer/codec.js";
import { domainToken } from "../tokenizer/specials.js";
import { toHfJson } from "../tokenizer/hfjson.js";
import { checkBatchFits } from "../train/memory.js";
import { domainValLoss, trainNewParts } from "../train/domain-train.js";
import { writeFileAtomic } from "../util/fs.js";
import { SigmaError } from "../util/errors.js";
import { Model } from "./model.js";

export interface AddDomainOptions {
  /** The new domain's name (1–32 characters from a-z, 0-9, _ . -). */
  name: string;
  /**
   * The domain's corpus: a folder of its text (files and JSONL records, as
   * under <corpus>/<domain>/ for `sigma data prepare`), or a corpus root that
   * has a <name>/ folder.
   */
  data: string;
  /** Where the corpus, tokenized with the extended tokenizer, is prepared. */
  dataOut: string;
  /** RRE: start the new experts (and the embedding slot) as copies of this domain's; absent = fresh experts. */
  expertsFrom?: string;
  /** Training steps on the new domain (default 200). */
  steps?: number;
  /** Peak learning rate (default 3e-3). */
  lr?: number;
  /** Sequences per step (default 8). */
  batchSize?: number;
  /** Seed of the data order (default 1). */
  seed?: number;
  /** Validation batches before and after (default 4). */
  evalBatches?: number;
  /** Share of the domain's documents held out for validation (default 0.1). */
  valFraction?: number;
  onStep?: (step: number, loss: number) => void;
  /** @internal How errors name the options (the CLI passes its flags). */
  names?: { expertsFrom: string; data: string; batchSize: string };
}

export interface AddDomainResult {
  model: Model;
  domain: string;
  /** The router kind. */
  router: string;
  /** Whether every old domain's sub-model stays bit-identical (a router by domain, RRE); false: routing is shared and the old domains' loss moves (MoGE, top-k). */
  exact: boolean;
  experts: { before: number; after: number; copiedFrom: string | null };
  slot: { index: number; fresh: boolean };
  vocabulary: { old: number; new: number; controlToken: string };
  /** Parameters trained (the new ones) and all parameters. */
  parameters: { trained: number; total: number };
  /** The new domain's validation loss before training (the grown, unadapted model) and after. */
  valLoss: { before: number; after: number };
  losses: number[];
  dataDir: string;
}

/** The corpus root to prepare: `data` itself when it has a <name>/ folder, else a temporary root whose <name> is `data`. */
function corpusRoot(data: string, name: string, tmp: string, flag: string): string {
  if (!existsSync(data) || !statSync(data).isDirectory()) throw new SigmaError(`${flag} ${data} is not a folder`, `pass the folder of the "${name}" domain's text files (or a corpus root with a ${name}/ folder)`);
  if (existsSync(join(data, name))) return data;
  const root = join(tmp, "corpus");
  mkdirSync(root);
  symlinkSync(resolve(data), join(root, name), "dir");
  return root;
}

export async function addDomain(model: Model, o: AddDomainOptions): Promise<AddDomainResult> {
  const names = o.names ?? { expertsFrom: "expertsFrom", data: "data", batchSize: "batchSize" };
  const where = model.path ?? "the model";
  const tok = model.tokenizer;
  if (tok && !(tok instanceof Tokenizer)) throw new SigmaError(`${model.path ?? "the model"} carries a Hugging Face tokenizer, which has no domain tokens`, "adding a domain extends a Sigma tokenizer (one made by sigma tokenizer train); train or upcycle a model with one");
  if (!tok) throw new SigmaError(`${where} carries no tokenizer, so the new domain's control token cannot be added`, "use a checkpoint written by sigma train (it carries tokenizer.json)");
  const c = model.config;
  if (!c.experts || c.sparseLayers === 0) throw new SigmaError(`${where} is a dense model: a new domain needs sparse layers to give it experts`, "add domains to a sparse or mixed model (sigma upcycle grows one from a dense model)");
  if (tok.domains.includes(o.name) || c.domains.some((d) => d.name === o.name)) throw new SigmaError(`${where} already has a domain "${o.name}"`, "pick a new name");
  const router = c.experts.router.kind;
  const growth = modelRouter(c)!.spec.growth;
  if (!growth) throw new SigmaError(`${where} routes with ${router}, which cannot grow by a domain`, "add domains to an RRE, MoGE or top-k model");
  if (o.expertsFrom !== undefined && !growth.copies) throw new SigmaError(`${names.expertsFrom} needs a model routed by domain (RRE); this one routes with ${router}, whose experts belong to no domain`, `leave out ${names.expertsFrom}: new experts start fresh`);
  if (o.expertsFrom !== undefined && !c.domains.some((d) => d.name === o.expertsFrom)) throw new SigmaError(`${names.expertsFrom}: ${where} has no domain "${o.expertsFrom}"; it has ${c.domains.map((d) => d.name).join(", ")}`, `name one of them, or leave out ${names.expertsFrom} for fresh experts`);
  const steps = o.steps ?? 200;
  const batchSize = o.batchSize ?? 8;
  const seed = o.seed ?? 1;
  const evalBatches = o.evalBatches ?? 4;
  checkBatchFits(model.network, batchSize, names.batchSize);

  // The tokenizer with one more domain: its control token goes after the others (specials.ts), so ids shift; vocabMapping matches rows by string.
  const newTok = new Tokenizer({ domains: [...tok.domains, o.name], langs: tok.langs, tokens: tok.vocab.slice(tok.specials.length), merges: [...tok.merges] }, "the extended tokenizer");
  const newText = toHfJson(newTok);
  const vocab = vocabMapping(tok, newTok);

  const tmp = mkdtempSync(join(tmpdir(), "sigma-domain-"));
  try {
    writeFileAtomic(join(tmp, "tokenizer.json"), newText);
    const corpus = corpusRoot(o.data, o.name, tmp, names.data);
    await prepareData({ corpus, tokenizer: join(tmp, "tokenizer.json"), out: o.dataOut, valFraction: o.valFraction ?? 0.1, seed, seqLen: c.seqLen });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const m = readManifest(join(o.dataOut, "manifest.json"));
  const counts = m.domains.find((d) => d.name === o.name)!;
  const need = windowTokens(c.seqLen);
  if (counts.train.tokens < need || counts.val.tokens < need) {
    throw new SigmaError(`the "${o.name}" corpus gave ${counts.train.tokens} training and ${counts.val.tokens} validation tokens; training and measuring it needs at least ${need} in each (one sequence of ${c.seqLen} + 1)`, `add text under ${o.data}`);
  }

  const grown = growDomain(model.network, { name: o.name, from: o.expertsFrom ?? null, vocab });
  const net = grown.model;
  const evalOpts = { batches: evalBatches, batchSize, seed: seed + 1 };
  const before = domainValLoss(net, o.dataOut, o.name, grown.domain, evalOpts);
  const losses = trainNewParts(net, grown.trainable, { dataDir: o.dataOut, domain: o.name, domainIndex: grown.domain, steps, lr: o.lr ?? 3e-3, batchSize, seed, ...(o.onStep ? { onStep: o.onStep } : {}) });
  const after = domainValLoss(net, o.dataOut, o.name, grown.domain, evalOpts);
  const trained = grown.trainable.reduce((n, r) => n + r.end - r.start, 0);
  const out = new Model(net, newTok, null, model.step, o.dataOut, null, newText);
  return {
    model: out,
    domain: o.name,
    router,
    exact: grown.exact,
    experts: { before: c.experts.count, after: net.config.experts!.count, copiedFrom: o.expertsFrom ?? null },
    slot: grown.slot,
    vocabulary: { old: vocab.oldSize, new: vocab.newSize, controlToken: domainToken(o.name) },
    parameters: { trained, total: net.parameterCount() },
    valLoss: { before, after },
    losses,
    dataDir: o.dataOut,
  };
}
