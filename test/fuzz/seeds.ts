/**
 * The valid inputs the fuzzer mutates, built once per run in a folder:
 *
 *   data/            a tiny prepared data folder (test/train-fixture.ts), manifest "corpus" made relative
 *   train.json       a tiny mixed RRE run over data/ (relative paths), 2 steps
 *   store.json       the same run with the expert store (ECSS) on, 1 MiB expert memory
 *   ckpt/            train.json's checkpoint at step 2 (model, optimizer, tokenizer, state.json)
 *   srun/            store.json's run: experts.sgxs, its .stats.json, metrics.jsonl, checkpoints/step-00000002 (with experts.index)
 *   killed/          a run killed before its first checkpoint: run.json (a dead pid) and metrics.jsonl
 *   bare/            model.safetensors + tokenizer.json (what `sigma generate --ckpt file` reads)
 *   tok.json         a copy of the tokenizer
 *   corpus/          the fixture's small corpus (zh, en, code JSONL)
 *
 * Both runs are trained by the fuzz worker itself (`sigma train` in-process,
 * one kernel thread), with the seed folder as the working directory, so every
 * path recorded in a checkpoint is relative and a job's copy of the seeds is
 * self-contained. Run-dependent fields (wall-clock seconds, the store's random
 * id) are then fixed, so a run seed and a mutant index give the same bytes on
 * every run; `fingerprint` hashes the result to show it.
 */
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { crc32 } from "./crc32.js";

export const SEED_STEP = 2;
export const CKPT = "ckpt";
export const SRUN_CKPT = "srun/checkpoints/step-00000002";
export const STORE_FILE = "srun/experts.sgxs";
/** A fixed store id, so the store's bytes do not depend on the run. */
export const FIXED_STORE_ID = "00000000-0000-4000-8000-00000000f022";

export type RunCli = (cwd: string, argv: string[]) => Promise<{ code: number; text: string }>;

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** Rewrites a checkpoint's state.json (the files table is kept unless `files` changes it). */
function editState(dir: string, edit: (s: Record<string, unknown>) => void): void {
  const p = join(dir, "state.json");
  const s = JSON.parse(readFileSync(p, "utf8")) as Record<string, unknown>;
  edit(s);
  writeFileSync(p, JSON.stringify(s, null, 1));
}

/** Replaces the store header's id (page 0: magic, version, json length, crc32, json). */
function fixStoreId(path: string): void {
  const buf = readFileSync(path);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const len = dv.getUint32(8, true);
  const h = JSON.parse(buf.subarray(16, 16 + len).toString("utf8")) as { storeId: string };
  h.storeId = FIXED_STORE_ID;
  const json = Buffer.from(JSON.stringify(h));
  if (json.length !== len) throw new Error("fuzz seeds: the store id changed the header's length");
  json.copy(buf, 16);
  dv.setUint32(12, crc32(json), true);
  writeFileSync(path, buf);
}

