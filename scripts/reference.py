#!/usr/bin/env python3
"""The numpy reference for twolayer: the algorithm of docs/design.md section 1,
exactly as the classic warm-up writes it, with options to read and write the
same .npz files as `twolayer train` and to dump per-step losses.

    python3 scripts/reference.py                      # the warm-up, print "t loss"
    python3 scripts/reference.py --make-init init.npz # write random x, y, w1, w2
    python3 scripts/reference.py --init init.npz --losses l.txt --save w.npz
    python3 scripts/reference.py --n 4096 --dtype f32 --time --quiet

--threads sets OPENBLAS_NUM_THREADS (and the other BLAS thread variables)
before numpy is imported. --time prints one summary line on stderr with the
median ms per step over the timed steps (after --warmup untimed ones).
"""
import argparse
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--d-in", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--d-out", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--lr-w1", type=float, default=None, help="learning rate of w1 (default --lr)")
    p.add_argument("--lr-w2", type=float, default=None, help="learning rate of w2 (default --lr)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--dtype", choices=["f64", "f32"], default=None,
                   help="default f64, or the file's with --init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--zero-w1", action="store_true", help="initialise w1 to zeros")
    p.add_argument("--init", help="read x, y, w1, w2 from this .npz")
    p.add_argument("--make-init", metavar="FILE", help="write random x, y, w1, w2 to FILE and exit")
    p.add_argument("--save", help="write the final w1, w2 to this .npz")
    p.add_argument("--losses", help="write every loss as 't loss' lines (repr precision)")
    p.add_argument("--quiet", action="store_true", help="do not print per-step losses")
    p.add_argument("--time", action="store_true", help="print median ms/step on stderr")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps before the timed ones")
    p.add_argument("--dual", action="store_true",
                   help="the dual form (docs/design.md section 2): train C in w1 = w1_0 + x.T C")
    return p.parse_args()


def main():
    args = parse_args()
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    if args.init:
        f = np.load(args.init)
        x, y, w1, w2 = (f[k] for k in ("x", "y", "w1", "w2"))
        dtype = x.dtype
        if args.dtype:
            dtype = np.dtype({"f64": np.float64, "f32": np.float32}[args.dtype])
            x, y, w1, w2 = (a.astype(dtype) for a in (x, y, w1, w2))
    else:
        dtype = np.dtype(np.float32 if args.dtype == "f32" else np.float64)
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.n, args.d_in)).astype(dtype)
        y = rng.standard_normal((args.n, args.d_out)).astype(dtype)
        w1 = rng.standard_normal((args.d_in, args.hidden)).astype(dtype)
        w2 = rng.standard_normal((args.hidden, args.d_out)).astype(dtype)
    if args.zero_w1:
        w1 = np.zeros_like(w1)
    if args.make_init:
        np.savez(args.make_init, x=x, y=y, w1=w1, w2=w2)
        return

    lr1 = args.lr if args.lr_w1 is None else args.lr_w1
    lr2 = args.lr if args.lr_w2 is None else args.lr_w2
    out = sys.stdout
    losses = []
    times = []
    if args.dual:
        # G = x x^T and P = x w1_0 once; C = 0, so w1 = w1_0 + x^T C.
        gram = x.dot(x.T)
        base = x.dot(w1)
        coef = np.zeros((x.shape[0], w1.shape[1]), dtype=x.dtype)
    for t in range(args.warmup + args.steps):
        start = time.perf_counter()
        # ---- the reference step, docs/design.md section 1 ----
        h = base + gram.dot(coef) if args.dual else x.dot(w1)
        h_relu = np.maximum(h, 0)
        y_pred = h_relu.dot(w2)
        loss = np.square(y_pred - y).sum()
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        if args.dual:
            coef -= lr1 * grad_h
        else:
            grad_w1 = x.T.dot(grad_h)
            w1 -= lr1 * grad_w1
        w2 -= lr2 * grad_w2
        # --------------------------------------------------
        if t < args.warmup:
            continue
        times.append(time.perf_counter() - start)
        step = t - args.warmup
        losses.append(float(loss))
        if not args.quiet:
            out.write(f"{step} {float(loss)!r}\n")

    if args.dual:
        w1 = w1 + x.T.dot(coef)
    if args.losses:
        with open(args.losses, "w") as f:
            for step, loss in enumerate(losses):
                f.write(f"{step} {loss!r}\n")
    if args.save:
        np.savez(args.save, w1=w1, w2=w2)
    if args.time:
        times.sort()
        med = times[len(times) // 2] * 1e3
        n, d_in = x.shape
        hidden, d_out = w2.shape
        flops = 4 * n * d_in * hidden + 6 * n * hidden * d_out
        print(f"reference: {args.steps} steps of ({n}, {d_in}, {hidden}, {d_out}) {dtype.name}: "
              f"median {med:.4f} ms/step, {flops / med / 1e6:.1f} GFLOP/s; numpy {np.__version__}; "
              f"BLAS {blas_kernels()}",
              file=sys.stderr)


def blas_kernels():
    """The BLAS numpy runs and its kernel set, through threadpoolctl when
    it is installed (e.g. 'openblas 0.3.31 SkylakeX')."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture')}"
    return "unknown"


if __name__ == "__main__":
    main()
