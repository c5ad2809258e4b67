#!/usr/bin/env python3
"""The Python package against the command line on the same run: seconds
per step of `twolayer.Regressor.fit` and of `twolayer train --data` at one
shape, in interleaved rounds, each side in a fresh process.

    target/pyenv/bin/python scripts/compare_python_cli.py \\
        [--rows 65536] [--d-in 1000] [--hidden 100] [--d-out 10] \\
        [--batch 4096] [--epochs 10] [--dtype f32] [--threads 2] [--rounds 5]

Run it with a Python that has the package (scripts/setup.sh --python puts
one in target/pyenv). OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed
from both sides' environment. Per side and round: the training loop's
time per step as the library counts it (RunStats: the command line's
`ms_per_step`, the package's `fit_step_ms_`), and the whole `fit` (or the
whole process, reading the .npz included) divided by its steps. Ratios
are taken per round (Python / command line), then the median.
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
ROOT = os.path.dirname(HERE)


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def python_side(a):
    import warnings

    import twolayer

    d = np.load(a.data)
    x, y = d["x"], d["y"]
    r = twolayer.Regressor(hidden_layer_sizes=a.hidden, batch_size=a.batch, max_iter=a.epochs,
                           random_state=0, threads=a.threads, dtype=a.dtype, tol=0.0,
                           n_iter_no_change=a.epochs + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r.fit(x, y)
        fit_s = time.perf_counter() - t0
    steps = a.epochs * (len(x) // a.batch)
    print(json.dumps(dict(step_ms=r.fit_step_ms_, wall_step_ms=fit_s * 1e3 / steps)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twolayer", default=os.path.join(ROOT, "target", "release", "twolayer"))
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--d-in", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--d-out", type=int, default=10)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side == "python":
        return python_side(a)
    npdt = np.float64 if a.dtype == "f64" else np.float32
    rng = np.random.default_rng(0)
    steps = a.epochs * (a.rows // a.batch)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        data = os.path.join(out, "d.npz")
        x = rng.standard_normal((a.rows, a.d_in)).astype(npdt)
        y = (np.maximum(x[:, :50] @ rng.standard_normal((50, a.d_out)), 0) / 10).astype(npdt)
        np.savez(data, x=x, y=y)
        del x, y
        for k in range(a.rounds):
            res = {}
            for side in (["cli", "python"] if k % 2 == 0 else ["python", "cli"]):
                if side == "cli":
                    j = os.path.join(out, "s.json")
                    t0 = time.perf_counter()
                    subprocess.run([a.twolayer, "train", "--data", data, "--batch", str(a.batch),
                                    "--epochs", str(a.epochs), "--hidden", str(a.hidden), "--dtype", a.dtype,
                                    "--threads", str(a.threads), "--seed", "0", "--no-wisdom", "-q", "--json", j],
                                   check=True, env=clean_env(), stderr=subprocess.DEVNULL)
                    wall = time.perf_counter() - t0
                    s = json.load(open(j))
                    res["cli"] = dict(step_ms=s["ms_per_step"], wall_step_ms=wall * 1e3 / steps)
                else:
                    o = subprocess.run([sys.executable, __file__, "--side", "python", "--data", data,
                                        "--batch", str(a.batch), "--epochs", str(a.epochs), "--hidden",
                                        str(a.hidden), "--dtype", a.dtype, "--threads", str(a.threads)],
                                       check=True, env=clean_env(), capture_output=True, text=True)
                    res["python"] = json.loads(o.stdout.strip().splitlines()[-1])
            rows.append(res)
            print(f"round {k + 1}: cli {res['cli']['step_ms']:.3f} ms/step (process {res['cli']['wall_step_ms']:.3f}), "
                  f"python {res['python']['step_ms']:.3f} ms/step (fit {res['python']['wall_step_ms']:.3f})",
                  file=sys.stderr, flush=True)
    med = statistics.median
    print(f"| shape | dtype | threads | command line ms/step | Regressor.fit ms/step | ratio | "
          f"command line process / step | fit / step | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| ({a.batch}, {a.d_in}, {a.hidden}, {a.d_out}) | {a.dtype} | {a.threads} | "
          f"{med([r['cli']['step_ms'] for r in rows]):.3f} | {med([r['python']['step_ms'] for r in rows]):.3f} | "
          f"{med([r['python']['step_ms'] / r['cli']['step_ms'] for r in rows]):.3f} | "
          f"{med([r['cli']['wall_step_ms'] for r in rows]):.3f} | {med([r['python']['wall_step_ms'] for r in rows]):.3f} | "
          f"{med([r['python']['wall_step_ms'] / r['cli']['wall_step_ms'] for r in rows]):.3f} |")


if __name__ == "__main__":
    main()
