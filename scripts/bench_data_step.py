#!/usr/bin/env python3
"""The `--data` step against the fastest in-memory step of the same shape:
`twolayer train --data` (batches gathered from a dataset) beside `twolayer
train --n B ...` on one fixed batch (biases, the mean loss, the primal form,
as a data run trains) on 1 and on 2 threads, in interleaved rounds, each in
a fresh process, with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed.
Prints per-round ratios' medians: data step / fastest in-memory step.

    python3 scripts/bench_data_step.py --twolayer target/release/twolayer \\
        [--rounds 7] [--shapes 32:100:100:1,200:100:100:1,4096:1000:100:10]

Each shape's dataset is standard normal x and y with 50 batches' worth of
rows (at least 20,000), saved once with np.savez; a data run trains
`--epochs` over it. ms/step is the summary's (steps alone: validation and
outputs excluded on both sides).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

import numpy as np


def env():
    return {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def ms_per_step(cmd):
    with tempfile.NamedTemporaryFile(suffix=".json") as j:
        subprocess.run(cmd + ["-q", "--json", j.name], check=True, env=env(), stderr=subprocess.DEVNULL)
        s = json.load(open(j.name))
    return s["ms_per_step"], s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twolayer", required=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shapes", default="32:100:100:1,200:100:100:1,4096:1000:100:10")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        for spec in a.shapes.split(","):
            b, d, h, o = map(int, spec.split(":"))
            rows = max(20_000, 50 * b)
            rng = np.random.default_rng(0)
            data = os.path.join(t, f"d{b}.npz")
            np.savez(data, x=rng.standard_normal((rows, d)), y=rng.standard_normal((rows, o)))
            steps = max(200, min(20_000, int(4e9 / (4 * b * d * h))))
            epochs = max(1, -(-steps // (rows // b)))
            common = ["--hidden", str(h), "--lr", "1e-4"]
            sides = {
                "data": [a.twolayer, "train", "--data", data, "--batch", str(b), "--epochs", str(epochs),
                         "--threads", str(a.threads)] + common,
                **{f"memory {k}t": [a.twolayer, "train", "--n", str(b), "--d-in", str(d), "--d-out", str(o),
                                    "--bias", "--loss", "mean", "--form", "primal", "--steps", str(steps),
                                    "--threads", str(k)] + common
                   for k in range(1, a.threads + 1)},
            }
            times = {k: [] for k in sides}
            ratios = []
            how = ""
            for r in range(a.rounds):
                names = list(sides)
                names = names[r % len(names):] + names[:r % len(names)]
                got = {}
                for n in names:
                    got[n], s = ms_per_step(sides[n])
                    if n == "data":
                        how = (f"{s['shards']} shard(s) x {s['blas_threads']} OpenBLAS, data {s.get('data')}, "
                               f"gathered {s.get('reader')}")
                    times[n].append(got[n])
                ratios.append(got["data"] / min(v for k, v in got.items() if k != "data"))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"({b}, {d}, {h}, {o}) f64, {a.threads} threads, {a.rounds} rounds: "
                  + ", ".join(f"{k} {v:.4f} ms/step" for k, v in med.items())
                  + f"; data / fastest in-memory (per round, median) {statistics.median(ratios):.3f}"
                  + f" [{min(ratios):.3f}, {max(ratios):.3f}]; the data run: {how}", flush=True)


if __name__ == "__main__":
    main()
