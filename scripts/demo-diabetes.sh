#!/usr/bin/env bash
# Trains twolayer on a real regression dataset — scikit-learn's diabetes
# data (442 patients, 10 measurements, disease progression a year later;
# bundled with scikit-learn, so nothing is downloaded but the package) —
# with a validation split, and prints the validation error beside the
# error of predicting the training mean.
#   scripts/demo-diabetes.sh [OUT_DIR]   (default target/demo-diabetes)
# (the demo script itself, scripts/demo_diabetes.py, takes --torch)
# Installs scikit-learn into the venv under target/pyenv (numpy's) the
# first time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/demo-diabetes}
venv=target/pyenv
if ! "$venv/bin/python" -c 'import numpy' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi
if ! "$venv/bin/python" -c 'import sklearn' >/dev/null 2>&1; then
  echo "demo: installing scikit-learn into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check scikit-learn
fi
[ -x target/release/twolayer ] || cargo build --release --quiet
exec "$venv/bin/python" scripts/demo_diabetes.py --twolayer target/release/twolayer --out "$out" "${@:2}"