export async function buildSeeds(dir: string, run: RunCli): Promise<void> {
  mkdirSync(dir, { recursive: true });
  // Imported here: the fixture makes its temporary folder when it is loaded.
  const { ROUTERS, cleanup, tinyConfig, tinyData } = await import("../train-fixture.js");
  const data = await tinyData();
  cpSync(data, join(dir, "data"), { recursive: true });
  // The fixture's corpus (three domains of JSONL), for `sigma data prepare` with a mutated tokenizer.
  cpSync(join(data, "..", "corpus"), join(dir, "corpus"), { recursive: true });
  cleanup();
  const mp = join(dir, "data", "manifest.json");
  const m = JSON.parse(readFileSync(mp, "utf8")) as { corpus: string };
  m.corpus = "corpus";
  writeFileSync(mp, JSON.stringify(m, null, 2) + "\n");

  const base = { steps: SEED_STEP, eval: { every: 0, batches: 1 }, checkpoint: { every: 0, keep: 1 } };
  writeFileSync(join(dir, "train.json"), JSON.stringify(tinyConfig("data", "run", ROUTERS.rre!, base), null, 2));
  writeFileSync(join(dir, "store.json"), JSON.stringify(tinyConfig("data", "srun", ROUTERS.rre!, { ...base, store: { enabled: true, memory: "1MiB" } }), null, 2));
  for (const cfg of ["train.json", "store.json"]) {
    const r = await run(dir, ["train", "--config", cfg]);
    if (r.code !== 0) throw new Error(`fuzz seeds: sigma train --config ${cfg} failed (${r.code}):\n${r.text}`);
  }
  renameSync(join(dir, "run", "checkpoints", `step-0000000${SEED_STEP}`), join(dir, CKPT));
  rmSync(join(dir, "run"), { recursive: true, force: true });
  // Only what loading needs.
  for (const name of readdirSync(join(dir, "srun"))) if (!["experts.sgxs", "experts.sgxs.stats.json", "metrics.jsonl", "checkpoints"].includes(name)) rmSync(join(dir, "srun", name), { recursive: true, force: true });
  // Timings out of the metrics, so the seed is the same on every run.
  const metricsFile = join(dir, "srun", "metrics.jsonl");
  const metrics = readFileSync(metricsFile, "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const r = JSON.parse(l) as Record<string, unknown>;
      for (const k of ["seconds", "elapsed"]) if (typeof r[k] === "number") r[k] = 0.5;
      if (typeof r.tokensPerSec === "number") r.tokensPerSec = 128;
      if (typeof r.path === "string") r.path = relative(dir, r.path);
      return JSON.stringify(r) + "\n";
    })
    .join("");
  writeFileSync(metricsFile, metrics);
  // A run killed before its first checkpoint: its marker (a dead process) and metrics, no checkpoints.
  mkdirSync(join(dir, "killed"));
  writeFileSync(join(dir, "killed", "run.json"), JSON.stringify({ format: "sigma-run", pid: 2 ** 31 - 2, startedAt: "2025-01-01T00:00:00.000Z", store: null }, null, 1) + "\n");
  writeFileSync(join(dir, "killed", "metrics.jsonl"), metrics);
  const statsFile = join(dir, `${STORE_FILE}.stats.json`);
  writeFileSync(statsFile, JSON.stringify({ ...JSON.parse(readFileSync(statsFile, "utf8")), writtenAt: "2025-01-01T00:00:00.000Z" }, null, 2) + "\n");

  editState(join(dir, CKPT), (s) => (s.seconds = 1));
  fixStoreId(join(dir, STORE_FILE));
  editState(join(dir, SRUN_CKPT), (s) => {
    s.seconds = 1;
    (s.store as { storeId: string }).storeId = FIXED_STORE_ID;
  });
  mkdirSync(join(dir, "bare"));
  cpSync(join(dir, CKPT, "model.safetensors"), join(dir, "bare", "model.safetensors"));
  cpSync(join(dir, CKPT, "tokenizer.json"), join(dir, "bare", "tokenizer.json"));
  cpSync(join(dir, CKPT, "tokenizer.json"), join(dir, "tok.json"));

  // The seeds must load: a failing seed would make every mutant an error. (What these write is removed.)
  cpSync(join(dir, "killed"), join(dir, "seed-check", "killed"), { recursive: true });
  const init = ["--config", "train.json", "--steps", "1", "--out", "seed-check/out"];
  for (const argv of [
    ["eval", "--ckpt", CKPT, "--data", "data", "--batches", "1", "--batch-size", "2"],
    ["eval", "--ckpt", SRUN_CKPT, "--batches", "1", "--batch-size", "2"],
    ["store", "inspect", STORE_FILE, "--verify", "--ckpt", SRUN_CKPT],
    ["store", "convert", "--from", SRUN_CKPT, "--to", "ram", "--out", "seed-check/conv"],
    ["generate", "--ckpt", "bare/model.safetensors", "--max-tokens", "2"],
    ["extract", "--ckpt", "bare/model.safetensors", "--domain", "en", "--out", "seed-check/ext"],
    ["train", ...init, "--init", "bare/model.safetensors"],
    ["train", "--config", "train.json", "--resume", CKPT, "--steps", String(SEED_STEP + 1), "--out", "seed-check/resume"],
    ["data", "prepare", "--corpus", "corpus", "--tokenizer", "tok.json", "--out", "seed-check/prepared"],
    ["data", "stats", "--data", "data"],
    ["train", "--config", "train.json", "--steps", "1", "--out", "seed-check/killed"],
  ]) {
    const r = await run(dir, argv);
    if (r.code !== 0) throw new Error(`fuzz seeds: sigma ${argv.join(" ")} failed on the seeds (${r.code}):\n${r.text}`);
  }
  rmSync(join(dir, "seed-check"), { recursive: true, force: true });
}

/** sha256 over every seed file's path and bytes (the same on every run when the seeds are deterministic). */
export function fingerprint(dir: string): string {
  const h = createHash("sha256");
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else h.update(`${relative(dir, p)}\0${sha256(readFileSync(p))}\n`);
    }
  };
  walk(dir);
  return h.digest("hex").slice(0, 16);
}
