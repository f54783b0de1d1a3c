// The chat playground served at `/` by `sigma serve` (src/serve/page.ts).
// Plain JavaScript for the browser, no build step and nothing from another
// origin: it talks to the server's own OpenAI-style API.
//
//   - GET /v1/models fills the domain picker (ids sigma/<name>/<domain>).
//   - A message is sent as POST /v1/chat/completions with "stream": true; the
//     reply's server-sent events are parsed as they arrive (each read of the
//     body may hold part of an event or several) and each delta is shown at
//     once. Stop aborts the request; the server then cancels the sequence.
//   - GET /v1/status, polled twice a second, draws the batch, the queue, the
//     KV pool and each sparse layer's load per expert over the recent steps.
//   - The API key, when the server has one, is typed into the page, kept for
//     the tab's session only, and sent as a bearer token.

const $ = (id) => document.getElementById(id);

const state = {
  /** The conversation so far: {role, content}. */
  messages: [],
  /** The running request's AbortController, or null. */
  controller: null,
  /** Sequences running at the last polls, for the history strip. */
  history: [],
};

// ------------------------------------------------------------------ the API

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** The error message of a failed response (OpenAI's {error: {message}} body, else the status). */
async function errorOf(res) {
  let msg = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) msg = `${res.status}: ${body.error.message}`;
  } catch {
    // not JSON: keep the status line
  }
  return msg;
}

/**
 * The data of each server-sent event in `body` (a ReadableStream of bytes),
 * as it arrives. Events end at a blank line; an event's `data:` lines are
 * joined with newlines; other fields and comments are skipped.
 */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      for (let m = /\r?\n\r?\n/.exec(buf); m; m = /\r?\n\r?\n/.exec(buf)) {
        const event = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
        if (data.length) yield data.join("\n");
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** The sampling fields of a request, from the controls (empty ones are left out). */
function sampling() {
  const o = {};
  const num = (id) => {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  };
  for (const id of ["temperature", "top_p", "top_k", "max_tokens", "seed"]) {
    const v = num(id);
    if (v !== null && Number.isFinite(v)) o[id] = v;
  }
  return o;
}

// ------------------------------------------------------------------ the chat

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
}

/** Appends a message to the log; returns its text element and its footer. */
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const foot = document.createElement("div");
  foot.className = "foot muted";
  div.append(who, body, foot);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return { div, body, foot };
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send() {
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  showError("");
  $("input").value = "";
  state.messages.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.div.classList.add("streaming");

  const system = $("system").value.trim();
  const body = {
    model: $("domain").value || undefined,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...state.messages],
    stream: true,
    stream_options: { include_usage: true },
    ...sampling(),
  };
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const t0 = performance.now();
  let reply = "";
  let finish = null;
  let usage = null;
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw new Error(await errorOf(res));
    for await (const data of sseData(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const c of chunk.choices) {
        if (c.delta && c.delta.content) {
          reply += c.delta.content;
          out.body.textContent = reply;
          out.div.scrollIntoView({ block: "end" });
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else showError(e.message);
  } finally {
    state.controller = null;
    setBusy(false);
    out.div.classList.remove("streaming");
  }
  if (reply) state.messages.push({ role: "assistant", content: reply });
  const secs = (performance.now() - t0) / 1000;
  const parts = [];
  if (usage) parts.push(`${usage.completion_tokens} tokens`, `${(usage.completion_tokens / secs).toFixed(1)} tokens/s`);
  if (finish) parts.push(finish);
  out.foot.textContent = parts.join(" · ");
  $("input").focus();
}

function stop() {
  if (state.controller) state.controller.abort();
}

function reset() {
  stop();
  state.messages = [];
  $("log").replaceChildren();
  showError("");
}

// ------------------------------------------------------------------ models and status

async function loadModels() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) {
    $("conn").textContent = res.status === 401 ? "enter the server's API key" : await errorOf(res);
    return;
  }
  const list = await res.json();
  const select = $("domain");
  const keep = select.value;
  select.replaceChildren(
    ...list.data.map((m) => {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.id.split("/").pop();
      return o;
    }),
  );
  if (list.data.some((m) => m.id === keep)) select.value = keep;
  $("model").textContent = list.data.length ? list.data[0].id.split("/").slice(0, -1).join("/") : "";
  $("conn").textContent = "";
}

/** A labelled bar: `value` of `max`. */
function meter(label, value, max, id) {
  const row = document.createElement("div");
  row.className = "meter";
  row.id = id;
  row.dataset.value = String(value);
  const name = document.createElement("span");
  name.textContent = label;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${max > 0 ? Math.min(100, (100 * value) / max) : 0}%`;
  track.append(fill);
  const num = document.createElement("span");
  num.className = "value";
  num.textContent = `${value} / ${max}`;
  row.append(name, track, num);
  return row;
}

function drawStatus(s) {
  $("batch").replaceChildren(
    meter("running", s.batch.running, s.batch.max_batch, "stat-running"),
    meter("queued", s.batch.waiting, s.batch.max_queue, "stat-waiting"),
    meter("last step", s.batch.last, s.batch.max_batch, "stat-last"),
    meter("KV blocks", s.kv.blocks_used, s.kv.blocks, "stat-kv"),
  );
  state.history.push(s.batch.running);
  if (state.history.length > 60) state.history.shift();
  $("history").replaceChildren(
    ...state.history.map((n) => {
      const b = document.createElement("span");
      b.style.height = `${(100 * n) / Math.max(1, s.batch.max_batch)}%`;
      return b;
    }),
  );
  const ex = s.experts;
  if (!ex) return;
  $("window").textContent = `(last ${ex.steps} steps)`;
  $("experts").replaceChildren(
    ...ex.layers.map((l) => {
      const layer = document.createElement("div");
      layer.className = "layer";
      const title = document.createElement("div");
      title.textContent = `layer ${l.layer}`;
      const bars = document.createElement("div");
      bars.className = "bars";
      const most = Math.max(1, ...l.recent);
      l.recent.forEach((n, e) => {
        const bar = document.createElement("span");
        bar.className = "expert";
        bar.dataset.count = String(n);
        bar.title = `expert ${e}: ${n} tokens (${l.total[e]} since start)`;
        bar.style.height = `${(100 * n) / most}%`;
        bars.append(bar);
      });
      layer.append(title, bars);
      return layer;
    }),
  );
}

async function poll() {
  try {
    const res = await fetch("/v1/status", { headers: headers() });
    if (res.ok) drawStatus(await res.json());
  } catch {
    // the server is away: try again at the next poll
  }
  setTimeout(poll, 500);
}

// ------------------------------------------------------------------ wiring

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  void send();
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    void send();
  }
});
$("stop").addEventListener("click", stop);
$("reset").addEventListener("click", reset);
$("api_key").value = sessionStorage.getItem("sigma-api-key") ?? "";
$("api_key").addEventListener("change", () => {
  sessionStorage.setItem("sigma-api-key", $("api_key").value.trim());
  void loadModels();
});
void loadModels();
void poll();
