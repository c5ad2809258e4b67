#!/usr/bin/env bash
# Measures the regression gate on this machine, as docs/regression-gate.md
# reports it:
#   (a) false alarms: RUNS sweeps of the unchanged code against one baseline;
#   (b) power: RUNS sweeps of a build whose step is really ~15% slower
#       (feature selftest-slow-step: each step spins for 15% of its own time
#       at its end) against the same baseline.
# Usage: scripts/gate-selftest.sh [RUNS] [PRESET]    (defaults: 20, quick)
# Prints one line per run and the two counts; exits non-zero when either
# target is missed (no false alarm; at least RUNS-1 detections).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
preset=${2:-quick}
out=target/gate-selftest
rm -rf "$out"
mkdir -p "$out"

cargo build --release --quiet
cargo build --release --quiet --features selftest-slow-step --target-dir target/slow-step
normal=target/release/twolayer
slow=target/slow-step/release/twolayer

echo "gate self-test: $runs runs per side, preset $preset, $(date -u +%FT%TZ), $(nproc) cores"
"$normal" sweep --preset "$preset" --processes 3 --out "$out/baseline" >/dev/null

# runs_of BINARY LABEL: RUNS sweeps of BINARY against the baseline; prints one
# line per run and sets $failed to how many the gate failed.
runs_of() {
  local binary=$1 label=$2 i rc
  failed=0
  for i in $(seq 1 "$runs"); do
    "$binary" sweep --preset "$preset" --processes 3 --out "$out/$label-$i" >/dev/null
    set +e
    "$normal" compare "$out/baseline/report.json" "$out/$label-$i/report.json" >"$out/$label-$i/compare.md" 2>&1
    rc=$?
    set -e
    [ "$rc" -eq 2 ] && { cat "$out/$label-$i/compare.md"; exit 2; }
    [ "$rc" -eq 1 ] && failed=$((failed + 1))
    echo "$label run $i: exit $rc ($(tail -n 1 "$out/$label-$i/compare.md"))"
  done
}

runs_of "$normal" same
alarms=$failed
runs_of "$slow" slow
caught=$failed

echo "false alarms: $alarms of $runs unchanged runs (target 0)"
echo "detections:   $caught of $runs runs 15% slower (target $((runs - 1)) or more)"
[ "$alarms" -eq 0 ] && [ "$caught" -ge $((runs - 1)) ]
