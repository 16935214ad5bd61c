"""Built-in problem families: each a torch loss, a symopt constraint and a cvxpy twin.

Scaling follows scikit-learn: data terms are averaged over the n samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ..constraints import Constraint, FixedZeros, GroupSparse, LowRank, Sparse, Subspace, Tied
from .base import Problem
from .duality import completion_dual, least_squares_dual, logistic_dual


def _as_tensor(name: str, value, observed: Tensor | None = None) -> Tensor:
    """``value`` as a real floating tensor (integers and bools become float64), or a clear error.
    With a bool ``observed`` of its shape, entries outside it (often NaN: "missing") become 0."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor, a numpy array or a nested list of numbers, "
                        f"got {type(value).__name__}") from err
    if tensor.is_complex():
        raise TypeError(f"{name} is complex ({tensor.dtype}); symopt's problems are real: pass the real part "
                        "or stack real and imaginary parts")
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.float64)
    if observed is not None and observed.shape == tensor.shape:
        tensor = torch.where(observed, tensor, torch.zeros((), dtype=tensor.dtype))
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {tensor.numel()} entries); drop or impute them first")
    return tensor


def _check_xy(X, y) -> tuple[Tensor, Tensor]:
    X, y = _as_tensor("X", X), _as_tensor("y", y)
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, d) and y (n,), got X {tuple(X.shape)} and y {tuple(y.shape)}")
    return X, y.to(X.dtype)


def _strength_or_budget(family: str, strength, budget: int | None, what: str) -> None:
    if (strength is None) == (budget is None):
        raise ValueError(f"{family}: pass exactly one of strength (λ) or {what} (a budget; λ is then found)")


def _least_squares(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (X @ theta.reshape(-1) - y).square().mean()


def lasso(X, y, strength: float | None = None, *, max_nonzero: int | None = None) -> Problem:
    """``1/(2n)‖Xw − y‖² + λ‖w‖₁`` (scikit-learn's ``Lasso(alpha=λ, fit_intercept=False)``).

    With ``max_nonzero=k`` instead of ``strength``: the Lasso-path point with k non-zeros
    (:func:`symopt.solve` finds its λ; ``problem.at_strength(λ)`` is the penalised problem)."""
    X, y = _check_xy(X, y)
    n, d = X.shape
    _strength_or_budget("lasso", strength, max_nonzero, "max_nonzero")
    if max_nonzero is not None:
        return _budget_problem(f"lasso {n}x{d}", (d,), _least_squares, lambda: Sparse(max_nonzero=max_nonzero),
                               {"X": X, "y": y}, "lasso",
                               lambda lam: lasso(X, y, lam))

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n) + strength * cp.norm1(w), []

    Sparse(strength)  # validate strength now, not at solve time
    return Problem(f"lasso {n}x{d}", (d,), _least_squares, lambda: Sparse(strength), {"X": X, "y": y}, twin,
                   {"family": "lasso", "strength": strength}, dual=least_squares_dual)


def group_lasso(X, y, groups, strength: float | None = None, *, max_groups: int | None = None) -> Problem:
    """``1/(2n)‖Xw − y‖² + λ Σ_g ‖w_g‖₂``.

    ``groups``: a list of index lists covering every column once, or an int ``k`` for consecutive
    groups of ``k`` columns. ``max_groups=g`` instead of ``strength``: the path point with g non-zero
    groups.
    """
    X, y = _check_xy(X, y)
    n, d = X.shape
    _strength_or_budget("group_lasso", strength, max_groups, "max_groups")
    if max_groups is not None:
        return _budget_problem(f"group_lasso {n}x{d}", (d,), _least_squares,
                               lambda: GroupSparse(groups=groups, max_groups=max_groups), {"X": X, "y": y},
                               "group_lasso", lambda lam: group_lasso(X, y, groups, lam))
    constraint = GroupSparse(groups=groups, strength=strength)  # validates groups and strength now
    constraint.validate(torch.empty(d), "w")
    index = constraint.group_ids(torch.empty(d)).tolist()
    members = [[i for i in range(d) if index[i] == g] for g in range(max(index) + 1)]

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n) + strength * sum(cp.norm(w[g], 2) for g in members), []

    label = f"/{groups}" if isinstance(groups, int) else f", {len(members)} groups"
    return Problem(f"group_lasso {n}x{d}{label}", (d,), _least_squares,
                   lambda: GroupSparse(groups=groups, strength=strength), {"X": X, "y": y}, twin,
                   {"family": "group_lasso", "strength": strength, "groups": members}, dual=least_squares_dual)


