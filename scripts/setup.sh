#!/usr/bin/env bash
# Installs what twolayer needs on Debian 12 that a machine with only Rust
# lacks, then builds the release binary. Safe to run again: it installs
# only what is missing.
#   - libopenblas-dev: OpenBLAS (BLAS, CBLAS and LAPACK), linked through
#     openblas-src's `system` feature; pkg-config to find it.
#   - python3 with venv: scripts/reference.py (the numpy reference), the
#     Python package (python/) and its tests run in a venv under
#     target/pyenv, with scripts/requirements.txt from PyPI.
#   - OpenBLAS built for this CPU (scripts/build-openblas.sh: the target
#     from the CPU's flags, bf16 GEMM on), once per machine into a cache
#     outside the clone (~/.cache/twolayer) that every clone and CI reuse:
#     about 6 minutes the first time, nothing after. twolayer links it
#     through .cargo/config.toml (written here, not tracked), which points
#     pkg-config at it; build.rs adds an rpath. When the build cannot be
#     done it says why and the build links Debian's library.
# Options: --python also creates that venv and installs the package into
# it; --mpi also installs OpenMPI
# (libopenmpi-dev, openmpi-bin) and libclang-dev (rsmpi's bindgen) for the
# `mpi` feature; --all does both. --system-blas (or TWOLAYER_BLAS=system)
# links Debian's generic OpenBLAS instead of the native one.
set -euo pipefail
want_python=false
want_mpi=false
blas=${TWOLAYER_BLAS:-native}
for a in "$@"; do
  case "$a" in
    --python) want_python=true ;;
    --mpi) want_mpi=true ;;
    --all) want_python=true; want_mpi=true ;;
    --system-blas) blas=system ;;
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
  # Two set-ups at once must not race on dpkg: one installs at a time
  # (twolayer's own lock), and apt waits for any other holder of dpkg's.
  lockdir=${TWOLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/twolayer}
  mkdir -p "$lockdir"
  (
    flock 8
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 \
      install -y -qq "${need[@]}" >/dev/null
  ) 8>"$lockdir/apt.lock"
fi

venv=target/pyenv
if $want_python; then
  # Created once; the requirements installed again whenever the file
  # changes (a copy of the one installed is kept beside the venv).
  if ! "$venv/bin/python" -c 'import numpy' >/dev/null 2>&1; then
    echo "setup: creating $venv" >&2
    python3 -m venv "$venv"
  fi
  if ! cmp -s scripts/requirements.txt "$venv/requirements.installed"; then
    echo "setup: installing scripts/requirements.txt into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
    cp scripts/requirements.txt "$venv/requirements.installed"
  fi
fi

# Which OpenBLAS the build links: .cargo/config.toml sets PKG_CONFIG_PATH
# for cargo's build scripts (openblas-src asks pkg-config for `openblas`;
# build.rs adds the rpath). A change of library changes that variable,
# which reruns the build scripts and relinks.
case "$blas" in
  native|system) ;;
  *) echo "setup: TWOLAYER_BLAS must be native or system, not '$blas'" >&2; exit 2 ;;
esac
native=""
if [ "$blas" = native ]; then
  if native=$(scripts/build-openblas.sh); then
    echo "setup: native OpenBLAS: $native" >&2
  else
    native=""
    echo "setup: linking Debian's generic OpenBLAS instead (scripts/build-openblas.sh said why above)" >&2
  fi
fi
mkdir -p .cargo
config_tmp=$(mktemp .cargo/config.toml.XXXXXX)
{
  echo "# Written by scripts/setup.sh (not tracked): which OpenBLAS cargo links."
  if [ -n "$native" ]; then
    echo "[env]"
    echo "PKG_CONFIG_PATH = \"$native/lib/pkgconfig\""
  else
    echo "# Debian's generic OpenBLAS (--system-blas, or no native build)."
  fi
} >"$config_tmp"
if cmp -s "$config_tmp" .cargo/config.toml; then rm -f "$config_tmp"; else mv "$config_tmp" .cargo/config.toml; fi

cargo build --release --quiet

if $want_python; then
  # The Python package (python/), built by maturin over the same library
  # and linked to the same OpenBLAS (the cargo configuration above), into
  # the venv: `import twolayer` there. maturin is the venv's (installed
  # from the requirements), so no build environment is fetched; cargo
  # rebuilds only what changed.
  echo "setup: installing the twolayer Python package into $venv" >&2
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-build-isolation ./python
fi
