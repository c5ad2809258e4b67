#!/usr/bin/env bash
# Runs the sweeps of several builds alternately, in fresh processes, so that
# whatever the machine does meanwhile falls on all of them alike: ROUNDS
# rounds, each running every binary once, the order rotated from round to
# round (for two binaries: A B, B A, A B, ...).
#
# Usage: scripts/ab-sweeps.sh OUT ROUNDS GRID NAME=BINARY [NAME=BINARY ...]
# Writes OUT/NAME/01/report.json, OUT/NAME/02/report.json, ...: the folders
# `twolayer compare --paired OUT/A OUT/B` reads. Exits 2 if a sweep fails
# (its stderr is printed).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 OUT ROUNDS GRID NAME=BINARY [NAME=BINARY ...]" >&2; exit 2; }
out=$1 rounds=$2 grid=$3
shift 3
names=() bins=()
for nb in "$@"; do
  names+=("${nb%%=*}")
  bins+=("${nb#*=}")
done
n=${#names[@]}
for r in $(seq 1 "$rounds"); do
  run=$(printf %02d "$r")
  for j in $(seq 0 $((n - 1))); do
    k=$(( (j + r - 1) % n ))
    dir="$out/${names[$k]}/$run"
    mkdir -p "$dir"
    # TWOLAYER_WISDOM empty: every build runs its built-in plans, whatever
    # this machine's wisdom file holds (older builds ignore the variable).
    if ! TWOLAYER_WISDOM= "${bins[$k]}" sweep --grid "$grid" --out "$dir" >"$dir/sweep.md" 2>"$dir/sweep.log"; then
      echo "ab-sweeps: ${names[$k]} (${bins[$k]}) failed in round $r:" >&2
      cat "$dir/sweep.log" >&2
      exit 2
    fi
  done
done
