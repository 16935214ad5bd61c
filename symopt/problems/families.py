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
from .design import columns, matvec
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
    _require_finite(name, tensor, tensor, "entries")
    return tensor


def _require_finite(name: str, tensor: Tensor, values: Tensor, what: str) -> None:
    """Named errors for an empty ``tensor`` or NaN / Inf among its ``values`` (the entries, or the
    stored entries of a sparse tensor)."""
    if 0 in tensor.shape:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {values.numel()} {what}); drop or impute them first")


def _as_sparse_design(X) -> Tensor | None:
    """A scipy.sparse matrix or a torch sparse tensor as a float torch CSR tensor (None if ``X`` is
    dense): a design with few non-zeros per row is multiplied without being densified."""
    if getattr(X, "layout", torch.strided) in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
        csr = X.to_sparse_csr() if X.layout != torch.sparse_csr else X
    elif hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, without importing scipy here
        m = X.tocsr()
        csr = torch.sparse_csr_tensor(torch.as_tensor(m.indptr, dtype=torch.int64),
                                      torch.as_tensor(m.indices, dtype=torch.int64), torch.as_tensor(m.data),
                                      size=m.shape, check_invariants=True)  # user data: validate it
    else:
        return None
    if csr.dim() != 2 or csr.is_complex():
        raise ValueError(f"a sparse X must be a real (n, d) matrix, got shape {tuple(csr.shape)}, {csr.dtype}")
    if not torch.is_floating_point(csr):
        csr = csr.to(torch.float64)
    _require_finite("X", csr, csr.values(), "stored entries")
    return csr


def _check_xy(X, y) -> tuple[Tensor, Tensor]:
    sparse = _as_sparse_design(X)
    X, y = (sparse if sparse is not None else _as_tensor("X", X)), _as_tensor("y", y)
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, d) and y (n,), got X {tuple(X.shape)} and y {tuple(y.shape)}")
    return X, y.to(X.dtype)


def _strength_or_budget(family: str, strength, budget: int | None, what: str) -> None:
    if (strength is None) == (budget is None):
        raise ValueError(f"{family}: pass exactly one of strength (λ) or {what} (a budget; λ is then found)")


def _least_squares(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (matvec(X, theta.reshape(-1)) - y).square().mean()


def lasso(X, y, strength: float | None = None, *, max_nonzero: int | None = None) -> Problem:
    """The Lasso ``1/(2n)‖Xw − y‖² + λ‖w‖₁`` (scikit-learn's ``Lasso(alpha=λ, fit_intercept=False)``).

    DCS solves it as ``1/(2n)‖X(u ⊙ v) − y‖² + (λ/2)(‖u‖² + ‖v‖²)`` ([`Sparse`][symopt.Sparse]).
    ``w = 0`` is optimal iff ``λ ≥ ‖Xᵀy‖_∞ / n``.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR).
        y: ``(n,)`` targets.
        strength: λ (> 0).
        max_nonzero: instead of ``strength``: the Lasso-path point with this many non-zeros
            ([`symopt.solve`][symopt.solve] finds its λ; ``problem.at_strength(λ)`` is the penalised problem).

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual (for the duality gap).

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import lasso
        >>> X = torch.eye(3, dtype=torch.float64) * 3 ** 0.5        # XᵀX/n = I: soft thresholding
        >>> result = symopt.solve(lasso(X, torch.tensor([3.0, 0.6, -1.5], dtype=torch.float64), 0.5))
        >>> [round(v, 6) for v in result.x.tolist()]               # Xᵀy/n = (√3, 0.2√3, −0.5√3), shrunk by 0.5
        [1.232051, 0.0, -0.366025]
    """
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
                   {"family": "lasso", "strength": strength}, dual=least_squares_dual,
                   restrict=lambda index: lasso(columns(X, index), y, strength))


