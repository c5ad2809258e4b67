#!/usr/bin/env bash
# The performance regression gate (docs/regression-gate.md).
#
#   scripts/bench-gate.sh [--pairs K] [--anchor REF] [BASE_REF]
#       A/B mode, for CI on shared machines: builds BASE_REF (a git worktree)
#       and the current tree, runs their sweeps of benchmarks/gate.toml
#       alternately in 2K fresh processes (A B, B A, ...; K = 8), and gates on wall
#       time per step, the processes paired in time. BASE_REF defaults to
#       HEAD when the tree has uncommitted changes, else the merge base with
#       origin/main when that is behind HEAD, else HEAD^.
#       --anchor REF also builds an older main (CI names it in
#       .ci/gate-anchor), sweeps it in the same rounds, and gates the current
#       tree against it too, at the same threshold: a slowdown that creeps
#       in a few percent a merge passes every merge's gate and fails this.
#       The bf16 points of benchmarks/gate-bf16.toml are swept by the base
#       and the current tree in rounds of their own and gated the same way
#       (when the linked OpenBLAS has a bf16 GEMM; the log says when not).
#       Both verdicts of the main grid are appended to the gate's history,
#       $TWOLAYER_GATE_HISTORY (default target/gate-history.jsonl), which
#       `twolayer history` prints and draws.
#   scripts/bench-gate.sh [--pairs K] --baseline DIR
#       Committed-baseline mode, for a pinned, dedicated runner: K processes
#       of the current tree against the runs in DIR (made by
#       scripts/refresh-baseline.sh on that runner).
#
# Exit status: 0 no regression; 1 a regression; 2 the reports cannot be
# compared (a failed build or sweep, another grid, another environment).
# Everything is left in target/bench-gate/: the binaries, every report,
# compare.md (the table) and verdict.json (the verdicts for machines).
set -euo pipefail
cd "$(dirname "$0")/.."

pairs=8
baseline=""
base_ref=""
anchor_ref=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) pairs=$2; shift 2 ;;
    --anchor) anchor_ref=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) echo "bench-gate: unknown option $1" >&2; exit 2 ;;
    *) base_ref=$1; shift ;;
  esac
done
case "$pairs" in ''|*[!0-9]*|0) echo "bench-gate: --pairs takes a whole number ≥ 1" >&2; exit 2 ;; esac

grid=benchmarks/gate.toml
bf16_gate_grid=benchmarks/gate-bf16.toml
bf16=""

# Both sides load the one OpenBLAS this tree links (scripts/setup.sh): a
# base built before the rpath existed would otherwise load Debian's, and
# the comparison would be between libraries, not code.
pc=$(sed -n 's/^PKG_CONFIG_PATH = "\(.*\)"$/\1/p' .cargo/config.toml 2>/dev/null || true)
if [ -n "$pc" ] && libdir=$(PKG_CONFIG_PATH="$pc" pkg-config --variable=libdir openblas 2>/dev/null); then
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "bench-gate: both sides on the OpenBLAS in $libdir" >&2
fi
out=target/bench-gate
rm -rf "$out"
mkdir -p "$out/bin"
# The sweeps get the grid without its [gate] tables (the thresholds, which
# `compare --grid` reads): a base built before they existed refuses keys it
# does not know.
awk '/^\[/ { skip = ($0 ~ /^\[\[?gate[].]/) } !skip' "$grid" >"$out/grid.toml"
gate_grid=$grid
grid=$out/grid.toml

build_head() {
  cargo build --release --quiet
  cp target/release/twolayer "$out/bin/head"
}

if [ -n "$baseline" ]; then
  [ -d "$baseline" ] || { echo "bench-gate: no baseline folder $baseline" >&2; exit 2; }
  build_head
  echo "bench-gate: $pairs process(es) of the current tree against the baseline in $baseline" >&2
  scripts/ab-sweeps.sh "$out" "$pairs" "$grid" head="$out/bin/head"
  compare=("$baseline" "$out/head")
