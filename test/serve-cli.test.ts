// `sigma serve` and `sigma chat` as a user runs them: child processes, the
// server asked over HTTP and stopped with SIGTERM; the chat driven through
// stdin (turns with history, /domain, /reset, Ctrl-C stopping one reply,
// Ctrl-D quitting).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model, openModel, type ChatMessage } from "../src/api/model.js";
import { parseModelConfig } from "../src/models/config.js";
import { PanguSigma } from "../src/models/pangu-sigma.js";
import { toHfJson } from "../src/tokenizer/hfjson.js";
import { trainBpe, WordCounter } from "../src/tokenizer/trainer.js";

const root = mkdtempSync(join(tmpdir(), "sigma-serve-cli-"));
// The children must not read (or warn about) the user's GEMM tuning file: their output is compared exactly.
process.env.SIGMA_TUNE ??= "off";
/** Every child started here, killed at the end so that a failed test leaves none running. */
const children = new Set<ChildProcessWithoutNullStreams>();
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});
const wc = new WordCounter();
wc.add("The quick brown fox jumps over the lazy dog. Hello there, how are you today? export const x = 1;\n".repeat(8));
const tok = trainBpe(wc, { vocabSize: 320, domains: ["en", "code"], langs: [] });
const config = parseModelConfig({
  vocabSize: tok.vocabSize, width: 32, heads: 2, denseLayers: 1, sparseLayers: 1, seqLen: 128, ffnWidth: 64, embeddingSlots: 2,
  domains: [{ name: "en", group: 0 }, { name: "code", slot: 1, group: 1 }], experts: { count: 4, router: { kind: "rre", groups: 2 } }, initStd: 0.1, seed: 3,
});
const model = new Model(new PanguSigma(config), tok, null, 0, null, null, toHfJson(tok));
const ckpt = model.save(join(root, "chatty"));
const MAIN = join(import.meta.dirname, "..", "src", "cli", "main.ts");

