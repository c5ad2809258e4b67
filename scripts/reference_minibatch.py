#!/usr/bin/env python3
"""The numpy reference for `twolayer train --data`: shuffled minibatch SGD
on a dataset, with the same batches as twolayer (the permutations of
crates/twolayer/src/dataset/shuffle.rs and the schedule of crates/twolayer/src/dataset/batches.rs, written
out again here), the same loss and the same validation.

    python3 scripts/reference_minibatch.py --data d.npz --weights w0.npz \\
        --batch 64 --epochs 3 --lr 0.05 --loss mean --val-fraction 0.2 \\
        --losses l.txt --save w.npz --metrics m.csv

--data takes one .npz (x, y) or two .npy files; y may be 1-D (one column).
Losses are written as 't loss' lines, metrics as twolayer's CSV. The
defaults are twolayer's for --data: the mean loss, lr 0.01, batches of 32,
20 epochs, and biases as nn.Linear has them (b1, b2 from --weights when it
holds them, else starting at zero; --no-bias for the model without).

--engine torch runs the same batches through PyTorch instead:
nn.Sequential(nn.Linear(D_in, H), nn.ReLU(), nn.Linear(H, D_out)) (bias
as above), nn.MSELoss (or its sum) and torch.optim.SGD, from the same
weights — the parity check against what PyTorch users train.
"""
import argparse
import sys

import numpy as np

M64 = (1 << 64) - 1
SPLIT = 0x5350_4C49_5400_0000
EPOCH = 0x4550_4F43_4800_0000
ROUNDS = 6


def mix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Permutation:
    def __init__(self, n, key):
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.n, self.h = n, bits // 2
        self.mask = (1 << self.h) - 1
        self.keys = [mix(key ^ r) for r in range(ROUNDS)]

    def encrypt(self, i):
        l, r = i >> self.h, i & self.mask
        for k in self.keys:
            l, r = r, l ^ (mix(k ^ r) & self.mask)
        return (l << self.h) | r

    def apply(self, p):
        i = self.encrypt(p)
        while i >= self.n:
            i = self.encrypt(i)
        return i


