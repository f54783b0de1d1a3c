/**
 * The web page at `/`: a chat playground over the server's own API, and the
 * status endpoint its live view polls.
 *
 *   GET /                   the page (src/serve/web/index.html); no key needed
 *   GET /web/app.js         its script (plain JavaScript, no build step)
 *   GET /web/style.css      its style sheet
 *   GET /v1/status          the batch, the queue, the KV pool and the load on
 *                           each sparse layer's experts over the recent steps
 *                           (under /v1/, so it needs the key when one is set)
 *
 * The files ship in the package's src/serve/web/. tsc copies no .html into
 * dist/, so they are found relative to the package root: from
 * src/serve/page.ts and from dist/serve/page.js alike, ../../src/serve/web/.
 * They are read once, when the server is made, and served from memory with
 * their content types, `nosniff`, and a Content-Security-Policy that allows
 * only the page's own script, style sheet and API: no inline script, no
 * other origin, no framing.
 */
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { FastifyInstance } from "fastify";
import { SigmaError } from "../util/errors.js";
import type { ServerMetrics } from "./metrics.js";
import type { Scheduler } from "./scheduler.js";

/** The folder of the page's files, in the package (never in dist/). */
export const WEB_DIR = fileURLToPath(new URL("../../src/serve/web/", import.meta.url));

/** What the page may load and where it may connect: itself only. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const FILES: { route: string; file: string; type: string }[] = [
  { route: "/", file: "index.html", type: "text/html; charset=utf-8" },
  { route: "/web/app.js", file: "app.js", type: "text/javascript; charset=utf-8" },
  { route: "/web/style.css", file: "style.css", type: "text/css; charset=utf-8" },
];

export interface PageContext {
  scheduler: Scheduler;
  metrics: ServerMetrics;
  name: string;
  modelIds: string[];
}

/** Adds the page's routes and GET /v1/status to `app`. */
export function addPage(app: FastifyInstance, o: PageContext): void {
  for (const f of FILES) {
    const path = WEB_DIR + f.file;
    if (!existsSync(path)) throw new SigmaError(`the web page's file ${path} is missing`, "reinstall sigma-moe: its package ships src/serve/web/");
    const body = readFileSync(path);
    app.get(f.route, async (_req, reply) => {
      void reply.headers({
        "content-type": f.type,
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
        "cache-control": "no-cache",
      });
      return body;
    });
  }

  const started = Date.now();
  app.get("/v1/status", async () => {
    const s = o.scheduler.stats;
    const sc = o.scheduler;
    return {
      object: "sigma.status",
      model: o.name,
      models: o.modelIds,
      uptime_s: Math.round((Date.now() - started) / 1000),
      batch: { running: s.running, waiting: s.waiting, last: s.lastBatch, max_batch: sc.maxBatch, max_queue: sc.maxQueue },
      kv: { blocks_used: s.kvBlocksUsed, blocks: s.kvBlocks, sequences: s.kvSequences },
      steps: o.metrics.steps,
      tokens: { prompt: o.metrics.promptTokens, completion: o.metrics.completionTokens },
      experts: sc.expertLoad.layers.length > 0 ? sc.expertLoad.snapshot() : null,
    };
  });
}
