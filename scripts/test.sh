#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# install what is missing, check formatting and lints, run every test with
# the default features and with the MPI ones, then the performance
# regression gate: this tree against a base revision, measured side by side
# (scripts/bench-gate.sh; the base is $TWOLAYER_GATE_BASE when set, else
# the script's default).
#
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are left as the environment sets
# them: some machines set them because older OpenBLAS builds compute wrong
# results or crash on newer CPUs, and the suite passes under any kernel set
# (docs/regression-gate.md has the matrix).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --all

# `mpi`: the distributed tests; `fault-injection`: their failure hooks.
features=mpi,fault-injection
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet --features "$features" -- -D warnings
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
cargo test --release --features "$features"

scripts/bench-gate.sh ${TWOLAYER_GATE_BASE:+"$TWOLAYER_GATE_BASE"}
