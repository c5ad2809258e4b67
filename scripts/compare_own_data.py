#!/usr/bin/env python3
"""Own-data training side by side: `twolayer train --data` and the Python
package's `twolayer.Regressor` against PyTorch's
idiomatic loop (randperm + slicing), PyTorch's DataLoader loop and
scikit-learn's MLPRegressor(solver="sgd", momentum=0, alpha=0), on the same
data, the same held-out rows, the same hidden width, rate, batch and epochs,
on the same threads. Reports seconds per epoch (the whole process: loading
the data, training and validating; and the training loop alone) and held-out
MSE and R2, with ratios taken per round and then the median.

    python scripts/compare_own_data.py --twolayer target/release/twolayer \\
        --python PY [--seeds 10] [--datasets teacher,diabetes,digits]

PY is a Python with numpy, torch and scikit-learn (this script itself needs
numpy and scikit-learn only); the twolayer-python side runs in
--python-twolayer (default target/pyenv/bin/python, where scripts/setup.sh
--python installs the package). It fits on the training rows, as
MLPRegressor does, with MLPRegressor's parameters. Each side of each round runs in its own fresh
process, the sides in a rotating order (interleaved), with OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE removed from every side's environment.

The model on every side: x -> Linear(D_in, H) -> ReLU -> Linear(H, D_out),
both with biases, minibatch SGD without momentum or weight decay, each
epoch a fresh shuffle, whole batches only (twolayer's and the loops' drop
the epoch's remainder; scikit-learn trains on it as a last, smaller batch).

Rates. twolayer and PyTorch minimise the mean squared error over every
element of the batch (MSELoss): gradient 2/(B*D_out) * sum. scikit-learn's
MLPRegressor takes its gradient step on sum ||y - yhat||^2 / (2B): gradient
1/B * sum. The same step therefore needs

    lr_sklearn = lr_twolayer * 2 / D_out        (twolayer's = sklearn's * D_out / 2)

so the issue's "0.005 for the mean loss, scikit-learn's 0.01" at D_out = 1.

Initialisation. twolayer's default for a dataset draws every weight and
bias as nn.Linear does, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); PyTorch's own
draw; scikit-learn keeps its own (Glorot uniform).

Datasets (x standardised with the training rows' statistics, y too):
- teacher: 200,000 x 100 standard normal inputs through a fixed random
  network (100 -> 50 ReLU -> 1, weights N(0, 1/fan_in), b1 ~ N(0, 0.25)),
  plus noise of 0.1 of its standard deviation; 20% held out. The issue's
  data, by its recipe: 3 epochs at lr 0.005, batches of 32 and 200.
- diabetes: scikit-learn's (442 x 10 -> 1), 20% held out, twolayer's
  defaults for a dataset (lr 0.01, batch 32, 20 epochs).
- digits: scikit-learn's 8x8 digits (1797 x 64), the one-hot class as 10
  targets, 20% held out, the same defaults.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from reference_minibatch import Permutation, SPLIT, mix  # noqa: E402

VAL_FRACTION = 0.2
SIDES = ["twolayer", "twolayer-python", "torch-loop", "torch-dataloader", "sklearn"]
ROOT = os.path.dirname(HERE)


def held_out_rows(m, seed):
    """The rows twolayer holds out with --val-fraction 0.2 and this seed
    (crates/twolayer/src/dataset/batches.rs), sorted; every side validates on them."""
    n_val = int(round(VAL_FRACTION * m))
    split = Permutation(m, mix(seed ^ SPLIT))
    return np.array(sorted(split.apply(v) for v in range(n_val)), dtype=np.int64)


def make_dataset(name, out, seed):
    """Writes `name` to out/name-SEED.npz (standardised with its training
    rows' statistics for this seed's split) and returns its path and the
    run settings the comparison uses for it."""
    if name == "teacher":
        rng = np.random.default_rng(12345)
        m, d, h = 200_000, 100, 50
        x = rng.standard_normal((m, d))
        w1 = rng.standard_normal((d, h)) / np.sqrt(d)
        b1 = 0.5 * rng.standard_normal(h)
        w2 = rng.standard_normal((h, 1)) / np.sqrt(h)
        y = np.maximum(x @ w1 + b1, 0) @ w2
        y += 0.1 * y.std() * rng.standard_normal(y.shape)
        settings = dict(lr=0.005, epochs=3, batches=[32, 200], hidden=100)
    elif name == "diabetes":
        from sklearn.datasets import load_diabetes
        x, y = load_diabetes(return_X_y=True)
        y = y[:, None]
        settings = dict(lr=0.01, epochs=20, batches=[32], hidden=100)
    elif name == "digits":
        from sklearn.datasets import load_digits
        x, c = load_digits(return_X_y=True)
        y = np.eye(10)[c]
        settings = dict(lr=0.01, epochs=20, batches=[32], hidden=100)
    else:
        raise SystemExit(f"unknown dataset {name}")
    m = len(x)
    val = held_out_rows(m, seed)
    train = np.setdiff1d(np.arange(m), val)
    sd = x[train].std(0)
    sd[sd == 0] = 1.0
    xs = (x - x[train].mean(0)) / sd
    ysd = y[train].std(0)
    ysd[ysd == 0] = 1.0
    ys = (y - y[train].mean(0)) / ysd
    path = os.path.join(out, f"{name}-{seed}.npz")
    np.savez(path, x=xs, y=ys)
    # The held-out rows, for every side to read (computed once: the
    # permutation in pure Python takes seconds, which no side's time
    # should include).
    np.save(path + ".val.npy", val)
    return path, settings


def clean_env(threads):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    return env


def scores(yv, pred):
    """Held-out MSE (over every element) and R2 (averaged over outputs, as
    sklearn.metrics.r2_score does by default)."""
    mse = float(((yv - pred) ** 2).mean())
    ss_res = ((yv - pred) ** 2).sum(0)
    ss_tot = ((yv - yv.mean(0)) ** 2).sum(0)
    return mse, float(np.mean(1 - ss_res / ss_tot))


def fit_timed(reg, xt, yt, xv):
    """Seconds of a scikit-learn-style `fit` (a 1-column y as a vector, the
    warning at max_iter silenced) and its held-out predictions."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    yfit = yt[:, 0] if yt.shape[1] == 1 else yt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        reg.fit(xt, yfit)
        loop = time.perf_counter() - t0
    return loop, reg.predict(xv).reshape(len(xv), -1)


