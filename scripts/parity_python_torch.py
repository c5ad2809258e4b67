#!/usr/bin/env python3
"""twolayer.Regressor (the Python package) against PyTorch on the same
batches from the same starting weights: the largest relative gap of the
final weights (w1, w2, b1, b2) after a fit, and of the held-out MSE.

    target/pyenv/bin/python scripts/parity_python_torch.py --torch-python PY \\
        [--rows 2000] [--d-in 20] [--hidden 32] [--d-out 2] [--batch 32] \\
        [--epochs 3] [--lr 0.01] [--seed 0] [--dtype f64]

Run it with a Python that has the package; PY has numpy and torch
(PyTorch's side is scripts/reference_minibatch.py's torch engine: the
batches twolayer's schedule takes, nn.Linear, MSELoss, SGD). Starting
weights: drawn as nn.Linear draws them, written to a .npz; the Regressor
takes them through `load(..., warm_start=True)`, PyTorch through
`--weights`. The rate is twolayer's on the mean loss (`--lr`), given to the
Regressor as scikit-learn's `learning_rate_init` = lr * 2 / D_out.
Exits 1 when a gap is above --tolerance (1e-12 in f64, 1e-4 in f32).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def rel_gap(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", required=True, help="a Python with numpy and torch")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--d-in", type=int, default=20)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--d-out", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tolerance", type=float)
    a = p.parse_args()
    import twolayer

    npdt = np.float64 if a.dtype == "f64" else np.float32
    tol = a.tolerance if a.tolerance is not None else (1e-12 if a.dtype == "f64" else 1e-4)
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.rows, a.d_in))
    y = np.maximum(x @ rng.standard_normal((a.d_in, a.d_out)) / np.sqrt(a.d_in), 0) + 0.1 * rng.standard_normal((a.rows, a.d_out))
    k1, k2 = 1 / np.sqrt(a.d_in), 1 / np.sqrt(a.hidden)
    w0 = dict(w1=rng.uniform(-k1, k1, (a.d_in, a.hidden)), w2=rng.uniform(-k2, k2, (a.hidden, a.d_out)),
              b1=rng.uniform(-k1, k1, a.hidden), b2=rng.uniform(-k2, k2, a.d_out))
    with tempfile.TemporaryDirectory() as t:
        data, start, ref = (os.path.join(t, f) for f in ("d.npz", "w0.npz", "ref.npz"))
        np.savez(data, x=x.astype(npdt), y=y.astype(npdt))
        np.savez(start, **{k: v.astype(npdt) for k, v in w0.items()})
        reg = twolayer.load(start, warm_start=True, batch_size=a.batch, max_iter=a.epochs,
                            random_state=a.seed, learning_rate_init=a.lr * 2 / a.d_out, tol=0.0,
                            n_iter_no_change=a.epochs + 1, threads=a.threads, dtype=a.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(x.astype(npdt), y.astype(npdt))
        subprocess.run([a.torch_python, os.path.join(HERE, "reference_minibatch.py"), "--data", data,
                        "--engine", "torch", "--weights", start, "--batch", str(a.batch), "--epochs",
                        str(a.epochs), "--lr", str(a.lr), "--seed", str(a.seed), "--dtype", a.dtype,
                        "--save", ref, "--losses", os.path.join(t, "losses.txt")], check=True)
        theirs = np.load(ref)
    ours = dict(w1=reg.coefs_[0], w2=reg.coefs_[1], b1=reg.intercepts_[0], b2=reg.intercepts_[1])
    gaps = {k: rel_gap(ours[k], theirs[k]) for k in ours}
    mse = float(np.mean((reg.predict(x.astype(npdt)).reshape(len(x), -1) - y) ** 2))
    print(f"{a.dtype}, {a.rows} rows, ({a.batch}, {a.d_in}, {a.hidden}, {a.d_out}), {a.epochs} epochs: "
          + ", ".join(f"{k} within {v:.2e}" for k, v in gaps.items())
          + f" (relative, floor 1e-3); training MSE {mse:.6f}")
    if max(gaps.values()) > tol:
        print(f"a gap is above {tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