def _logistic(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(X @ theta, y)


def logistic_l1(X, y, strength: float | None = None, *, max_nonzero: int | None = None) -> Problem:
    """Mean log-loss (no intercept), labels in {0, 1}, ``+ λ‖w‖₁``; or ``max_nonzero=k`` (the path
    point with k non-zeros)."""
    X, y = _check_xy(X, y)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("logistic_l1: labels y must be 0 or 1")
    n, d = X.shape
    _strength_or_budget("logistic_l1", strength, max_nonzero, "max_nonzero")
    if max_nonzero is not None:
        return _budget_problem(f"logistic_l1 {n}x{d}", (d,), _logistic, lambda: Sparse(max_nonzero=max_nonzero),
                               {"X": X, "y": y}, "logistic_l1",
                               lambda lam: logistic_l1(X, y, lam))

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        z = X @ w
        return w, cp.sum(cp.logistic(z) - cp.multiply(y, z)) / n + strength * cp.norm1(w), []

    Sparse(strength)
    return Problem(f"logistic_l1 {n}x{d}", (d,), _logistic, lambda: Sparse(strength), {"X": X, "y": y}, twin,
                   {"family": "logistic_l1", "strength": strength}, dual=logistic_dual)


def equality_ls(X, y, A=None, strength: float = 1.0, *, zeros=None) -> Problem:
    """``1/(2n)‖Xw − y‖²`` subject to ``A w = 0`` (:class:`~symopt.Subspace`), or to ``w[zeros] = 0``
    (:class:`~symopt.FixedZeros`, ``zeros`` a bool mask). ``strength`` must exceed the Lagrange
    multipliers (``‖Oᵀ∇ℓ(w*)‖_∞``) for the constraint to hold exactly."""
    X, y = _check_xy(X, y)
    n, d = X.shape
    if (A is None) == (zeros is None):
        raise ValueError("equality_ls: pass exactly one of A (A w = 0) or zeros (a bool mask of entries = 0)")
    if A is not None:
        A = _as_tensor("A", A).to(X.dtype)
        make = lambda: Subspace(A, strength)  # noqa: E731
    else:
        zeros = torch.as_tensor(zeros)
        make = lambda: FixedZeros(zeros, strength)  # noqa: E731
    make().validate(torch.empty(d), "w")  # checks A's columns / the mask's shape and dtype now
    rows = A.detach().cpu().numpy() if A is not None else torch.eye(d, dtype=torch.float64)[zeros.cpu()].numpy()

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n), [rows @ w == 0]

    what = f"{rows.shape[0]} eq." if A is not None else f"{int(zeros.sum())} zeros"
    return Problem(f"equality_ls {n}x{d}, {what}", (d,), _least_squares, make, {"X": X, "y": y}, twin,
                   {"family": "equality_ls", "strength": strength})


