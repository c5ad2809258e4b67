#!/usr/bin/env python3
"""The diabetes demo (run it through scripts/demo-diabetes.sh): writes the
dataset as a .npz, trains `twolayer train --data` on it with 20% held out,
and compares the validation mean squared error with a baseline that
predicts the mean of the training targets.

The targets are standardised (zero mean, unit variance, with the training
rows' statistics), so an MSE of 1.0 is "no better than the mean".
twolayer runs with its defaults for --data (biases, the mean loss, weights
and biases drawn as nn.Linear draws them, lr 0.01, batches of 32, 20
epochs), keeping the best epoch.

--torch also trains PyTorch on the same split as its users write it
(nn.Linear with its own initialisation and biases, MSELoss, SGD at the same
rate, batch size and epochs, a shuffling DataLoader) for five seeds, and
prints its validation MSE beside twolayer's (needs a Python with torch:
run this script with it).
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
    p.add_argument("--torch", action="store_true")
    p.add_argument("--dtype", choices=["f64", "f32", "bf16"], default="f64",
                   help="twolayer's --dtype; PyTorch's beside it runs in f64, f32, or f32 "
                        "under torch.autocast(bfloat16) for bf16")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    x, y = load_diabetes(return_X_y=True)
    m = len(y)
    # The rows twolayer will hold out (the same split, crates/twolayer/src/dataset/batches.rs).
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
    best_weights = os.path.join(a.out, "best.npz")
    cmd = [a.twolayer, "train", "--data", data, "--val-fraction", str(VAL_FRACTION),
           "--seed", str(SEED), "--metrics", metrics, "--save", weights,
           "--save-best", best_weights, "--quiet", "--dtype", a.dtype]
    print("$ " + " ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    # The summary (or the error) is stderr's last line.
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
    if a.torch:
        finals, bests = torch_runs(xs[train], ys[train], xs[val], ys[val], dtype=a.dtype)
        print(f"PyTorch ({a.dtype}{', autocast' if a.dtype == 'bf16' else ''}; nn.Linear defaults, same lr/batch/epochs), 5 seeds: last epoch "
              f"{min(finals):.4f}-{max(finals):.4f} (median {np.median(finals):.4f}), "
              f"best epoch {min(bests):.4f}-{max(bests):.4f}")


def torch_runs(xt, yt, xv, yv, lr=0.01, batch=32, epochs=20, hidden=100, dtype="f64"):
    """The same model trained as a PyTorch user would, for seeds 0-4: the
    validation MSE of the last epoch and of the best one, per seed. bf16
    is f32 weights under torch.autocast("cpu", dtype=torch.bfloat16)."""
    import contextlib
    import torch

    finals, bests = [], []
    dt = torch.float64 if dtype == "f64" else torch.float32
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else \
        contextlib.nullcontext
    xt, yt, xv, yv = (torch.tensor(v, dtype=dt) for v in (xt, yt, xv, yv))
    for seed in range(5):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(hidden, 1)).to(dt)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, yt),
                                             batch_size=batch, shuffle=True, drop_last=True)
        history = []
        for _ in range(epochs):
            for xb, yb in loader:
                opt.zero_grad()
                with cast():
                    pred = model(xb)
                torch.nn.functional.mse_loss(pred.to(dt), yb).backward()
                opt.step()
            with torch.no_grad():  # evaluated in f32, as twolayer validates a bf16 run
                history.append(float(torch.nn.functional.mse_loss(model(xv).to(dt), yv)))
        finals.append(history[-1])
        bests.append(min(history))
    return finals, bests


if __name__ == "__main__":
    main()
