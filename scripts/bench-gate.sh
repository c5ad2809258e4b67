#!/usr/bin/env bash
# The performance regression gate CI runs: the quick preset measured now
# against the baseline committed in benchmarks/baseline-quick.json.
# Exit 0: no regression; 1: a point is slower beyond 10% with confidence;
# 2: the reports cannot be compared (for example the grid changed: refresh
# the baseline with scripts/refresh-baseline.sh).
# The reports of this run are left in target/bench-gate/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=target/bench-gate
rm -rf "$out"
target/release/twolayer sweep --preset quick --processes 3 --out "$out" >/dev/null
target/release/twolayer compare benchmarks/baseline-quick.json "$out/report.json" | tee "$out/compare.md"
