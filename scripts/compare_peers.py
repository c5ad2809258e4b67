#!/usr/bin/env python3
"""twolayer against the numpy reference, side by side on this machine.

For each shape and dtype, runs `twolayer sweep` on that single point and
scripts/reference.py on the same shape, alternating R rounds (so a noisy
neighbour hits both alike), each round timing K steps after W warm-up steps.
Both use the same thread count and lr 1e-12 (the reference's 1e-6 diverges
from N = 4096 on, and inf/NaN arithmetic would time something else).
Prints one Markdown table: median ms/step of each (median over rounds of
each round's median), the speed-up (numpy / twolayer, computed per round,
median over rounds), GFLOP/s, and twolayer's fraction of the theoretical
peak (--peak-f64/--peak-f32 GFLOP/s; the defaults are this 2-core Zen 4
machine's 16 f64 / 32 f32 FLOP per cycle per core at 3.5 GHz) and of the
square-GEMM rate the sweep measures in the same run (printed too).

Both sides run with OpenBLAS's own kernel choice: OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are removed from the environment of these commands alone
(some machines set them on purpose; nothing else is changed), and the
kernel set each side ran is printed (numpy's through threadpoolctl). The
order within a round alternates, so drift hits both sides alike.

    target/pyenv/bin/python scripts/compare_peers.py            # the 4 reference shapes
    target/pyenv/bin/python scripts/compare_peers.py --quick    # the first two only
    target/pyenv/bin/python scripts/compare_peers.py --train    # `twolayer train` instead
    PY --peers --torch-python PY                               # + PyTorch, + Debian's library

With --peers, every side runs in every round, the order rotating: twolayer
on the library it links (the native build, scripts/setup.sh), the same
binary on Debian's generic OpenBLAS (LD_LIBRARY_PATH, --debian-lib), numpy,
and PyTorch's manual and autograd steps (scripts/reference_torch.py, run by
--torch-python, a Python with torch installed). The ratios are per round:
the faster PyTorch variant's time over twolayer's, numpy's over twolayer's,
and Debian's library's over the native one's; the table gives their medians.

With --bf16, the bf16 table: in every round, rotating, twolayer's f32
step and its bf16 step (`sweep --dtype f32` and `--dtype bf16`), PyTorch's
f32 autograd step and its autocast bf16 step (scripts/reference_torch.py
--variant autocast: bf16 matmuls through oneDNN, f32 weights); per-round
ratios of twolayer bf16 against its own f32 and against autocast.

With --train, the twolayer side is `twolayer train` as a user runs it (its
default --form auto: the dual form where it saves FLOPs, docs/design.md
§2), timed by its own --json summary over the same steps, and the table
says which form ran; `twolayer sweep` always times the primal step.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [
    # (N, D_in, H, D_out), steps per round
    ((64, 1000, 100, 10), 300),
    ((4096, 1000, 100, 10), 40),
    ((65536, 1000, 100, 10), 6),
    ((8192, 4096, 1024, 256), 3),
]


def flops(n, d, h, o):
    return 4 * n * d * h + 6 * n * h * o


# OpenBLAS's own kernel choice on both sides, for these commands alone.
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


WISDOM = []  # ["--wisdom", FILE] with --wisdom, else ["--no-wisdom"]


def run_twolayer(binary, shape, dtype, threads, steps, warmup, env=None):
    n, d, h, o = shape
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [binary, "sweep", "--n", str(n), "--d-in", str(d), "--hidden", str(h),
             "--d-out", str(o), "--dtype", dtype, "--threads", str(threads),
             "--warmup", str(warmup), "--min-steps", str(steps), "--budget", "0",
             "--out", out] + WISDOM,
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or ENV)
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
    p = report["points"][0]
    return p["ms_per_step"]["median"], p["machine_gemm_gflops"], report["env"]["openblas_core"]


def run_train(binary, shape, dtype, threads, steps, warmup):
    """ms/step of `twolayer train` (default form) over warmup + steps steps."""
    n, d, h, o = shape
    with tempfile.TemporaryDirectory() as out:
        summary = os.path.join(out, "s.json")
        subprocess.run(
            [binary, "train", "--n", str(n), "--d-in", str(d), "--hidden", str(h),
             "--d-out", str(o), "--dtype", dtype, "--threads", str(threads), "--lr", "1e-12",
             "--steps", str(steps + warmup), "--quiet", "--json", summary] + WISDOM,
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        with open(summary) as f:
            s = json.load(f)
    return s["ms_per_step"], s["form"], s["blas_core"]


def run_numpy(python, shape, dtype, threads, steps, warmup):
    n, d, h, o = shape
    r = subprocess.run(
        [python, os.path.join(ROOT, "scripts", "reference.py"), "--n", str(n), "--d-in", str(d),
         "--hidden", str(h), "--d-out", str(o), "--dtype", dtype, "--threads", str(threads),
         "--lr", "1e-12", "--steps", str(steps), "--warmup", str(warmup), "--quiet", "--time"],
        check=True, capture_output=True, text=True, env=ENV)
    m = re.search(r"median ([0-9.]+) ms/step", r.stderr)
    if not m:
        sys.exit(f"reference.py printed no timing: {r.stderr}")
    k = re.search(r"BLAS (.*)$", r.stderr.strip())
    return float(m.group(1)), k.group(1) if k else "unknown"


def run_torch(python, shape, dtype, threads, steps, warmup, variant):
    n, d, h, o = shape
    r = subprocess.run(
        [python, os.path.join(ROOT, "scripts", "reference_torch.py"), "--n", str(n), "--d-in", str(d),
         "--hidden", str(h), "--d-out", str(o), "--dtype", dtype, "--threads", str(threads),
         "--variant", variant, "--steps", str(steps), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True, env=ENV)
    m = re.search(r"median ([0-9.e+-]+) ms/step", r.stderr)
    if not m:
        sys.exit(f"reference_torch.py printed no timing: {r.stderr}")
    return float(m.group(1))


def rotate(rounds, sides):
    """Runs every side once per round, the order rotating by one each
    round; returns each side's list of results."""
    names = list(sides)
    out = {k: [] for k in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(sides[name]())
    return out


def peers_table(args, shapes):
    import numpy
    env_debian = dict(ENV, LD_LIBRARY_PATH=args.debian_lib)
    info = json.loads(subprocess.run([args.binary, "info", "--json"], check=True,
                                     capture_output=True, text=True, env=ENV).stdout)
    lib = info["env"].get("openblas_library") or {}
    print(f"twolayer ({lib.get('version')} {lib.get('target')}, {lib.get('path')}) vs the same binary on "
          f"Debian's OpenBLAS ({args.debian_lib}), numpy {numpy.__version__} and PyTorch; "
          f"{args.threads} threads, {args.rounds} rotating rounds, lr 1e-12, OPENBLAS_CORETYPE and "
          f"OPENBLAS_L2_SIZE removed on every side; plans: {args.wisdom or 'built-in'}; CPU: "
          f"{info['env']['cpu_model']}; medians in ms/step (twolayer: `sweep`, the primal step)\n")
    print("| shape (N, D_in, H, D_out) | dtype | twolayer native | twolayer on Debian's | numpy "
          "| PyTorch manual | PyTorch autograd | vs faster PyTorch | vs numpy | native vs Debian's "
          "| kernels: native / Debian's |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for shape, steps in shapes:
        for dtype in args.dtypes.split(","):
            sides = {
                "native": lambda: run_twolayer(args.binary, shape, dtype, args.threads, steps,
                                               args.warmup),
                "debian": lambda: run_twolayer(args.binary, shape, dtype, args.threads, steps,
                                               args.warmup, env_debian),
                "numpy": lambda: run_numpy(args.python, shape, dtype, args.threads, steps, args.warmup),
                "manual": lambda: run_torch(args.torch_python, shape, dtype, args.threads, steps,
                                            args.warmup, "manual"),
                "autograd": lambda: run_torch(args.torch_python, shape, dtype, args.threads, steps,
                                              args.warmup, "autograd"),
            }
            skip = set(args.skip.split(",")) if args.skip else set()
            sides = {k: v for k, v in sides.items() if k not in skip}
            r = rotate(args.rounds, sides)
            med = statistics.median
            nat = [x[0] for x in r["native"]]
            npy = [x[0] for x in r["numpy"]]
            tor = [min(a, b) for a, b in zip(r["manual"], r["autograd"])]
            if "debian" in r:
                deb = [x[0] for x in r["debian"]]
                deb_ms = f"{med(deb):.4g}"
                deb_ratio = f"{med([d / m for d, m in zip(deb, nat)]):.2f}x"
                deb_core = r["debian"][-1][2]
            else:
                deb_ms, deb_ratio, deb_core = "not run", "", "-"
            print(f"| {shape} | {dtype} | {med(nat):.4g} | {deb_ms} | {med(npy):.4g} | "
                  f"{med(r['manual']):.4g} | {med(r['autograd']):.4g} | "
                  f"{med([t / m for t, m in zip(tor, nat)]):.2f}x | "
                  f"{med([t / m for t, m in zip(npy, nat)]):.2f}x | {deb_ratio} | "
                  f"{r['native'][-1][2]} / {deb_core} |", flush=True)


def alternate(rounds, ours, numpy_side):
    """Runs `ours()` and `numpy_side()` `rounds` times, the order
    alternating: their results, and the per-round ratios numpy / ours."""
    mine, theirs, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            a = ours()
            b = numpy_side()
        else:
            b = numpy_side()
            a = ours()
        mine.append(a)
        theirs.append(b)
        ratios.append(b[0] / a[0])
    return mine, theirs, ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "twolayer"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the two smaller shapes")
    ap.add_argument("--train", action="store_true",
                    help="time `twolayer train` (its default form) instead of the sweep's step")
    ap.add_argument("--only-seed", action="store_true", help="only the seed shape")
    ap.add_argument("--wisdom", help="run twolayer with the plans of this wisdom file "
                    "(`twolayer tune`); without it, the built-in plans")
    ap.add_argument("--peers", action="store_true",
                    help="every side: twolayer native and on Debian's library, numpy, PyTorch")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="a Python with torch installed (for --peers)")
    ap.add_argument("--debian-lib", default="/usr/lib/x86_64-linux-gnu/openblas-pthread",
                    help="the folder of Debian's libopenblas.so.0 (for --peers)")
    ap.add_argument("--dtypes", default="f64,f32", help="for --peers")
    ap.add_argument("--skip", help="with --peers: sides left out, e.g. debian")
    ap.add_argument("--shapes", help="with --peers: indices into the shape list, e.g. 2,3")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 against f32 and PyTorch autocast (with --torch-python)")
    ap.add_argument("--peak-f64", type=float, default=115.0)
    ap.add_argument("--peak-f32", type=float, default=230.0)
    args = ap.parse_args()
    WISDOM[:] = ["--wisdom", args.wisdom] if args.wisdom else ["--no-wisdom"]
    import numpy
    shapes = SHAPES[:1] if args.only_seed else SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    if args.train:
        return train_table(args, shapes)
    if args.peers:
        return peers_table(args, shapes)
    if args.bf16:
        return bf16_table(args, [s for s in shapes if s[0][0] > 64])
    print(f"twolayer vs numpy {numpy.__version__}, {args.threads} threads, {args.rounds} interleaved "
          f"rounds, lr 1e-12, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed on both sides; "
          f"plans: {args.wisdom or 'built-in'}; medians in ms/step\n")
    print("| shape (N, D_in, H, D_out) | dtype | numpy ms | twolayer ms | speed-up | twolayer GFLOP/s "
          "| % of peak | GEMM rate GFLOP/s | % of GEMM rate | kernels: twolayer / numpy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for shape, steps in shapes:
        for dtype in ("f64", "f32"):
            mine, theirs, ratios = alternate(
                args.rounds,
                lambda: run_twolayer(args.binary, shape, dtype, args.threads, steps, args.warmup),
                lambda: run_numpy(args.python, shape, dtype, args.threads, steps, args.warmup))
            ours = [m[0] for m in mine]
            rates = [m[1] for m in mine]
            core = mine[-1][2]
            numpy_core = theirs[-1][1]
            theirs = [t[0] for t in theirs]
            t = statistics.median(ours)
            g = flops(*shape) / t / 1e6
            peak = args.peak_f64 if dtype == "f64" else args.peak_f32
            rate = statistics.median(rates)
            print(f"| {shape} | {dtype} | {statistics.median(theirs):.4g} | {t:.4g} | "
                  f"{statistics.median(ratios):.2f}x | {g:.1f} | {100 * g / peak:.0f}% | "
                  f"{rate:.1f} | {100 * g / rate:.0f}% | {core} / {numpy_core} |", flush=True)


def bf16_table(args, shapes):
    info = json.loads(subprocess.run([args.binary, "info", "--json"], check=True,
                                     capture_output=True, text=True, env=ENV).stdout)
    lib = info["env"].get("openblas_library") or {}
    print(f"twolayer bf16 ({lib.get('version')} {lib.get('target')}) against its f32 step and "
          f"PyTorch's f32 autograd and autocast bf16 steps; {args.threads} threads, {args.rounds} "
          f"rotating rounds, lr 1e-12, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed on every "
          f"side; CPU: {info['env']['cpu_model']}; medians in ms/step\n")
    print("| shape (N, D_in, H, D_out) | twolayer f32 | twolayer bf16 | PyTorch f32 autograd "
          "| PyTorch autocast bf16 | bf16 vs own f32 | bf16 vs autocast | bf16 GEMM rate / f32's |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, steps in shapes:
        sides = {
            "f32": lambda: run_twolayer(args.binary, shape, "f32", args.threads, steps, args.warmup),
            "bf16": lambda: run_twolayer(args.binary, shape, "bf16", args.threads, steps, args.warmup),
            "torch_f32": lambda: run_torch(args.torch_python, shape, "f32", args.threads, steps,
                                           args.warmup, "autograd"),
            "autocast": lambda: run_torch(args.torch_python, shape, "bf16", args.threads, steps,
                                          args.warmup, "autocast"),
        }
        r = rotate(args.rounds, sides)
        med = statistics.median
        f32 = [x[0] for x in r["f32"]]
        bf = [x[0] for x in r["bf16"]]
        rate = med([b[1] / f[1] for b, f in zip(r["bf16"], r["f32"])])
        print(f"| {shape} | {med(f32):.4g} | {med(bf):.4g} | {med(r['torch_f32']):.4g} | "
              f"{med(r['autocast']):.4g} | {med([f / b for f, b in zip(f32, bf)]):.2f}x | "
              f"{med([a / b for a, b in zip(r['autocast'], bf)]):.2f}x | {rate:.2f} |", flush=True)


def train_table(args, shapes):
    import numpy
    print(f"`twolayer train` (default form) vs numpy {numpy.__version__}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, lr 1e-12, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE "
          f"removed on both sides; plans: {args.wisdom or 'built-in'}; medians in ms/step\n")
    print("| shape (N, D_in, H, D_out) | dtype | numpy ms | twolayer train ms | form | speed-up "
          "| kernels: twolayer / numpy |")
    print("|---|---|---:|---:|---|---:|---|")
    for shape, steps in shapes:
        for dtype in ("f64", "f32"):
            mine, theirs, ratios = alternate(
                args.rounds,
                lambda: run_train(args.binary, shape, dtype, args.threads, steps, args.warmup),
                lambda: run_numpy(args.python, shape, dtype, args.threads, steps, args.warmup))
            ours = [m[0] for m in mine]
            form, core = mine[-1][1], mine[-1][2]
            numpy_core = theirs[-1][1]
            theirs = [t[0] for t in theirs]
            print(f"| {shape} | {dtype} | {statistics.median(theirs):.4g} | "
                  f"{statistics.median(ours):.4g} | {form} | {statistics.median(ratios):.1f}x | "
                  f"{core} / {numpy_core} |", flush=True)


if __name__ == "__main__":
    main()
