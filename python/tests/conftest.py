"""Shared set-up of the Python suite (run by scripts/test.sh).

SCIPY_ARRAY_API is set before scipy and scikit-learn load: without it
scikit-learn skips `check_array_api_input`, and the estimator checks must
all run, none skipped.
"""

import os
import pathlib

os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def twolayer_bin():
    """The command-line tool the suite built (scripts/test.sh runs cargo's
    tests first), or $TWOLAYER_BIN."""
    path = pathlib.Path(os.environ.get("TWOLAYER_BIN", ROOT / "target" / "release" / "twolayer"))
    assert path.is_file(), f"{path} is missing: build it (cargo build --release) or set TWOLAYER_BIN"
    return path


def teacher(rows, d_in, d_out, seed, dtype=np.float64):
    """Rows from a random two-layer teacher network plus noise: a task the
    model can learn, standardised inputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d_in))
    w1 = rng.standard_normal((d_in, 16)) / np.sqrt(d_in)
    w2 = rng.standard_normal((16, d_out)) / 4.0
    y = np.maximum(x @ w1, 0.0) @ w2 + 0.05 * rng.standard_normal((rows, d_out))
    return x.astype(dtype), y.astype(dtype)
