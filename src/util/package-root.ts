/**
 * The package's root folder (where package.json and binding.gyp are), found
 * upwards from this file: src/util/ in a checkout run through tsx, dist/util/
 * once built, node_modules/sigma-moe/dist/util/ when installed. The addons
 * are looked for under its build/.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export function packageRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  let dir = here;
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "binding.gyp"))) return dir;
    dir = dirname(dir);
  }
  return join(here, "..", "..");
}
