"""Noether charges of a model whose activations are applied inside ``forward`` (issue 26).

    python examples/charges_in_forward.py [--plot docs/figures/charges_in_forward.png]

A 4 → 8 → 8 → 2 network written with functional activations (no ``nn.Sequential`` to read them from),
trained by full-batch gradient descent (lr 1e-3, 400 steps, no decay) on a random regression. With
``torch.relu`` between every layer both unit charges are conserved; with ``torch.tanh`` after the first
layer that pair has no rescaling symmetry: ``symopt.conserved`` leaves it out (with a warning), and the
quantity an activation-blind analysis would report for it drifts.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import symopt
from symopt._layers import incoming, outgoing


class Functional(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.activation = activation

    def forward(self, x):
        return self.c(torch.relu(self.b(self.activation(self.a(x)))))


def train(net, steps=400, lr=1e-3, every=None):
    """Full-batch GD; ``every(step)`` is called before the first step and after each step."""
    torch.manual_seed(1)
    X, Y = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    if every:
        every(0)
    for step in range(1, steps + 1):
        opt.zero_grad()
        ((net(X) - Y) ** 2).mean().backward()
        opt.step()
        if every:
            every(step)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    relu_net = Functional(torch.relu).double()
    tracker = symopt.ConservationTracker(relu_net)
    tracker.record(0)
    relu_curve = []  # (step, largest relative drift of the charges so far)
    train(relu_net, every=lambda step: (tracker.record(step), relu_curve.append((step, max(tracker.drift().values())))))
    drift = tracker.drift()
    torch.manual_seed(0)
    tanh_net = Functional(torch.tanh).double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reported = sorted(symopt.conserved(tanh_net))
    blind = lambda: (incoming(tanh_net.a).square().sum(1) - outgoing(tanh_net.b).square().sum(1))  # noqa: E731
    before = blind()
    tanh_curve = []
    train(tanh_net, every=lambda step: tanh_curve.append((step, float((blind() - before).norm() / before.norm()))))
    pseudo = tanh_curve[-1][1]
    print("relu inside forward, drift of each charge:", {k: f"{v:.2e}" for k, v in drift.items()})
    print("tanh inside forward, charges reported:", reported)
    print("  warning:", str(caught[0].message) if caught else "none")
    print(f"  the activation-blind 'charge' of a→b drifts by {pseudo:.2e}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=200)
        ax.semilogy(*zip(*relu_curve[1:]), label="relu in forward: the charges conserved reports")
        ax.semilogy(*zip(*tanh_curve[1:]), label="tanh in forward: the pair conserved leaves out")
        ax.set_xlabel("gradient-descent step (lr 1e-3)")
        ax.set_ylabel("relative drift")
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
    return {"drift": drift, "reported": reported, "pseudo": pseudo}


if __name__ == "__main__":
    main()