def group_lasso(X, y, groups, strength: float | None = None, *, max_groups: int | None = None) -> Problem:
    """The group lasso ``1/(2n)‖Xw − y‖² + λ Σ_g ‖w_g‖₂``.

    DCS solves it with one scalar gate per group, ``w_g = s_g ω_g`` ([`GroupSparse`][symopt.GroupSparse]),
    since ``min_{sω = w_g} (λ/2)(s² + ‖ω‖²) = λ‖w_g‖₂``. A group is zero iff ``‖X_gᵀr‖₂ / n ≤ λ``
    at the optimum's residual ``r``.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR).
        y: ``(n,)`` targets.
        groups: a list of index lists covering every column once, or an int ``k`` for consecutive
            groups of ``k`` columns.
        strength: λ (> 0).
        max_groups: instead of ``strength``: the path point with this many non-zero groups.

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget. Groups that overlap, leave a gap or are empty are a ``ValueError`` too.

    Examples:
        >>> import symopt
        >>> from symopt.problems import group_lasso, make_group_lasso
        >>> base = make_group_lasso(n=80, d=40, group_size=4, active_groups=2)
        >>> result = symopt.solve(group_lasso(base.data["X"], base.data["y"], 4, strength=0.05))
        >>> int((result.x.reshape(10, 4).norm(dim=1) > 0).sum())    # whole groups survive
        2
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
    ids = constraint.group_ids(torch.empty(d))
    members = _members(ids)

    def twin(X, y):
        import cvxpy as cp
        w = cp.Variable(d)
        return w, cp.sum_squares(X @ w - y) / (2 * n) + strength * sum(cp.norm(w[g], 2) for g in members), []

    def restrict(index: Tensor) -> Problem:  # index: whole groups, sorted, so an int size still applies
        kept = groups if isinstance(groups, int) else _members(torch.unique(ids[index], return_inverse=True)[1])
        return group_lasso(columns(X, index), y, kept, strength)

    label = f"/{groups}" if isinstance(groups, int) else f", {len(members)} groups"
    return Problem(f"group_lasso {n}x{d}{label}", (d,), _least_squares,
                   lambda: GroupSparse(groups=groups, strength=strength), {"X": X, "y": y}, twin,
                   {"family": "group_lasso", "strength": strength, "groups": members}, dual=least_squares_dual,
                   restrict=restrict)


def _members(ids: Tensor) -> list[list[int]]:
    """Group ids per coordinate (0 … G−1) → the coordinates of each group, in one sort."""
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids).tolist()
    return [chunk.tolist() for chunk in torch.split(order, counts)]


def _logistic(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(matvec(X, theta), y)


def logistic_l1(X, y, strength: float | None = None, *, max_nonzero: int | None = None) -> Problem:
    """Sparse logistic regression: mean log-loss ``(1/n)Σ log(1 + e^{−s_i x_iᵀw})`` + ``λ‖w‖₁``.

    Labels ``y_i ∈ {0, 1}`` (``s_i = 2y_i − 1``), no intercept. scikit-learn's
    ``LogisticRegression(penalty="l1", C=1/(nλ), fit_intercept=False)`` solves the same problem.
    ``w = 0`` is optimal iff ``λ ≥ ‖Xᵀ(y − ½)‖_∞ / n``.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR).
        y: ``(n,)`` targets. Labels 0 or 1.
        strength: λ (> 0).
        max_nonzero: instead of ``strength``: the path point with this many non-zeros.

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget. Labels other than 0 / 1 are a ``ValueError``.

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_logistic_l1
        >>> result = symopt.solve(make_logistic_l1(n=100, d=20, nonzeros=3))
        >>> result.status, 0 < int((result.x != 0).sum()) < 20
        ('optimal', True)
    """
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
                   {"family": "logistic_l1", "strength": strength}, dual=logistic_dual,
                   restrict=lambda index: logistic_l1(columns(X, index), y, strength))


def equality_ls(X, y, A=None, strength: float = 1.0, *, zeros=None) -> Problem:
    """Equality-constrained least squares: ``1/(2n)‖Xw − y‖²`` subject to ``A w = 0`` or ``w[zeros] = 0``.

    DCS uses the exact penalty ``λ‖Oᵀw‖₁`` ([`Subspace`][symopt.Subspace], ``O`` an orthonormal basis
    of rowspace(A)) or ``λ‖w[zeros]‖₁`` ([`FixedZeros`][symopt.FixedZeros]); ``strength`` must exceed
    the Lagrange multipliers ``‖Oᵀ∇ℓ(w*)‖_∞`` for the constraint to hold exactly. The objective
    is the loss alone.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended).
        y: ``(n,)`` targets.
        A: ``(k, d)`` constraint matrix (exactly one of ``A`` and ``zeros``).
        strength: λ (> 0) or ``"auto"``.
        zeros: a bool mask of length ``d``: the entries that must be zero.

    Returns:
        Problem: with a cvxpy twin (``A w == 0`` as a constraint).

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget. Both or neither of ``A`` and ``zeros`` is a ``ValueError``.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import equality_ls
        >>> X, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
        >>> result = symopt.solve(equality_ls(X, y, A=[[1.0, -1.0, 0.0]], strength=10.0))
        >>> abs(float(result.x[0] - result.x[1])) < 1e-10               # w₀ = w₁ exactly
        True
    """
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
    """k least-squares tasks ``Σ_j 1/(2n)‖X_j w_j − y_j‖²`` with tied weights ``w_1 = … = w_k``.

    DCS writes ``w_j = w_1 + u_j ⊙ v_j`` for j ≥ 2 ([`Tied`][symopt.Tied]): the exact penalty
    ``λΣ_{j≥2}‖w_j − w_1‖₁`` holds the tie once ``λ > max_{j≥2} ‖∇_{w_j}ℓ(w*)‖_∞``. The answer is the
    least-squares fit of one ``w`` to all tasks pooled.

    Args:
        X: ``(k, n, d)``, one design per task (k ≥ 2).
        y: ``(k, n)`` targets.
        strength: λ (> 0) or ``"auto"``.

    Returns:
        Problem: the variable is ``(k, d)``; with a cvxpy twin.

    Raises:
        TypeError: complex or non-numeric data.
        ValueError: shapes other than ``(k ≥ 2, n, d)`` and ``(k, n)``, NaN / Inf, a bad strength.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import tied_least_squares
        >>> X, y = torch.randn(2, 30, 3, dtype=torch.float64), torch.randn(2, 30, dtype=torch.float64)
        >>> result = symopt.solve(tied_least_squares(X, y, strength=5.0))
        >>> pooled = torch.linalg.lstsq(X.reshape(60, 3), y.reshape(60, 1)).solution[:, 0]
        >>> torch.allclose(result.x[0], pooled, atol=1e-8), torch.equal(result.x[0], result.x[1])
        (True, True)
    """
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
    """Nuclear-norm matrix completion: ``½‖P_Ω(W − M)‖²_F + λ‖W‖_*``, Ω the True entries of ``mask``.

    DCS writes ``W = UVᵀ`` ([`LowRank`][symopt.LowRank]), since
    ``min_{UVᵀ=W} (λ/2)(‖U‖²_F + ‖V‖²_F) = λ‖W‖_*``. A singular direction is zero iff the
    gradient's spectral norm on it is ≤ λ.

    Args:
        M: the ``(m, n)`` matrix; unobserved entries are never read (NaN there is fine).
        mask: bool (or 0/1) ``(m, n)`` mask of the observed entries.
        strength: λ (> 0).
        target_rank: instead of ``strength``: the path point of this rank.

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex / non-numeric ``M`` or a mask that is not 0/1.
        ValueError: shapes that differ, no observed entry, NaN / Inf at an observed entry, a bad
            strength, or both / neither of strength and ``target_rank``.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import matrix_completion
        >>> M = torch.outer(torch.arange(1.0, 6.0), torch.arange(1.0, 5.0)).double()   # rank 1
        >>> mask = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) < 0.7
        >>> result = symopt.solve(matrix_completion(M, mask, strength=0.1))
        >>> int(torch.linalg.matrix_rank(result.x))
        1
    """
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
    ``rank(W) ≤ r`` (``rank``; no convex twin: cvxpy reports not applicable, geoopt applies).

    The hard-rank form uses ``LowRank(max_rank=r)`` with a vanishing strength (1e-9 of
    ``‖XᵀY‖₂/n``) that keeps the factors balanced; its objective is the loss alone.

    Args:
        X: ``(n, p)`` inputs.
        Y: ``(n, q)`` outputs.
        strength: λ of the nuclear-norm penalty (exactly one of ``strength`` and ``rank``).
        rank: the hard bound ``r``.

    Returns:
        Problem: the variable is ``W`` of shape ``(p, q)``.

    Raises:
        TypeError: complex or non-numeric data.
        ValueError: shapes that do not match, NaN / Inf, a bad strength or rank, or both / neither
            of ``strength`` and ``rank``.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import low_rank_regression
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(100, 6, generator=g, dtype=torch.float64)
        >>> Y = X @ torch.randn(6, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 5, generator=g, dtype=torch.float64)
        >>> result = symopt.solve(low_rank_regression(X, Y, rank=2))
        >>> result.status, result.objective < 1e-8 * float(Y.square().mean())   # the rank-2 truth fits
        ('optimal', True)
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
