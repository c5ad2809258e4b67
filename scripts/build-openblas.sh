#!/usr/bin/env bash
# Builds OpenBLAS for the CPU of this machine into a cache that every clone
# (and CI) on the machine reuses, and prints the cache folder on stdout.
#
# Why: Debian's libopenblas is a generic DYNAMIC_ARCH build of an older
# release (0.3.21 in Debian 12). Built for the CPU it runs on, the same
# OpenBLAS runs the step's f64 block GEMM ~40% faster on the Intel machines
# here, and it has the bf16 GEMM (`cblas_sbgemm`) that 0.3.21 lacks
# (docs/performance.md has the figures).
#
# Where the source comes from: Debian's source package of OpenBLAS (the
# newest Debian carries), fetched with apt through a private sources list —
# the system's package sources are left alone. Debian strips OpenBLAS's
# bundled LAPACK; as Debian itself does, its patches make the build take
# LAPACK from liblapack-dev's liblapack_pic.a (reference LAPACK, whose BLAS
# calls then land in these kernels), so ndarray-linalg's LAPACK works too.
#
# The target comes from the CPU's feature flags, never its model number
# (OpenBLAS's own detection reads some Xeons as desktop parts):
#   amx_tile + amx_bf16 + avx512_bf16  SAPPHIRERAPIDS  (AMX bf16 GEMM)
#   avx512_bf16                        COOPERLAKE      (AVX512-BF16 dot products; Zen 4/5 too)
#   avx512f/dq/bw/vl                   SKYLAKEX
#   avx2 + fma (AMD)                   ZEN
#   avx2 + fma                         HASWELL
#   anything else                      none: the caller keeps Debian's library
#
# Cache: $TWOLAYER_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/twolayer)/
# openblas-<version>-<target>/ with lib/, include/ and lib/pkgconfig/
# openblas.pc; `done` inside marks a finished build. Builds run in a
# temporary folder and are renamed into place, under a lock, so a build
# that fails or is killed never leaves a half library behind and two clones
# never build at once.
#
# Usage: scripts/build-openblas.sh [--target T] [--print-target]
# Exit status 0 with the folder on stdout, non-zero with one line on stderr
# when no native library can be had (the caller falls back to Debian's).
set -euo pipefail

target=""
print_target=false
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --print-target) print_target=true; shift ;;
    *) echo "build-openblas: unknown option $1" >&2; exit 2 ;;
  esac
done

flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
vendor=$(grep -m1 '^vendor_id' /proc/cpuinfo 2>/dev/null | awk '{print $3}')
has() { case "$flags" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -z "$target" ]; then
  if has amx_tile && has amx_bf16 && has avx512_bf16; then target=SAPPHIRERAPIDS
  elif has avx512_bf16 && has avx512f; then target=COOPERLAKE
  elif has avx512f && has avx512dq && has avx512bw && has avx512vl; then target=SKYLAKEX
  elif has avx2 && has fma && [ "$vendor" = AuthenticAMD ]; then target=ZEN
  elif has avx2 && has fma; then target=HASWELL
  else
    echo "build-openblas: no native target for this CPU (no AVX2); keeping Debian's library" >&2
    exit 3
  fi
fi
if $print_target; then echo "$target"; exit 0; fi

cache=${TWOLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/twolayer}
mkdir -p "$cache"

# The newest OpenBLAS source Debian carries, through a private apt state.
apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/src"
echo "deb-src http://deb.debian.org/debian sid main" >"$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")

