/**
 * PNG copies of the SVG pictures, through `rsvg-convert` (librsvg) when it is
 * installed: rasterising text well is a library's job, and Sigma keeps no
 * image dependency of its own.
 */
import { spawnSync } from "node:child_process";
import { SigmaError } from "../util/errors.js";

/** Writes X.png beside each X.svg; returns the PNG paths. */
export function svgsToPng(svgs: string[]): string[] {
  return svgs.map((svg) => {
    const png = svg.replace(/\.svg$/, ".png");
    const r = spawnSync("rsvg-convert", ["--background-color=white", "-o", png, svg], { encoding: "utf8" });
    if (r.error || r.status !== 0) {
      throw new SigmaError(
        `cannot make ${png}: ${r.error ? "rsvg-convert is not installed" : r.stderr.trim()}`,
        "install librsvg (apt-get install librsvg2-bin, brew install librsvg), or drop --png: the SVGs open in any browser",
      );
    }
    return png;
  });
}
