"""Functional collapse that the weights alone do not show, seen by ``symopt.diagnose`` on inputs (issue 26).

    python examples/functional_collapse.py [--plot docs/figures/functional_collapse.png]

An MLP 64 → 128 → 128 → 10 (ReLU) is trained on scikit-learn's digits by Adam (lr 1e-2, full batch,
400 steps) with coupled weight decay λ ∈ {0, 1e-3, 1e-2}. For each λ, ``symopt.diagnose(net)`` (the
weights: exact zeros, identical units) and ``symopt.diagnose(net, X)`` (the activations on the
training inputs) are compared: dead units, near-dead units (output RMS below 1% of the layer's
largest), near-duplicate units (output cosine ≥ 0.99) and the features' effective rank per hidden
layer. The plot shows each hidden unit's output RMS relative to its layer's largest, sorted, with the
1% line below which ``diagnose`` calls a live unit near-dead.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


import symopt


def data():
    from sklearn.datasets import load_digits
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    return X, torch.tensor(digits.target)


def train(strength: float, steps: int = 400, seed: int = 0) -> tuple[nn.Sequential, float]:
    X, y = data()
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=strength)  # Adam's decay is coupled
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((net(X).argmax(1) == y).float().mean())
    return net, accuracy


def unit_rms(net: nn.Sequential, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each hidden unit's output RMS over the inputs, after its ReLU, relative to the layer's largest."""
    out, h = {}, X
    with torch.no_grad():
        for i, layer in enumerate(net):
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                rms = h.square().mean(0).sqrt()
                out[str(i - 1)] = rms / rms.max()
    return out


def main(argv=None, strengths=(0.0, 1e-3, 1e-2), steps: int = 400) -> list:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    X, _ = data()
    print(f"{'λ':>6} {'layer':>5} {'train acc':>9} {'weights: dead':>13} {'identical':>9} "
          f"{'inputs: dead':>12} {'near-dead':>9} {'near-dup units':>14} {'feature rank':>12}")
    rows, curves = [], {}
    for strength in strengths:
        net, accuracy = train(strength, steps)
        weights, inputs = symopt.diagnose(net), symopt.diagnose(net, X)
        curves[strength] = unit_rms(net, X)
        for name in ("0", "2"):
            w, f = weights[name], inputs[name]
            duplicates = sum(len(g) for g in f.near_duplicate)
            rows.append((strength, name, accuracy, len(w.dead), sum(len(g) for g in w.identical), len(f.dead),
                         len(f.near_dead), duplicates, f.feature_rank))
            print(f"{strength:>6g} {name:>5} {accuracy:>9.3f} {len(w.dead):>13} {sum(len(g) for g in w.identical):>9} "
                  f"{len(f.dead):>12} {len(f.near_dead):>9} {duplicates:>14} {f.feature_rank:>12.1f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=200, sharey=True)
        for ax, name in zip(axes, ("0", "2")):
            for strength, curve in curves.items():
                ax.semilogy(torch.sort(curve[name], descending=True).values.clamp(min=1e-6).numpy(),
                            label=f"λ = {strength:g}")
            ax.axhline(0.01, color="k", lw=0.8, ls="--", label="near-dead below 1%")
            ax.set_title(f"hidden layer {name}", fontsize=9)
            ax.set_xlabel("unit, sorted by output RMS")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("output RMS / layer's largest\n(exactly 0 drawn at 1e-6)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
    return rows


if __name__ == "__main__":
    main()