# What the build needs from Debian: gfortran (the Fortran BLAS interface and
# libgfortran for LAPACK), liblapack-dev (liblapack_pic.a), make, patch, xz.
need=()
command -v gfortran >/dev/null 2>&1 || need+=(gfortran)
dpkg -s liblapack-dev >/dev/null 2>&1 || need+=(liblapack-dev)
command -v make >/dev/null 2>&1 || need+=(make)
command -v patch >/dev/null 2>&1 || need+=(patch)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if [ ${#need[@]} -gt 0 ]; then
  echo "build-openblas: installing ${need[*]}" >&2
  # One install at a time (the lock setup.sh takes too), and apt waits
  # for any other holder of dpkg's lock instead of failing.
  (
    flock 8
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 \
      install -y -qq "${need[@]}" >/dev/null
  ) 8>"$cache/apt.lock"
fi

exec 9>"$cache/openblas.lock"
flock 9

# Under the lock no build runs: a build folder still here is a killed
# build's, and goes.
rm -rf "$cache"/build.??????

# A finished build is trusted only when its library is the one recorded
# when it was built (a damaged or replaced file is built again).
intact() {
  [ -f "$1/done" ] && [ -f "$1/lib/libopenblas.so.0.sha256" ] \
    && (cd "$1/lib" && sha256sum --quiet -c libopenblas.so.0.sha256) >/dev/null 2>&1
}

# Which version is newest? Ask the private index (refreshed once a day);
# with no answer, reuse the newest finished build for this target.
stamp="$apt_dir/updated"
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
  if apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1; then touch "$stamp"; fi
fi
version=$(apt-cache "${apt_opts[@]}" showsrc openblas 2>/dev/null \
  | awk '/^Version:/ {print $2}' | sort -V | tail -n 1 || true)
upstream=${version%%+*}
upstream=${upstream%%-*}
if [ -z "$upstream" ]; then
  found=$(ls -d "$cache"/openblas-*-"$target" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ] && intact "$found"; then echo "$found"; exit 0; fi
  echo "build-openblas: cannot read Debian's OpenBLAS source index; keeping Debian's library" >&2
  exit 4
fi

dest="$cache/openblas-$upstream-$target"
if intact "$dest"; then echo "$dest"; exit 0; fi
if [ -e "$dest" ]; then
  echo "build-openblas: $dest has no library matching a recorded checksum (damaged, unfinished, or built before checksums were kept); building it again" >&2
fi

echo "build-openblas: building OpenBLAS $upstream for $target into $dest (about 6 minutes on 2 cores, once per machine)" >&2
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
if ! (cd "$apt_dir/src" \
  && apt-get "${apt_opts[@]}" source --download-only "openblas=$version" >/dev/null 2>&1); then
  echo "build-openblas: cannot download Debian's OpenBLAS $version source; keeping Debian's library" >&2
  exit 4
fi
tar -xf "$apt_dir/src/openblas_${version%-*}.orig.tar.xz" -C "$work"
tar -xf "$apt_dir/src/openblas_${version}.debian.tar.xz" -C "$work"
srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d ! -name debian | head -n 1)
# `set -e` is off inside `( … ) || …`: every step says how it fails.
(
  cd "$srcdir" || exit 1
  while read -r p; do
    case "$p" in ""|\#*) continue ;; esac
    patch -p1 -s <"$work/debian/patches/$p" \
      || { echo "build-openblas: Debian's patch $p does not apply" >&2; exit 1; }
  done <"$work/debian/patches/series" || exit 1
  # Debian 12's liblapack_pic.a is LAPACK 3.11; OpenBLAS 0.3.34 exports the
  # 30 routines LAPACK 3.12 added (xGEDMD, xGEQP3RK, xGELQS, …), so its
  # link test of every exported name cannot resolve those. The library
  # itself links; the check that matters here is made below.
  sed -i 's|linktest.c ../$(LIBSONAME) $(FEXTRALIB) && echo OK.|linktest.c ../$(LIBSONAME) $(FEXTRALIB) -Wl,--unresolved-symbols=ignore-all \&\& echo OK.|' exports/Makefile \
    || exit 1
  # Debian's own options (debian/rules), for one target instead of
  # DYNAMIC_ARCH, with the bf16 GEMM on.
  opts=(TARGET="$target" BUILD_BFLOAT16=1 USE_THREAD=1 USE_OPENMP=0 NUM_THREADS=64
    NO_LAPACKE=1 NO_AFFINITY=1 NO_WARMUP=1 FCOMMON_OPT=-frecursive)
  make -j"$(nproc)" "${opts[@]}" libs netlib shared >"$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; exit 1; }
  make "${opts[@]}" install PREFIX="$work/install" >>"$work/build.log" 2>&1 \
    || { tail -n 20 "$work/build.log" >&2; exit 1; }
) || { echo "build-openblas: the build failed (log above); keeping Debian's library" >&2; exit 5; }

# What twolayer and its tests call must be there: the GEMMs, the bf16 GEMM,
# the thread and config calls, and the LAPACK routines of the test oracle.
nm -D --defined-only "$work/install/lib/libopenblas.so.0" | awk '{print $3}' >"$work/symbols"
for sym in cblas_dgemm cblas_sgemm cblas_sbgemm openblas_get_config openblas_set_num_threads dgesv_ dgelsd_ dsyev_; do
  if ! grep -qx "$sym" "$work/symbols"; then
    echo "build-openblas: the built library lacks $sym; keeping Debian's library" >&2
    exit 6
  fi
done
rm -f "$work/install/lib/"*.a
(cd "$work/install/lib" && sha256sum libopenblas.so.0 >libopenblas.so.0.sha256)
echo "$version $target $(date -u +%FT%TZ)" >"$work/install/done"
rm -rf "$dest"
# The .pc file names the folder it was installed in: point it at the cache.
sed -i "s|$work/install|$dest|g" "$work/install/lib/pkgconfig/openblas.pc"
mv "$work/install" "$dest"
echo "$dest"
