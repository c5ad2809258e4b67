#!/usr/bin/env python3
"""The diabetes demo (run it through scripts/demo-diabetes.sh): writes the
dataset as a .npz, trains `twolayer train --data` on it with 20% held out,
and compares the validation mean squared error with a baseline that
predicts the mean of the training targets.

The targets are standardised (zero mean, unit variance, with the training
rows' statistics), so an MSE of 1.0 is "no better than the mean".
"""
import argparse
import os
import subprocess
import sys

import numpy as np
from sklearn.datasets import load_diabetes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_minibatch import Permutation, SPLIT, mix  # noqa: E402

SEED, VAL_FRACTION = 1, 0.2


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--twolayer", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    x, y = load_diabetes(return_X_y=True)
    m = len(y)
    # The rows twolayer will hold out (the same split, src/dataset/batches.rs).
    n_val = int(round(VAL_FRACTION * m))
    split = Permutation(m, mix(SEED ^ SPLIT))
    val = np.array(sorted(split.apply(v) for v in range(n_val)))
    train = np.setdiff1d(np.arange(m), val)
    mu_x, sd_x = x[train].mean(0), x[train].std(0)
    mu_y, sd_y = y[train].mean(), y[train].std()
    xs = (x - mu_x) / sd_x
    ys = ((y - mu_y) / sd_y)[:, None]
    data = os.path.join(a.out, "diabetes.npz")
    np.savez(data, x=xs, y=ys)

    metrics = os.path.join(a.out, "metrics.csv")
    weights = os.path.join(a.out, "weights.npz")
    cmd = [a.twolayer, "train", "--data", data, "--val-fraction", str(VAL_FRACTION),
           "--seed", str(SEED), "--batch", "32", "--epochs", "300", "--hidden", "16",
           "--loss", "mean", "--lr", "0.01", "--weight-init", "scaled",
           "--metrics", metrics, "--save", weights, "--quiet"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    # One line per epoch goes to stderr; show the summary (or the error).
    print(run.stderr.strip().splitlines()[-1], file=sys.stderr)
    if run.returncode != 0:
        sys.exit(run.returncode)

    rows = np.loadtxt(metrics, delimiter=",", skiprows=1)
    best = rows[rows[:, 4].argmin()]
    last = rows[-1]
    baseline = float(np.mean((ys[val, 0] - ys[train, 0].mean()) ** 2))
    print(f"diabetes: {m} rows, {xs.shape[1]} inputs; {len(train)} trained on, {n_val} held out")
    print(f"validation MSE (standardised target), last epoch {int(last[0])}: {last[4]:.4f}")
    print(f"validation MSE, best epoch {int(best[0])}:               {best[4]:.4f}")
    print(f"baseline (predict the training mean):       {baseline:.4f}")
    print(f"explained variance on held-out rows:        {1 - last[4] / baseline:.1%}")


if __name__ == "__main__":
    main()