else
  if [ -z "$base_ref" ]; then
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
      base_ref=HEAD
    elif git rev-parse -q --verify origin/main >/dev/null &&
      [ "$(git merge-base HEAD origin/main)" != "$(git rev-parse HEAD)" ]; then
      base_ref=$(git merge-base HEAD origin/main)
    else
      base_ref=HEAD^
    fi
  fi
  base=$(git rev-parse -q --verify "$base_ref^{commit}") ||
    { echo "bench-gate: no commit $base_ref in this repository" >&2; exit 2; }
  echo "bench-gate: base $(git rev-parse --short=12 "$base") ($base_ref) against the current tree ($(git rev-parse --short=12 HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo ', with uncommitted changes')), $pairs pairs" >&2
  # The base builds in a worktree but into the same target folder, so the
  # dependencies already built are reused: only twolayer itself compiles.
  build_rev() { # REV NAME: builds REV into $out/bin/NAME
    local wt="$out/$2-src"
    git worktree prune
    git worktree add --detach --quiet "$wt" "$1"
    # Expanded now: the trap runs after this function's locals are gone.
    trap "git worktree remove --force '$wt' 2>/dev/null || true" EXIT
    cargo build --release --quiet --manifest-path "$wt/Cargo.toml" --target-dir target
    cp target/release/twolayer "$out/bin/$2"
    git worktree remove --force "$wt"
    trap - EXIT
  }
  build_rev "$base" base
  sides=(base="$out/bin/base")
  if [ -n "$anchor_ref" ]; then
    anchor=$(git rev-parse -q --verify "$anchor_ref^{commit}") ||
      { echo "bench-gate: no anchor commit $anchor_ref in this repository" >&2; exit 2; }
    echo "bench-gate: also against the anchor $(git rev-parse --short=12 "$anchor") ($anchor_ref), in the same rounds" >&2
    build_rev "$anchor" anchor
    sides+=(anchor="$out/bin/anchor")
  fi
  build_head
  scripts/ab-sweeps.sh "$out" "$pairs" "$grid" "${sides[@]}" head="$out/bin/head"
  compare=(--paired "$out/base" "$out/head")
  # The bf16 points (benchmarks/gate-bf16.toml), base and current tree only:
  # the anchor predates bf16 sweeps. Measured in their own rounds after the
  # main ones, when the linked OpenBLAS has its bf16 GEMM (the native build
  # scripts/setup.sh makes); a library without it is named, not skipped in
  # silence, and any other failure of the bf16 step fails the gate.
  if probe=$("$out/bin/head" train --dtype bf16 --n 8 --d-in 4 --hidden 4 --d-out 2 --steps 1 -q 2>&1); then
    awk '/^\[/ { skip = ($0 ~ /^\[\[?gate[].]/) } !skip' "$bf16_gate_grid" >"$out/grid-bf16.toml"
    scripts/ab-sweeps.sh "$out/bf16" "$pairs" "$out/grid-bf16.toml" base="$out/bin/base" head="$out/bin/head"
    bf16=yes
  elif grep -q cblas_sbgemm <<<"$probe"; then
    echo "bench-gate: no bf16 points: the linked OpenBLAS has no bf16 GEMM ($probe)" >&2
  else
    echo "bench-gate: the bf16 step fails: $probe" >&2
    exit 2
  fi
fi

history=${TWOLAYER_GATE_HISTORY:-target/gate-history.jsonl}
# No pipe: compare's exit status is the gate's.
set +e
"$out/bin/head" compare "${compare[@]}" --grid "$gate_grid" --json "$out/verdict.json" \
  --history "$history" >"$out/compare.md"
rc=$?
set -e
cat "$out/compare.md"
# One more verdict: `also TITLE FILE ARGS...` runs compare with ARGS into
# $out/FILE, prints it under TITLE, and keeps the worse status in rc: 2
# (cannot compare) over 1 (a regression) over 0.
also() {
  local title=$1 file=$2 r
  shift 2
  set +e
  "$out/bin/head" compare "$@" >"$out/$file"
  r=$?
  set -e
  echo
  echo "$title"
  cat "$out/$file"
  if [ "$r" -eq 2 ] || { [ "$r" -eq 1 ] && [ "$rc" -eq 0 ]; }; then
    rc=$r
  fi
}
if [ -n "$anchor_ref" ] && [ -z "$baseline" ]; then
  also "Against the anchor ($anchor_ref): the change since then, all merges together." \
    compare-anchor.md --paired "$out/anchor" "$out/head" --grid "$gate_grid" \
    --json "$out/verdict-anchor.json" --history "$history" --history-as anchor
fi
if [ -n "$bf16" ]; then
  # Not in the history: its trend is of the main grid's verdicts.
  also "The bf16 points (benchmarks/gate-bf16.toml), against the base." \
    compare-bf16.md --paired "$out/bf16/base" "$out/bf16/head" --grid "$bf16_gate_grid" \
    --json "$out/verdict-bf16.json"
fi
echo "bench-gate: history in $history (twolayer history $history --chart trend.svg)" >&2
exit "$rc"
