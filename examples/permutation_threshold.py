"""The decay threshold of the natural permutation symmetry, predicted and measured (issue 26).

    python examples/permutation_threshold.py [--plot docs/figures/permutation_threshold.png]

Two identical tanh units (3 → 2 → 1, a regression on 128 samples) are trained by full-batch gradient
descent (lr 0.1, 20,000 steps) with coupled weight decay λ; they stay identical (the permutation's fixed
subspace). ``symopt.permutation_threshold`` then gives λ* and the curvature h along the antisymmetric
direction; the units are nudged apart by 1e-7 along it, and the log-growth per step of their difference
over the next 30 steps is compared with the prediction ``log|1 − lr(h/2 + λ)|``.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import symopt


def identical_units() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight[1] = net[0].weight[0]
        net[0].bias[1] = net[0].bias[0]
        net[2].weight[0, 1] = net[2].weight[0, 0]
    return net


def loss(out, target):
    return 0.5 * ((out - target) ** 2).mean()


def gap(net) -> float:
    w_in, w_out = torch.cat([net[0].weight, net[0].bias[:, None]], 1).detach(), net[2].weight.T.detach()
    return float(torch.cat([w_in[0] - w_in[1], w_out[0] - w_out[1]]).norm())


def measure(strength: float, lr: float = 0.1, settle: int = 20000, steps: int = 30, settle_lr: float | None = None):
    """``(found, measured growth rate, predicted growth rate)``: settle by ``settle`` GD steps at
    ``settle_lr`` (default ``lr``), nudge along the predicted direction, measure over ``steps`` at ``lr``."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 3, generator=g, dtype=torch.float64)
    y = torch.sin(2 * X[:, :1]) + X[:, 1:2] * X[:, 2:3]
    net = identical_units()
    opt = torch.optim.SGD(net.parameters(), lr=lr if settle_lr is None else settle_lr, weight_decay=strength)

    def step():
        opt.zero_grad()
        loss(net(X), y).backward()
        opt.step()

    for _ in range(settle):
        step()
    for group in opt.param_groups:  # plain SGD keeps no state: only the step size changes
        group["lr"] = lr
    found = symopt.permutation_threshold(net, "0", (0, 1), loss, X, y)
    with torch.no_grad():
        d = 1e-7 * found.direction
        net[0].weight[0] += d[:3]
        net[0].weight[1] -= d[:3]
        net[0].bias[0] += d[3]
        net[0].bias[1] -= d[3]
        net[2].weight[0, 0] += d[4]
        net[2].weight[0, 1] -= d[4]
    start = gap(net)
    for _ in range(steps):
        step()
    return found, math.log(gap(net) / start) / steps, found.growth_rate(lr, strength)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None, help="also measure a finer grid of λ and plot it here")
    args = parser.parse_args(argv)
    strengths = (0.0, 0.03, 0.1, 0.3) if not args.plot else (0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
    print(f"{'λ':>6}{'λ*':>9}{'units':>8}{'measured':>12}{'predicted':>12}")
    rows = []
    for strength in strengths:
        found, measured, predicted = measure(strength)
        rows.append((strength, found.threshold, measured, predicted))
        print(f"{strength:>6}{found.threshold:>9.4f}{'merge' if strength > found.threshold else 'split':>8}"
              f"{measured:>12.5f}{predicted:>12.5f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        lam, star, measured, predicted = zip(*rows)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=200)
        axes[0].plot(lam, predicted, "-", color="0.5", label="predicted log|1 − lr(h/2 + λ)|")
        axes[0].plot(lam, measured, "o", label="measured")
        axes[0].axhline(0, color="k", lw=0.6)
        axes[0].set_xlabel("decay λ")
        axes[0].set_ylabel("log-growth of the units' difference per step")
        axes[0].legend(fontsize=8)
        axes[1].plot(lam, star, "o-", label="threshold λ* where the units settled")
        axes[1].plot(lam, lam, "--", color="0.5", label="λ* = λ")
        axes[1].set_xlabel("decay λ")
        axes[1].set_ylabel("λ*")
        axes[1].set_title("λ > λ*: the units merge", fontsize=9)
        axes[1].legend(fontsize=8)
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot)
    return rows


if __name__ == "__main__":
    main()
