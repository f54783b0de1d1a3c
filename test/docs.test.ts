// The code cites docs/design.md by section ("docs/design.md §8.3"): every
// citation must name a section that exists, and every relative link in the
// README and docs/ must point at a file that exists.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

const root = join(import.meta.dirname, "..");

function sources(dir: string): string[] {
  return readdirSync(join(root, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|cpp|h)$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

test("every docs/design.md §N citation in src/, bench/ and native/ names a section of docs/design.md", () => {
  const sections = new Set([...readFileSync(join(root, "docs", "design.md"), "utf8").matchAll(/^#{2,3} (§[\d.]+) /gm)].map((m) => m[1]!));
  assert.ok(sections.has("§1") && sections.has("§8.3"), "design.md's headings are numbered §N / §N.M");
  const bad: string[] = [];
  let cited = 0;
  for (const file of [...sources("src"), ...sources("bench"), ...sources("native")]) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/docs\/design\.md((?:,? §[\d.]*\d)+)/g)) {
      for (const s of m[1]!.match(/§[\d.]*\d/g)!) {
        cited++;
        if (!sections.has(s)) bad.push(`${file.slice(root.length + 1)}: ${s}`);
      }
    }
    if (/PAPERS\.md/.test(text)) bad.push(`${file.slice(root.length + 1)}: cites PAPERS.md, which is not in the repository`);
  }
  assert.ok(cited >= 15, `found ${cited} citations`);
  assert.deepEqual(bad, []);
});

test("relative links in README.md and docs/ point at files that exist", () => {
  const pages = ["README.md", ...readdirSync(join(root, "docs")).filter((n) => n.endsWith(".md")).map((n) => join("docs", n))];
  const bad: string[] = [];
  for (const page of pages) {
    const text = readFileSync(join(root, page), "utf8");
    for (const m of text.matchAll(/\]\(([^)\s#]+)(#[^)\s]*)?\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue;
      if (!existsSync(join(root, dirname(page), target))) bad.push(`${page}: ${target}`);
    }
  }
  assert.deepEqual(bad, []);
});
