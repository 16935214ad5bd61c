r"""Data terms of the regression and classification families, with what users bring to them: an
unpenalised intercept, sample weights and an elastic-net ridge.

**Sample weights.** With weights $s_i ≥ 0$ the data term is the weighted mean
$\sum_i ω_i ℓ_i$ with $ω = s / \sum s$ (no weights: $ω_i = 1/n$). This is scikit-learn's ``Lasso`` /
``ElasticNet`` (which rescale ``sample_weight`` to sum to ``n``); its ``LogisticRegression`` minimises
$C \sum s_i ℓ_i + ‖w‖_1$, the same problem at $C = 1 / (λ \sum s)$.

**The intercept is profiled out**, not penalised and not a factor: the data term of ``w`` is
$\min_b \sum ω_i ℓ(x_i^\top w + b, y_i)$. For least squares the minimiser is the weighted mean residual,
in closed form; for the log-loss it is the root of $\sum ω_i (σ(z_i + b) - y_i) = 0$, found by a
safeguarded Newton iteration (monotone in ``b``, so bracketed and never lost). At the minimising
``b*`` the derivative in ``b`` vanishes, so the gradient in ``w`` is the plain one at ``b*``
(envelope theorem): the profiled term is smooth, convex in ``w``, and DCS, the duals and the working
sets see an ordinary loss of ``w``. The design is never centred, so a sparse ``X`` stays sparse.

**Elastic net.** $λ(α‖w‖_1 + (1 - α)/2 ‖w‖^2)$ (scikit-learn's ``l1_ratio`` = $α$): the ridge part is
smooth and joins the data term ($\mathrm{ridge} = λ(1 - α)$); the L1 part is the constraint's penalty at
strength $αλ$.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .design import column_squares, columns, host_columns, matvec, rmatvec, squared_rmatvec, weighted_gram
from .points import same_point

# Designs whose whole Gram a least-squares curvature keeps: at most 256 columns and 10⁶ entries (the
# Gram then costs at most a few ms once, and 0.5 MB; diabetes, breast_cancer, wine, digits qualify).
GRAM_LIMIT = (256, 1_000_000)


@dataclass(frozen=True)
class SquaredError:
    r"""$f(z, y) = \tfrac12 (z - y)^2$: least squares. Its optimal intercept is the weighted mean residual.
    (A stateless dataclass: two of them are equal, so data terms built apart compare equal and a
    path's points share their remembered evaluations, `symopt.problems.base.Evaluations`.)"""

    def value(self, z: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return 0.5 * _weighted_sum((z - y).square(), weights)

    def slope(self, z: Tensor, y: Tensor) -> Tensor:
        """$∂f/∂z$."""
        return z - y

    # f'' does not depend on z: the curvature needs no product X·w (a quarter of a warm-started path point)
    constant_second = True

    def second(self, z: Tensor) -> Tensor:
        """$∂^2 f/∂z^2 = 1$."""
        return torch.ones_like(z)

    def intercept(self, z: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return _weighted_mean(y - z, weights)  # exact, and linear in z (so differentiable as is)

    def conjugate(self, nu: Tensor, y: Tensor, omega: Tensor) -> Tensor:
        r"""$F*(ν) = \langle ν, y\rangle + \tfrac12 \sum ν_i^2/ω_i$ of $F(z) = \sum ω_i f(z_i, y_i)$ ($ν_i = 0$ where $ω_i = 0$)."""
        on = omega > 0
        safe = torch.where(on, omega, torch.ones_like(omega))
        return (nu * y).sum() + 0.5 * torch.where(on, nu.square() / safe, torch.zeros_like(nu)).sum()

    def cvxpy(self, z, y, omega, weighted: bool):
        import cvxpy as cp
        if not weighted:
            return cp.sum_squares(z - y) / (2 * y.shape[0])
        return 0.5 * cp.sum(cp.multiply(omega.reshape(-1, *([1] * (y.ndim - 1))), cp.square(z - y)))


@dataclass(frozen=True)
class LogLoss:
    r"""$f(z, y) = \log(1 + e^z) - yz$, labels 0/1: logistic regression. Its optimal intercept is the
    root of a monotone equation (`logistic_intercept`)."""

    def value(self, z: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        if weights is None:
            return F.binary_cross_entropy_with_logits(z, y)
        return F.binary_cross_entropy_with_logits(z, y, weight=weights, reduction="sum")

    def slope(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.sigmoid(z) - y

    def second(self, z: Tensor) -> Tensor:
        """$∂^2 f/∂z^2 = σ(z)(1 - σ(z))$."""
        p = torch.sigmoid(z)
        return p * (1 - p)

    def intercept(self, z: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        # The root b*(z), found without autograd, then one Newton step taken *with* it: the step is 0
        # at the root (so the value is b*), and its derivative is the implicit function theorem's
        # db*/dz_i = −ω_i σ'_i / Σ ω σ'. The gradient would be right without it (∂ℓ/∂b = 0 at b*:
        # envelope theorem), but the curvature would not: a Newton polish on the face then saw the
        # Hessian without the intercept's coupling and took 7 steps where 1-2 do.
        # Consecutive evaluations (a line search, a face's Newton steps) move the root little: start
        # Newton at the last root found for these labels (kept on y, as the Gram block is on X): after a
        # small move of the logits two or three evaluations, where a cold start takes five or more
        # (tests/test_glm_options.py); a far start costs a few bisections inside the bracket.
        root = logistic_intercept(z.detach(), y, weights, start=getattr(y, "_symopt_last_intercept", None))
        y._symopt_last_intercept = float(root)
        if not (z.requires_grad and torch.is_grad_enabled()):
            return root  # (the step below is 0 at the root: it is there for autograd, a third of an evaluation)
        w = torch.full_like(z, 1.0 / z.shape[0]) if weights is None else weights.to(z.dtype)
        p = torch.sigmoid(z + root)
        return root - (w * (p - y)).sum() / (w * p * (1 - p)).sum()

    def conjugate(self, nu: Tensor, y: Tensor, omega: Tensor) -> Tensor:
        r"""$F*(ν) = \sum ω_i H(p_i)$, $p = y + ν/ω$, $H(p) = p \log p + (1 - p) \log(1 - p)$."""
        on = omega > 0
        safe = torch.where(on, omega, torch.ones_like(omega))
        p = (y + torch.where(on, nu / safe, torch.zeros_like(nu))).clamp(0.0, 1.0)
        return (omega * (torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))).sum()

    def cvxpy(self, z, y, omega, weighted: bool):
        import cvxpy as cp
        return cp.sum(cp.multiply(omega, cp.logistic(z) - cp.multiply(y, z)))


@dataclass(frozen=True)
class DataTerm:
    r"""A family's data term $\min_b \sum_i ω_i f(x_i^\top w + b, y_i) + (\mathrm{ridge}/2)‖w‖^2$: ``fit`` is ``f``
    (`SquaredError`, `LogLoss`), ``b`` is profiled out when ``fit_intercept``. ``weights`` (normalised
    to sum 1) travel in the problem's data, under ``"weights"``, so they follow the solver's device
    and dtype.

    Examples:
        >>> import torch
        >>> X, y = torch.eye(2, dtype=torch.float64), torch.tensor([3.0, 5.0], dtype=torch.float64)
        >>> term = DataTerm(SquaredError(), fit_intercept=True)
        >>> float(term(torch.zeros(2, dtype=torch.float64), X, y)), term.intercept(torch.zeros(2), X, y)
        (0.5, 4.0)
    """

    fit: SquaredError | LogLoss
    fit_intercept: bool = False
    ridge: float = 0.0

    @property
    def quadratic(self) -> bool:
        """Whether the term is a quadratic in θ (least squares, with or without intercept, weights and
        ridge): its curvature is the same everywhere, so a quadratic model of it is the term itself."""
        return bool(getattr(self.fit, "constant_second", False))

    def determined(self, X: Tensor, y: Tensor, weights: Tensor | None = None) -> bool:
        r"""Whether the term's curvature can be positive definite on every coordinate at once: with a
        ridge always; otherwise where the rows that count (a positive weight; one fewer with an
        intercept, whose profiling centres them) are at least the columns. Where it cannot, a
        quadratic model taken at a rough point (θ = 0) is singular on large faces, and its active set
        walks level steps one coordinate at a time. The solver asks before its first check
        (`symopt.solver.descent`).

        Examples:
            >>> import torch
            >>> X, y = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            >>> DataTerm(SquaredError()).determined(X, y), DataTerm(SquaredError(), fit_intercept=True).determined(X.mT, y[:2])
            (True, False)
        """
        return self.ridge > 0 or self._rows_that_count(X, weights) >= X.shape[1]

    def _rows_that_count(self, X: Tensor, weights: Tensor | None) -> int:
        """The rows with a positive weight, one fewer with an intercept (its profiling centres them)."""
        rows = X.shape[0] if weights is None else int((weights > 0).sum())
        return rows - int(self.fit_intercept)

    def sparse_entries(self, X: Tensor, y: Tensor, weights: Tensor | None = None) -> int | None:
        """The entries a sparse (CSR) design stores, None for a dense one: what one product with it costs. The
        solver weighs working sets by it (`symopt.solver.dcs`).

        Examples:
            >>> import torch
            >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
            >>> term, y = DataTerm(SquaredError()), torch.zeros(2, dtype=torch.float64)
            >>> term.sparse_entries(X.to_sparse_csr(), y), term.sparse_entries(X, y)
            (2, None)
        """
        return int(X.values().numel()) if X.layout == torch.sparse_csr else None

    def resolved_coordinates(self, X: Tensor, y: Tensor, weights: Tensor | None = None) -> float:
        r"""The rank the term's curvature can have at most, in θ's coordinates: the rows that count (as
        in `determined`) times the targets (θ's columns: the curvature is $B ⊗ I_T$ for least
        squares), and ``inf`` with a ridge. A quadratic model on more coordinates than this is singular;
        the solver weighs a first model from θ = 0 by it (`symopt.solver.descent`).

        Examples:
            >>> import torch
            >>> X = torch.ones(3, 5, dtype=torch.float64)
            >>> DataTerm(SquaredError()).resolved_coordinates(X, torch.zeros(3, 2, dtype=torch.float64))
            6.0
        """
        if self.ridge > 0:
            return math.inf
        return float(self._rows_that_count(X, weights) * (y.shape[1] if y.dim() == 2 else 1))

    def __call__(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor:
        value = self.fit.value(self.predictor(theta, X, y, weights), y, weights)
        if self.ridge:
            value = value + 0.5 * self.ridge * theta.square().sum()
        return value

    def value_and_grad(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(value, ∇value)`` at ``theta`` without autograd: $∇ = X^\top (ω ⊙ f'(Xw + b^*)) + \mathrm{ridge}·w$.
        The intercept's own derivative vanishes at $b^*$ (envelope theorem), so it adds nothing.
        The solver's lean descent asks for it (`symopt.solver.flat`).

        Examples:
            >>> import torch
            >>> X, y = torch.eye(2, dtype=torch.float64), torch.tensor([3.0, 5.0], dtype=torch.float64)
            >>> value, grad = DataTerm(SquaredError())(torch.zeros(2, dtype=torch.float64), X, y), None
            >>> v, g = DataTerm(SquaredError()).value_and_grad(torch.zeros(2, dtype=torch.float64), X, y)
            >>> float(v) == float(value), g.tolist()       # ½·mean(9, 25); −Xᵀy/n
            (True, [-1.5, -2.5])
        """
        with torch.no_grad():
            z = self._kept_predictor(theta, X, y, weights)
            value = self.fit.value(z, y, weights)
            slope = self.fit.slope(z, y)
            scaled = slope / slope.shape[0] if weights is None else _weights_like(weights.to(slope.dtype), slope) * slope
            grad = rmatvec(X, scaled)
            if self.ridge:
                value = value + 0.5 * self.ridge * theta.square().sum()
                grad = grad + self.ridge * theta
        return value, grad

    def curvature(self, theta: Tensor, mask: Tensor, X: Tensor, y: Tensor,
                  weights: Tensor | None = None) -> Tensor | None:
        r"""$∇^2$ of the data term at ``theta`` on the entries ``mask`` (a boolean mask of θ's shape):
        $Z^\top \mathrm{diag}(h) Z$ with $Z = X_{:, \mathrm{mask}}$ and $h = ω ⊙ f''(Xw + b^*)$, minus
        $(Z^\top h)(Z^\top h)^\top / \sum h$ with a profiled intercept (the Schur complement of the
        intercept's row), plus the ridge. For a matrix θ (several targets, one column each) with a
        constant $f''$ (least squares: the multi-task Lasso) the targets do not interact and share
        the block of their rows: entry $(i, t)$ against $(j, s)$ is that block's $(i, j)$ where $t = s$,
        else 0. None for a matrix θ otherwise: callers then differentiate twice. The face polish asks
        for it (`symopt.optimality`, `symopt.proximal_newton`).

        Examples:
            >>> import torch
            >>> X = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
            >>> y = torch.zeros(2, dtype=torch.float64)
            >>> term = DataTerm(SquaredError(), fit_intercept=True)
            >>> term.curvature(torch.zeros(2, dtype=torch.float64), torch.tensor([True, True]), X, y).tolist()
            [[0.0, 0.0], [0.0, 1.0]]
        """
        if theta.dim() == 2 and self.quadratic:
            index = mask.reshape(-1).nonzero().squeeze(1)
            rows, tasks = index // theta.shape[1], index % theta.shape[1]
            used, position = torch.unique(rows, return_inverse=True)
            on_rows = torch.zeros(theta.shape[0], dtype=torch.bool, device=theta.device)
            on_rows[used] = True
            block = self.curvature(theta.new_zeros(theta.shape[0]), on_rows, X, y[:, 0], weights)
            return block[position][:, position] * (tasks[:, None] == tasks[None, :])
        if theta.dim() != 1:
            return None
        index = mask.reshape(-1).nonzero().squeeze(1)
        gram = self._gram(X, weights)
        if gram is not None:  # least squares on a small design: the face's block of the whole Gram
            hessian = gram.index_select(0, index).index_select(1, index)
        else:
            with torch.no_grad():
                h = self._sample_curvatures(theta, X, y, weights)
                Z = columns(X, index)
                hessian = weighted_gram(Z, h)
                if self.fit_intercept:
                    pull = rmatvec(Z, h)
                    hessian = hessian - torch.outer(pull, pull) / h.sum()
        if self.ridge:
            hessian = hessian + self.ridge * torch.eye(len(index), dtype=hessian.dtype, device=hessian.device)
        return hessian

    def curvature_product(self, theta: Tensor, mask: Tensor, X: Tensor, y: Tensor, weights: Tensor | None = None,
                          single: bool = False) -> tuple[Callable[[Tensor], Tensor], Tensor] | None:
        r"""``(v ↦ Hv, diag H)`` for $H$ = `curvature` at ``theta`` on the entries ``mask`` of a vector θ, without
        forming $H$: $Hv = Z^\top (h ⊙ Zv)$ (minus $(Z^\top h)(h^\top Zv)/\sum h$ with a profiled intercept,
        plus the ridge), two products with the design's columns $Z = X_{:,\mathrm{mask}}$ (sparse ones stay
        sparse). A model of thousands of coordinates asks for it where the dense $H$ would not fit
        (`symopt.l1_products`). With ``single``, the products with a dense float64 design run on a float32 copy of its
        columns (half the memory read: the products are bound by it) and return float64; the diagonal stays exact.
        None for a matrix θ.

        Examples:
            >>> import torch
            >>> X = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
            >>> term, mask = DataTerm(SquaredError()), torch.tensor([True, True])
            >>> product, diagonal = term.curvature_product(torch.zeros(2, dtype=torch.float64), mask, X, torch.zeros(2, dtype=torch.float64))
            >>> product(torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist(), diagonal.tolist()   # XᵀX/n
            ([1.0, 1.0], [1.0, 2.0])
        """
        if theta.dim() != 1:
            return None
        index = mask.reshape(-1).nonzero().squeeze(1)
        with torch.no_grad():
            h = self._sample_curvatures(theta, X, y, weights)
            host = host_columns(X, index) if h.device.type == "cpu" else None
            if host is not None:  # (a CPU CSR design's few stored entries: SciPy's products on NumPy arrays)
                return self._products_on_host(host, h, X, index, weights)
            Z = columns(X, index)
            pull = rmatvec(Z, h) if self.fit_intercept else None
            total = float(h.sum())  # (once: each product with an intercept divides by it)
            diagonal = self._product_diagonal(h, X, index, weights, lambda: squared_rmatvec(Z, h), pull, total)

        single = single and Z.layout == torch.strided and Z.dtype == torch.float64
        Zs, hs = (Z.to(torch.float32), h.to(torch.float32)) if single else (Z, h)

        def product(v: Tensor) -> Tensor:
            with torch.no_grad():
                Zv = matvec(Zs, v.to(Zs.dtype))
                answer = rmatvec(Zs, hs * Zv).to(v.dtype)
                if pull is not None:
                    answer = answer - pull * (float(hs @ Zv) / total)
                return answer + self.ridge * v if self.ridge else answer

        return product, diagonal

    def _product_diagonal(self, h: Tensor, X: Tensor, index: Tensor, weights: Tensor | None,
                          squared: Callable[[], Tensor], pull, total: float) -> Tensor:
        r"""`curvature_product`'s diagonal, either route: $(Z ⊙ Z)^\top h$ (``squared()``; for a constant h, least
        squares without weights, the design's kept squared column norms scaled), less $\mathrm{pull}^2 / \sum h$
        with a profiled intercept (``pull`` $= Z^\top h$, a tensor or a NumPy array, or None), plus the ridge."""
        diagonal = (float(h[0]) * column_squares(X).index_select(0, index) if self.quadratic and weights is None
                    else squared())
        if pull is not None:
            diagonal = diagonal - torch.as_tensor(pull).square() / total
        if self.ridge:
            diagonal = diagonal + self.ridge
        return diagonal

    def _products_on_host(self, host, h: Tensor, X: Tensor, index: Tensor,
                          weights: Tensor | None) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """`curvature_product` on the SciPy columns ``host = (Zᵀ, Z)`` of `symopt.problems.design.host_columns`: the
        product also as ``product.on_arrays``, the same map on NumPy arrays (`symopt.l1_products` calls it without
        a torch tensor on the way)."""
        import scipy.sparse

        rows, Z = host
        h_host = h.numpy()
        pull = rows @ h_host if self.fit_intercept else None
        total = float(h_host.sum())
        # (Zᵀ's entries squared, its structure shared: (Z ⊙ Z)ᵀ h)
        diagonal = self._product_diagonal(h, X, index, weights, lambda: torch.from_numpy(scipy.sparse.csr_matrix(
            (rows.data ** 2, rows.indices, rows.indptr), shape=rows.shape) @ h_host), pull, total)
        ridge = self.ridge

        def on_arrays(v: np.ndarray) -> np.ndarray:
            Zv = Z @ v
            answer = rows @ (h_host * Zv)
            if pull is not None:
                answer -= pull * (float(h_host @ Zv) / total)
            if ridge:
                answer += ridge * v
            return answer

        def product(v: Tensor) -> Tensor:
            return torch.from_numpy(on_arrays(v.detach().numpy())).to(v.dtype)

        product.on_arrays = on_arrays
        return product, diagonal

    def _sample_curvatures(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        r"""$h = ω ⊙ f''(Xw + b^*)$, the samples' weights in the curvature $Z^\top \mathrm{diag}(h) Z$ (without
        autograd)."""
        if self.quadratic:  # f'' at any z will do: at z = 0, no product
            z = torch.zeros(X.shape[0], dtype=theta.dtype, device=theta.device)
        else:
            z = self._kept_predictor(theta, X, y, weights)
        omega = torch.full_like(z, 1.0 / z.shape[0]) if weights is None else weights.to(z.dtype)
        return omega * self.fit.second(z)

    def target_block(self, theta: Tensor, mask: Tensor, X: Tensor, y: Tensor,
                     weights: Tensor | None = None) -> Tensor | None:
        r"""For a matrix θ (one column per target) with a constant $f''$ and a ``mask`` of whole rows: the
        rows' block $B$ with `curvature` $= B ⊗ I_T$ on the mask's entries (row by row): the targets
        do not interact and share it. None otherwise. The group model's Newton steps factor $B$
        instead of the whole face (`symopt.proximal_newton`).

        Examples:
            >>> import torch
            >>> X = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
            >>> term, theta = DataTerm(SquaredError()), torch.zeros(2, 3, dtype=torch.float64)
            >>> mask = torch.tensor([[True] * 3, [False] * 3])
            >>> term.target_block(theta, mask, X, torch.zeros(2, 3, dtype=torch.float64)).tolist()   # XᵀX/n, row 0
            [[1.0]]
        """
        if theta.dim() != 2 or not self.quadratic:
            return None
        on_rows = mask.any(1)
        if not torch.equal(mask, on_rows[:, None].expand_as(mask)):
            return None
        return self.curvature(theta.new_zeros(theta.shape[0]), on_rows, X, y[:, 0], weights)

    def _gram(self, X: Tensor, weights: Tensor | None) -> Tensor | None:
        r"""The data term's Hessian on every coordinate, $X^\top X / n$ (centred with an intercept), where it
        is constant and cheap to hold: least squares without weights on a small dense design
        (``GRAM_LIMIT``). Built once and kept on ``X`` itself (it lives as long as the data); a face
        polish then takes its block instead of multiplying ``X``'s columns at each Newton step (a
        tenth of a LassoCV fit on diabetes went to those products)."""
        if (not self.quadratic or weights is not None or X.layout != torch.strided
                or X.dim() != 2 or X.shape[1] > GRAM_LIMIT[0] or X.numel() > GRAM_LIMIT[1]):
            return None
        key = f"_symopt_gram_{int(self.fit_intercept)}"
        gram = getattr(X, key, None)
        if gram is None:
            with torch.no_grad():
                centred = X - X.mean(0) if self.fit_intercept else X
                gram = centred.mT @ centred / X.shape[0]
            setattr(X, key, gram)
        return gram

    def _kept_predictor(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        """`predictor` without autograd, the last one kept on ``X`` (with the θ, labels, weights and
        term it was for): the face polish asks for the curvature at the point whose value and gradient
        it has just evaluated (the step it accepted), and with a logistic intercept each predictor
        solves for the intercept's root (a fifth of a small logistic-L1 solve went to predictors).
        The data are never mutated (`Problem`'s contract), so an equal θ gives the same answer."""
        kept = getattr(X, "_symopt_last_predictor", None)
        if kept is not None and kept[1] is y and kept[2] is weights and kept[3] == self and same_point(kept[0], theta):
            return kept[4]
        with torch.no_grad():
            z = self.predictor(theta, X, y, weights)
        X._symopt_last_predictor = (theta.detach().clone(), y, weights, self, z)
        return z

    def predictor(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor:
        """``Xw + b*(w)`` ($b^* = 0$ without an intercept); differentiable in ``w``."""
        z = matvec(X, theta)
        return z + self.fit.intercept(z, y, weights) if self.fit_intercept else z

    def intercept(self, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor | float:
        """The unpenalised intercept ``b*`` at ``w`` (0.0 without one); a vector for matrix targets."""
        if not self.fit_intercept:
            return 0.0
        with torch.no_grad():
            b = self.fit.intercept(matvec(X, theta.to(X.dtype)), y, weights)
        return float(b) if b.dim() == 0 else b


def _weights_like(weights: Tensor, value: Tensor) -> Tensor:
    return weights.reshape(-1, *([1] * (value.dim() - 1)))


def _weighted_sum(value: Tensor, weights: Tensor | None) -> Tensor:
    r"""$\sum_i ω_i \mathrm{value}_i$ over samples (axis 0), summed over targets; ω = 1/n without weights."""
    if weights is None:
        return value.sum() / value.shape[0]
    return (_weights_like(weights, value) * value).sum()


def _weighted_mean(value: Tensor, weights: Tensor | None) -> Tensor:
    """The weighted mean over samples (axis 0), per target."""
    if weights is None:
        return value.mean(0)
    return (_weights_like(weights, value) * value).sum(0)


def logistic_intercept(z: Tensor, y: Tensor, weights: Tensor | None = None, tol: float = 1e-15,
                       max_steps: int = 100, start: float | None = None) -> Tensor:
    r"""The root ``b`` of $\sum ω_i σ(z_i + b) = ȳ$ ($ȳ = \sum ω_i y_i ∈ (0, 1)$): the log-loss's optimal
    intercept for fixed logits ``z``. Newton from ``start`` (default $\mathrm{logit}(ȳ) - \operatorname{mean}(z)$),
    bisecting inside the bracket that the monotone left side gives ($[\mathrm{logit}(ȳ) - \max z,
    \mathrm{logit}(ȳ) - \min z]$, narrowed by each step's sign) whenever a Newton step leaves it; returns a
    0-d tensor of ``z``'s dtype.

    Examples:
        >>> import torch
        >>> z, y = torch.zeros(4, dtype=torch.float64), torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        >>> b = logistic_intercept(z, y)                 # 3 of 4 labels are 1: σ(b) = 0.75
        >>> abs(float(torch.sigmoid(b)) - 0.75) < 1e-15, round(float(b), 6)
        (True, 1.098612)
    """
    w = None if weights is None else weights.to(z.dtype)
    ybar = float(y.mean() if w is None else (w * y).sum())
    logit = math.log(ybar) - math.log1p(-ybar)
    lo, hi = -math.inf, math.inf  # the bracket, computed from z only when a step leaves it (rarely)
    if start is None or not math.isfinite(start):
        start = logit - float(z.mean() if w is None else (w * z).sum())
    b = start
    # |f| below this is the sum's own rounding: the root is as exact as f can say. Without this stop a
    # saturated sigmoid (raw columns, |z| ~ 1e3) has slopes so small that rounding-level f moves b by
    # more than ``tol``, and the loop ran ~50 bisections a call (a quarter of a logistic-L1 solve).
    resolution = 8 * torch.finfo(z.dtype).eps * max(ybar, 1e-300)
    for _ in range(max_steps):
        p = torch.sigmoid(z + b)
        # Σω p and Σω p², one transfer for both (this runs a few times per evaluation); the slope
        # Σω p(1 − p) from their difference only steers Newton (bracketed), f is the accurate sum
        first, second = torch.stack([p.sum(), p.dot(p)] if w is None else [p.dot(w), (p * p).dot(w)]).tolist()
        if w is None:
            first, second = first / z.shape[0], second / z.shape[0]
        f, slope = first - ybar, first - second
        if abs(f) <= resolution:
            break
        if f > 0:
            hi = min(hi, b)
        else:
            lo = max(lo, b)
        nxt = b - f / slope if slope > 0 else math.nan
        if not lo < nxt < hi:  # Newton left the bracket (flat sigmoid far out): bisect the true one
            lo, hi = max(lo, logit - float(z.max())), min(hi, logit - float(z.min()))
            if not lo < nxt < hi:
                nxt = 0.5 * (lo + hi)
        if abs(nxt - b) <= tol * (1.0 + abs(b)) or hi - lo <= tol * (1.0 + abs(b)):
            b = nxt
            break
        b = nxt
    return torch.tensor(b, dtype=z.dtype, device=z.device)


def normalised_weights(sample_weight, n: int, dtype, device=None) -> Tensor | None:
    """``sample_weight`` checked (length ``n``, finite, ≥ 0, not all 0) and scaled to sum to 1;
    None stays None."""
    if sample_weight is None:
        return None
    try:
        s = torch.as_tensor(sample_weight)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"sample_weight must be an array of n = {n} numbers, got {type(sample_weight).__name__}") from err
    if s.is_complex() or s.dtype == torch.bool:
        raise TypeError(f"sample_weight must be real numbers, got {s.dtype}")
    s = s.to(dtype=torch.float64)
    if s.dim() != 1 or s.shape[0] != n:
        raise ValueError(f"sample_weight must have one weight per sample (shape ({n},)), got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sample_weight contains NaN or Inf")
    if bool((s < 0).any()):
        raise ValueError(f"sample_weight must be >= 0: {int((s < 0).sum())} negative weight(s); drop those samples "
                         "or use 0 to ignore one")
    total = float(s.sum())
    if total <= 0:
        raise ValueError("sample_weight sums to 0: at least one sample needs a positive weight")
    return (s / total).to(dtype=dtype, device=device)
