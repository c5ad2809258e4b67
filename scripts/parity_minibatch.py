#!/usr/bin/env python3
"""`twolayer train --data` against numpy and PyTorch on the same batches,
from the same starting weights: the largest relative gap of every step's
loss, of every epoch's validation MSE and of the final weights (w1, w2,
b1, b2), for each engine of scripts/reference_minibatch.py.

    python3 scripts/parity_minibatch.py --twolayer target/release/twolayer \\
        --data d.npz --hidden 100 [--engines numpy,torch] -- --val-fraction 0.2

Starting weights: drawn as twolayer's default for a dataset and PyTorch's
nn.Linear draw them, every weight and bias of a layer uniform on
[-1/sqrt(fan_in), 1/sqrt(fan_in)] (`--init scaled`: He w1, LeCun w2, zero
biases), written to a .npz both sides read. Run it with a Python that has
numpy (and torch, for the torch engine).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def rel_gap(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3))) if a.size else 0.0


def read_losses(p):
    return np.array([float(l.split()[1]) for l in open(p)])


def read_metrics(p):
    rows = [l.strip().split(",") for l in open(p)][1:]
    return np.array([float(r[4]) for r in rows if r[4]])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twolayer", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default="numpy,torch")
    p.add_argument("--init", choices=["torch", "scaled"], default="torch")
    p.add_argument("flags", nargs="*", help="flags for both sides (after --)")
    a = p.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    z = np.load(a.data)
    d_in, d_out = z["x"].shape[1], (z["y"].shape[1] if z["y"].ndim == 2 else 1)
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as t:
        w0 = os.path.join(t, "w0.npz")
        if a.init == "torch":
            k1, k2 = 1 / np.sqrt(d_in), 1 / np.sqrt(a.hidden)
            np.savez(w0, w1=rng.uniform(-k1, k1, (d_in, a.hidden)), w2=rng.uniform(-k2, k2, (a.hidden, d_out)),
                     b1=rng.uniform(-k1, k1, a.hidden), b2=rng.uniform(-k2, k2, d_out))
        else:
            np.savez(w0, w1=rng.standard_normal((d_in, a.hidden)) * np.sqrt(2 / d_in),
                     w2=rng.standard_normal((a.hidden, d_out)) * np.sqrt(1 / a.hidden),
                     b1=np.zeros(a.hidden), b2=np.zeros(d_out))
        flags = ["--weights", w0] + a.flags
        out = {k: os.path.join(t, f"tl.{k}") for k in ("losses", "metrics", "save")}
        subprocess.run([a.twolayer, "train", "--data", a.data, "-q"] + flags +
                       ["--losses", out["losses"], "--metrics", out["metrics"], "--save", out["save"] + ".npz"],
                       check=True, stderr=subprocess.DEVNULL)
        ours = (read_losses(out["losses"]), read_metrics(out["metrics"]), np.load(out["save"] + ".npz"))
        for engine in a.engines.split(","):
            ref = {k: os.path.join(t, f"{engine}.{k}") for k in ("losses", "metrics", "save")}
            subprocess.run([sys.executable, os.path.join(here, "reference_minibatch.py"), "--data", a.data,
                            "--engine", engine] + flags +
                           ["--losses", ref["losses"], "--metrics", ref["metrics"], "--save", ref["save"] + ".npz"],
                           check=True)
            theirs = (read_losses(ref["losses"]), read_metrics(ref["metrics"]), np.load(ref["save"] + ".npz"))
            w = max(rel_gap(ours[2][k], theirs[2][k]) for k in ("w1", "w2", "b1", "b2") if k in ours[2])
            print(f"{engine}: {len(ours[0])} steps; losses within {rel_gap(ours[0], theirs[0]):.2e}, "
                  f"val MSE within {rel_gap(ours[1], theirs[1]):.2e}, final w1 w2 b1 b2 within {w:.2e} "
                  f"(relative, floor 1e-3); last val MSE {ours[1][-1]:.6f} vs {theirs[1][-1]:.6f}")


if __name__ == "__main__":
    main()