# ---- one side, in its own process -------------------------------------------------------------

def side_main(a):
    """Runs one side once and prints its JSON result on stdout. Its total
    time starts after the imports (the interpreter's and torch's start-up
    are not the data's loading), with the .npz read."""
    if a.side.startswith("torch"):
        import torch  # noqa: F401
    elif a.side == "twolayer-python":
        import twolayer  # noqa: F401
    else:
        import sklearn.neural_network  # noqa: F401
    val = np.load(a.data + ".val.npy")
    t_start = time.perf_counter()
    d = np.load(a.data)
    x, y = d["x"], d["y"]
    train = np.setdiff1d(np.arange(len(x)), val)
    xt, yt, xv, yv = x[train], y[train], x[val], y[val]
    lr, b, e, h = a.lr, a.batch, a.epochs, a.hidden
    if a.side in ("torch-loop", "torch-dataloader"):
        import torch
        torch.set_num_threads(a.threads)
        torch.manual_seed(a.seed)
        dt = torch.float64
        xt_, yt_, xv_ = (torch.tensor(v, dtype=dt) for v in (xt, yt, xv))
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], h), torch.nn.ReLU(),
                                    torch.nn.Linear(h, y.shape[1])).to(dt)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loss_fn = torch.nn.MSELoss()
        n = len(xt_)
        loop = 0.0
        if a.side == "torch-loop":
            for _ in range(e):
                t0 = time.perf_counter()
                perm = torch.randperm(n)
                for i in range(n // b):
                    idx = perm[i * b:(i + 1) * b]
                    opt.zero_grad()
                    loss = loss_fn(model(xt_[idx]), yt_[idx])
                    loss.backward()
                    opt.step()
                loop += time.perf_counter() - t0
                with torch.no_grad():
                    model(xv_)  # validated every epoch, as twolayer does
        else:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt_, yt_),
                                                 batch_size=b, shuffle=True, drop_last=True)
            for _ in range(e):
                t0 = time.perf_counter()
                for xb, yb in loader:
                    opt.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt.step()
                loop += time.perf_counter() - t0
                with torch.no_grad():
                    model(xv_)
        with torch.no_grad():
            pred = model(xv_).numpy()
    elif a.side == "sklearn":
        from sklearn.neural_network import MLPRegressor
        from threadpoolctl import threadpool_limits
        with threadpool_limits(a.threads):
            reg = MLPRegressor(hidden_layer_sizes=(h,), activation="relu", solver="sgd",
                               learning_rate="constant", learning_rate_init=lr * 2 / y.shape[1],
                               momentum=0.0, nesterovs_momentum=False, alpha=0.0,
                               batch_size=b, max_iter=e, shuffle=True, random_state=a.seed,
                               tol=0.0, n_iter_no_change=e + 1, early_stopping=False)
            loop, pred = fit_timed(reg, xt, yt, xv)
    elif a.side == "twolayer-python":
        # The Python package with MLPRegressor's settings (the same rate
        # conversion): a swap of the class, the rest kept.
        import twolayer
        reg = twolayer.Regressor(hidden_layer_sizes=(h,), learning_rate_init=lr * 2 / y.shape[1],
                                 batch_size=b, max_iter=e, random_state=a.seed, threads=a.threads,
                                 tol=0.0, n_iter_no_change=e + 1)
        loop, pred = fit_timed(reg, xt, yt, xv)
    else:
        raise SystemExit(f"unknown side {a.side}")
    mse, r2 = scores(yv, pred)
    total = time.perf_counter() - t_start
    print(json.dumps(dict(side=a.side, mse=mse, r2=r2, loop_s_per_epoch=loop / e,
                          inner_total_s=total)))


