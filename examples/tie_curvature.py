"""A tie's anchor carries the curvature of every copy: the safe learning rate is about 1/k (issue 26).

    python examples/tie_curvature.py [--plot docs/figures/tie_curvature.png]

``symopt.tie`` stores the first copy as the anchor and every later copy as ``θ_j = θ_1 + u_j ⊙ v_j``.
On the constraint (``u_j ⊙ v_j = 0``) the loss depends on the anchor through all k copies at once, so
its Hessian in the anchor is the sum of every block, ``H_anchor = Σ_{i,j} ∂²ℓ/∂θ_i∂θ_j``: about k × one
copy's curvature when the copies see independent data, up to k² × when they add coherently. The
factors add nothing there (their loss curvature vanishes at ``u = v = 0``), so plain gradient descent is
stable iff ``lr < 2 / λ_max(H_anchor)``.

The model: k linear maps ``R^8 → R`` applied to k independent input blocks and summed (one shared
weight, as a layer reused k times), a least-squares loss on 256 samples, the copies tied with λ = 0.1
and started equal. For k = 1 (no tie), 2, 4, 8 the example computes the predicted limit
``2 / λ_max(H_anchor)`` from the exact Hessian, and trains 300 steps of SGD (full batch, coupled
decay) at 0.9× and 1.1× that limit.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import symopt

D, N = 8, 256


class Shared(nn.Module):
    """k copies of one linear map, each on its own block of the input; their outputs add up."""

    def __init__(self, k: int):
        super().__init__()
        self.copies = nn.ModuleList(nn.Linear(D, 1, bias=False) for _ in range(k))
        with torch.no_grad():
            for layer in self.copies[1:]:
                layer.weight.copy_(self.copies[0].weight)  # start on the constraint

    def forward(self, x):
        return sum(layer(x[:, j]) for j, layer in enumerate(self.copies))


def data(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, k, D, generator=g, dtype=torch.float64)
    y = X.sum(1) @ torch.randn(D, generator=g, dtype=torch.float64) + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)
    return X, y.unsqueeze(1)


def loss(out, y):
    return 0.5 * ((out - y) ** 2).mean()


def limits(k: int) -> tuple[float, float]:
    """``(2 / λ_max(H_anchor), 2 / λ_max(one copy's block))`` at the data of ``data(k)``."""
    X, y = data(k)
    tied = torch.autograd.functional.hessian(lambda w: loss(X.sum(1) @ w[:, None], y), torch.zeros(D, dtype=torch.float64))
    alone = torch.autograd.functional.hessian(lambda w: loss(X[:, 0] @ w[:, None], y), torch.zeros(D, dtype=torch.float64))
    return 2 / float(torch.linalg.eigvalsh(tied)[-1]), 2 / float(torch.linalg.eigvalsh(alone)[-1])


def train(k: int, lr: float, steps: int = 300, strength: float = 0.1) -> float:
    """The final loss of full-batch SGD at ``lr`` (inf if it diverged)."""
    X, y = data(k)
    torch.manual_seed(0)
    model = Shared(k).double()
    if k > 1:
        symopt.tie(model, [f"copies.{j}.weight" for j in range(k)], strength=strength)
    opt = torch.optim.SGD(symopt.param_groups(model), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        value = loss(model(X), y)
        if not torch.isfinite(value) or value > 1e6:
            return float("inf")
        value.backward()
        opt.step()
    with torch.no_grad():
        return float(loss(model(X), y))


def main(argv=None, ks=(1, 2, 4, 8)) -> list:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    print(f"{'k':>3} {'2/λmax one copy':>16} {'2/λmax anchor':>14} {'ratio':>6} {'loss at 0.9×':>13} {'loss at 1.1×':>13}")
    rows = []
    for k in ks:
        tied, alone = limits(k)
        below, above = train(k, 0.9 * tied), train(k, 1.1 * tied)
        rows.append((k, alone, tied, below, above))
        print(f"{k:>3} {alone:>16.4f} {tied:>14.4f} {alone / tied:>6.2f} {below:>13.3g} {above:>13.3g}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=200)
        kk = [r[0] for r in rows]
        ax.loglog(kk, [r[1] for r in rows], "s--", color="0.5", label="one copy: 2/λmax")
        ax.loglog(kk, [r[2] for r in rows], "o-", label="tied anchor: 2/λmax(Σ blocks) (predicted limit)")
        ax.loglog(kk, [r[1] / r[0] for r in rows], ":", color="k", label="one copy's limit / k")
        for k, _, tied, below, above in rows:
            ax.plot([k], [0.9 * tied], "v", color="tab:green", ms=5)
            ax.plot([k], [1.1 * tied], "^", color="tab:red" if above == float("inf") else "tab:green", ms=5)
        from matplotlib.ticker import NullFormatter
        ax.set_xticks(kk, [str(k) for k in kk])
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels would overlap
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks([0.1, 0.2, 0.4, 0.8, 1.6], ["0.1", "0.2", "0.4", "0.8", "1.6"])
        ax.set_xlabel("copies k")
        ax.set_ylabel("largest stable learning rate (GD)")
        ax.set_title("markers: 0.9× / 1.1× the limit; green converged, red diverged", fontsize=8)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
    return rows


if __name__ == "__main__":
    main()
