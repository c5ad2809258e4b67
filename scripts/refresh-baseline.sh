#!/usr/bin/env bash
# Measures the baseline for the committed-baseline mode of the gate
# (scripts/bench-gate.sh --baseline DIR): K processes of the current tree
# sweeping benchmarks/gate.toml, written to DIR/01, DIR/02, ...
# Run it on the pinned, dedicated runner that will run the gate, with
# nothing else busy, after a deliberate performance change; commit DIR with
# a message that says why the baseline moved. (Shared machines should use
# the A/B mode instead: docs/regression-gate.md.)
# Usage: scripts/refresh-baseline.sh DIR [K]      (K defaults to 5)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [K]" >&2; exit 2; }
dir=$1 k=${2:-5}
cd "$(dirname "$0")/.."
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp target/release/twolayer "$tmp/twolayer"
scripts/ab-sweeps.sh "$tmp/runs" "$k" benchmarks/gate.toml head="$tmp/twolayer"
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
cp -r "$tmp/runs/head" "$dir"
echo "wrote $k runs to $dir; review and commit them" >&2
