r"""Built-in problem families: each a torch loss, a symopt constraint and a cvxpy twin.

Scaling follows scikit-learn: the regression and classification data terms are averaged over the
n samples (a weighted mean with ``sample_weight``). Matrix completion is the exception: its data
term $\tfrac12 ‖P_Ω(W - M)‖^2$ is a sum over the observed entries, as in SoftImpute and the nuclear-norm
literature, so its λ is on that scale.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import numpy as np

from ..constraints import Constraint, FixedZeros, GroupSparse, LowRank, NonNegative, Sparse, Subspace, Tied
from ..constraints.strength import check_strength
from .base import Problem
from .design import columns
from .duality import completion_dual, glm_dual, least_squares_dual
from .glm import DataTerm, LogLoss, SquaredError, normalised_weights


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


# Set while a problem rebuilds itself from data it has already checked (at another λ, on a column
# subset): a path or a working set then does not rescan X for NaN at every point (4 ms a scan at
# 500×2000, measured: 15% of a 50-point path).
_CHECKED = contextvars.ContextVar("symopt_checked_data", default=False)


def _again(build, *args, **kwargs) -> Problem:
    """``build(*args, **kwargs)`` on data that passed the checks once already."""
    token = _CHECKED.set(True)
    try:
        return build(*args, **kwargs)
    finally:
        _CHECKED.reset(token)


def _require_finite(name: str, tensor: Tensor, values: Tensor, what: str) -> None:
    """Named errors for an empty ``tensor`` or NaN / Inf among its ``values`` (the entries, or the
    stored entries of a sparse tensor)."""
    if _CHECKED.get():
        return
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


# The plain data terms (no intercept, weights or ridge): $1/(2n)‖Xw - y‖^2$ and the mean log-loss.
# Data terms, not bare functions, so that they answer ``value_and_grad`` (the lean descent's gradient).
_least_squares = DataTerm(SquaredError())
_logistic = DataTerm(LogLoss())


class _Options:
    """What a user brings to a regression / classification family beyond $(X, y, λ)$: an
    unpenalised intercept, sample weights, elastic-net mixing and a sign constraint, checked once
    (named errors) and turned into the data term, the data, the constraint's strength and the cvxpy
    twin's pieces (see `symopt.problems.glm`)."""

    def __init__(self, family: str, fit, X: Tensor, y: Tensor, strength, budget, *, fit_intercept,
                 sample_weight, l1_ratio, positive=False):
        for name, flag in (("fit_intercept", fit_intercept), ("positive", positive)):
            if not isinstance(flag, bool):
                raise TypeError(f"{family}: {name} must be True or False, got {flag!r}")
        if isinstance(l1_ratio, bool) or not isinstance(l1_ratio, (int, float)) or not 0 < l1_ratio <= 1:
            raise ValueError(f"{family}: l1_ratio={l1_ratio!r} must be in (0, 1] (1: the pure L1 penalty; "
                             "at 0 nothing is sparse: use ridge regression)")
        if l1_ratio < 1 and budget is not None:
            raise ValueError(f"{family}: a budget searches λ of the pure L1 path; pass l1_ratio=1 with it, or a "
                             "strength with l1_ratio < 1")
        if strength is not None:  # (a str or a bool reached the l1 share's product before: an obscure TypeError)
            strength = check_strength(strength, family)
        self.family = family
        self.fit_intercept, self.positive, self.l1_ratio = fit_intercept, positive, float(l1_ratio)
        self.weights = normalised_weights(sample_weight, X.shape[0], X.dtype)
        if isinstance(fit, LogLoss) and fit_intercept:
            share = float(y.mean()) if self.weights is None else float((self.weights * y).sum())
            if not 0 < share < 1:
                raise ValueError(f"{family}: fit_intercept=True needs both labels 0 and 1 among the samples with a "
                                 "positive weight (with one class the intercept is infinite)")
        self.strength = strength
        ridge = (1 - self.l1_ratio) * strength if strength is not None and l1_ratio < 1 else 0.0
        self.term = DataTerm(fit, fit_intercept, ridge)
        self.default = not (fit_intercept or ridge or self.weights is not None)

    @property
    def l1_strength(self) -> float | None:
        """The constraint's λ: the L1 share of an elastic net's strength."""
        return None if self.strength is None else self.l1_ratio * self.strength

    def loss(self, plain):
        """The plain data term when nothing was added (one shared object per family), else this
        options' data term (intercept, weights, ridge)."""
        return plain if self.default else self.term

    def data(self, X: Tensor, y: Tensor) -> dict[str, Tensor]:
        data = {"X": X, "y": y}
        if self.weights is not None:
            data["weights"] = self.weights
        return data

    def label(self) -> str:
        parts = [what for what, on in (("intercept", self.fit_intercept), ("weighted", self.weights is not None),
                                       (f"l1_ratio={self.l1_ratio:g}", self.l1_ratio < 1),
                                       ("positive", self.positive)) if on]
        return f" ({', '.join(parts)})" if parts else ""

    def meta(self, **extra) -> dict:
        return {"family": self.family, "strength": self.strength, "fit_intercept": self.fit_intercept,
                "sample_weight": self.weights is not None, "l1_ratio": self.l1_ratio, "positive": self.positive,
                **extra}

    def problem(self, name: str, shape, loss, make, X: Tensor, y: Tensor, penalty, **extra) -> Problem:
        """The family's penalised Problem: the twin and the dual for these options, and
        ``result.intercept``'s hook."""
        meta = self.meta(**extra.pop("meta", {}))
        problem = Problem(f"{name}{self.label()}", shape, loss, make, self.data(X, y), self.twin(shape[0], penalty),
                          meta, dual=glm_dual(self.term), **extra)
        problem.intercept = self.intercept(lambda: problem.data_on("cpu", torch.float64))
        return problem

    def intercept(self, data_of):
        """``result.intercept``: ``b*`` at θ (None when the problem has no intercept)."""
        if not self.fit_intercept:
            return None
        term = self.term

        def at(theta: Tensor):
            data = data_of()
            return term.intercept(theta.to(data["X"].dtype), **data)

        return at

    def twin(self, d: int, penalty):
        """A cvxpy twin: ``penalty(w)`` is the constraint's term at the L1 strength; the weights,
        intercept and ridge are added here."""
        weighted, fit, ridge, fit_intercept, positive = self.weights is not None, self.term.fit, self.term.ridge, \
            self.fit_intercept, self.positive

        def twin(X, y, weights=None):
            import cvxpy as cp
            shape = (d,) if y.ndim == 1 else (d, y.shape[1])
            w = cp.Variable(shape)
            z = X @ w
            if fit_intercept:
                b = cp.Variable(() if y.ndim == 1 else (1, y.shape[1]))
                z = z + (b if y.ndim == 1 else np.ones((X.shape[0], 1)) @ b)
            n = X.shape[0]
            omega = weights if weights is not None else np.full(n, 1.0 / n)
            objective = fit.cvxpy(z, y, omega, weighted) + penalty(w)
            if ridge:
                objective = objective + 0.5 * ridge * cp.sum_squares(w)
            return w, objective, ([w >= 0] if positive else [])

        return twin


