/**
 * Stop strings for streamed generation. Text arrives in pieces (one token's
 * worth at a time) and a stop string may be split across any number of them,
 * so the matcher holds back the end of the text that could still grow into a
 * stop string, and emits the rest at once:
 *
 *   push(piece) → { text: safe to show now, stopped: whether a stop string completed }
 *   end()       → the held-back text, when generation ends without a stop
 *
 * The text emitted never contains a stop string, nor any of it: at a stop,
 * the emitted text ends just before the stop string. Which stop string wins
 * does not depend on how the text was cut into pieces: it is the one that
 * completes first in the text (the earliest end; of two ending at the same
 * place, the one that starts first). After a stop, every push returns "".
 */
import { SigmaError } from "../util/errors.js";

export interface StopResult {
  /** Text that can be shown now. */
  text: string;
  /** Whether a stop string has completed (generation should end). */
  stopped: boolean;
  /** The stop string that completed. */
  stop?: string;
}

/** A string with a UTF-16 surrogate that is not half of a pair: it is no text and could never match. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export class StopMatcher {
  private readonly stops: readonly string[];
  /** Longest stop string: at most one character less of it is ever held back. */
  private readonly longest: number;
  /** Text received but not yet emitted: a prefix of some stop string. */
  private held = "";
  private done: string | null = null;

  /** `stops` may be empty (nothing stops; text passes through). An empty stop string is refused: it would match before any text. */
  constructor(stops: readonly string[]) {
    stops.forEach((s, i) => {
      if (typeof s !== "string" || s.length === 0) throw new SigmaError(`stop string ${i + 1} is empty`, "a stop string needs at least one character");
      if (LONE_SURROGATE.test(s)) throw new SigmaError(`stop string ${i + 1} (${JSON.stringify(s)}) holds a lone UTF-16 surrogate, which no generated text can contain`, "pass well-formed text");
    });
    this.stops = [...new Set(stops)];
    this.longest = Math.max(0, ...this.stops.map((s) => s.length));
  }

  get stopped(): boolean {
    return this.done !== null;
  }

  push(piece: string): StopResult {
    if (this.done !== null) return { text: "", stopped: true, stop: this.done };
    const text = this.held + piece;
    // The stop string that completes first. Before this piece none had completed, so each match found here is new.
    let best: { start: number; end: number; stop: string } | null = null;
    for (const stop of this.stops) {
      const start = text.indexOf(stop);
      if (start < 0) continue;
      const end = start + stop.length;
      if (best === null || end < best.end || (end === best.end && start < best.start)) best = { start, end, stop };
    }
    if (best !== null) {
      this.done = best.stop;
      this.held = "";
      return { text: text.slice(0, best.start), stopped: true, stop: best.stop };
    }
    // Hold back the longest end of the text that a stop string starts with: any later match starts inside it.
    let keep = 0;
    for (let k = Math.min(text.length, this.longest - 1); k > 0 && keep === 0; k--) {
      const tail = text.slice(text.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) keep = k;
    }
    this.held = text.slice(text.length - keep);
    return { text: text.slice(0, text.length - keep), stopped: false };
  }

  /** Generation ended without a stop string: the text held back is text after all. */
  end(): string {
    const rest = this.done === null ? this.held : "";
    this.held = "";
    return rest;
  }
}