def _tied_least_squares(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (torch.einsum("knd,kd->kn", X, theta) - y).square().mean(1).sum()


def tied_least_squares(X, y, strength: float = 1.0) -> Problem:
    """k least-squares tasks ``Σ_j 1/(2n)‖X_j w_j − y_j‖²`` with tied weights ``w_1 = … = w_k``
    (:class:`~symopt.Tied`); ``X`` is ``(k, n, d)``, ``y`` is ``(k, n)``, the variable ``(k, d)``."""
    X, y = _as_tensor("X", X), _as_tensor("y", y)
    if X.dim() != 3 or y.shape != X.shape[:2] or X.shape[0] < 2:
        raise ValueError(f"tied_least_squares: X must be (k>=2, n, d) and y (k, n), got {tuple(X.shape)}, {tuple(y.shape)}")
    k, n, d = X.shape
    Tied(strength)

    def twin(X, y):
        import cvxpy as cp
        W = cp.Variable((k, d))
        fit = sum(cp.sum_squares(X[j] @ W[j] - y[j]) / (2 * n) for j in range(k))
        return W, fit, [W[j] == W[0] for j in range(1, k)]

    return Problem(f"tied_ls {k}x{n}x{d}", (k, d), _tied_least_squares, lambda: Tied(strength),
                   {"X": X, "y": y.to(X.dtype)}, twin, {"family": "tied_least_squares", "strength": strength})


def _completion(theta: Tensor, M: Tensor, mask: Tensor) -> Tensor:
    return 0.5 * (mask * (theta - M)).square().sum()


def matrix_completion(M, mask, strength: float | None = None, *, target_rank: int | None = None) -> Problem:
    """``½‖P_Ω(W − M)‖²_F + λ‖W‖_*`` with Ω the True entries of ``mask``; or ``target_rank=r``
    (the nuclear-norm path point of rank r)."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise TypeError(f"matrix_completion: mask must be bool (or 0/1), got {mask.dtype} with other values")
        mask = mask.bool()
    M = _as_tensor("M", M, observed=mask)  # unobserved entries are never read
    if M.dim() != 2 or mask.shape != M.shape:
        raise ValueError(f"M must be a matrix and mask of its shape, got {tuple(M.shape)} and {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("matrix_completion: mask has no observed entry")
    maskf = mask.to(M.dtype)
    m, n = M.shape
    _strength_or_budget("matrix_completion", strength, target_rank, "target_rank")
    if target_rank is not None:
        return _budget_problem(f"completion {m}x{n}", (m, n), _completion, lambda: LowRank(target_rank=target_rank),
                               {"M": M, "mask": maskf},
                               "matrix_completion", lambda lam: matrix_completion(M, mask, lam))

    def twin(M, mask):
        import cvxpy as cp
        W = cp.Variable(M.shape)
        return W, 0.5 * cp.sum_squares(cp.multiply(mask, W - M)) + strength * cp.normNuc(W), []

    LowRank(strength)
    return Problem(f"completion {m}x{n}", (m, n), _completion, lambda: LowRank(strength),
                   {"M": M, "mask": maskf}, twin, {"family": "matrix_completion", "strength": strength},
                   dual=completion_dual)


def _matrix_least_squares(theta: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    return 0.5 * (X @ theta - Y).square().sum() / X.shape[0]


def low_rank_regression(X, Y, strength: float | None = None, *, rank: int | None = None) -> Problem:
    """Multi-output regression ``1/(2n)‖XW − Y‖²_F`` with ``W`` of shape ``(p, q)``, either
    penalised, ``+ λ‖W‖_*`` (``strength``; convex, cvxpy twin), or with a hard bound
    ``rank(W) ≤ r`` (``rank``; no convex twin: cvxpy reports not applicable).

    The hard-rank form uses ``LowRank(max_rank=r)`` with a vanishing strength (1e-9 of
    ``‖XᵀY‖₂/n``) that keeps the factors balanced; its objective is the loss alone.
    """
    X, Y = _as_tensor("X", X), _as_tensor("Y", Y)
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X must be (n, p) and Y (n, q), got X {tuple(X.shape)} and Y {tuple(Y.shape)}")
    if (strength is None) == (rank is None):
        raise ValueError("low_rank_regression: pass exactly one of strength (nuclear norm) or rank (hard rank)")
    n, p = X.shape
    q = Y.shape[1]
    Y = Y.to(X.dtype)
    if rank is not None:
        LowRank(1.0, rank).validate(torch.empty(p, q), "W")
        vanishing = 1e-9 * float(torch.linalg.matrix_norm(X.T @ Y / n, ord=2))
        return Problem(f"hard_rank {n}x{p}x{q}, r={rank}", (p, q), _matrix_least_squares,
                       lambda: LowRank(vanishing, rank), {"X": X, "Y": Y}, None,
                       {"family": "low_rank_regression", "rank": rank}, penalized=False)
    LowRank(strength)

    def twin(X, Y):
        import cvxpy as cp
        W = cp.Variable((p, q))
        return W, cp.sum_squares(X @ W - Y) / (2 * n) + strength * cp.normNuc(W), []

    return Problem(f"low_rank_regression {n}x{p}x{q}", (p, q), _matrix_least_squares, lambda: LowRank(strength),
                   {"X": X, "Y": Y}, twin, {"family": "low_rank_regression", "strength": strength},
                   dual=least_squares_dual)


def _budget_problem(name, shape, loss, make: Callable[[], Constraint], data, family, at_strength) -> Problem:
    """A problem whose constraint carries a budget: no fixed λ, so no convex twin until λ is known."""
    probe = make()
    probe.validate(torch.empty(shape), "theta")  # budget vs. shape, now
    return Problem(f"{name}, budget {probe.budget}", shape, loss, make, data, None,
                   {"family": family, "budget": probe.budget}, at_strength=at_strength)
