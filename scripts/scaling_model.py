#!/usr/bin/env python3
"""Predicted scaling efficiency of data-parallel twolayer over K nodes.

Cost model (docs/distributed.md): with the batch split over K nodes, a
step computes for T1/K (T1: the measured single-node step time) and then
allreduces the gradients (D_in*H + H*D_out values, plus the loss) with a
ring: 2(K-1)/K * bytes / bandwidth, plus 2(K-1) hops of latency. Nothing
overlaps (the measured gain of overlapping is below 1%, see the docs), so

    efficiency(K) = (T1/K) / (T1/K + T_allreduce(K)).

    python3 scripts/scaling_model.py                 # f64, the default T1s
    python3 scripts/scaling_model.py --t1 0.36 22 367 1600 --latency-us 5
"""
import argparse

SHAPES = [(64, 1000, 100, 10), (4096, 1000, 100, 10), (65536, 1000, 100, 10), (8192, 4096, 1024, 256)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--t1", type=float, nargs=4, default=[0.36, 22.0, 367.0, 1600.0],
                    help="measured ms per step on one node, for the four shapes")
    ap.add_argument("--bytes-per-value", type=int, default=8, help="8 for f64, 4 for f32")
    ap.add_argument("--latency-us", type=float, default=5.0, help="per-hop latency")
    ap.add_argument("--gbps", type=float, nargs="+", default=[10, 25, 100])
    args = ap.parse_args()
    ks = [1, 2, 4, 8, 16, 32, 64]
    for bw in args.gbps:
        print(f"\n{bw:g} Gb/s, {args.latency_us:g} us per hop, {args.bytes_per_value} bytes per value\n")
        print("| shape | allreduce MB | T1 ms | " + " | ".join(f"K={k}" for k in ks) + " |")
        print("|---|---:|---:|" + "---:|" * len(ks))
        for (n, d, h, o), t1 in zip(SHAPES, args.t1):
            byt = (d * h + h * o + 1) * args.bytes_per_value
            cells = []
            for k in ks:
                tc = t1 / k
                ta = 0.0 if k == 1 else (2 * (k - 1) / k * byt / (bw * 1e9 / 8) * 1e3
                                         + 2 * (k - 1) * args.latency_us * 1e-3)
                cells.append(f"{100 * tc / (tc + ta):.0f}%")
            print(f"| ({n}, {d}, {h}, {o}) | {byt / 1e6:.2f} | {t1:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
