"""Sparse regression on scikit-learn's diabetes data: symopt.sparse on an nn.Linear, trained by plain
gradient descent, against sklearn's Lasso over a range of strengths.

    python examples/lasso_diabetes.py

Prints, per λ: non-zeros found by each, the max |w_dcs − w_sklearn| and the objective gap.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso

import symopt


def fit_dcs(X: torch.Tensor, y: torch.Tensor, lam: float, steps: int) -> np.ndarray:
    torch.manual_seed(0)
    model = torch.nn.Linear(X.shape[1], 1, bias=False).double()
    symopt.sparse(model, "weight", strength=lam)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.5), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (model(X).squeeze(1) - y).square().mean()).backward()
        opt.step()
    symopt.finalize(model, tol=1e-8)
    return model.weight.detach().numpy()[0]


def objective(X, y, w, lam):
    return 0.5 * np.mean((X @ w - y) ** 2) + lam * np.abs(w).sum()


def main(steps: int = 20000) -> list[tuple]:
    data = load_diabetes()
    X = (data.data - data.data.mean(0)) / data.data.std(0)
    y = (data.target - data.target.mean()) / data.target.std()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rows = []
    print(f"{'λ':>6}  {'nnz dcs':>7}  {'nnz sklearn':>11}  {'max |Δw|':>9}  {'objective gap':>13}")
    for lam in (0.3, 0.1, 0.03, 0.01):
        w_dcs = fit_dcs(Xt, yt, lam, steps)
        w_ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=10**6).fit(X, y).coef_
        gap = objective(X, y, w_dcs, lam) - objective(X, y, w_ref, lam)
        row = (lam, int((w_dcs != 0).sum()), int((w_ref != 0).sum()), float(np.abs(w_dcs - w_ref).max()), gap)
        rows.append(row)
        print(f"{row[0]:>6g}  {row[1]:>7d}  {row[2]:>11d}  {row[3]:>9.1e}  {row[4]:>13.1e}")
    return rows


if __name__ == "__main__":
    main()
