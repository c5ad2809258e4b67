#!/usr/bin/env bash
# Measures the regression gate on this machine, as docs/regression-gate.md
# reports it: its false alarms on unchanged code and its power against five
# kinds of real slowdown, each built in by its own Cargo feature (see
# src/step/selftest.rs and src/step/dual.rs; release builds never carry them):
#   extra-work     selftest-slow-step      every step spins 15% of its time
#   small-blocks   selftest-small-blocks   GEMMs in blocks of 16 rows
#   more-shards    selftest-oversubscribe  twice as many shards as cores
#   one-gemm       selftest-one-gemm       no shards: both cores share each GEMM
#   no-dual        selftest-no-dual        the form rule never picks the dual form:
#                                          `twolayer train`'s default run ~10x slower
#
# Each run is the CI gate's measurement, widened to six builds: K rounds
# (K = --pairs, 8 as in CI) of fresh sweeps of benchmarks/gate.toml, each
# round running the base, the same build again, and the five slow builds in
# rotated order; then `twolayer compare --paired` of the base against each.
#
# Usage: scripts/gate-selftest.sh [RUNS] [--pairs K]   (defaults: 20, 8)
# Prints one line per run and the counts; exits non-zero when a target is
# missed (no false alarm; at least RUNS-1 detections of each kind).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
pairs=8
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs=$2; shift 2 ;;
    *) runs=$1; shift ;;
  esac
done
grid=benchmarks/gate.toml
out=target/gate-selftest
rm -rf "$out"
mkdir -p "$out/bin"

cargo build --release --quiet
cp target/release/twolayer "$out/bin/base"
kinds=(extra-work small-blocks more-shards one-gemm no-dual)
features=(selftest-slow-step selftest-small-blocks selftest-oversubscribe selftest-one-gemm selftest-no-dual)
for i in "${!kinds[@]}"; do
  cargo build --release --quiet --features "${features[$i]}" --target-dir target/selftest
  cp target/selftest/release/twolayer "$out/bin/${kinds[$i]}"
done

heads=(same "${kinds[@]}")
declare -A failed
for h in "${heads[@]}"; do failed[$h]=0; done
echo "gate self-test: $runs runs, $pairs pairs each, $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $("$out/bin/base" info 2>/dev/null | grep '^OpenBLAS ' | head -n 1 | tr -s ' '), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
for r in $(seq 1 "$runs"); do
  dir="$out/run-$(printf %02d "$r")"
  args=(base="$out/bin/base" same="$out/bin/base")
  for k in "${kinds[@]}"; do args+=("$k=$out/bin/$k"); done
  scripts/ab-sweeps.sh "$dir" "$pairs" "$grid" "${args[@]}"
  line="run $r ($(date -u +%TZ)):"
  for h in "${heads[@]}"; do
    set +e
    "$out/bin/base" compare --paired "$dir/base" "$dir/$h" --json "$dir/$h.json" >"$dir/$h.md" 2>&1
    rc=$?
    set -e
    [ "$rc" -eq 2 ] && { cat "$dir/$h.md"; exit 2; }
    [ "$rc" -eq 1 ] && failed[$h]=$((failed[$h] + 1))
    line+=" $h=$rc ($(grep -c '\*\*slower\*\*' "$dir/$h.md") slower, overall $(grep -o 'geometric mean): [^ ]*' "$dir/$h.md" | cut -d' ' -f3))"
  done
  echo "$line"
done

# Targets: no false alarm; at least RUNS-1 detections of each ~15% kind.
# more-shards is measured and reported without a target: its slowdown
# varies from process to process and came out at 9-15% overall (median
# +12%, 2-8% at N = 1024) in the 20 runs of docs/regression-gate.md, at or
# below the 10% threshold the gate is built to hold.
ok=true
echo "false alarms: ${failed[same]} of $runs runs of unchanged code (target 0)"
[ "${failed[same]}" -eq 0 ] || ok=false
for k in "${kinds[@]}"; do
  if [ "$k" = more-shards ]; then
    echo "detections of $k: ${failed[$k]} of $runs (reported; no target)"
    continue
  fi
  echo "detections of $k: ${failed[$k]} of $runs (target $((runs - 1)) or more)"
  [ "${failed[$k]}" -ge $((runs - 1)) ] || ok=false
done
$ok
