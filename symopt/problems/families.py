"""Built-in problem families: each a torch loss, a symopt constraint and a cvxpy twin.

Scaling follows scikit-learn: data terms are averaged over the n samples.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..constraints import GroupSparse, LowRank, Sparse, Subspace
from .base import Problem


def _as_tensor(name: str, value) -> Tensor:
    tensor = torch.as_tensor(value)
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.float64)
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return tensor


def _check_xy(X, y) -> tuple[Tensor, Tensor]:
    X, y = _as_tensor("X", X), _as_tensor("y", y)
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, d) and y (n,), got X {tuple(X.shape)} and y {tuple(y.shape)}")
    return X, y.to(X.dtype)


def _least_squares(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (X @ theta.reshape(-1) - y).square().mean()


def lasso(X, y, strength: float) -> Problem:
    """``1/(2n)‖Xw − y‖² + λ‖w‖₁`` (scikit-learn's ``Lasso(alpha=λ, fit_intercept=False)``)."""
    X, y = _check_xy(X, y)
    n, d = X.shape

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n) + strength * cp.norm1(w), []

    Sparse(strength)  # validate strength now, not at solve time
    return Problem(f"lasso {n}x{d}", (d,), _least_squares, lambda: Sparse(strength), {"X": X, "y": y}, twin,
                   {"family": "lasso", "strength": strength})


def group_lasso(X, y, group_size: int, strength: float) -> Problem:
    """``1/(2n)‖Xw − y‖² + λ Σ_g ‖w_g‖₂`` with consecutive groups of ``group_size`` columns.

    The variable has shape ``(d / group_size, group_size)``: row g is group g.
    """
    X, y = _check_xy(X, y)
    n, d = X.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or d % group_size:
        raise ValueError(f"group_size must be a positive int dividing d = {d}, got {group_size!r}")
    G = d // group_size

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable((G, group_size))
        fit = cp.sum_squares(X @ cp.vec(w, order="C") - y) / (2 * n)
        return w, fit + strength * cp.sum(cp.norm(w, 2, axis=1)), []

    GroupSparse(0, strength)
    return Problem(f"group_lasso {n}x{d}/{group_size}", (G, group_size), _least_squares,
                   lambda: GroupSparse(0, strength), {"X": X, "y": y}, twin,
                   {"family": "group_lasso", "strength": strength, "group_size": group_size})


def _logistic(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(X @ theta, y)


def logistic_l1(X, y, strength: float) -> Problem:
    """Mean log-loss (no intercept), labels in {0, 1}, ``+ λ‖w‖₁``."""
    X, y = _check_xy(X, y)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("logistic_l1: labels y must be 0 or 1")
    n, d = X.shape

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        z = X @ w
        return w, cp.sum(cp.logistic(z) - cp.multiply(y, z)) / n + strength * cp.norm1(w), []

    Sparse(strength)
    return Problem(f"logistic_l1 {n}x{d}", (d,), _logistic, lambda: Sparse(strength), {"X": X, "y": y}, twin,
                   {"family": "logistic_l1", "strength": strength})


def equality_ls(X, y, A, strength: float = 1.0) -> Problem:
    """``1/(2n)‖Xw − y‖²`` subject to ``A w = 0`` (Subspace constraint; ``strength`` must exceed the
    Lagrange multipliers ``‖Oᵀ∇ℓ(w*)‖_∞`` for exactness)."""
    X, y = _check_xy(X, y)
    A = _as_tensor("A", A).to(X.dtype)
    n, d = X.shape
    Subspace(A, strength).validate(torch.empty(d), "w")

    A_np = A.detach().cpu().numpy()

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n), [A_np @ w == 0]

    return Problem(f"equality_ls {n}x{d}, {A.shape[0]} eq.", (d,), _least_squares,
                   lambda: Subspace(A, strength), {"X": X, "y": y}, twin,
                   {"family": "equality_ls", "strength": strength})


def _completion(theta: Tensor, M: Tensor, mask: Tensor) -> Tensor:
    return 0.5 * (mask * (theta - M)).square().sum()


def matrix_completion(M, mask, strength: float) -> Problem:
    """``½‖P_Ω(W − M)‖²_F + λ‖W‖_*`` with Ω the True entries of ``mask``."""
    M = _as_tensor("M", M)
    mask = torch.as_tensor(mask)
    if M.dim() != 2 or mask.shape != M.shape:
        raise ValueError(f"M must be a matrix and mask of its shape, got {tuple(M.shape)} and {tuple(mask.shape)}")
    if not bool(mask.bool().any()):
        raise ValueError("matrix_completion: mask has no observed entry")
    maskf = mask.to(M.dtype)

    def twin(M, mask):
        import cvxpy as cp
        W = cp.Variable(M.shape)
        return W, 0.5 * cp.sum_squares(cp.multiply(mask, W - M)) + strength * cp.normNuc(W), []

    LowRank(strength)
    m, n = M.shape
    return Problem(f"completion {m}x{n}", (m, n), _completion, lambda: LowRank(strength),
                   {"M": M, "mask": maskf}, twin, {"family": "matrix_completion", "strength": strength})
