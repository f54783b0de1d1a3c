// Runs when `node-gyp rebuild` fails during `npm install`. The package still
// works, and installation itself does not fail (we exit 0):
//  - when MPI was found, the optional MPI addon may be what failed: build
//    again without it (SIGMA_NO_MPI=1), so that the kernels still get built;
//  - otherwise Sigma falls back to the plain-TypeScript reference backend and
//    says so once at run time.
"use strict";
const { spawnSync } = require("node:child_process");
const { join } = require("node:path");

const detect = spawnSync(process.execPath, [join(__dirname, "mpi-detect.cjs")], { encoding: "utf8" });
if (detect.stdout === "1") {
  console.warn("\n[sigma] The build failed with the MPI addon (sigma_mpi) in it; building the kernels without it.\n");
  // npm names its node-gyp in npm_config_node_gyp while it runs install scripts.
  const gyp = process.env.npm_config_node_gyp;
  const r = gyp ? spawnSync(process.execPath, [gyp, "rebuild"], { stdio: "inherit", env: { ...process.env, SIGMA_NO_MPI: "1" } }) : spawnSync("node-gyp", ["rebuild"], { stdio: "inherit", env: { ...process.env, SIGMA_NO_MPI: "1" }, shell: process.platform === "win32" });
  if (r.status === 0) {
    console.warn(
      "\n[sigma] The native kernels built, but the MPI addon did not (see the output above): distributed training\n" +
        "[sigma] (mpirun … sigma train) is unavailable until it builds. Check `node scripts/mpi-detect.cjs explain`,\n" +
        "[sigma] fix the MPI installation (Debian: apt-get install openmpi-bin libopenmpi-dev), then `npm rebuild sigma-moe`.\n",
    );
    process.exit(0);
  }
}
console.warn(
  "\n[sigma] The native kernel addon did not build (see the node-gyp output above).\n" +
    "[sigma] Sigma will run on the plain-TypeScript reference backend, which is much slower.\n" +
    "[sigma] To build it: install a C++ compiler (g++ or clang++) and Node's headers, then run `npm run build:native`.\n",
);
