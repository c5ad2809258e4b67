#!/usr/bin/env bash
# Measures the regression gate on this machine, as docs/regression-gate.md
# reports it: its false alarms on unchanged code and its power against five
# kinds of real slowdown, each built in by its own Cargo feature (see
# crates/twolayer/src/step/selftest.rs and crates/twolayer/src/step/dual.rs; release builds never carry them):
#   extra-work     selftest-slow-step      every step spins 15% of its time
#   small-blocks   selftest-small-blocks   GEMMs in blocks of 16 rows
#   more-shards    selftest-oversubscribe  twice as many shards as cores
#   one-gemm       selftest-one-gemm       no shards: both cores share each GEMM
#   no-dual        selftest-no-dual        the form rule never picks the dual form:
#                                          `twolayer train`'s default run ~10x slower
#   creep5         selftest-creep          five merges of 3% compounded: every step
#                                          spins 1.03^5 - 1 (15.9%) of its time
# (creep5 runs only when --kinds names it: the creep check below covers it.)
#
# Each run is the CI gate's measurement, widened to six builds: K rounds
# (K = --pairs, 8 as in CI) of fresh sweeps of benchmarks/gate.toml, each
# round running the base, the same build again, and the five slow builds in
# rotated order; then `twolayer compare --paired` of the base against each.
#
# Usage: scripts/gate-selftest.sh [RUNS] [--pairs K] [--kinds A,B,...]
#   (defaults: 20, 8, the first five kinds). --kinds runs only the kinds it
#   names (with the base and the unchanged build): fewer builds per round,
#   so 20 runs of one or two kinds fit in half an hour.
# Prints one line per run and the counts; exits non-zero when a target is
# missed (no false alarm; at least RUNS-1 detections of each kind).
#
#   scripts/gate-selftest.sh --creep [RUNS] [--pairs K]
# The creep check instead: five builds, each 3% slower than the one before
# (selftest-creep: the step spins 1.03^k - 1 of its time, k = 1..5), and
# the unchanged build, swept in the same rounds as the base. Each build is
# gated against the one before (a merge's gate: should pass) and against
# the base (the anchor: should fail by the fifth); unchanged code against
# the base should pass. Exits non-zero when a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
pairs=8
creep=false
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs=$2; shift 2 ;;
    --kinds) only=$2; shift 2 ;;
    --creep) creep=true; shift ;;
    *) runs=$1; shift ;;
  esac
done
if $creep; then
  grid=benchmarks/gate.toml
  out=target/gate-selftest-creep
  rm -rf "$out"
  mkdir -p "$out/bin"
  cargo build --release --quiet
  cp target/release/twolayer "$out/bin/base"
  for k in 1 2 3 4 5; do
    f=$(awk -v k="$k" 'BEGIN { printf "%.6f", 1.03 ^ k - 1 }')
    TWOLAYER_SELFTEST_CREEP=$f cargo build --release --quiet --features selftest-creep --target-dir target/selftest-creep
    cp target/selftest-creep/release/twolayer "$out/bin/c$k"
  done
  echo "gate creep self-test: $runs runs, $pairs pairs each, $(date -u +%FT%TZ), $(nproc) cores, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
  merge_alarms=0 same_alarms=0 missed=0
  for r in $(seq 1 "$runs"); do
    dir="$out/run-$(printf %02d "$r")"
    scripts/ab-sweeps.sh "$dir" "$pairs" "$grid" base="$out/bin/base" same="$out/bin/base" \
      c1="$out/bin/c1" c2="$out/bin/c2" c3="$out/bin/c3" c4="$out/bin/c4" c5="$out/bin/c5"
    gate() { # BASE CUR: the exit status of compare, its overall change
      set +e
      "$out/bin/base" compare --paired "$dir/$1" "$dir/$2" >"$dir/$2-vs-$1.md" 2>&1
      local rc=$?
      set -e
      [ "$rc" -eq 2 ] && cat "$dir/$2-vs-$1.md" >&2
      echo "$rc $(grep -o 'geometric mean): [^ ]*' "$dir/$2-vs-$1.md" | cut -d' ' -f3)"
    }
    cannot() { echo "gate-selftest: a comparison could not be made" >&2; exit 2; }
    line="run $r ($(date -u +%TZ)):"
    read -r rc chg < <(gate base same)
    [ "$rc" -eq 2 ] && cannot
    [ "$rc" -eq 1 ] && same_alarms=$((same_alarms + 1))
    line+=" same=$rc ($chg);"
    caught=""
    prev=base
    for k in 1 2 3 4 5; do
      read -r m mchg < <(gate "$prev" "c$k")
      read -r a achg < <(gate base "c$k")
      [ "$m" -eq 2 ] || [ "$a" -eq 2 ] && cannot
      [ "$m" -eq 1 ] && merge_alarms=$((merge_alarms + 1))
      [ "$a" -eq 1 ] && [ -z "$caught" ] && caught=$k
      line+=" c$k merge=$m ($mchg) anchor=$a ($achg);"
      prev=c$k
    done
    [ -z "$caught" ] && missed=$((missed + 1))
    echo "$line caught at ${caught:-never}"
  done
  echo "unchanged code against the anchor: $same_alarms false alarm(s) in $runs runs (target 0)"
  echo "merges of 3% against their base: $merge_alarms alarm(s) in $((5 * runs)) (reported: each is a real 3% slowdown, below the 10% threshold)"
  echo "creeps not caught against the anchor by the fifth merge: $missed of $runs (target 0)"
  [ "$same_alarms" -eq 0 ] && [ "$missed" -eq 0 ]
  exit
fi
grid=benchmarks/gate.toml
out=target/gate-selftest
rm -rf "$out"
mkdir -p "$out/bin"

cargo build --release --quiet
cp target/release/twolayer "$out/bin/base"
all_kinds=(extra-work small-blocks more-shards one-gemm no-dual creep5)
features=(selftest-slow-step selftest-small-blocks selftest-oversubscribe selftest-one-gemm selftest-no-dual selftest-creep)
kinds=()
for i in "${!all_kinds[@]}"; do
  k=${all_kinds[$i]}
  if [ -z "$only" ]; then
    [ "$k" = creep5 ] && continue
  else
    case ",$only," in *",$k,"*) ;; *) continue ;; esac
  fi
  kinds+=("$k")
  # creep5's fraction is read at build time (crates/twolayer/src/step/selftest.rs).
  TWOLAYER_SELFTEST_CREEP=$(awk 'BEGIN { printf "%.6f", 1.03 ^ 5 - 1 }') \
    cargo build --release --quiet --features "${features[$i]}" --target-dir target/selftest
  cp target/selftest/release/twolayer "$out/bin/$k"
done
if [ "${#kinds[@]}" -eq 0 ]; then
  echo "gate-selftest: --kinds names none of: ${all_kinds[*]}" >&2
  exit 2
fi

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
