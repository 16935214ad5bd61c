"""An "auto" tie under Adam, with and without a landing: how far apart the copies end.

    python examples/tie_under_adam.py [--epochs 30]

Two 64×64 hidden layers of a digits MLP (64-64-64-10) tied with ``strength="auto"``, Adam (lr 1e-3,
batch 64). Without ``total_steps`` the exact penalty closes the tie only as training converges with λ
above the multipliers, and Adam's per-coordinate steps leave the copies apart, so ``finalize`` refuses.
With ``total_steps`` the tie lands at 75% of the steps: the copies are then equal, exactly.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import symopt


def run(epochs: int, land: bool):
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    batches = (len(X) + 63) // 64
    symopt.tie(net, ["0.weight", "2.weight"], **(dict(total_steps=epochs * batches) if land else {}))
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3)
    symopt.bind(opt)
    for _ in range(epochs):
        for index in torch.randperm(len(X)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[index]), y[index]).backward()
            opt.step()
    gap = float((net[0].weight - net[2].weight).detach().abs().max())
    try:
        symopt.finalize(net)
        finalized = "finalize: ok"
    except ValueError as err:
        finalized = "finalize refused: " + str(err).split(":")[-2].strip()[:60]
    return gap, finalized


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python examples/tie_under_adam.py")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    out = {}
    for land in (False, True):
        gap, finalized = run(args.epochs, land)
        label = "total_steps (lands)" if land else '"auto", no landing'
        out[land] = gap
        print(f"{label:22s} max |θ_1 − θ_2| after {args.epochs} epochs: {gap:.2e}   {finalized}")
    return out


if __name__ == "__main__":
    main()
