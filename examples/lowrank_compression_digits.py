"""Low-rank compression of an MLP on scikit-learn's digits: accuracy vs parameters at equal rank for

* symopt ``low_rank(target_rank=r)`` — nuclear-norm decay whose λ adapts until the rank is r,
* fixed rank ``W = U Vᵀ`` with ``r`` columns and no decay (the GeoTorch-style hard parametrisation),
* truncated SVD of a dense model after training (no retraining).

The hidden layers (64→128→128) are compressed; every model is then exported with
``symopt.export(mode="compressed")`` so the parameter count is the physical one (two thin Linear
layers per factorised matrix).

    python examples/lowrank_compression_digits.py [--ranks 2 4 8] [--steps 800]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import symopt

LAYERS = ("0.weight", "2.weight")


def data():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    to = lambda a: torch.tensor(a, dtype=torch.float32)
    return to(Xtr), torch.tensor(ytr), to(Xte), torch.tensor(yte)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def fit(model, X, y, steps, params=None):
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


def evaluate(model, X, y, snapped: float = 0.0) -> tuple[int, float, float]:
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    return sum(p.numel() for p in model.parameters()), acc, snapped


def dcs(r, Xtr, ytr, Xte, yte, steps):
    model = mlp()
    with warnings.catch_warnings():  # factors of width 4r where that is narrow: the random init truncated to it
        warnings.simplefilter("ignore", UserWarning)
        for name in LAYERS:
            symopt.low_rank(model, name, target_rank=r)
    fit(model, Xtr, ytr, steps, params=symopt.param_groups(model, lr=3e-3))  # Adam: coupled decay
    # Adam (steps of size ~lr) leaves the (r+1)-th singular value small but not 0 after a few hundred
    # steps: report how far keeping the r largest moves each weight, relative to its norm, then snap.
    snapped = max(entry.relative_violation for entry in symopt.certify(model, tol=0.0))
    return evaluate(symopt.export(model, mode="compressed", tol=0.0, force=True), Xte, yte, snapped)


def fixed_rank(r, Xtr, ytr, Xte, yte, steps):
    model = mlp()
    with warnings.catch_warnings():  # "keeping its best rank-r approximation" of the random init
        warnings.simplefilter("ignore", UserWarning)
        for name in LAYERS:
            symopt.low_rank(model, name, max_rank=r, strength=1e-3)
    fit(model, Xtr, ytr, steps)  # plain Adam, no penalty, no decay: only the width r constrains
    return evaluate(symopt.export(model, mode="compressed", tol=0.0), Xte, yte)


def truncated_svd(r, dense, Xte, yte):
    model = mlp()
    model.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for name in LAYERS:
            W = model.get_parameter(name)
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            W.copy_(U[:, :r] * S[:r] @ Vh[:r])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in LAYERS:  # registering keeps the (already rank-r) value; export factorises it
            symopt.low_rank(model, name, max_rank=r, strength=1e-3)
    return evaluate(symopt.export(model, mode="compressed", tol=1e-5), Xte, yte)


def main(ranks=(2, 4, 8), steps: int = 800) -> list[tuple[str, int, int, float, float]]:
    Xtr, ytr, Xte, yte = data()
    dense = fit(mlp(), Xtr, ytr, steps)
    rows = [("dense", 128, *evaluate(dense, Xte, yte))]
    for r in ranks:
        rows.append(("symopt target_rank", r, *dcs(r, Xtr, ytr, Xte, yte, steps)))
        rows.append(("fixed rank U Vᵀ, no decay", r, *fixed_rank(r, Xtr, ytr, Xte, yte, steps)))
        rows.append(("truncated SVD after training", r, *truncated_svd(r, dense, Xte, yte)))
    print(f"digits MLP 64-128-128-10, hidden layers compressed, {steps} Adam steps, float32\n")
    print(f"{'method':<30}{'rank':>5}{'params':>8}{'test acc':>10}{'snap ‖ΔW‖/‖W‖':>16}")
    for name, r, params, acc, moved in rows:
        print(f"{name:<30}{r:>5}{params:>8}{acc:>10.3f}{moved:>16.1e}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()
    main(tuple(args.ranks), args.steps)
