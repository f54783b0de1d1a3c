#!/usr/bin/env node
// The `sigma` command. Runs the compiled CLI from dist/ (built by `npm install`
// through the `prepare` script); falls back to the TypeScript sources via tsx
// when dist/ is missing (a development checkout that skipped the build).
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const compiled = join(root, "dist", "cli", "main.js");
if (existsSync(compiled)) {
  await import(pathToFileURL(compiled).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(pathToFileURL(join(root, "src", "cli", "main.ts")).href);
}
