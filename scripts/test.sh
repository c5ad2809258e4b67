#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# install what is missing, check formatting and lints, run every test
# (the MPI ones included), then the performance regression gate.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --all

# `mpi`: the distributed tests; `fault-injection`: their failure hooks.
features=mpi,fault-injection
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet --features "$features" -- -D warnings
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release --features "$features"

# The quick preset against benchmarks/baseline-quick.json (docs/regression-gate.md).
scripts/bench-gate.sh