def lasso(X, y, strength: float | None = None, *, max_nonzero: int | None = None, fit_intercept: bool = False,
          sample_weight=None, l1_ratio: float = 1.0, positive: bool = False) -> Problem:
    r"""The Lasso $1/(2n)‖Xw - y‖^2 + λ‖w‖_1$ (scikit-learn's ``Lasso(alpha=λ, fit_intercept=False)``),
    with scikit-learn's options: an unpenalised intercept, sample weights, the elastic net and
    ``positive``.

    DCS solves it as $1/(2n)‖X(u ⊙ v) - y‖^2 + (λ/2)(‖u‖^2 + ‖v‖^2)$ ([`Sparse`][symopt.Sparse];
    with ``positive=True``, $w = \tfrac12 u⊙u$ and the penalty $λ\sum w$: [`NonNegative`][symopt.NonNegative]).
    $w = 0$ is optimal iff $λ ≥ ‖X^\top y‖_∞ / n$ (with an intercept, of the centred ``y``).

    With all options the problem is $\sum_i ω_i \tfrac12 (x_i^\top w + b - y_i)^2 + λ(α‖w‖_1 + (1 - α)/2 ‖w‖^2)$,
    ``ω = sample_weight / Σ sample_weight`` (``1/n`` without), $α$ = ``l1_ratio``, ``b`` unpenalised and
    profiled out in closed form (`symopt.problems.glm`): scikit-learn's ``ElasticNet(alpha=λ,
    l1_ratio=α, fit_intercept=True, positive=...)`` fitted with ``sample_weight``.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR, with or without an intercept:
            the design is never centred). A wide dense design (solved on working sets, which gather
            its columns) is read fastest column-major (``np.asfortranarray(X)``); its layout is kept.
        y: ``(n,)`` targets.
        strength: λ (> 0).
        max_nonzero: instead of ``strength``: the Lasso-path point with this many non-zeros
            ([`symopt.solve`][symopt.solve] finds its λ; ``problem.at_strength(λ)`` is the penalised problem).
        fit_intercept: add an unpenalised intercept ``b``; ``result.intercept`` reports it.
        sample_weight: ``(n,)`` non-negative weights (scaled to sum 1; a weight of 0 drops a sample).
        l1_ratio: α of the elastic net, in (0, 1]; 1 is the Lasso.
        positive: constrain $w ≥ 0$ (the non-negative Lasso).

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual (for the duality gap); ``problem.at_strength(λ)``
        is the same problem at another λ (what [`symopt.path`][symopt.path] walks).

    Raises:
        TypeError: complex or non-numeric data (named); a flag that is not a bool.
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, both /
            neither of strength and budget, negative or mis-sized sample weights, ``l1_ratio`` outside
            (0, 1] (or below 1 with a budget).

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import lasso
        >>> X = torch.eye(3, dtype=torch.float64) * 3 ** 0.5        # XᵀX/n = I: soft thresholding
        >>> result = symopt.solve(lasso(X, torch.tensor([3.0, 0.6, -1.5], dtype=torch.float64), 0.5))
        >>> [round(v, 6) for v in result.x.tolist()]               # Xᵀy/n = (√3, 0.2√3, −0.5√3), shrunk by 0.5
        [1.232051, 0.0, -0.366025]

        With an intercept: the offset 10 goes to ``b`` unpenalised; the weights are shrunk as before.

        >>> Z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
        >>> y = 10 + Z @ torch.tensor([2.0, 0.3], dtype=torch.float64)     # centred columns, ZᵀZ/n = I
        >>> result = symopt.solve(lasso(Z, y, 0.5, fit_intercept=True))
        >>> round(result.intercept, 6), [round(v, 6) for v in result.x.tolist()]
        (10.0, [1.5, 0.0])
    """
    X, y = _check_xy(X, y)
    n, d = X.shape
    _strength_or_budget("lasso", strength, max_nonzero, "max_nonzero")
    options = _Options("lasso", SquaredError(), X, y, strength, max_nonzero, fit_intercept=fit_intercept,
                       sample_weight=sample_weight, l1_ratio=l1_ratio, positive=positive)
    penalty_kind = NonNegative if positive else Sparse  # w = ½u⊙u for w ≥ 0, else u⊙v
    again = dict(fit_intercept=fit_intercept, sample_weight=sample_weight, l1_ratio=l1_ratio, positive=positive)
    loss = options.loss(_least_squares)
    if max_nonzero is not None:
        return _budget_problem(f"lasso {n}x{d}{options.label()}", (d,), loss, lambda: penalty_kind(max_nonzero=max_nonzero),
                               options.data(X, y), options.meta(), lambda lam: _again(lasso, X, y, lam, **again),
                               options)
    lam = options.l1_strength  # (checked by _Options: no constraint is built to check it)

    def penalty(w):
        import cvxpy as cp
        return lam * (cp.sum(w) if positive else cp.norm1(w))

    return options.problem(f"lasso {n}x{d}", (d,), loss, lambda: penalty_kind(lam), X, y, penalty,
                           restrict=lambda index: _again(lasso, columns(X, index), y, strength, **again),
                           at_strength=lambda new: _again(lasso, X, y, new, **again))


