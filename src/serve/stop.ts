// Stop strings in streamed text (minimal version; the ux branch brings the full matcher with its tests).
export class StopMatcher {
  constructor(private readonly stops: string[]) {}
  private held = "";
  push(text: string): { text: string; stopped: boolean } {
    this.held += text;
    for (const s of this.stops) { const i = s ? this.held.indexOf(s) : -1; if (i >= 0) { const out = this.held.slice(0, i); this.held = ""; return { text: out, stopped: true }; } }
    let keep = 0;
    for (const s of this.stops) for (let n = Math.min(s.length - 1, this.held.length); n > keep; n--) if (s.startsWith(this.held.slice(this.held.length - n))) { keep = n; break; }
    const out = this.held.slice(0, this.held.length - keep); this.held = this.held.slice(this.held.length - keep);
    return { text: out, stopped: false };
  }
  flush(): string { const h = this.held; this.held = ""; return h; }
}
