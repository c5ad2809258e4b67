#!/usr/bin/env python3
"""One process against K MPI ranks on this machine, side by side.

For each shape and dtype, alternating R rounds (so a noisy neighbour hits
every variant alike), runs:

  * `twolayer sweep --threads K·T` on that point: one process with every
    core (the single-process baseline);
  * `mpirun -np K twolayer sweep --threads T --allreduce …` for each
    variant (blocking; overlap with P pieces): K ranks of T threads.

Every sweep times S steps after W warm-up steps, lr 1e-12. Each MPI sweep
also reports the time inside MPI calls and its scaling efficiency
T1 / (K · T_K), T1 being one rank alone on the whole batch with T threads
in the same run. Prints one Markdown table: medians over rounds of each
round's median; the ratio K-ranks / one-process is taken per round, then
its median.

Needs the binary built with `--features mpi` and OpenMPI's mpirun
(scripts/setup.sh --mpi). Standard library only.

    python3 scripts/mpi_scaling.py                       # the 4 reference shapes, f64 and f32
    python3 scripts/mpi_scaling.py --quick --rounds 2    # the first two shapes
    python3 scripts/mpi_scaling.py --variants blocking,overlap:1,overlap:4,overlap:16
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from compare_peers import SHAPES  # noqa: E402  the same four shapes and steps per round


def sweep(cmd_prefix, binary, shape, dtype, threads, steps, warmup, extra):
    n, d, h, o = shape
    with tempfile.TemporaryDirectory() as out:
        cmd = cmd_prefix + [
            binary, "sweep", "--n", str(n), "--d-in", str(d), "--hidden", str(h),
            "--d-out", str(o), "--dtype", dtype, "--threads", str(threads),
            "--warmup", str(warmup), "--min-steps", str(steps), "--budget", "0",
            "--out", out] + extra
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"mpi_scaling: {' '.join(cmd)} failed:\n{r.stderr}")
        with open(os.path.join(out, "report.json")) as f:
            return json.load(f)["points"][0]


def parse_variant(v):
    if v == "blocking":
        return ("blocking", ["--allreduce", "blocking"])
    if v.startswith("overlap:"):
        p = v.split(":", 1)[1]
        return (f"overlap {p}", ["--allreduce", "overlap", "--allreduce-pieces", p])
    sys.exit(f"mpi_scaling: unknown variant '{v}' (blocking or overlap:P)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "twolayer"))
    ap.add_argument("--ranks", type=int, default=2, help="K [2]")
    ap.add_argument("--threads", type=int, default=1, help="T, threads per rank [1]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtypes", default="f64,f32")
    ap.add_argument("--variants", default="blocking,overlap:8",
                    help="comma-separated: blocking, overlap:P [blocking,overlap:8]")
    ap.add_argument("--quick", action="store_true", help="the first two shapes only")
    a = ap.parse_args()
    if a.ranks < 1 or a.threads < 1 or a.rounds < 1:
        sys.exit("mpi_scaling: --ranks, --threads and --rounds must be at least 1")
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"mpi_scaling: no binary at {a.binary} "
                 "(cargo build --release --features mpi)")
    variants = [parse_variant(v.strip()) for v in a.variants.split(",") if v.strip()]
    env_ok = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    os.environ.update(env_ok)
    mpirun = ["mpirun", "-np", str(a.ranks)]
    shapes = SHAPES[:2] if a.quick else SHAPES

    names = [name for name, _ in variants]
    print(f"1 process × {a.ranks * a.threads} threads against {a.ranks} MPI ranks × "
          f"{a.threads} thread(s); {a.rounds} rounds, lr 1e-12; medians in ms/step\n")
    head = ["shape (N, D_in, H, D_out)", "dtype", f"1 × {a.ranks * a.threads} ms"]
    for n in names:
        head += [f"{a.ranks} × {a.threads} {n} ms", f"ratio ({n})", f"in MPI ms ({n})",
                 f"scaling eff. ({n})"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(head) - 2))
    for shape, steps in shapes:
        for dtype in [d.strip() for d in a.dtypes.split(",") if d.strip()]:
            one = []
            per = {n: {"ms": [], "ratio": [], "mpi": [], "eff": []} for n in names}
            for _ in range(a.rounds):
                p = sweep([], a.binary, shape, dtype, a.ranks * a.threads, steps, a.warmup, [])
                t1 = p["ms_per_step"]["median"]
                one.append(t1)
                for name, extra in variants:
                    q = sweep(mpirun, a.binary, shape, dtype, a.threads, steps, a.warmup, extra)
                    tk = q["ms_per_step"]["median"]
                    per[name]["ms"].append(tk)
                    per[name]["ratio"].append(tk / t1)
                    per[name]["mpi"].append(q["mpi"]["allreduce_ms"]["median"])
                    per[name]["eff"].append(q["mpi"]["scaling_efficiency"])
            med = statistics.median
            row = [str(shape), dtype, f"{med(one):.4g}"]
            for n in names:
                v = per[n]
                row += [f"{med(v['ms']):.4g}", f"{med(v['ratio']):.2f}",
                        f"{med(v['mpi']):.3g}", f"{med(v['eff']):.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)
    print("\nratio = K-rank step / one-process step (below 1: the ranks are faster); "
          "in MPI = time per step inside MPI calls (slowest rank); scaling eff. = "
          "one rank alone on the whole batch / (K × K-rank step).")


if __name__ == "__main__":
    main()