/** `sigma <args>` as a child process, with its output gathered and a way to wait for a pattern in it. */
function sigma(args: string[]): { child: ChildProcessWithoutNullStreams; out: () => string; waitFor: (re: RegExp, from?: number) => Promise<RegExpExecArray>; exit: Promise<number | null> } {
  const child = spawn(process.execPath, ["--import", "tsx", MAIN, ...args], { stdio: "pipe" });
  children.add(child);
  let out = "";
  const waiters: (() => void)[] = [];
  const feed = (b: Buffer) => {
    out += b.toString("utf8");
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.on("data", feed);
  child.stderr.on("data", feed);
  const exit = new Promise<number | null>((r) => child.on("exit", (code) => (r(code), feed(Buffer.alloc(0)))));
  const waitFor = async (re: RegExp, from = 0): Promise<RegExpExecArray> => {
    for (;;) {
      const m = re.exec(out.slice(from));
      if (m) return m;
      if (child.exitCode !== null) throw new Error(`sigma exited (${child.exitCode}) without printing ${re}:\n${out}`);
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { child, out: () => out, waitFor, exit };
}

/** Types a line into a `sigma chat` child and gives its reply: everything printed up to the next prompt. */
function chatTurn(s: ReturnType<typeof sigma>): (line: string) => Promise<string> {
  return async (line) => {
    const from = s.out().length;
    s.child.stdin.write(`${line}\n`);
    const m = await s.waitFor(/^([\s\S]*?)\nyou> /, from);
    return m[1]!;
  };
}

const greedy = { temperature: 0, topK: 0, topP: 1 };
async function reply(history: ChatMessage[], domain = "en", maxTokens = 12): Promise<string> {
  let text = "";
  for await (const p of model.chat(history, { ...greedy, domain, maxTokens })) text += p.text;
  return text;
}

test("sigma serve listens on 127.0.0.1, answers, and stops cleanly on SIGTERM", { timeout: 60_000 }, async () => {
  const s = sigma(["serve", "--ckpt", ckpt, "--port", "0", "--max-batch", "4"]);
  try {
    const [, url] = await s.waitFor(/on (http:\/\/127\.0\.0\.1:\d+) /);
    await s.waitFor(/models: sigma\/chatty\/en, sigma\/chatty\/code;/);
    const r = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello", max_tokens: 6, temperature: 0 }) });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string }[] };
    assert.equal(body.choices[0]!.text, await model.complete("Hello", { ...greedy, maxTokens: 6 }));
  } finally {
    s.child.kill("SIGTERM");
  }
  assert.equal(await s.exit, 0);
  assert.match(s.out(), /sigma serve: stopping/);
});

test("sigma serve --weights q8 serves the q8-converted model (its greedy text, not the f32 one's necessarily)", { timeout: 60_000 }, async () => {
  const q8 = await openModel(ckpt, { weights: "q8" });
  const s = sigma(["serve", "--ckpt", ckpt, "--port", "0", "--weights", "q8"]);
  try {
    const [, url] = await s.waitFor(/on (http:\/\/127\.0\.0\.1:\d+) /);
    await s.waitFor(/models: /);
    const r = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello", max_tokens: 6, temperature: 0 }) });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string }[] };
    assert.equal(body.choices[0]!.text, await q8.complete("Hello", { ...greedy, maxTokens: 6 }));
  } finally {
    s.child.kill("SIGTERM");
  }
  assert.equal(await s.exit, 0);
  const bad = sigma(["serve", "--ckpt", ckpt, "--weights", "q3"]);
  assert.equal(await bad.exit, 1);
  assert.match(bad.out(), /^sigma: --weights/m);
});

test("sigma serve refuses a bad flag with one line", { timeout: 60_000 }, async () => {
  const s = sigma(["serve", "--ckpt", ckpt, "--port", "70000"]);
  assert.equal(await s.exit, 1);
  assert.match(s.out(), /^sigma: --port must be an integer from 0 to 65535/m);
});

test("sigma chat: turns keep their history; /domain, /reset; Ctrl-D quits", { timeout: 120_000 }, async () => {
  const s = sigma(["chat", "--ckpt", ckpt, "--temperature", "0", "--top-k", "0", "--top-p", "1", "--max-tokens", "12"]);
  const turn = chatTurn(s);
  await s.waitFor(/you> /);
  const history: ChatMessage[] = [{ role: "user", content: "Hello there" }];
  const first = await turn("Hello there");
  assert.equal(first, await reply(history));
  history.push({ role: "assistant", content: first }, { role: "user", content: "how are you" });
  assert.equal(await turn("how are you"), await reply(history), "the second reply sees the first turn");

  assert.equal(await turn("/domain code"), "(domain code)");
  assert.match(await turn("/domain klingon"), /unknown domain "klingon"/);
  history.push({ role: "assistant", content: await reply(history.slice(0, 3)) }, { role: "user", content: "export const" });
  assert.equal(await turn("export const"), await reply(history, "code"), "in the code domain, with the whole history");

  assert.equal(await turn("/reset"), "(history cleared)");
  assert.equal(await turn("Hello there"), await reply([{ role: "user", content: "Hello there" }], "code"), "a fresh history");

  s.child.stdin.end(); // Ctrl-D
  assert.equal(await s.exit, 0);
});

test("sigma chat --draft ngram: greedy replies are plain decoding's, and the acceptance is printed at the end", { timeout: 120_000 }, async () => {
  const s = sigma(["chat", "--ckpt", ckpt, "--temperature", "0", "--top-k", "0", "--top-p", "1", "--max-tokens", "24", "--draft", "ngram", "--draft-tokens", "3"]);
  const turn = chatTurn(s);
  await s.waitFor(/you> /);
  const history: ChatMessage[] = [{ role: "user", content: "The quick brown fox jumps over the lazy dog. The quick brown fox" }];
  const first = await turn(history[0]!.content);
  assert.equal(first, await reply(history, "en", 24));
  history.push({ role: "assistant", content: first }, { role: "user", content: "Hello there, how are you today? Hello there" });
  assert.equal(await turn(history[2]!.content), await reply(history, "en", 24), "the second reply, with the history");
  s.child.stdin.end();
  assert.equal(await s.exit, 0);
  const m = /draft: (\d+) of (\d+) proposed tokens accepted \((\d+|–)%?\), (\d+) verification steps/.exec(s.out());
  assert.ok(m, `no acceptance line in:\n${s.out()}`);
  assert.ok(Number(m[2]) > 0 && Number(m[4]) > 0, "the prompt repeats itself: the n-gram draft proposed tokens");
});

test("sigma serve --draft MODEL: greedy answers are plain decoding's, /metrics counts the drafts; a draft with another tokenizer is one line", { timeout: 90_000 }, async () => {
  // The model drafting for itself: every proposal is kept at temperature 0.
  const s = sigma(["serve", "--ckpt", ckpt, "--port", "0", "--draft", ckpt, "--draft-tokens", "3"]);
  try {
    const [, url] = await s.waitFor(/on (http:\/\/127\.0\.0\.1:\d+) /);
    await s.waitFor(/drafts of 3 tokens from .*chatty/);
    const r = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello there", max_tokens: 16, temperature: 0 }) });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string }[] };
    assert.equal(body.choices[0]!.text, await model.complete("Hello there", { ...greedy, maxTokens: 16 }));
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const proposed = Number(/sigma_draft_tokens_proposed_total (\d+)/.exec(metrics)?.[1]);
    const accepted = Number(/sigma_draft_tokens_accepted_total (\d+)/.exec(metrics)?.[1]);
    assert.ok(proposed > 0 && accepted === proposed, `proposed ${proposed}, accepted ${accepted}`);
  } finally {
    s.child.kill("SIGTERM");
  }
  assert.equal(await s.exit, 0);
  const otherTok = trainBpe(wc, { vocabSize: 320, domains: ["en", "code", "law"], langs: [] });
  const other = new Model(new PanguSigma(parseModelConfig({ ...config, vocabSize: otherTok.vocabSize, domains: [...config.domains, { name: "law", slot: 1, group: 1 }] })), otherTok, null, 0, null, null, toHfJson(otherTok)).save(join(root, "other"));
  const bad = sigma(["serve", "--ckpt", ckpt, "--port", "0", "--draft", other]);
  assert.equal(await bad.exit, 1);
  assert.match(bad.out(), /^sigma: .*other.* (has another tokenizer|vocabulary)/m);
});

test("sigma chat: Ctrl-C stops the reply being written, and the chat goes on", { timeout: 120_000 }, async () => {
  // A reply long enough to interrupt: up to 100000 tokens (the context is re-run as it fills).
  const s = sigma(["chat", "--ckpt", ckpt, "--max-tokens", "100000", "--temperature", "0.9", "--top-k", "0", "--top-p", "1"]);
  await s.waitFor(/you> /);
  const from = s.out().length;
  s.child.stdin.write("Tell me everything\n");
  await s.waitFor(/[^\s]{20}/, from); // some of the reply is out
  s.child.kill("SIGINT");
  await s.waitFor(/ \[stopped\]\nyou> /, from);
  const again = s.out().length;
  s.child.stdin.write("/reset\n");
  await s.waitFor(/\(history cleared\)\nyou> /, again);
  s.child.stdin.end();
  assert.equal(await s.exit, 0);
});
