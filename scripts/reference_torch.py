#!/usr/bin/env python3
"""The same step in PyTorch, timed as scripts/reference.py times numpy's.

Three variants, the ways PyTorch users write it:

  manual    tensors and hand-written gradients, the numpy reference line
            by line (h = x.mm(w1), ..., w1 -= lr * grad_w1)
  autograd  nn.Linear(bias=False) -> ReLU -> nn.Linear(bias=False),
            MSELoss(reduction="sum"), optim.SGD, loss.backward()
  autocast  autograd under torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 matmuls (oneDNN), f32 weights, loss and update — what
            twolayer's --dtype bf16 is measured against

Prints, on stderr, `median X ms/step over K steps` (after W warm-up steps)
and `BLAS ...` naming what PyTorch computes with, as reference.py does.

    python scripts/reference_torch.py --n 4096 --dtype f64 --variant manual --steps 20
"""
import argparse
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d-in", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--d-out", type=int, default=10)
    ap.add_argument("--dtype", choices=["f64", "f32", "bf16"], default="f64")
    ap.add_argument("--variant", choices=["manual", "autograd", "autocast"], default="manual")
    ap.add_argument("--lr", type=float, default=1e-12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.dtype == "bf16" and args.variant != "autocast":
        sys.exit("reference_torch: bf16 runs as --variant autocast (f32 weights, bf16 matmuls)")
    if args.variant == "autocast" and args.dtype != "bf16":
        sys.exit("reference_torch: --variant autocast is the bf16 run: use --dtype bf16")
    dt = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.float32}[args.dtype]
    n, d, h, o = args.n, args.d_in, args.hidden, args.d_out
    x = torch.randn(n, d, dtype=dt)
    y = torch.randn(n, o, dtype=dt)
    times = []

    if args.variant == "manual":
        w1 = torch.randn(d, h, dtype=dt)
        w2 = torch.randn(h, o, dtype=dt)

        def step():
            hh = x.mm(w1)
            h_relu = hh.clamp(min=0)
            y_pred = h_relu.mm(w2)
            loss = (y_pred - y).pow(2).sum().item()
            grad_y_pred = 2.0 * (y_pred - y)
            grad_w2 = h_relu.t().mm(grad_y_pred)
            grad_h_relu = grad_y_pred.mm(w2.t())
            grad_h = grad_h_relu.clone()
            grad_h[hh < 0] = 0
            grad_w1 = x.t().mm(grad_h)
            w1.sub_(args.lr * grad_w1)
            w2.sub_(args.lr * grad_w2)
            return loss
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(d, h, bias=False),
            torch.nn.ReLU(),
            torch.nn.Linear(h, o, bias=False),
        ).to(dt)
        loss_fn = torch.nn.MSELoss(reduction="sum")
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)

        def step():
            opt.zero_grad(set_to_none=False)
            if args.variant == "autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y_pred = model(x)
                loss = loss_fn(y_pred.float(), y)
            else:
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

    for _ in range(args.warmup):
        step()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    cfg = torch.__config__.show()
    blas = "MKL" if "USE_MKL=ON" in cfg or "BLAS_INFO=mkl" in cfg else "unknown BLAS"
    onednn = "oneDNN" if "USE_MKLDNN=ON" in cfg or "mkldnn" in cfg.lower() else ""
    print(f"median {statistics.median(times):.6g} ms/step over {args.steps} steps", file=sys.stderr)
    print(f"BLAS PyTorch {torch.__version__} ({blas}{', ' + onednn if onednn else ''}), "
          f"{torch.get_num_threads()} threads", file=sys.stderr)


if __name__ == "__main__":
    main()
