#!/usr/bin/env node
// Finds the MPI C library for the optional `sigma_mpi` addon (binding.gyp asks
// this script, so the main addon never depends on MPI). MPI counts as found
// when a compile line yields a folder that holds mpi.h:
//   1. `mpicc --showme:compile` / `--showme:link` (Open MPI's wrapper),
//   2. `pkg-config --cflags/--libs ompi` (Open MPI), then `mpich`,
//   3. `mpicc -show` (MPICH's wrapper: everything on one line).
// SIGMA_NO_MPI=1 pretends MPI is absent (to build and test the fallback).
//
//   node scripts/mpi-detect.cjs          prints 1 when MPI is found, else 0
//   node scripts/mpi-detect.cjs cflags   the -I folders (gyp include_dirs, without -I)
//   node scripts/mpi-detect.cjs libs     the linker flags (-L, -l, and an rpath per -L)
//   node scripts/mpi-detect.cjs explain  what was tried, for a person
"use strict";
const { execFileSync } = require("node:child_process");
const { existsSync } = require("node:fs");
const { join } = require("node:path");

const tried = [];

function run(cmd, args) {
  try {
    const out = execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10000 }).trim();
    tried.push(`${cmd} ${args.join(" ")}: ok`);
    return out;
  } catch (e) {
    tried.push(`${cmd} ${args.join(" ")}: ${e.code === "ENOENT" ? "not found" : "failed"}`);
    return null;
  }
}

const words = (s) => s.split(/\s+/).filter(Boolean);

/** { includes: [...], libs: [...] } from a compile line and a link line, or null when mpi.h is not in any include folder. */
function fromFlags(compile, link) {
  const includes = words(compile).filter((w) => w.startsWith("-I")).map((w) => w.slice(2));
  if (!includes.some((d) => existsSync(join(d, "mpi.h")))) {
    tried.push(`  no mpi.h in ${includes.join(", ") || "(no -I folders)"}`);
    return null;
  }
  const libs = words(link).filter((w) => w.startsWith("-L") || w.startsWith("-l") || w.startsWith("-Wl,"));
  // The addon finds libmpi at run time without LD_LIBRARY_PATH.
  for (const w of words(link)) if (w.startsWith("-L")) libs.push(`-Wl,-rpath,${w.slice(2)}`);
  if (!libs.some((w) => w.startsWith("-lmpi"))) libs.push("-lmpi");
  return { includes, libs };
}

function detect() {
  if (process.env.SIGMA_NO_MPI === "1") {
    tried.push("SIGMA_NO_MPI=1: MPI treated as absent");
    return null;
  }
  const c = run("mpicc", ["--showme:compile"]);
  const l = c !== null ? run("mpicc", ["--showme:link"]) : null;
  if (c !== null && l !== null) {
    const r = fromFlags(c, l);
    if (r) return r;
  }
  for (const pkg of ["ompi", "mpich"]) {
    const pc = run("pkg-config", ["--cflags", pkg]);
    const pl = pc !== null ? run("pkg-config", ["--libs", pkg]) : null;
    if (pc !== null && pl !== null) {
      // pkg-config leaves out the standard include folder; mpi.h may be there.
      const r = fromFlags(`${pc} -I/usr/include`, pl);
      if (r) return r;
    }
  }
  const show = run("mpicc", ["-show"]);
  if (show !== null) {
    const r = fromFlags(show, show);
    if (r) return r;
  }
  return null;
}

const found = detect();
switch (process.argv[2]) {
  case undefined:
    process.stdout.write(found ? "1" : "0");
    break;
  case "cflags":
    process.stdout.write(found ? found.includes.join(" ") : "");
    break;
  case "libs":
    process.stdout.write(found ? found.libs.join(" ") : "");
    break;
  case "explain":
    process.stdout.write(`${found ? "MPI found" : "MPI not found"}\n${tried.map((t) => `  ${t}`).join("\n")}\n`);
    if (found) process.stdout.write(`  include: ${found.includes.join(" ")}\n  libs: ${found.libs.join(" ")}\n`);
    break;
  default:
    process.stderr.write(`mpi-detect: unknown argument ${process.argv[2]} (none, cflags, libs or explain)\n`);
    process.exit(2);
}
