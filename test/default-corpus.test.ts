// The default corpus is the same bytes on every install: exact package versions, a fixed
// list of packages, and a pinned sha256 that the assembled text must have.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CORPUS_PACKAGES, DEFAULT_BUDGET, assembleDefaultCorpus, corpusDigest, defaultCorpusInfo } from "../src/data/defaultCorpus.js";
import { SigmaError } from "../src/util/errors.js";

const root = mkdtempSync(join(tmpdir(), "sigma-default-corpus-"));
after(() => rmSync(root, { recursive: true, force: true }));

/** Computed once (with the packages package-lock.json pins) and written in: a change to the default corpus must change this line. */
const PINNED = "62f537bb76c2c55d0c6923d17c7c4da13df405d337614ba6d563d94a2fb1a261";

test("the default corpus's sha256, size and domains are pinned", () => {
  const info = defaultCorpusInfo();
  assert.equal(info.sha256, PINNED);
  assert.equal(info.bytes, 8_989_324);
  assert.deepEqual(Object.keys(info.domains).sort(), ["bi", "code", "en", "zh"]);
  assert.equal(Object.values(info.domains).reduce((a, b) => a + b, 0), info.bytes);
});

test("package.json and package-lock.json pin every corpus package to the exact version the corpus was made with", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { dependencies: Record<string, string> };
  const lock = JSON.parse(readFileSync(new URL("../package-lock.json", import.meta.url), "utf8")) as { packages: Record<string, { version?: string; dependencies?: Record<string, string> }> };
  for (const [name, version] of Object.entries(CORPUS_PACKAGES)) {
    assert.equal(pkg.dependencies[name], version, `package.json: ${name}`);
    assert.equal(lock.packages[""]!.dependencies![name], version, `package-lock.json root: ${name}`);
    assert.equal(lock.packages[`node_modules/${name}`]!.version, version, `package-lock.json: ${name}`);
  }
});

const dir = join(root, "corpus");

test("assembling it here gives exactly the pinned text; assembling again reuses it", () => {
  const r = assembleDefaultCorpus(dir);
  assert.equal(r.reused, false);
  assert.equal(r.sha256, PINNED);
  assert.deepEqual({ sha256: r.sha256, bytes: r.bytes, domains: r.domains }, { sha256: PINNED, bytes: defaultCorpusInfo().bytes, domains: defaultCorpusInfo().domains });
  assert.equal(corpusDigest(dir).sha256, PINNED);
  // Only the pinned packages are read: no source names a package outside them (dev tools, platform builds, a consumer's own packages).
  for (const s of r.sources) assert.ok(s.name in CORPUS_PACKAGES, `${s.domain}: ${s.name}`);
  const again = assembleDefaultCorpus(dir);
  assert.equal(again.reused, true);
  assert.equal(again.sha256, PINNED);
});

test("the sha256 changes with one byte of the corpus, a byte more, or a file's name; a changed cached corpus is rebuilt", () => {
  const file = join(dir, "en", readdirSync(join(dir, "en")).sort()[0]!);
  const bytes = readFileSync(file);
  bytes[100] ^= 0x01;
  writeFileSync(file, bytes);
  const flipped = corpusDigest(dir);
  assert.notEqual(flipped.sha256, PINNED);
  assert.equal(flipped.bytes, defaultCorpusInfo().bytes, "same size, other bytes");
  // The cache notices and rebuilds the pinned text.
  const r = assembleDefaultCorpus(dir);
  assert.equal(r.reused, false);
  assert.equal(r.sha256, PINNED);

  appendFileSync(file, "\n");
  assert.notEqual(corpusDigest(dir).sha256, PINNED);
  assembleDefaultCorpus(dir);
  renameSync(file, file.replace(/\.jsonl$/, "-x.jsonl"));
  assert.notEqual(corpusDigest(dir).sha256, PINNED);
  assert.equal(assembleDefaultCorpus(dir).sha256, PINNED);
});

test("another version of a corpus package, or text that is not the pinned text, is an error and writes nothing", () => {
  const other = join(root, "other");
  assert.throws(
    () => assembleDefaultCorpus(other, { ...DEFAULT_BUDGET }, { pins: { ...CORPUS_PACKAGES, zod: "3.0.0" } }),
    (e: unknown) => e instanceof SigmaError && /pinned to zod@3\.0\.0, but .*zod holds version 3\.25\.76/.test(e.message) && /npm ci/.test(e.hint ?? ""),
  );
  assert.throws(
    () => assembleDefaultCorpus(other, { zh: 1000, en: 1000, bi: 1000, code: 1000 }, { sha256: "0".repeat(64) }),
    (e: unknown) => e instanceof SigmaError && /has sha256 [0-9a-f]{64}, not the pinned 0{64}/.test(e.message),
  );
  assert.equal(existsSync(other), false);
  assert.deepEqual(readdirSync(root).filter((f) => f.startsWith("other")), [], "no temp folder left");
});
