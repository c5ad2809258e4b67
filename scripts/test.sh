#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# install what is missing, check formatting and lints, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --python

cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
