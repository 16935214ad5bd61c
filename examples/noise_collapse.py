"""Gradient noise collapses Hadamard atoms that carry signal, and noise_collapse predicts which (issue 26).

    python examples/noise_collapse.py [--steps 6000] [--plot docs/figures/noise_collapse.png]

A sparse regression (64 samples, 8 features, every true coefficient non-zero: 1, −0.8, …, 0.05, target
noise σ = 3) trained with ``symopt.sparse(..., strength=1e-9)`` — practically no decay — by plain SGD
for a grid of batch sizes and learning rates. For each run: how many coefficients ended exactly at 0
(|w| < 1e-6), how many ``symopt.noise_collapse`` predicted from the per-sample gradients at the end
(Lyapunov exponent of the collapsed state < 0), and on how many of the 8 the two agree. Each run is
also watched by ``symopt.watch_noise``, which needs no data: it estimates the same exponents from
the batch gradients the run takes; the last column says whether it warned during training.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import symopt

W_TRUE = torch.tensor([1.0, -0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)


def run(batch_size: int, lr: float, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 8, generator=g, dtype=torch.float64)
    y = (X @ W_TRUE + 3.0 * torch.randn(64, generator=g, dtype=torch.float64)).unsqueeze(1)
    torch.manual_seed(seed)
    model = nn.Linear(8, 1, bias=False).double()
    symopt.sparse(model, "weight", strength=1e-9)
    opt = torch.optim.SGD(symopt.param_groups(model), lr=lr)
    watch = symopt.watch_noise(model, opt)
    for _ in range(steps):
        idx = torch.randint(0, 64, (batch_size,), generator=g)
        opt.zero_grad()
        (0.5 * ((model(X[idx]) - y[idx]) ** 2).mean()).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the watch's warning is read from watch.warned
            opt.step()
    w = model.weight.detach().reshape(-1)
    if not bool(torch.isfinite(w).all()):
        return None
    zero = w.abs() < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = symopt.noise_collapse(model, "weight", lambda o, t: 0.5 * ((o - t) ** 2).mean(), X, y,
                                       lr=lr, batch_size=batch_size)
    predicted = torch.zeros(8, dtype=torch.bool)
    predicted[list(report.collapsing)] = True
    return int(zero.sum()), int(predicted.sum()), int((zero == predicted).sum()), "weight" in watch.warned


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    batches, lrs = (1, 2, 4, 64), (0.01, 0.03, 0.05, 0.07)
    print(f"{'batch':>5} {'lr':>5} {'zeros':>6} {'predicted':>10} {'agree /8':>9} {'watch warned':>13}")
    grid = {}
    for b in batches:
        for lr in lrs:
            out = run(b, lr, args.steps)
            grid[b, lr] = out
            text = "diverged" if out is None else f"{out[0]:>6} {out[1]:>10} {out[2]:>9} {str(out[3]):>13}"
            print(f"{b:>5} {lr:>5} {text}")
    done = [v for v in grid.values() if v is not None]
    print(f"agreement: {sum(v[2] for v in done)} of {8 * len(done)} coordinate-runs")
    print(f"watch_noise warned in {sum(v[3] for v in done)} of {len(done)} runs; runs with a true coefficient at 0: "
          f"{sum(v[0] > 0 for v in done)}; warned without one: {sum(v[3] and v[0] == 0 for v in done)}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=200, sharey=True)
        for ax, which, title in ((axes[0], 0, "coefficients at exactly 0"), (axes[1], 1, "predicted to collapse")):
            for b in batches:
                ax.plot(lrs, [grid[b, lr][which] if grid[b, lr] else float("nan") for lr in lrs], "o-",
                        label=f"batch {b}")
            ax.set_xlabel("learning rate")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("of 8 (all carry signal)")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.plot)
    return grid


if __name__ == "__main__":
    main()
