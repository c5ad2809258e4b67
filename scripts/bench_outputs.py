#!/usr/bin/env python3
"""What a run's outputs cost its steps: `twolayer train --data` with and
without --metrics (and any other flags given), in interleaved rounds, the
median ms/step of each and their ratio per round, from each run's --json
summary (`ms_per_step`: the steps alone; `outputs_seconds`: the time
between them).

    python3 scripts/bench_outputs.py --twolayer target/release/twolayer \\
        --data d.npz --rounds 11 -- --val-fraction 0.2 --epochs 200

Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for a benchmark.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def one(twolayer, data, extra, metrics, tmp):
    out = os.path.join(tmp, "s.json")
    cmd = [twolayer, "train", "--data", data, "-q", "--json", out] + extra
    if metrics:
        cmd += ["--metrics", os.path.join(tmp, "m.csv"), "--save", os.path.join(tmp, "w.npz")]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    with open(out) as f:
        s = json.load(f)
    return s["ms_per_step"], s["outputs_seconds"], s["steps"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twolayer", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    rows = {False: [], True: []}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            # Alternate which goes first, so drift hits both alike.
            order = [False, True] if r % 2 == 0 else [True, False]
            got = {m: one(a.twolayer, a.data, a.extra, m, tmp) for m in order}
            for m in order:
                rows[m].append(got[m])
            ratios.append(got[True][0] / got[False][0])
    for m in (False, True):
        ms = statistics.median(x[0] for x in rows[m])
        out = statistics.median(x[1] for x in rows[m])
        print(f"{'with' if m else 'without'} --metrics: {ms:.5f} ms/step (median of {a.rounds}), "
              f"outputs {out * 1e3:.3f} ms per run, {rows[m][0][2]} steps")
    print(f"ratio with/without, median of per-round ratios: {statistics.median(ratios):.4f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    sys.exit(main())
