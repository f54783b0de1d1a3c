/**
 * The load on each expert over the server's recent steps, for the web page's
 * live view (GET /v1/status).
 *
 * Every sparse layer's router already counts the assignments it kept per
 * expert in a step (Routing.counts). The scheduler hands those counts here
 * after each step; they go into a ring of the last `window` steps, and a
 * running sum per layer and expert is kept up to date as a step enters and
 * the oldest leaves. A step costs O(layers × experts) additions, whatever the
 * batch; a snapshot copies the sums.
 */

export interface ExpertLoadSnapshot {
  /** Steps the counts cover (at most the window). */
  steps: number;
  /** The window's length in steps. */
  window: number;
  /** Experts per sparse layer. */
  experts: number;
  /** One entry per sparse layer: its block index, the kept assignments per expert over the recent steps, and since the start. */
  layers: { layer: number; recent: number[]; total: number[] }[];
}

export class ExpertLoad {
  /** The last `window` steps' counts and the step being filled: [window + 1][layers][experts]. */
  private readonly ring: Int32Array;
  /** Sums of the ring per layer and expert. */
  private readonly recent: Float64Array;
  /** Sums since the server started. */
  private readonly total: Float64Array;
  /** The step being filled: its slot in the ring. */
  private slot = 0;
  private steps = 0;
  private readonly index = new Map<number, number>();

  /** `layers`: the block indices of the sparse layers; `experts`: experts per layer. */
  constructor(
    readonly layers: readonly number[],
    readonly experts: number,
    readonly window = 64,
  ) {
    layers.forEach((l, i) => this.index.set(l, i));
    this.ring = new Int32Array((window + 1) * layers.length * experts);
    this.recent = new Float64Array(layers.length * experts);
    this.total = new Float64Array(layers.length * experts);
  }

  /** Adds block `layer`'s kept assignments per expert in the current step. */
  record(layer: number, counts: Int32Array): void {
    const i = this.index.get(layer);
    if (i === undefined) return;
    const E = this.experts;
    const at = (this.slot * this.layers.length + i) * E;
    for (let e = 0; e < E && e < counts.length; e++) {
      const n = counts[e]!;
      this.ring[at + e]! += n;
      this.recent[i * E + e]! += n;
      this.total[i * E + e]! += n;
    }
  }

  /** Closes the current step: the next one takes the oldest step's slot, whose counts leave the recent sums. */
  endStep(): void {
    this.steps++;
    this.slot = (this.slot + 1) % (this.window + 1);
    const size = this.layers.length * this.experts;
    const at = this.slot * size;
    for (let j = 0; j < size; j++) {
      this.recent[j]! -= this.ring[at + j]!;
      this.ring[at + j] = 0;
    }
  }

  snapshot(): ExpertLoadSnapshot {
    const E = this.experts;
    return {
      steps: Math.min(this.steps, this.window),
      window: this.window,
      experts: E,
      layers: this.layers.map((layer, i) => ({
        layer,
        recent: Array.from(this.recent.subarray(i * E, (i + 1) * E)),
        total: Array.from(this.total.subarray(i * E, (i + 1) * E)),
      })),
    };
  }
}
