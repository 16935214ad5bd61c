"""2:4 semi-structured sparsity during training: symopt's ``n_m_sparse`` vs magnitude 2:4 pruning.

    python -m benchmarks.semi_structured [--epochs 30] [--seeds 3]

scikit-learn's digits (70/30 split, random_state 0, pixels / 16), an MLP 64-128-128-10 with ReLU, Adam
(lr 1e-3, batch 64), the same number of epochs in both rows; the two hidden weight matrices get the
2:4 pattern (2 non-zeros in every 4 consecutive inputs of a row), the last layer and the biases stay
dense. Rows:

* ``magnitude 2:4``: the recipe of NVIDIA's ASP (``apex.contrib.sparsity``): train dense for half the
  epochs, keep the 2 largest magnitudes of every 4, fine-tune the other half with the mask applied
  after every step.
* ``symopt n_m_sparse``: ``symopt.n_m_sparse(model, name, 2, 4, total_steps=N)``, coupled decay through
  ``symopt.param_groups``: λ follows a budget of half the entries from 10% to 75% of the steps, then
  the 2:4 pattern lands exactly (the 2 largest of every 4 kept, the others on the mirror's fixed
  point) and training goes on without decay. ``symopt.finalize`` with default arguments.

Prints test accuracy per seed and the median; both rows end with the exact 2:4 pattern.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import symopt

HIDDEN = ("0.weight", "2.weight")


def data():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, torch.tensor(y), test_size=0.3, random_state=0)
    return Xtr, Xte, ytr, yte


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def train(net, params, epochs, Xtr, ytr, seed, after_step=None, batch=64):
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()


def accuracy(net, X, y) -> float:
    with torch.no_grad():
        return float((net(X).argmax(1) == y).float().mean())


def two_of_four(weight: torch.Tensor) -> torch.Tensor:
    groups = weight.detach().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


def pattern_holds(net) -> bool:
    return all(int((net.get_parameter(n).reshape(-1, 4) != 0).sum(1).gt(2).sum()) == 0 for n in HIDDEN)


def symopt_row(seed, epochs, Xtr, ytr, Xte, yte) -> float:
    net = mlp(seed)
    steps = epochs * ((len(Xtr) + 63) // 64)
    for name in HIDDEN:
        symopt.n_m_sparse(net, name, 2, 4, total_steps=steps)
    train(net, symopt.param_groups(net), epochs, Xtr, ytr, seed)
    symopt.finalize(net)  # default tol, no force: the pattern landed
    assert pattern_holds(net)
    return accuracy(net, Xte, yte)


def magnitude_row(seed, epochs, Xtr, ytr, Xte, yte) -> float:
    net = mlp(seed)
    train(net, net.parameters(), epochs // 2, Xtr, ytr, seed)
    masks = {name: two_of_four(net.get_parameter(name)) for name in HIDDEN}

    def apply():
        with torch.no_grad():
            for name, mask in masks.items():
                net.get_parameter(name).mul_(mask)

    apply()
    train(net, net.parameters(), epochs - epochs // 2, Xtr, ytr, seed + 100, after_step=apply)
    assert pattern_holds(net)
    return accuracy(net, Xte, yte)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    Xtr, Xte, ytr, yte = data()
    rows = {"magnitude 2:4": magnitude_row, "symopt n_m_sparse": symopt_row}
    results = {}
    print(f"2:4 sparsity of both hidden layers, digits MLP 64-128-128-10, {args.epochs} epochs, Adam\n")
    for name, row in rows.items():
        accs = [row(seed, args.epochs, Xtr, ytr, Xte, yte) for seed in range(args.seeds)]
        results[name] = accs
        print(f"{name:<20} median {statistics.median(accs):.4f}   per seed " + " ".join(f"{a:.4f}" for a in accs))
    return results


if __name__ == "__main__":
    main()
