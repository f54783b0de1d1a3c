/**
 * The server's counters, gauges and histograms, written in the Prometheus
 * text exposition format (version 0.0.4) by hand: a metric is a `# HELP` and
 * a `# TYPE` line, then one `name{labels} value` line per series; a histogram
 * is its cumulative `_bucket{le="…"}` lines (ending at `+Inf`), `_sum` and
 * `_count`.
 */

/** Seconds; from sub-millisecond steps of a tiny model to minute-long queues. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly buckets: readonly number[]) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]!) this.counts[i]!++;
  }
}

/** What the scheduler and the HTTP layer record. */
export class ServerMetrics {
  /** Requests answered, by route and HTTP status. */
  readonly requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  /** Sequences finished, by reason (stop, length, cancelled, error). */
  readonly finished = new Map<string, number>();
  steps = 0;
  /** N-gram drafting: tokens proposed, and those the model kept. */
  draftProposed = 0;
  draftAccepted = 0;
  readonly timeToFirstToken = new Histogram(LATENCY_BUCKETS);
  readonly interTokenLatency = new Histogram(LATENCY_BUCKETS);
  readonly stepSeconds = new Histogram(LATENCY_BUCKETS);
  readonly batchSize = new Histogram(BATCH_BUCKETS);

  request(route: string, status: number): void {
    const key = `route="${route}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  finish(reason: string): void {
    const key = `reason="${reason}"`;
    this.finished.set(key, (this.finished.get(key) ?? 0) + 1);
  }

  /** The exposition text; `gauges` are the values read at scrape time (queue length, running sequences, KV blocks). */
  render(gauges: Record<string, { help: string; value: number }>): string {
    const out: string[] = [];
    const head = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    const labelled = (name: string, help: string, series: Map<string, number>) => {
      head(name, "counter", help);
      for (const [labels, v] of series) out.push(`${name}{${labels}} ${v}`);
    };
    const counter = (name: string, help: string, v: number) => {
      head(name, "counter", help);
      out.push(`${name} ${v}`);
    };
    const histogram = (name: string, help: string, h: Histogram) => {
      head(name, "histogram", help);
      h.buckets.forEach((b, i) => out.push(`${name}_bucket{le="${b}"} ${h.counts[i]}`));
      out.push(`${name}_bucket{le="+Inf"} ${h.count}`, `${name}_sum ${h.sum}`, `${name}_count ${h.count}`);
    };
    labelled("sigma_requests_total", "HTTP requests answered, by route and status.", this.requests);
    counter("sigma_prompt_tokens_total", "Prompt tokens prefilled.", this.promptTokens);
    counter("sigma_completion_tokens_total", "Tokens generated.", this.completionTokens);
    labelled("sigma_sequences_finished_total", "Sequences finished, by reason.", this.finished);
    counter("sigma_steps_total", "Batched decoding steps run.", this.steps);
    counter("sigma_draft_tokens_proposed_total", "Tokens proposed by speculative drafting (sigma serve --draft MODEL or ngram).", this.draftProposed);
    counter("sigma_draft_tokens_accepted_total", "Drafted tokens the model kept; over proposed, the acceptance rate.", this.draftAccepted);
    for (const [name, g] of Object.entries(gauges)) {
      head(name, "gauge", g.help);
      out.push(`${name} ${g.value}`);
    }
    histogram("sigma_time_to_first_token_seconds", "From a sequence's arrival to its first generated token.", this.timeToFirstToken);
    histogram("sigma_inter_token_latency_seconds", "Between consecutive tokens of a sequence.", this.interTokenLatency);
    histogram("sigma_step_seconds", "Duration of one batched step.", this.stepSeconds);
    histogram("sigma_batch_size", "Sequences in one batched step.", this.batchSize);
    return out.join("\n") + "\n";
  }
}
