#!/usr/bin/env bash
# Installs what twolayer needs on Debian 12 that a machine with only Rust
# lacks, then builds the release binary. Safe to run again: it installs
# only what is missing.
#   - libopenblas-dev: OpenBLAS (BLAS, CBLAS and LAPACK), linked through
#     openblas-src's `system` feature; pkg-config to find it.
#   - python3 with venv: scripts/reference.py (the numpy reference) runs in
#     a venv under target/pyenv, with numpy from PyPI.
# Options: --python also creates that venv; --mpi also installs OpenMPI
# (libopenmpi-dev, openmpi-bin) and libclang-dev (rsmpi's bindgen) for the
# `mpi` feature; --all does both.
set -euo pipefail
want_python=false
want_mpi=false
for a in "$@"; do
  case "$a" in
    --python) want_python=true ;;
    --mpi) want_mpi=true ;;
    --all) want_python=true; want_mpi=true ;;
    *) echo "setup: unknown option $a" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

need=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if $want_mpi; then
  dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
  command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
  dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if $want_python; then
  venv=target/pyenv
  if ! "$venv/bin/python" -c 'import numpy' >/dev/null 2>&1; then
    echo "setup: creating $venv with numpy" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
  fi
fi

cargo build --release --quiet
