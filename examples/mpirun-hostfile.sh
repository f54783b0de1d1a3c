#!/usr/bin/env bash
# Sigma data-parallel training with Open MPI over TCP between the machines of
# examples/hostfile (docs/distributed.md). Run it from the folder that holds
# run.json, on a machine that can ssh to every host; `out` in run.json must be
# a folder every machine sees (for resuming), data.dir too or a copy on each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# -np: the total of the hostfile's slots (2); --map-by node: one rank per machine.
# pml ob1 + btl tcp,self: plain TCP between machines (set btl_tcp_if_include to
# the network interface the machines share). -x passes variables to every rank.
mpirun --hostfile "$here/hostfile" -np 2 --map-by node \
  --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include eth0 \
  -x PATH -x SIGMA_THREADS=16 \
  npx sigma train --config run.json "$@"