def run_twolayer(a, data, seed, s, batch, out):
    w = os.path.join(out, f"w-{seed}-{batch}.npz")
    j = os.path.join(out, f"s-{seed}-{batch}.json")
    cmd = [a.twolayer, "train", "--data", data, "--val-fraction", str(VAL_FRACTION),
           "--batch", str(batch), "--epochs", str(s["epochs"]), "--lr", str(s["lr"]),
           "--hidden", str(s["hidden"]), "--seed", str(seed), "--threads", str(a.threads),
           "-q", "--save", w, "--json", j]
    if a.reader:
        cmd += ["--reader", a.reader]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=clean_env(a.threads), stderr=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    summary = json.load(open(j))
    d = np.load(data)
    x, y = d["x"], d["y"]
    val = np.load(data + ".val.npy")
    wts = np.load(w)
    pred = np.maximum(x[val] @ wts["w1"] + wts["b1"], 0) @ wts["w2"] + wts["b2"]
    mse, r2 = scores(y[val], pred)
    os.remove(w)
    return dict(side="twolayer", mse=mse, r2=r2, total_s_per_epoch=total / s["epochs"],
                loop_s_per_epoch=summary["seconds"] / s["epochs"],
                ms_per_step=summary["ms_per_step"], plan=f'{summary["shards"]} shard(s)')


def run_peer(a, side, data, seed, s, batch):
    python = a.python_twolayer if side == "twolayer-python" else a.python
    cmd = [python, os.path.abspath(__file__), "--side", side, "--data", data,
           "--seed", str(seed), "--batch", str(batch), "--epochs", str(s["epochs"]),
           "--lr", str(s["lr"]), "--hidden", str(s["hidden"]), "--threads", str(a.threads)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, check=True, capture_output=True, text=True, env=clean_env(a.threads))
    total = time.perf_counter() - t0
    r = json.loads(p.stdout.strip().splitlines()[-1])
    # From the .npz read to the predictions (the process's start-up and
    # imports excluded; `total` would count them).
    r["total_s_per_epoch"] = r.pop("inner_total_s") / s["epochs"]
    r["process_s"] = total
    return r


