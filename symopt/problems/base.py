"""A constrained problem declared once, with two faces: a torch objective and a cvxpy twin."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..constraints import Constraint
from ..result import NotApplicable
from .points import same_point


@dataclass
class Problem:
    r"""``minimise loss(θ; data) + strength·induced_norm(θ)`` (penalty kinds) or
    ``minimise loss(θ; data) s.t. θ ∈ constraint set`` (linear kinds), over θ of ``shape``.

    Attributes:
        name: short label, e.g. ``"lasso 200x500"``.
        shape: shape of the variable θ.
        loss: ``loss(theta, **data) -> scalar tensor``, smooth and differentiable.
        constraint: factory returning a fresh [`Constraint`][symopt.Constraint] (strength included).
        data: tensors the loss needs; moved to the solver's device and dtype.
        cvxpy: optional twin ``cvxpy(**numpy_data) -> (variable, objective, constraints)`` whose
            variable has ``shape`` and whose optimum is the problem's optimum.
        meta: free-form description (sizes, planted truth, ...).
        penalized: False for hard-constraint problems whose objective is the loss alone even though
            the constraint is a penalty kind (hard rank: ``LowRank(max_rank=r)`` with a vanishing
            strength).
        at_strength: for budget problems (``max_nonzero``, ``max_groups``, ``target_rank``), the
            penalised problem at a given λ — ``problem.at_strength(result.strength)`` is the convex
            problem that [`symopt.solve`][symopt.solve]'s answer solves, for cvxpy and the other baselines.
        dual: for penalised convex families, $\mathrm{dual}(θ, \mathrm{data}, \mathrm{constraint}) -> (D(ν), ν)$: a
            dual-feasible point built from θ and its dual objective (`symopt.problems.duality`);
            $\mathrm{objective} - D(ν)$ is the duality gap that [`symopt.certify`][symopt.certify] reports.
        restrict: for separable penalised families (Lasso, group lasso, logistic-L1),
            ``restrict(index)`` is the same problem over $θ[\mathrm{index}]$ alone, the other coordinates
            fixed at 0 (``index`` sorted; for groups, whole groups): a column subset of ``X``, so an
            evaluation costs the subset, not the full design. [`symopt.solve`][symopt.solve] uses it
            for working sets.
        intercept: for families with ``fit_intercept=True``, $\mathrm{intercept}(θ)$: the unpenalised
            intercept that goes with θ (profiled out of the loss, so not part of the variable);
            ``result.intercept`` calls it. None for problems without one.

    Examples:
        A problem of your own: least squares with the weights summing to zero, then solved.

        >>> import torch, symopt
        >>> X, y = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
        >>> problem = symopt.Problem(
        ...     name="sum-zero LS", shape=(4,),
        ...     loss=lambda theta, X, y: 0.5 * (X @ theta - y).square().mean(),
        ...     constraint=lambda: symopt.Subspace(torch.ones(1, 4), strength=10.0),
        ...     data={"X": X, "y": y}, penalized=False)
        >>> result = symopt.solve(problem)
        >>> result.status, abs(float(result.x.sum())) < 1e-10
        ('optimal', True)
    """

    name: str
    shape: tuple[int, ...]
    loss: Callable[..., Tensor]
    constraint: Callable[[], Constraint]
    data: dict[str, Tensor] = field(default_factory=dict)
    cvxpy: Callable | None = None
    meta: dict = field(default_factory=dict)
    penalized: bool = True
    at_strength: Callable[[float], "Problem"] | None = None
    dual: Callable[[Tensor, dict, Constraint], tuple[float, Tensor]] | None = None
    restrict: Callable[[Tensor], "Problem"] | None = None
    intercept: Callable[[Tensor], object] | None = None

    @property
    def budget(self) -> int | None:
        """Atom budget (non-zeros, groups, rank) of a budget problem, else None."""
        return self.meta.get("budget")

    def require_strength(self, solver: str) -> None:
        """Baselines solve at a fixed λ; a budget problem has none until [`symopt.solve`][symopt.solve] finds it."""
        if self.budget is not None:
            raise NotApplicable(
                f"{solver}: '{self.name}' has a budget, not a strength; solve it with symopt.solve, then run "
                f"{solver} on problem.at_strength(result.strength)"
            )

    def strength_max(self) -> float:
        r"""The smallest λ at which θ = 0 is optimal: $‖∇\mathrm{loss}(0)‖_*$ (the constraint's dual norm; an
        elastic net divides by its ``l1_ratio``). Where a path starts (scikit-learn's ``alpha_max``).

        Raises:
            ValueError: a problem without a penalty to vary (linear kinds, hard rank).

        Examples:
            >>> import torch
            >>> from symopt.problems import lasso
            >>> X, y = torch.eye(2, dtype=torch.float64), torch.tensor([4.0, -6.0], dtype=torch.float64)
            >>> lasso(X, y, 0.1).strength_max()                      # ‖Xᵀy‖_∞ / n
            3.0
        """
        from ..optimality import loss_gradient  # optimality imports the constraints, not the problems

        constraint = self.constraint()
        if constraint.linear or not self.penalized:
            raise ValueError(f"strength_max: '{self.name}' has no penalty strength to vary (a linear constraint "
                             "or a hard rank)")
        data = self.data_on("cpu", torch.float64)
        grad = loss_gradient(lambda theta: self.loss(theta, **data), torch.zeros(self.shape, dtype=torch.float64))
        return float(constraint.to(dtype=torch.float64).dual_norm(grad)) / self.meta.get("l1_ratio", 1.0)

    def __post_init__(self) -> None:
        # The `Evaluations` that the bound losses of this problem's own data share across solves:
        # None (each bound loss remembers its own) except where a caller that solves related problems
        # in a row on the same data (`symopt.path`: one problem at many λ) hands them one.
        self.evaluations: Evaluations | None = None

    def data_on(self, device=None, dtype=None) -> dict[str, Tensor]:
        """The data on ``device`` in ``dtype`` (floating tensors; others keep theirs): the tensors
        themselves where they are there already, else copies. Within a call of `moves_data_once`
        (`symopt.solve`, `symopt.path`), a tensor of that call's problem is copied once per device and
        dtype and the copy reused."""
        moved = _MOVED.get()
        out = {}
        for key, value in self.data.items():
            target = dtype if torch.is_floating_point(value) else None
            if moved is None or moved.sources.get(id(value)) is not value:
                out[key] = value.to(device=device, dtype=target)
                continue
            slot = (id(value), None if device is None else str(torch.device(device)), target)
            copy = moved.copies.get(slot)
            if copy is None:
                copy = moved.copies[slot] = value.to(device=device, dtype=target)
            out[key] = copy
        return out

    def bind(self, data: dict[str, Tensor]) -> "BoundLoss":
        """``θ ↦ loss(θ, **data)``, with the loss's analytic derivatives where it has them. On the
        problem's own data tensors (``data_on`` at their device and dtype returns them) the bound loss
        remembers its last few analytic evaluations in ``self.evaluations`` where a caller set it
        (`Evaluations`), else, within a call of `moves_data_once` on this problem's data, in one memo
        for the call (the λ_max check's ∇loss(0) is the descent's start: on a 5000 × 10000 Lasso
        one product with ``X`` and one with ``Xᵀ`` fewer); otherwise each bound loss remembers its own."""
        own = data.keys() == self.data.keys() and all(data[k] is self.data[k] or _is_moved_copy(data[k], self.data[k])
                                                      for k in data)
        if not own:
            return BoundLoss(self.loss, data)
        memo = self.evaluations if self.evaluations is not None else _call_evaluations(self, data)
        return BoundLoss(self.loss, data, memo)

    def numpy_data(self) -> dict[str, np.ndarray]:
        """The data as numpy arrays for cvxpy and scikit-learn; a sparse (CSR) design becomes a
        ``scipy.sparse.csr_matrix``."""
        return {k: _to_numpy(v) for k, v in self.data.items()}

    def value(self, theta: Tensor, data: dict[str, Tensor], constraint: Constraint,
              loss: Callable[[Tensor], Tensor] | None = None) -> float:
        """Full objective at θ with data and constraint already on θ's device and dtype; ``loss``, the
        loss bound to ``data`` when the caller has it, answers from its remembered evaluations."""
        recall = getattr(loss, "remembered", None)  # (a compiled loss is a plain function: nothing remembered)
        remembered = None if recall is None else recall(theta)
        with torch.no_grad():
            value = float(self.loss(theta, **data) if remembered is None else remembered[0])
            if self.penalized:  # λ·induced norm for penalty kinds; 0 for linear kinds (see objective_term)
                value += float(constraint.objective_term(theta))
        return value

    def objective(self, theta: Tensor) -> float:
        """Full objective at θ in float64 on θ's device — the number solvers are compared on:
        loss + λ·induced norm for penalty kinds, the loss alone for linear kinds (whose feasibility
        is measured separately) and for hard-constraint problems (``penalized=False``)."""
        theta = theta.detach().to(torch.float64)
        constraint = self.constraint().to(device=theta.device, dtype=torch.float64)
        return self.value(theta, self.data_on(theta.device, torch.float64), constraint)


def is_quadratic(loss) -> bool:
    """Whether ``loss`` (a `Problem`'s ``loss``) has its own ``curvature`` and says it is a quadratic in θ
    (least squares): its quadratic model, with that curvature, is itself."""
    return getattr(loss, "curvature", None) is not None and bool(getattr(loss, "quadratic", False))


class BoundLoss:
    r"""A problem's loss with its data bound: ``bound(θ)`` is ``loss(θ, **data)``.

    It answers what the loss itself can, and None otherwise, so callers ask instead of checking
    the loss's type: ``value_and_grad(θ)`` is ``(loss, ∇loss)`` without autograd, and
    ``curvature(θ, mask)`` is $∇^2\mathrm{loss}(θ)$ restricted to θ's entries at the boolean ``mask`` (in
    ``θ[mask]``'s order); ``curvature_product(θ, mask)`` is ``(v ↦ Hv, diag H)`` for that restriction $H$,
    without forming it. A loss offers them as methods of the same names taking the data as keywords
    (the GLM data terms, `symopt.problems.glm.DataTerm`, do). ``quadratic`` is True where the loss
    has a curvature and says it is a quadratic in θ (least squares): its quadratic model is exact.

    Args:
        loss: ``loss(θ, **data) -> scalar tensor`` (a `Problem`'s ``loss``).
        data: the tensors it takes, already on the solver's device and dtype.

    Examples:
        >>> import torch
        >>> from symopt.problems.glm import DataTerm, SquaredError
        >>> X, y = torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        >>> bound = BoundLoss(DataTerm(SquaredError()), {"X": X, "y": y})
        >>> float(bound(torch.zeros(2, dtype=torch.float64))), bound.value_and_grad is not None
        (0.5, True)
        >>> bound.curvature(torch.zeros(2, dtype=torch.float64), torch.tensor([True, False])).tolist()  # XᵀX/n
        [[0.5]]
    """

    def __init__(self, loss: Callable[..., Tensor], data: dict[str, Tensor],
                 evaluations: "Evaluations | None" = None) -> None:
        self.loss, self.data = loss, data
        analytic = getattr(loss, "value_and_grad", None)
        if analytic is None:
            self.value_and_grad = None
            self.remembered = lambda theta: None
        else:
            memo = Evaluations() if evaluations is None else evaluations

            def value_and_grad(theta: Tensor) -> tuple[Tensor, Tensor]:
                return memo.recall(theta, loss) or memo.keep(theta, loss, analytic(theta, **data))

            self.value_and_grad = value_and_grad
            self.remembered = lambda theta: memo.recall(theta, loss)
        second = getattr(loss, "curvature", None)
        self.curvature = None if second is None else (lambda theta, mask: second(theta, mask, **data))
        products = getattr(loss, "curvature_product", None)  # (the curvature by its products: large models)
        self.curvature_product = None if products is None else (
            lambda theta, mask, **options: products(theta, mask, **data, **options))
        rows = getattr(loss, "target_block", None)  # (several least-squares targets: the curvature's B ⊗ I_T)
        self.target_block = None if rows is None else (lambda theta, mask: rows(theta, mask, **data))
        self.quadratic = is_quadratic(loss)

    def __call__(self, theta: Tensor) -> Tensor:
        return self.loss(theta, **self.data)

    def determined(self) -> bool:
        """Whether the loss says its curvature can be positive definite on every coordinate at once
        (`symopt.problems.glm.DataTerm.determined`: enough rows for the columns, or a ridge); False
        where it does not say."""
        answer = getattr(self.loss, "determined", None)
        return bool(answer(**self.data)) if answer is not None else False

    def resolved_coordinates(self) -> float | None:
        """The rank the loss says its curvature can have at most, in θ's coordinates
        (`symopt.problems.glm.DataTerm.resolved_coordinates`), or None where it does not say."""
        answer = getattr(self.loss, "resolved_coordinates", None)
        return float(answer(**self.data)) if answer is not None else None


class Evaluations:
    r"""The last few ``(value, ∇loss)`` of one loss on one set of data, by the value of θ.

    Certifying a point asks for ∇loss there several times over (the snap, the face polish's start,
    its finish, the working sets' full check), and a path's next point starts at the gradient its
    previous one ended at (`symopt.path` shares one `Evaluations` among its points, through
    `Problem.evaluations`): on a 50-point Lasso path (500×2000) those repeats were ~10 full
    products with ``X`` a point where 2–3 are new. A hit needs θ equal to a remembered point (``torch.equal``:
    same shape, dtype, device and values), so an answer is never stale; the data are never mutated
    (`Problem`'s contract). Only θ up to ``LIMIT`` entries is remembered (θ = 0 at any size): beyond
    it the copy and the comparison stop being negligible next to an evaluation. The tensors returned
    are the remembered ones: callers must not write into them.
    """

    SIZE = 4  # points remembered besides θ = 0 (the start, the last trial points of a polish)
    LIMIT = 1 << 16

    def __init__(self) -> None:
        self._entries: list[tuple[Tensor, object, tuple[Tensor, Tensor]]] = []
        self._zero: list[tuple[Tensor, object, tuple[Tensor, Tensor]]] = []  # θ = 0 (the tolerance's scale), kept apart

    def recall(self, theta: Tensor, loss) -> tuple[Tensor, Tensor] | None:
        for point, owner, answer in self._zero + self._entries:
            if _same_loss(owner, loss) and same_point(point, theta):
                return answer
        return None

    def keep(self, theta: Tensor, loss, answer: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if theta.requires_grad:
            return answer
        if not bool(theta.any()):
            # every solve measures its tolerance against ∇loss(0): never evicted, and kept at any size (a
            # comparison with 0 costs a pass over θ, the evaluation one over the data)
            self._zero = [(theta.detach().clone(), loss, answer)]
        elif theta.numel() <= self.LIMIT:
            self._entries.insert(0, (theta.detach().clone(), loss, answer))
            del self._entries[self.SIZE:]
        return answer


def _same_loss(a, b) -> bool:
    """Whether two losses are the same function: the same object, or equal data terms built apart (a
    path's points). An ``==`` that does not answer a plain bool (a loss holding tensors) is no match."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        same = a == b
    except (RuntimeError, TypeError, ValueError):
        return False
    return same is True


def _to_numpy(value: Tensor):
    value = value.detach().cpu()
    if value.layout != torch.sparse_csr:
        return value.numpy()
    import scipy.sparse

    return scipy.sparse.csr_matrix((value.values().numpy(), value.col_indices().numpy(),
                                    value.crow_indices().numpy()), shape=tuple(value.shape))


class _Moved:
    """What `moves_data_once` keeps for one call: its problem's data tensors by id (``sources``: only
    they are kept copies of, so a working set's column subsets, used once each, are not held to the
    end of a path) and their copies by (id, device, dtype)."""

    __slots__ = ("sources", "copies", "evaluations")

    def __init__(self, problem: object) -> None:
        data = problem.data if isinstance(problem, Problem) else {}
        self.sources = {id(value): value for value in data.values()}
        self.copies: dict[tuple, Tensor] = {}
        # one memo per set of bound tensors (the sources themselves, or one device's and dtype's copies)
        self.evaluations: dict[tuple, Evaluations] = {}


_MOVED: contextvars.ContextVar[_Moved | None] = contextvars.ContextVar("symopt_moved_data", default=None)


def _call_evaluations(problem: Problem, data: dict[str, Tensor]) -> "Evaluations | None":
    """The current `moves_data_once` call's memo for ``data`` (``problem``'s own tensors or their copies)
    where ``problem``'s data are that call's (its ``at_strength`` problems share them); None otherwise,
    e.g. a working set's restricted problem, whose θ = 0 of one size would otherwise answer for
    another subset of columns."""
    moved = _MOVED.get()
    if moved is None or any(moved.sources.get(id(value)) is not value for value in problem.data.values()):
        return None
    return moved.evaluations.setdefault(tuple(id(data[key]) for key in sorted(data)), Evaluations())


def moves_data_once(function: Callable) -> Callable:
    """Decorate a solver entry point whose first argument is a `Problem`: within one call (and the
    calls it makes), `Problem.data_on` copies each of that problem's data tensors (which its
    ``at_strength`` problems share) to a device and dtype once; the copies are dropped when the call
    returns.

    Why: one `symopt.solve` asked for the data on its device in float64 two or three times (the
    λ_max check, the working sets, the descent), and each point of `symopt.path` once more: on a
    GPU each is the whole design over PCIe (400 MB at 5000 × 10000), on float32 data a conversion
    (a 5000 × 10000 Lasso on float32 data: 0.36–0.43 → 0.25–0.29 s a solve on this CPU)."""

    @functools.wraps(function)
    def once(*args, **kwargs):
        if _MOVED.get() is not None:
            return function(*args, **kwargs)
        token = _MOVED.set(_Moved(args[0] if args else kwargs.get("problem")))
        try:
            return function(*args, **kwargs)
        finally:
            _MOVED.reset(token)

    return once


def _is_moved_copy(tensor: Tensor, source: Tensor) -> bool:
    """Whether ``tensor`` is the current call's copy of ``source`` (`moves_data_once`)."""
    moved = _MOVED.get()
    return (moved is not None and moved.sources.get(id(source)) is source
            and any(copy is tensor for (key, _, _), copy in moved.copies.items() if key == id(source)))
