#!/usr/bin/env bash
# Re-measures the baseline the CI gate compares against
# (benchmarks/baseline-quick.json). Run it on the machine CI runs on, with
# nothing else busy, after a deliberate performance change; commit the file
# with a message that says why the baseline moved.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
mkdir -p benchmarks
tmp=$(mktemp -d)
target/release/twolayer sweep --preset quick --processes 3 --out "$tmp"
cp "$tmp/report.json" benchmarks/baseline-quick.json
rm -rf "$tmp"
echo "wrote benchmarks/baseline-quick.json; review and commit it" >&2
