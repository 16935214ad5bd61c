"""Seeded generators of built-in problems with a planted sparse / low-rank truth."""

from __future__ import annotations

import torch

from .base import Problem
from .families import (equality_ls, group_lasso, lasso, logistic_l1, low_rank_regression, matrix_completion,
                       tied_least_squares)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _planted_regression(n, d, nonzeros, noise, seed):
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(d, dtype=torch.float64)
    support = torch.randperm(d, generator=g)[:nonzeros]
    truth[support] = torch.randn(nonzeros, generator=g, dtype=torch.float64).sign() * (
        1 + torch.rand(nonzeros, generator=g, dtype=torch.float64))
    return X, X @ truth + noise * torch.randn(n, generator=g, dtype=torch.float64), truth


def _lambda_max_fraction(X, y, fraction):
    """λ as a fraction of λ_max = ‖Xᵀy‖_∞/n, the smallest λ with the all-zero Lasso solution."""
    return fraction * float((X.T @ y).abs().max()) / X.shape[0]


def make_lasso(n=200, d=500, nonzeros=10, noise=0.1, fraction=0.1, seed=0) -> Problem:
    X, y, truth = _planted_regression(n, d, nonzeros, noise, seed)
    p = lasso(X, y, _lambda_max_fraction(X, y, fraction))
    p.meta["truth"] = truth
    return p


def make_group_lasso(n=200, d=400, group_size=4, active_groups=5, noise=0.1, fraction=0.1, seed=0) -> Problem:
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(d // group_size, group_size, dtype=torch.float64)
    active = torch.randperm(d // group_size, generator=g)[:active_groups]
    truth[active] = torch.randn(active_groups, group_size, generator=g, dtype=torch.float64)
    truth = truth.reshape(-1)
    y = X @ truth + noise * torch.randn(n, generator=g, dtype=torch.float64)
    lam_max = float((X.T @ y).reshape(-1, group_size).norm(dim=1).max()) / n
    p = group_lasso(X, y, group_size, fraction * lam_max)
    p.meta["truth"] = truth
    return p


def make_logistic_l1(n=300, d=100, nonzeros=5, fraction=0.1, seed=0) -> Problem:
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(d, dtype=torch.float64)
    truth[torch.randperm(d, generator=g)[:nonzeros]] = 2.0
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(X @ truth)).to(torch.float64)
    lam_max = float((X.T @ (y - 0.5)).abs().max()) / n
    p = logistic_l1(X, y, fraction * lam_max)
    p.meta["truth"] = truth
    return p


def make_equality_ls(n=200, d=100, constraints=10, noise=0.1, margin=1.5, seed=0) -> Problem:
    """Random ``A``; strength = ``margin`` × the Lagrange-multiplier bound at the constrained optimum."""
    X, y, truth = _planted_regression(n, d, d, noise, seed)
    A = torch.randn(constraints, d, generator=_gen(seed + 1), dtype=torch.float64)
    from ..constraints.subspace import orthonormal_rowspace
    O = orthonormal_rowspace(A)
    N = torch.linalg.svd(A).Vh[A.shape[0]:].mT  # null-space basis
    coef = torch.linalg.lstsq(X @ N, y.unsqueeze(1)).solution.squeeze(1)
    w_star = N @ coef
    multipliers = O.mT @ (X.T @ (X @ w_star - y) / n)
    p = equality_ls(X, y, A, strength=margin * float(multipliers.abs().max()))
    p.meta.update(solution=w_star, multiplier_bound=float(multipliers.abs().max()))
    return p


def make_fixed_zeros_ls(n=200, d=100, zeros=20, noise=0.1, margin=1.5, seed=0) -> Problem:
    """Least squares with ``zeros`` entries forced to 0 (some of them non-zero in the truth)."""
    X, y, _ = _planted_regression(n, d, d, noise, seed)
    mask = torch.zeros(d, dtype=torch.bool)
    mask[torch.randperm(d, generator=_gen(seed + 1))[:zeros]] = True
    free = (~mask).nonzero().squeeze(1)
    w_star = torch.zeros(d, dtype=torch.float64)
    w_star[free] = torch.linalg.lstsq(X[:, free], y.unsqueeze(1)).solution.squeeze(1)
    multipliers = (X.T @ (X @ w_star - y) / n)[mask]
    p = equality_ls(X, y, zeros=mask, strength=margin * float(multipliers.abs().max()))
    p.meta.update(solution=w_star, multiplier_bound=float(multipliers.abs().max()))
    return p


def make_tied_least_squares(tasks=3, n=100, d=30, noise=0.1, spread=0.3, margin=1.5, seed=0) -> Problem:
    """``tasks`` regressions whose true weights differ by ``spread``; tied to one shared weight."""
    g = _gen(seed)
    X = torch.randn(tasks, n, d, generator=g, dtype=torch.float64)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    truth = base + spread * torch.randn(tasks, d, generator=g, dtype=torch.float64)
    y = torch.einsum("knd,kd->kn", X, truth) + noise * torch.randn(tasks, n, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X.reshape(-1, d), y.reshape(-1, 1)).solution.squeeze(1)
    grads = torch.einsum("knd,kn->kd", X, torch.einsum("knd,d->kn", X, w_star) - y) / n
    bound = float(grads.abs().max())
    p = tied_least_squares(X, y, strength=margin * bound)
    p.meta.update(solution=w_star.expand(tasks, d).clone(), multiplier_bound=bound)
    return p


def make_matrix_completion(m=50, n=40, rank=3, observed=0.5, noise=0.01, strength=0.5, seed=0) -> Problem:
    g = _gen(seed)
    truth = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g,
                                                                                dtype=torch.float64)
    M = truth + noise * torch.randn(m, n, generator=g, dtype=torch.float64)
    mask = torch.rand(m, n, generator=g) < observed
    p = matrix_completion(M, mask, strength)
    p.meta["truth"] = truth
    return p


def make_low_rank_regression(n=200, p=30, q=20, rank=3, noise=0.1, fraction=0.2, hard_rank=None,
                             orthogonal=False, seed=0) -> Problem:
    """Planted rank-``rank`` coefficients. ``hard_rank=r`` gives the hard-rank variant; with
    ``orthogonal=True`` the design has ``XᵀX = n·I``, so truncated SVD of ``XᵀY/n`` is the exact
    hard-rank optimum (a check for any solver)."""
    g = _gen(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    if orthogonal:
        X = torch.linalg.qr(X).Q * n**0.5
    truth = torch.randn(p, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, q, generator=g,
                                                                                dtype=torch.float64)
    Y = X @ truth + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    if hard_rank is not None:
        problem = low_rank_regression(X, Y, rank=hard_rank)
    else:
        problem = low_rank_regression(X, Y, fraction * float(torch.linalg.matrix_norm(X.T @ Y / n, ord=2)))
    problem.meta["truth"] = truth
    if orthogonal and hard_rank is not None:
        P, S, Qh = torch.linalg.svd(X.T @ Y / n, full_matrices=False)
        problem.meta["solution"] = (P[:, :hard_rank] * S[:hard_rank]) @ Qh[:hard_rank]
    return problem