def group_lasso(X, y, groups, strength: float | None = None, *, max_groups: int | None = None,
                fit_intercept: bool = False, sample_weight=None, group_weights=None) -> Problem:
    r"""The group lasso $1/(2n)‖Xw - y‖^2 + λ \sum_g c_g ‖w_g‖_2$, optionally with an unpenalised intercept,
    sample weights ($\sum_i ω_i \tfrac12 (x_i^\top w + b - y_i)^2$, as in [`lasso`][symopt.problems.lasso])
    and group weights $c_g$ (all 1 by default; $c_g = \sqrt{|g|}$ is the usual choice for groups of
    unequal sizes).

    DCS solves it with one scalar gate per group, $w_g = s_g ω_g$ ([`GroupSparse`][symopt.GroupSparse]),
    since $\min_{sω = w_g} (λ/2)(s^2 + ‖ω‖^2) = λ‖w_g‖_2$ (with weights, $w_g = s_g ω_g / c_g$). A group is
    zero iff $‖X_g^\top r‖_2 / n ≤ λ c_g$ at the optimum's residual ``r``.

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR).
        y: ``(n,)`` targets.
        groups: a list of index lists covering every column once, or an int ``k`` for consecutive
            groups of ``k`` columns.
        strength: λ (> 0).
        max_groups: instead of ``strength``: the path point with this many non-zero groups.
        fit_intercept: add an unpenalised intercept (``result.intercept``).
        sample_weight: ``(n,)`` non-negative weights.
        group_weights: one finite weight $c_g > 0$ per group, in group order (skglm's ``weights``).

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget. Groups that overlap, leave a gap or are empty are a
            ``ValueError`` too, and so are group weights that are not one finite positive number per group.

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
    options = _Options("group_lasso", SquaredError(), X, y, strength, max_groups, fit_intercept=fit_intercept,
                       sample_weight=sample_weight, l1_ratio=1.0)
    # checks the groups, their weights and the strength now, before anything is built
    constraint = GroupSparse(groups=groups, strength=strength if max_groups is None else None,
                             max_groups=max_groups, weights=group_weights)
    constraint.validate(torch.empty(d), "w" if group_weights is None else "w (group_weights)")
    weights = None if constraint.weights is None else constraint.weights.clone()
    again = dict(fit_intercept=fit_intercept, sample_weight=sample_weight, group_weights=weights)
    loss = options.loss(_least_squares)
    meta = {} if weights is None else {"group_weights": weights.tolist()}
    if max_groups is not None:
        return _budget_problem(f"group_lasso {n}x{d}{options.label()}", (d,), loss,
                               lambda: GroupSparse(groups=groups, max_groups=max_groups, weights=weights),
                               options.data(X, y), options.meta(**meta),
                               lambda lam: _again(group_lasso, X, y, groups, lam, **again), options)
    ids = constraint.group_ids(torch.empty(d))
    members = _members(ids)
    scale = [1.0] * len(members) if weights is None else weights.tolist()

    def penalty(w):
        import cvxpy as cp
        return strength * sum(c * cp.norm(w[g], 2) for c, g in zip(scale, members))

    def restrict(index: Tensor) -> Problem:  # index: whole groups, sorted, so an int size still applies
        kept_ids, relabelled = torch.unique(ids[index], return_inverse=True)
        kept = groups if isinstance(groups, int) else _members(relabelled)
        return _again(group_lasso, columns(X, index), y, kept, strength,
                      **{**again, "group_weights": None if weights is None else weights[kept_ids]})

    label = f"/{groups}" if isinstance(groups, int) else f", {len(members)} groups"
    label += "" if weights is None else ", weighted"
    return options.problem(f"group_lasso {n}x{d}{label}", (d,), loss,
                           lambda: GroupSparse(groups=groups, strength=strength, weights=weights), X, y, penalty,
                           meta={"groups": members, **meta}, restrict=restrict,
                           at_strength=lambda new: _again(group_lasso, X, y, groups, new, **again))


def _members(ids: Tensor) -> list[list[int]]:
    """Group ids per coordinate (0 … G−1) → the coordinates of each group, in one sort."""
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids).tolist()
    return [chunk.tolist() for chunk in torch.split(order, counts)]


def multitask_lasso(X, Y, strength: float, *, fit_intercept: bool = False, sample_weight=None) -> Problem:
    r"""The multi-task Lasso $1/(2n)‖XW - Y‖^2_F + λ \sum_j ‖W_j‖_2$ over ``W`` of shape ``(d, T)``: a
    feature is used by every task or by none (scikit-learn's ``MultiTaskLasso(alpha=λ)``, whose
    ``coef_`` is $W^\top$). Optionally an unpenalised intercept per task and sample weights.

    DCS gates each row of ``W`` ([`GroupSparse`][symopt.GroupSparse] with index groups of ``T``
    consecutive entries of ``W.reshape(-1)``, which are its rows): row ``j`` is zero iff
    $‖X_j^\top R‖_2 / n ≤ λ$ at the optimum's residual ``R``. Index groups make the rows atoms of θ's
    coordinates, so a wide problem is solved on working sets of features, as the Lasso is.

    Args:
        X: ``(n, d)`` design matrix.
        Y: ``(n, T)`` targets, one column per task.
        strength: λ (> 0).
        fit_intercept: one unpenalised intercept per task (``result.intercept``, a ``(T,)`` tensor).
        sample_weight: ``(n,)`` non-negative weights.

    Returns:
        Problem: the variable is ``(d, T)``; with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex or non-numeric data.
        ValueError: shapes other than ``(n, d)`` and ``(n, T)``, NaN / Inf, a bad strength or weights.

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import multitask_lasso
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(60, 8, generator=g, dtype=torch.float64)
        >>> Y = X[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64)   # 2 features, 3 tasks
        >>> result = symopt.solve(multitask_lasso(X, Y, strength=0.05))
        >>> (result.x.norm(dim=1) > 0).tolist()
        [True, True, False, False, False, False, False, False]
    """
    sparse = _as_sparse_design(X)
    X, Y = (sparse if sparse is not None else _as_tensor("X", X)), _as_tensor("Y", Y)
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"multitask_lasso: X must be (n, d) and Y (n, T), got X {tuple(X.shape)} and Y {tuple(Y.shape)}")
    Y = Y.to(X.dtype)
    n, d = X.shape
    tasks = Y.shape[1]
    _strength_or_budget("multitask_lasso", strength, None, "a budget")
    options = _Options("multitask_lasso", SquaredError(), X, Y, strength, None, fit_intercept=fit_intercept,
                       sample_weight=sample_weight, l1_ratio=1.0)
    GroupSparse(groups=tasks, strength=strength)  # checks the strength now

    def penalty(W):
        import cvxpy as cp
        return strength * cp.sum(cp.norm(W, 2, axis=1))

    again = dict(fit_intercept=fit_intercept, sample_weight=sample_weight)

    def restrict(index: Tensor) -> Problem:  # index: the flat coordinates of whole rows, sorted
        return _again(multitask_lasso, columns(X, torch.unique(index // tasks)), Y, strength, **again)

    return options.problem(f"multitask_lasso {n}x{d}x{tasks}", (d, tasks), options.term,
                           lambda: GroupSparse(groups=tasks, strength=strength), X, Y, penalty, restrict=restrict,
                           at_strength=lambda new: _again(multitask_lasso, X, Y, new, **again))


def logistic_l1(X, y, strength: float | None = None, *, max_nonzero: int | None = None, fit_intercept: bool = False,
                sample_weight=None, l1_ratio: float = 1.0) -> Problem:
    r"""Sparse logistic regression: mean log-loss $(1/n)\sum \log(1 + e^{-s_i x_i^\top w})$ + $λ‖w‖_1$,
    optionally with an unpenalised intercept, sample weights and elastic-net mixing.

    Labels $y_i ∈ {0, 1}$ ($s_i = 2y_i - 1$). Without an intercept, scikit-learn's
    ``LogisticRegression(penalty="l1", C=1/(nλ), fit_intercept=False)`` solves the same problem.
    With one, the intercept is unpenalised (profiled out by a 1-d Newton solve per evaluation,
    `symopt.problems.glm`): liblinear penalises its intercept, so the scikit-learn twin is
    ``solver="saga"`` (or skglm's ``SparseLogisticRegression(fit_intercept=True)``).
    With ``sample_weight`` the data term is $\sum ω_i ℓ_i$, $ω$ the weights scaled to sum 1:
    scikit-learn's $C = 1/(λ \sum s)$.
    $w = 0$ is optimal iff $λ ≥ ‖X^\top (y - \tfrac12 )‖_∞ / n$ (with an intercept, $y - ȳ$).

    Args:
        X: ``(n, d)`` design matrix (tensor or array; float64 recommended; a scipy.sparse
            matrix or torch sparse tensor is kept sparse, as torch CSR).
        y: ``(n,)`` targets. Labels 0 or 1.
        strength: λ (> 0).
        max_nonzero: instead of ``strength``: the path point with this many non-zeros.
        fit_intercept: add an unpenalised intercept (``result.intercept``); needs both labels.
        sample_weight: ``(n,)`` non-negative weights.
        l1_ratio: α of the elastic net, in (0, 1].

    Returns:
        Problem: with a cvxpy twin and a Fenchel dual.

    Raises:
        TypeError: complex or non-numeric data (named).
        ValueError: mismatched shapes, empty data, NaN / Inf entries (counted), a bad strength, or
            both / neither of strength and budget. Labels other than 0 / 1 are a ``ValueError``;
            so is an intercept with one class.

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
    options = _Options("logistic_l1", LogLoss(), X, y, strength, max_nonzero, fit_intercept=fit_intercept,
                       sample_weight=sample_weight, l1_ratio=l1_ratio)
    again = dict(fit_intercept=fit_intercept, sample_weight=sample_weight, l1_ratio=l1_ratio)
    loss = options.loss(_logistic)
    if max_nonzero is not None:
        return _budget_problem(f"logistic_l1 {n}x{d}{options.label()}", (d,), loss,
                               lambda: Sparse(max_nonzero=max_nonzero), options.data(X, y), options.meta(),
                               lambda lam: _again(logistic_l1, X, y, lam, **again), options)
    lam = options.l1_strength  # (checked by _Options)

    def penalty(w):
        import cvxpy as cp
        return lam * cp.norm1(w)

    return options.problem(f"logistic_l1 {n}x{d}", (d,), loss, lambda: Sparse(lam), X, y, penalty,
                           restrict=lambda index: _again(logistic_l1, columns(X, index), y, strength, **again),
                           at_strength=lambda new: _again(logistic_l1, X, y, new, **again))


def equality_ls(X, y, A=None, strength: float = 1.0, *, zeros=None) -> Problem:
    r"""Equality-constrained least squares: $1/(2n)‖Xw - y‖^2$ subject to $Aw = 0$ or ``w[zeros] = 0``.

    DCS uses the exact penalty $λ‖O^\top w‖_1$ ([`Subspace`][symopt.Subspace], ``O`` an orthonormal basis
    of rowspace(A)) or $λ‖w[\mathrm{zeros}]‖_1$ ([`FixedZeros`][symopt.FixedZeros]); ``strength`` must exceed
    the Lagrange multipliers $‖O^\top ∇ℓ(w^*)‖_∞$ for the constraint to hold exactly. The objective
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
    r"""k least-squares tasks $\sum_j 1/(2n)‖X_j w_j - y_j‖^2$ with tied weights $w_1 = … = w_k$.

    DCS writes $w_j = w_1 + u_j ⊙ v_j$ for j ≥ 2 ([`Tied`][symopt.Tied]): the exact penalty
    $λ\sum_{j≥2}‖w_j - w_1‖_1$ holds the tie once $λ > \max_{j≥2} ‖∇_{w_j}ℓ(w^*)‖_∞$. The answer is the
    least-squares fit of one ``w`` to all tasks pooled.

    Args:
        X: ``(k, n, d)``, one design per task (k ≥ 2).
        y: ``(k, n)`` targets.
        strength: λ (> 0) or ``"auto"``.

    Returns:
        Problem: the variable is ``(k, d)``; with a cvxpy twin.

    Raises:
        TypeError: complex or non-numeric data.
        ValueError: shapes other than $(k ≥ 2, n, d)$ and ``(k, n)``, NaN / Inf, a bad strength.

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


@dataclass(frozen=True)
class CompletionFit:
    r"""Matrix completion's data term $\tfrac12 ‖P_Ω(θ - M)‖_F^2$ (``mask`` is $P_Ω$ as 0/1), with its gradient
    $P_Ω(θ - M)$ without autograd: the solver's lean descent asks ``value_and_grad`` at every
    evaluation, and autograd's backward through the masked square was an eighth of a 1000 × 1000
    solve. (Stateless: two are equal, so a path's points share their remembered evaluations.)

    Examples:
        >>> import torch
        >>> M, mask = 2 * torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)  # the diagonal seen
        >>> value, grad = CompletionFit().value_and_grad(torch.zeros(2, 2, dtype=torch.float64), M, mask)
        >>> float(value), grad.tolist()
        (4.0, [[-2.0, 0.0], [0.0, -2.0]])
    """

    def __call__(self, theta: Tensor, M: Tensor, mask: Tensor) -> Tensor:
        return 0.5 * (mask * (theta - M)).square().sum()

    def value_and_grad(self, theta: Tensor, M: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            # (in place, and the value as a dot product: two passes over the m × n matrix fewer than
            # the masked square above; 1.5 → 1.1 ms at 1000 × 1000, at every evaluation)
            residual = (theta - M).mul_(mask)
            flat = residual.reshape(-1)
            return 0.5 * flat.dot(flat), residual


_completion = CompletionFit()


def matrix_completion(M, mask, strength: float | None = None, *, target_rank: int | None = None) -> Problem:
    r"""Nuclear-norm matrix completion: $\tfrac12 ‖P_Ω(W - M)‖^2_F + λ‖W‖_*$, Ω the True entries of ``mask``.

    DCS writes $W = UV^\top$ ([`LowRank`][symopt.LowRank]), since
    $\min_{UV^\top =W} (λ/2)(‖U‖^2_F + ‖V‖^2_F) = λ‖W‖_*$. A singular direction is zero iff the
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
        return _budget_problem(f"completion {m}x{n}", (m, n), _completion, lambda: LowRank(max_rank=None, target_rank=target_rank),
                               {"M": M, "mask": maskf},
                               "matrix_completion", lambda lam: _again(matrix_completion, M, mask, lam))

    def twin(M, mask):
        import cvxpy as cp
        W = cp.Variable(M.shape)
        return W, 0.5 * cp.sum_squares(cp.multiply(mask, W - M)) + strength * cp.normNuc(W), []

    LowRank(strength)
    return Problem(f"completion {m}x{n}", (m, n), _completion, lambda: LowRank(strength),
                   {"M": M, "mask": maskf}, twin, {"family": "matrix_completion", "strength": strength},
                   dual=completion_dual, at_strength=lambda new: _again(matrix_completion, M, mask, new))


class MatrixLeastSquares:
    r"""$\tfrac{1}{2n}‖XW - Y‖^2_F$ (``X`` n × p, ``W`` p × q, ``Y`` n × q), the loss of
    `low_rank_regression`, with its curvature: entry $(i, t)$ of W against $(j, s)$ is $(X^\top X/n)_{ij}$
    where $t = s$, else 0 (the targets do not interact). The face polish asks for the curvature
    (`symopt.optimality`): a low-rank face's Hessian is then $J^\top H J$ plus the terms of the
    face's map and norm, where differentiating the whole objective twice took 0.5-0.6 s for a
    740-coordinate face on digits' 1797 rows.

    Examples:
        >>> import torch
        >>> X, Y = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
        >>> MatrixLeastSquares().curvature(torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.bool), X, Y).tolist()
        [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]]
    """

    def __call__(self, theta: Tensor, X: Tensor, Y: Tensor) -> Tensor:
        return 0.5 * (X @ theta - Y).square().sum() / X.shape[0]

    def curvature(self, theta: Tensor, mask: Tensor, X: Tensor, Y: Tensor) -> Tensor:
        # (the least-squares data term's, whose matrix θ is the multi-task Lasso's: one Gram block of the
        # rows used, shared by the targets)
        return _least_squares.curvature(theta, mask, X, Y)


_matrix_least_squares = MatrixLeastSquares()


def low_rank_regression(X, Y, strength: float | None = None, *, rank: int | None = None) -> Problem:
    r"""Multi-output regression $1/(2n)‖XW - Y‖^2_F$ with ``W`` of shape ``(p, q)``, either
    penalised, $+ λ‖W‖_*$ (``strength``; convex, cvxpy twin), or with a hard bound
    $\operatorname{rank}(W) ≤ r$ (``rank``; no convex twin: cvxpy reports not applicable, geoopt applies).

    The hard-rank form uses ``LowRank(max_rank=r)`` with a vanishing strength (1e-9 of
    $‖X^\top Y‖_2/n$) that keeps the factors balanced; its objective is the loss alone.

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
                   dual=least_squares_dual, at_strength=lambda new: _again(low_rank_regression, X, Y, new))


def _budget_problem(name, shape, loss, make: Callable[[], Constraint], data, meta, at_strength,
                    options: _Options | None = None) -> Problem:
    """A problem whose constraint carries a budget: no fixed λ, so no convex twin until λ is known."""
    probe = make()
    probe.validate(torch.empty(shape), "theta")  # budget vs. shape, now
    meta = dict(meta if isinstance(meta, dict) else {"family": meta}, budget=probe.budget)
    meta.pop("strength", None)
    problem = Problem(f"{name}, budget {probe.budget}", shape, loss, make, data, None, meta, at_strength=at_strength)
    if options is not None:
        problem.intercept = options.intercept(lambda: problem.data_on("cpu", torch.float64))
    return problem
