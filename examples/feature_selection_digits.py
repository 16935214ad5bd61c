"""Feature selection on scikit-learn's digits (64 pixels, 10 classes): ``group_sparse(dim=1)`` on the
first layer of an MLP keeps exactly ``k`` input pixels (budget ``max_groups=k``), against

* L1-regularised logistic regression (scikit-learn, ``C`` searched until it uses ``k`` pixels), and
* ``torch.nn.utils.prune.ln_structured`` magnitude pruning of the same MLP's input columns to ``k``
  pixels after dense training, then fine-tuned with the mask.

    python examples/feature_selection_digits.py [--features 12] [--steps 600]

Prints, per method: pixels used and test accuracy (same split, same MLP for both MLP methods).
"""

from __future__ import annotations

import argparse

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

import symopt


def data():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0) + 1e-3  # constant border pixels stay finite
    to = lambda a: torch.tensor(a, dtype=torch.float32)
    return to((Xtr - mean) / std), torch.tensor(ytr), to((Xte - mean) / std), torch.tensor(yte)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def fit(model, X, y, steps, params=None, lr=1e-2):
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


def accuracy(model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def used_pixels(weight: torch.Tensor) -> int:
    return int((weight.detach().abs().sum(0) > 0).sum())


def dcs(Xtr, ytr, Xte, yte, k, steps):
    model = mlp()
    symopt.group_sparse(model, "0.weight", dim=1, max_groups=k)  # one gate per input pixel
    fit(model, Xtr, ytr, steps, params=symopt.param_groups(model, lr=1e-2))  # Adam: coupled decay
    symopt.finalize(model, tol=1e-4)  # keeps the k largest columns (float32: tol 1e-4); the budget holds exactly
    kept = (model[0].weight.detach().abs().sum(0) > 0).expand_as(model[0].weight)
    prune.custom_from_mask(model[0], "weight", kept)  # fine-tune under the selected pixels, as pruning does
    fit(model, Xtr, ytr, steps // 3)
    return used_pixels(model[0].weight), accuracy(model, Xte, yte)


def magnitude_pruning(Xtr, ytr, Xte, yte, k, steps):
    model = fit(mlp(), Xtr, ytr, steps)
    prune.ln_structured(model[0], "weight", amount=64 - k, n=2, dim=1)  # drop whole input columns
    fit(model, Xtr, ytr, steps // 3)  # fine-tune under the mask
    return used_pixels(model[0].weight), accuracy(model, Xte, yte)


# pure L1: sklearn ≥ 1.8 spells it l1_ratio=1 (penalty= is deprecated), older versions penalty="l1"
L1 = {"l1_ratio": 1.0} if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8) else {"penalty": "l1"}


def l1_logistic(Xtr, ytr, Xte, yte, k):
    """Largest C whose model uses at most k pixels (a pixel is used if any class weight is non-zero)."""
    def run(C):
        clf = LogisticRegression(C=C, solver="saga", max_iter=3000, tol=1e-4, **L1)
        clf.fit(Xtr.numpy(), ytr.numpy())
        return int((np.abs(clf.coef_).sum(0) > 0).sum()), clf
    lo, hi = 1e-4, 1.0
    best = run(lo)
    for _ in range(14):  # bisection on log C
        mid = (lo * hi) ** 0.5
        used, clf = run(mid)
        if used <= k:
            lo, best = mid, (used, clf)
        else:
            hi = mid
    used, clf = best
    return used, float((clf.predict(Xte.numpy()) == yte.numpy()).mean())


def main(features: int = 12, steps: int = 600) -> dict[str, tuple[int, float]]:
    Xtr, ytr, Xte, yte = data()
    rows = {
        "symopt group_sparse(dim=1)": dcs(Xtr, ytr, Xte, yte, features, steps),
        "magnitude pruning + fine-tune": magnitude_pruning(Xtr, ytr, Xte, yte, features, steps),
        "L1 logistic regression": l1_logistic(Xtr, ytr, Xte, yte, features),
        "dense MLP (all 64 pixels)": (64, accuracy(fit(mlp(), Xtr, ytr, steps), Xte, yte)),
    }
    print(f"digits, budget {features} of 64 pixels, {steps} Adam steps\n")
    print(f"{'method':<32}{'pixels':>7}{'test acc':>10}")
    for name, (used, acc) in rows.items():
        print(f"{name:<32}{used:>7}{acc:>10.3f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    main(args.features, args.steps)
