#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# install what is missing (OpenBLAS built for this CPU, from its cache after
# the first time), check formatting and lints, run every test with the
# default features and with the MPI ones on that library, the default
# features' tests again on Debian's generic OpenBLAS (the same binaries,
# through LD_LIBRARY_PATH), then the performance regression gate: this tree
# against a base revision, measured side by side (scripts/bench-gate.sh;
# the base is $TWOLAYER_GATE_BASE when set, else the script's default), and
# against an older anchor, $TWOLAYER_GATE_ANCHOR, when set (the creep check).
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
# The Python package's native module (built by maturin, not by cargo test).
cargo clippy --release --quiet -p twolayer-python -- -D warnings
# The library's documentation: no link to a private or missing item.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet
# Which library the build links: the native one unless setup fell back.
if grep -q '^PKG_CONFIG_PATH' .cargo/config.toml 2>/dev/null; then linked=native; else linked=generic; fi
TWOLAYER_EXPECT_BLAS=$linked cargo test --release
TWOLAYER_EXPECT_BLAS=$linked cargo test --release --features "$features"
# The Python package (installed into target/pyenv by setup.sh --python):
# scikit-learn's estimator checks, parity with the command line just built.
TWOLAYER_BIN=target/release/twolayer target/pyenv/bin/python -m pytest -q -p no:cacheprovider python/tests
if [ "$linked" = native ]; then
  # Debian's library (the one-flag fallback, scripts/setup.sh --system-blas)
  # under the same binaries: LD_LIBRARY_PATH wins over their rpath.
  debian=$(dirname "$(dpkg -L libopenblas0-pthread | grep '/libopenblas.so.0$' | head -n 1)")
  echo "test: the suite again on Debian's generic OpenBLAS ($debian)" >&2
  LD_LIBRARY_PATH="$debian${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TWOLAYER_EXPECT_BLAS=generic \
    cargo test --release
fi

scripts/bench-gate.sh ${TWOLAYER_GATE_ANCHOR:+--anchor "$TWOLAYER_GATE_ANCHOR"} \
  ${TWOLAYER_GATE_BASE:+"$TWOLAYER_GATE_BASE"}