def load(files):
    if len(files) == 1:
        z = np.load(files[0])
        x, y = z["x"], z["y"]
    else:
        x, y = np.load(files[0]), np.load(files[1])
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim == 1:
        x = x[:, None]
    return x, y


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--val", nargs="+")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--weights", required=True, help="starting w1, w2 (.npz)")
    p.add_argument("--batch", type=int)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=["sum", "mean"], default="mean")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--engine", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    p.add_argument("--losses")
    p.add_argument("--save")
    p.add_argument("--metrics")
    a = p.parse_args()
    dt = np.float64 if a.dtype == "f64" else np.float32

    x, y = load(a.data)
    x, y = x.astype(dt), y.astype(dt)
    w = np.load(a.weights)
    w1, w2 = w["w1"].astype(dt), w["w2"].astype(dt)
    bias = not a.no_bias
    if bias and "b1" in w:
        b1, b2 = w["b1"].astype(dt), w["b2"].astype(dt)
    else:
        b1, b2 = np.zeros(w1.shape[1], dt), np.zeros(w2.shape[1], dt)
    m = x.shape[0]
    n_val = int(round(a.val_fraction * m)) if a.val_fraction else 0
    split = Permutation(m, mix(a.seed ^ SPLIT))
    train_row = (lambda j: j) if n_val == 0 else (lambda j: split.apply(n_val + j))
    n_train = m - n_val
    a.batch = a.batch or min(32, n_train)
    per_epoch = n_train // a.batch
    if a.val:
        vx, vy = load(a.val)
        vx, vy = vx.astype(dt), vy.astype(dt)
    elif n_val:
        vrows = sorted(split.apply(v) for v in range(n_val))
        vx, vy = x[vrows], y[vrows]
    else:
        vx = None
    scale = 1.0 / (a.batch * y.shape[1]) if a.loss == "mean" else 1.0

    if a.engine == "torch":
        torch_step, weights = torch_model(a, dt, w1, w2, b1, b2, bias)
    losses, metrics = [], []
    for e in range(a.epochs):
        order = Permutation(n_train, mix(mix(a.seed ^ EPOCH) ^ e))
        for b in range(per_epoch):
            rows = sorted(train_row(order.apply(q)) for q in range(b * a.batch, (b + 1) * a.batch))
            xb, yb = x[rows], y[rows]
            if a.engine == "torch":
                losses.append(torch_step(xb, yb))
                continue
            # The warm-up's step, with the loss scaled for --loss mean,
            # and nn.Linear's biases unless --no-bias.
            h = xb.dot(w1)
            if bias:
                h = h + b1
            h_relu = np.maximum(h, 0)
            y_pred = h_relu.dot(w2)
            if bias:
                y_pred = y_pred + b2
            loss = np.square(y_pred - yb).sum() * scale
            grad_y_pred = 2.0 * (y_pred - yb) * dt(scale)
            grad_w2 = h_relu.T.dot(grad_y_pred)
            grad_h_relu = grad_y_pred.dot(w2.T)
            grad_h = grad_h_relu.copy()
            grad_h[h < 0] = 0
            grad_w1 = xb.T.dot(grad_h)
            w1 -= dt(a.lr) * grad_w1
            w2 -= dt(a.lr) * grad_w2
            if bias:
                b1 -= dt(a.lr) * grad_h.sum(0)
                b2 -= dt(a.lr) * grad_y_pred.sum(0)
            losses.append(float(loss))
        step = (e + 1) * per_epoch
        train_loss = sum(losses[-per_epoch:]) / per_epoch
        if a.engine == "torch":
            w1, w2, b1, b2 = weights()
        if vx is not None:
            if bias:
                err = np.maximum(vx.dot(w1) + b1, 0).dot(w2) + b2 - vy
            else:
                err = np.maximum(vx.dot(w1), 0).dot(w2) - vy
            sum_sq = float(np.square(err.astype(np.float64)).sum())
            mse = sum_sq / err.size
            val_loss = mse if a.loss == "mean" else sum_sq * a.batch / vx.shape[0]
            metrics.append(f"{e + 1},{step},{train_loss!r},{val_loss!r},{mse!r}")
        else:
            metrics.append(f"{e + 1},{step},{train_loss!r},,")

    if a.engine == "torch":
        w1, w2, b1, b2 = weights()
    if a.losses:
        with open(a.losses, "w") as f:
            f.writelines(f"{t} {l!r}\n" for t, l in enumerate(losses))
    else:
        sys.stdout.writelines(f"{t} {l!r}\n" for t, l in enumerate(losses))
    if a.save:
        if bias:
            np.savez(a.save, w1=w1, w2=w2, b1=b1, b2=b2)
        else:
            np.savez(a.save, w1=w1, w2=w2)
    if a.metrics:
        with open(a.metrics, "w") as f:
            f.write("epoch,step,train_loss,val_loss,val_mse\n")
            f.writelines(l + "\n" for l in metrics)


def torch_model(a, dt, w1, w2, b1, b2, bias):
    """The model, loss and optimiser as a PyTorch user writes them, from
    these weights: returns step(x, y) -> loss and weights() -> numpy
    copies (w1 D_in×H, w2 H×D_out, as twolayer stores them)."""
    import torch

    tdt = torch.float64 if dt == np.float64 else torch.float32
    d_in, h = w1.shape
    d_out = w2.shape[1]
    model = torch.nn.Sequential(
        torch.nn.Linear(d_in, h, bias=bias), torch.nn.ReLU(), torch.nn.Linear(h, d_out, bias=bias)
    ).to(tdt)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w1.T.copy()))
        model[2].weight.copy_(torch.from_numpy(w2.T.copy()))
        if bias:
            model[0].bias.copy_(torch.from_numpy(b1))
            model[2].bias.copy_(torch.from_numpy(b2))
    loss_fn = torch.nn.MSELoss(reduction="mean" if a.loss == "mean" else "sum")
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)

    def step(xb, yb):
        opt.zero_grad()
        loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return float(loss.detach())

    def weights():
        t = lambda p: p.detach().numpy().copy()
        w1, w2 = t(model[0].weight).T.copy(), t(model[2].weight).T.copy()
        if bias:
            return w1, w2, t(model[0].bias), t(model[2].bias)
        return w1, w2, np.zeros(h, dt), np.zeros(d_out, dt)

    return step, weights


if __name__ == "__main__":
    main()