def med(v):
    return statistics.median(v) if v else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twolayer")
    p.add_argument("--python", default=sys.executable, help="a Python with torch and scikit-learn")
    p.add_argument("--python-twolayer", default=os.path.join(ROOT, "target", "pyenv", "bin", "python"),
                   help="a Python with the twolayer package (scripts/setup.sh --python installs it there)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--batches", help="only these batch sizes, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--datasets", default="teacher,diabetes,digits")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--reader", help="twolayer's --reader (default: its own choice)")
    p.add_argument("--json", help="write every result here")
    # One side's run (internal).
    p.add_argument("--side")
    p.add_argument("--data")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--hidden", type=int)
    a = p.parse_args()
    if a.side:
        return side_main(a)
    if not a.twolayer:
        p.error("--twolayer is required")
    sides = a.sides.split(",")
    results = []
    with tempfile.TemporaryDirectory() as out:
        for name in a.datasets.split(","):
            for seed in range(a.first_seed, a.first_seed + a.seeds):
                data, s = make_dataset(name, out, seed)
                batches = s["batches"]
                if a.batches:
                    batches = [b for b in batches if str(b) in a.batches.split(",")]
                for batch in batches:
                    # Rotate the order every round: no side always first.
                    order = sides[seed % len(sides):] + sides[:seed % len(sides)]
                    for side in order:
                        if side == "twolayer":
                            r = run_twolayer(a, data, seed, s, batch, out)
                        else:
                            r = run_peer(a, side, data, seed, s, batch)
                        r.update(dataset=name, seed=seed, batch=batch, epochs=s["epochs"], lr=s["lr"])
                        results.append(r)
                        print(f"{name} seed {seed} batch {batch} {side}: "
                              f"{r['total_s_per_epoch']:.3f} s/epoch ({r['loop_s_per_epoch']:.3f} loop), "
                              f"held-out MSE {r['mse']:.4f}, R2 {r['r2']:.4f}", file=sys.stderr, flush=True)
                os.remove(data)
                os.remove(data + ".val.npy")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results, sides)


def report(results, sides):
    peers = [s for s in sides if s != "twolayer"]
    print("| dataset | batch | side | s/epoch (all) | s/epoch (loop) | twolayer faster (all) | "
          "twolayer faster (loop) | held-out MSE median [min, max] | R2 median |")
    print("|---|---:|---|---:|---:|---:|---:|---|---:|")
    keys = sorted({(r["dataset"], r["batch"]) for r in results}, key=lambda k: (k[0], k[1]))
    for ds, b in keys:
        rs = [r for r in results if (r["dataset"], r["batch"]) == (ds, b)]
        by = {s: [r for r in rs if r["side"] == s] for s in sides}
        tl = {r["seed"]: r for r in by.get("twolayer", [])}
        for s in sides:
            v = by[s]
            if not v:
                continue
            ratio_all = ratio_loop = ""
            if s in peers and tl:
                ra = [r["total_s_per_epoch"] / tl[r["seed"]]["total_s_per_epoch"] for r in v if r["seed"] in tl]
                rl = [r["loop_s_per_epoch"] / tl[r["seed"]]["loop_s_per_epoch"] for r in v if r["seed"] in tl]
                ratio_all, ratio_loop = f"{med(ra):.2f}x", f"{med(rl):.2f}x"
            mses = [r["mse"] for r in v]
            print(f"| {ds} | {b} | {s} | {med([r['total_s_per_epoch'] for r in v]):.4f} | "
                  f"{med([r['loop_s_per_epoch'] for r in v]):.4f} | {ratio_all} | {ratio_loop} | "
                  f"{med(mses):.4f} [{min(mses):.4f}, {max(mses):.4f}] | {med([r['r2'] for r in v]):.4f} |")
        if tl and by.get("torch-loop"):
            m_tl = med([r["mse"] for r in by["twolayer"]])
            m_pt = med([r["mse"] for r in by["torch-loop"]])
            print(f"|  |  | twolayer / PyTorch loop median MSE | {m_tl / m_pt:.3f} |  |  |  |  |  |")


if __name__ == "__main__":
    main()
