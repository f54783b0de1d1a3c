// Child of the FIFO test in hardening-messages.test.ts: puts a FIFO (then a
// folder) where a shard, the manifest and the tokenizer of a data folder
// should be, and checks each reader refuses it by name. Exits 0 when all do;
// a regression blocks in a read, and the parent's time limit reports it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { unigramBaselines } from "../src/train/baseline.js";
import { SigmaError } from "../src/util/errors.js";
import { assertRefused, cli } from "./formats-helpers.js";

const dir = process.argv[2]!;
const shard = readdirSync(join(dir, "shards")).find((n) => n.includes("-val-"))!;
// The shards are read by training, eval and baselines (data stats reads only the manifest).
const baselines = async (): Promise<{ code: number; err: string }> => {
  try {
    unigramBaselines(dir);
    return { code: 0, err: "" };
  } catch (e) {
    if (!(e instanceof SigmaError)) throw e;
    return { code: 1, err: `sigma: ${e.message}` };
  }
};
const cases: [string, () => Promise<{ code: number; err: string }>, RegExp][] = [
  [join(dir, "shards", shard), baselines, /shard .* is a FIFO/],
  [join(dir, "manifest.json"), () => cli(["data", "stats", "--data", dir]), /manifest .* is a FIFO/],
  [join(dir, "tokenizer.json"), () => cli(["tokenizer", "encode", "--tokenizer", join(dir, "tokenizer.json"), "x"]), /tokenizer .* is a FIFO/],
];
let checked = 0;
for (const [file, run, re] of cases) {
  renameSync(file, `${file}.aside`);
  try {
    if (spawnSync("mkfifo", [file]).status !== 0) throw new Error("mkfifo is missing");
    assertRefused(await run(), file, re);
    rmSync(file);
    mkdirSync(file);
    assertRefused(await run(), file, /is a folder/);
    checked++;
  } finally {
    rmSync(file, { recursive: true, force: true });
    renameSync(`${file}.aside`, file);
  }
}
assert.equal(checked, cases.length);
console.log(`checked ${checked} files`);
