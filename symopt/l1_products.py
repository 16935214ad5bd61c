r"""The ℓ1 quadratic model solved by products with its curvature (`solve_l1_quadratic_by_products`).

$\min_x q(x) = g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$ is proximal Newton's model
(`symopt.proximal_newton`). `symopt.l1_model` solves it by an active set on a dense $H$ and its Cholesky
factor, which is what a model of up to a thousand coordinates wants. A model of many thousands (a Lasso on a
sparse design whose answer holds ~4700 of 100000 columns) cannot hold its $H$ densely (4700² numbers, a
factorisation of ~10¹⁰ operations), but its products cost the design's stored entries on those columns
(~5·10⁴ there): this module asks only for those products, $v ↦ Hv$, and $H$'s diagonal.

Each round fixes an orthant: the non-zero coordinates keep their signs, the zero ones that violate
optimality ($|∇_i q| > λ$) take the sign that lowers $q$, the other zeros stay 0. On that orthant $q$ is a
quadratic whose Newton step solves $H_{FF}\,d = -(∇_F q + λσ_F)$ on its free coordinates $F$; conjugate
gradients (preconditioned by $H$'s diagonal) solve it inexactly, to a relative accuracy that tightens as
the residual falls (superlinear convergence, Dembo, Eisenstat & Steihaug 1982). The step is projected on
the orthant (coordinates that would cross zero stop at 0 and leave: many at once) and backtracked on $q$
itself (Armijo; one product a trial), as in orthant-wise quasi-Newton (OWL-QN, Andrew & Gao 2007) with
Newton's direction. On the orthant of the optimum one step is exact up to the conjugate gradients'
accuracy. Where the backtracking finds no decrease along the Newton direction, the direction without its
components against the pseudo-gradient's descent is tried (OWL-QN's alignment: its projected path descends for
every step length), and then a proximal-gradient step scaled by the diagonal, which always descends.

A product is two sparse (or dense) products with the design, and the rest are vector operations on the model's
coordinates: on the CPU those run on NumPy arrays (`HOST_ARRAYS`: a vector operation on a few thousand numbers
costs ~1.5–4 µs there against torch's ~5–8 µs, and a model takes ~10 of them a product, so the glue around a
product cost more than the product itself), elsewhere in torch on the products' device."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .constraints.nonnegative import orthant_kkt_residuals
from .constraints.sparse import l1_kkt_residuals
from .l1_model import one_blas_thread

_ARMIJO = 1e-4
_BACKTRACKS = 30
# Conjugate gradients solve a round's Newton system to a residual of at most FORCING (relative to the round's
# pseudo-gradient), less as the rounds' residuals fall (their ratio to the first), and at most CG_STEPS steps:
# the first rounds change the orthant and a loose direction serves them as well as an exact one.
FORCING = 0.1
CG_STEPS = 250
# ... and at most JOINING_CG_STEPS where zeros join the orthant: that solve tells which joins would move the wrong
# way (they leave, and the step is solved again without them) and serves as the step where none would. With
# more joining zeros than the data has rows its system is singular or nearly, and the solve ran its 250 steps
# three rounds running (a sparse Lasso 3000 × 10000: 1404 products in one model, 80 ms of 0.14 s).
JOINING_CG_STEPS = 25
# A search direction whose curvature is below _FLAT times its length in the diagonal's metric is flat (a singular
# face's null space, to rounding): the step follows it to the first zero. At 1e-14 such directions passed as
# curved and their conjugate-gradient steps reached 1e13 (55 coordinates on 10 rows: no backtracking brought the
# projected step down, and 416 of 429 rounds fell back to proximal-gradient steps; 37 rounds at 1e-8, none).
_FLAT = 1e-8
# On the CPU the model's vectors are NumPy arrays and each product goes through torch by views of them, no copy
# (see the module docstring). Traced on a logistic-L1 on a 1000 × 5000 CSR design at 0.01 λ_max: ~490 products
# in its models, ~200 µs each with the conjugate gradients' and searches' torch operations around a product of
# ~80 µs. Off (tests switch it off to run the route other devices take), everything stays in torch.
HOST_ARRAYS = True


def model_kkt(x: Tensor, gradient: Tensor, lam: float, nonnegative: bool) -> float:
    r"""The ℓ1 model's KKT residual at ``x`` (its smooth part's ``gradient`` there): the 2-norm of
    $∇_i + λ\,\mathrm{sign}(x_i)$ on the non-zeros and of $\max(|∇_i| - λ, 0)$ on the zeros
    ($\max(-∇_i - λ, 0)$ with ``nonnegative``).

    Examples:
        >>> import torch
        >>> x, g = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 0.5, -3.0], dtype=torch.float64)
        >>> model_kkt(x, g, 1.0, False)                                   # (0, 0, 3 - 1)
        2.0
    """
    residuals = orthant_kkt_residuals if nonnegative else l1_kkt_residuals  # (the kinds' own, entry by entry)
    if isinstance(x, np.ndarray):  # (asked through torch views of the arrays: once a round)
        x, gradient = torch.from_numpy(x), torch.from_numpy(gradient)
    return float(residuals(x, gradient, lam).norm())


def solve_l1_quadratic_by_products(product: Callable[[Tensor], Tensor], diagonal: Tensor, grad: Tensor,
                                   start: Tensor, lam: float, nonnegative: bool = False, tol: float = 0.0,
                                   max_rounds: int = 100, max_products: int | None = None, *,
                                   initial: Tensor | None = None) -> Tensor | None:
    r"""$\arg\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$ (over $x ≥ 0$ with
    ``nonnegative``), $H$ positive semi-definite and known only by its products and diagonal, by
    orthant-wise Newton–CG from $x_0$ (see the module docstring).

    Args:
        product: $v ↦ Hv$ for vectors of the model's ``k`` coordinates.
        diagonal: $H$'s diagonal, ``(k,)``.
        grad: $g$, the smooth part's gradient at ``start``.
        start: $x_0$ (≥ 0 with ``nonnegative``).
        lam: λ > 0.
        nonnegative: $x ≥ 0$.
        tol: stop when the model's KKT residual (`model_kkt`) is at most this.
        max_rounds: orthants at most; the last point is returned.
        max_products: products at most; None (no answer) where the model needs more. A caller that could form
            $H$ densely gives up on the products where they cost more than forming it would (an ill-conditioned
            $H$, whose conjugate gradients crawl).
        initial: the first iterate where it is not ``start`` (as in `symopt.l1_model.solve_l1_quadratic`; one
            product more, for the model's gradient there).

    Examples:
        >>> import torch
        >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> g, x0 = torch.tensor([-5.0, 1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        >>> x = solve_l1_quadratic_by_products(lambda v: H @ v, torch.diagonal(H), g, x0, 1.0, tol=1e-12)
        >>> [round(v, 9) for v in x.tolist()]      # x₁ = 0 would leave ∇₁q = 1 + x₀ = 3 > λ: both move
        [2.666666667, -1.333333333]
    """
    on_host = HOST_ARRAYS and all(t.device.type == "cpu" for t in (diagonal, grad, start))
    if on_host:
        dtype = start.dtype
        product = _on_arrays(product, dtype)
        diagonal, grad, start = (_host(t, dtype) for t in (diagonal, grad, start))
        initial = None if initial is None else _host(initial, dtype)
    if max_products is not None:
        product = _budgeted(product, max_products)
    try:
        # (NumPy's dot products on one BLAS thread: OpenBLAS's threads, left spinning after each call, took
        # the two cores from torch's own threads for the rest of the solve: a logistic-L1 on a CSR 10000 ×
        # 100000 design at 0.01 λ_max took 4.0 s against 1.6 s, the models themselves no slower)
        with one_blas_thread() if on_host else contextlib.nullcontext():
            x = _solve(product, diagonal, grad, start, lam, nonnegative, tol, max_rounds, initial)
    except _OverBudget:
        return None
    return torch.from_numpy(x) if on_host else x


def _host(tensor: Tensor, dtype: torch.dtype) -> np.ndarray:
    """A CPU ``tensor`` as a NumPy array of ``dtype`` (a view where it already is one, contiguous)."""
    return tensor.detach().to(dtype).contiguous().numpy()


def _on_arrays(product: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """``product`` on NumPy arrays of ``dtype``: its own ``product.on_arrays`` where it offers one (a CSR design's
    products by SciPy, `symopt.problems.glm.DataTerm.curvature_product`), else through torch by views."""
    offered = getattr(product, "on_arrays", None)
    if offered is None:
        return _through_torch(product, dtype)
    like = torch.empty(0, dtype=dtype).numpy().dtype
    return lambda v: offered(v).astype(like, copy=False)


def _through_torch(product: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """``product`` on NumPy arrays: each vector handed to it as a torch view and its answer taken back as one."""

    def on_arrays(v: np.ndarray) -> np.ndarray:
        return _host(product(torch.from_numpy(v)), dtype)

    return on_arrays


class _OverBudget(Exception):
    """A model asked more products than its ``max_products``."""


def _budgeted(product: Callable[[Tensor], Tensor], budget: int) -> Callable[[Tensor], Tensor]:
    """``product`` that raises `_OverBudget` at its call number ``budget`` + 1."""
    calls = 0

    def counted(v: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls > budget:
            raise _OverBudget
        return product(v)

    return counted


def _solve(product, diagonal: Tensor, grad: Tensor, start: Tensor, lam: float, nonnegative: bool, tol: float,
           max_rounds: int, initial: Tensor | None = None) -> Tensor:
    """`solve_l1_quadratic_by_products` without its budget."""
    # (gradient: the smooth part's, g + H(x - x₀), kept as x moves)
    if initial is None:
        x, gradient = _copy(start), _copy(grad)
    else:
        x = _copy(initial)
        gradient = grad + product(x - start)
    scale = _where(diagonal > 0, diagonal, 1.0)  # (an empty column: the identity)
    first, after_newton, after_step = None, math.inf, math.inf
    orthant = _orthant(x, gradient, lam, nonnegative)  # (this round's: the one the round before ended on)
    for _ in range(max_rounds):
        residual = model_kkt(x, gradient, lam, nonnegative)
        # A full Newton step on an unchanged orthant that did not halve the residual (its conjugate gradients
        # asked at most a tenth of it) is at the floor of what rounding resolves: a certifier's second polish
        # asks 1e-17 of a model whose residual stays at 4e-13, a hundred rounds that changed nothing
        # (and, within 1e-10 of the first residual, a solved Newton step on an unchanged orthant that the search cut
        # short and that left the residual no lower: its Armijo test decided on rounding, 90 rounds at 3.6e-17 on
        # an Intel Xeon where an AMD EPYC took the full step above)
        if residual <= tol or residual > 0.5 * after_newton or residual >= after_step:
            break
        first = residual if first is None else first
        accuracy = max(0.5 * tol, min(FORCING, residual / first) * residual)
        # (the orthant's pseudo-gradient: Newton's right-hand side, and the slope the projected search measures
        # its steps by)
        pseudo = _pseudo_gradient(gradient, orthant, lam)
        direction, solved = _newton_direction(product, scale, x, gradient, orthant, pseudo, lam, accuracy)
        step = _projected_search(product, x, gradient, direction, orthant, pseudo, lam)
        if step is None:
            # The projection can turn a descent direction into one that is not (a coordinate that crosses stops at
            # 0, short of its share of the slope): its components against the pseudo-gradient's descent are
            # dropped, as OWL-QN does, and the projected path then descends for every step length. Without it a
            # singular face (55 coordinates on 10 rows) fell back to proximal-gradient steps 416 rounds of 429.
            aligned = _where(direction * pseudo < 0, direction, 0.0)
            step = _projected_search(product, x, gradient, aligned, orthant, pseudo, lam)
        if step is None:  # (no decrease along Newton's direction: the scaled proximal-gradient step)
            step = _proximal_gradient_step(product, x, gradient, scale, lam, nonnegative)
        if step is None:
            break  # (no step lowers the model: its optimum to rounding)
        full = solved and _same(step[0], x + direction)
        x, gradient = step
        ended_on = _orthant(x, gradient, lam, nonnegative)
        same_orthant = _same(ended_on, orthant)
        after_newton = residual if full and same_orthant else math.inf
        after_step = residual if solved and same_orthant and residual <= 1e-10 * first else math.inf
        orthant = ended_on
    return x


def _pseudo_gradient(gradient: Tensor, orthant: Tensor, lam: float) -> Tensor:
    """$∇ + λσ$ on the orthant's free coordinates (σ ≠ 0), 0 on the zeros that stay."""
    return _where(orthant != 0, gradient + lam * orthant, 0.0)


def _newton_direction(product, scale: Tensor, x: Tensor, gradient: Tensor, orthant: Tensor, pseudo: Tensor,
                      lam: float, accuracy: float) -> tuple[Tensor, bool]:
    """``(d, solved)``: Newton's step on the ``orthant``'s free coordinates (its pseudo-gradient ``pseudo``) by
    `_conjugate_gradients` (``solved`` where they reached ``accuracy``). Zeros that join it and whose step moves them against their sign leave it
    again and the step is solved without them, as `symopt.l1_model`'s active set does: projected back to 0 while
    the others kept the step that counted on them, such a zero violated by the same amount round after round (a
    residual stuck at 9e-11 on a 200 × 80 design)."""
    guess = None
    for attempt in range(2):
        free = orthant != 0
        joining = bool(((x == 0) & free).any())
        steps = JOINING_CG_STEPS if attempt == 0 and joining else CG_STEPS
        direction, solved = _conjugate_gradients(product, scale, x, orthant, -pseudo, accuracy, guess, steps)
        wrong = (x == 0) & free & (orthant * direction <= 0)
        if not bool(wrong.any()) or bool(wrong.sum() == free.sum()):
            break
        orthant = _where(wrong, 0.0, orthant)
        pseudo = _pseudo_gradient(gradient, orthant, lam)
        guess = _where(wrong, 0.0, direction)  # (the step without them is near the one with them)
    return direction, solved


def _orthant(x: Tensor, gradient: Tensor, lam: float, nonnegative: bool) -> Tensor:
    """Each coordinate's sign on this round's orthant: a non-zero's own; a violating zero's, the one that
    lowers the model; 0 for a zero that stays."""
    if nonnegative:
        joins = -gradient > lam
    else:
        joins = abs(gradient) > lam
    return _where(x != 0, _sign(x), _where(joins, -_sign(gradient), 0.0))


def _conjugate_gradients(product, scale: Tensor, x: Tensor, orthant: Tensor, rhs: Tensor, accuracy: float,
                         guess: Tensor | None = None, steps: int = CG_STEPS) -> tuple[Tensor, bool]:
    r"""``(d, solved)``: $d$ with $H_{FF} d = $ ``rhs`` on the orthant's free coordinates $F$ (0 elsewhere) to a residual 2-norm of
    ``accuracy``, by conjugate gradients preconditioned by ``scale`` ($H$'s diagonal). Along a search direction
    of no curvature (a singular face: more coordinates than the data tell apart) the face's objective falls
    linearly: the step goes on along it to where the first coordinate of ``x`` + d reaches 0 (the simplex
    method's ratio test, as `symopt.l1_model`'s level steps), which then leaves the face; stopped there, the
    steps were a small fraction of that and the rounds crawled (a rank-one $H$ on 21 coordinates: 100 rounds
    to a residual of 0.06)."""
    free = orthant != 0
    if guess is None:
        direction, residual = _zeros(rhs), _copy(rhs)
    else:  # (from a first guess on the free coordinates: one product more)
        direction = guess
        residual = rhs - _where(free, product(guess), 0.0)
    preconditioned = residual / scale
    search = preconditioned
    aligned = float(residual @ preconditioned)
    for _ in range(steps):
        if _norm(residual) <= accuracy:
            return direction, True
        curved = _where(free, product(search), 0.0)
        curvature = float(search @ curved)
        if not curvature > _FLAT * float(search @ (scale * search)):
            if float(search @ residual) > 0:  # (the face's objective falls along it)
                direction = direction + _to_first_zero(x + direction, orthant, search) * search
            break
        alpha = aligned / curvature
        direction = direction + alpha * search
        residual = residual - alpha * curved
        preconditioned = residual / scale
        renewed = float(residual @ preconditioned)
        search = preconditioned + (renewed / aligned) * search
        aligned = renewed
    return direction, False


def _to_first_zero(point: Tensor, orthant: Tensor, ray: Tensor) -> float:
    """The step τ along ``ray`` at which the first coordinate of ``point`` on its orthant side reaches 0 (1 where
    none does)."""
    leaving = (_sign(point) == orthant) & (orthant * ray < 0)
    if not bool(leaving.any()):
        return 1.0
    return float((-point[leaving] / ray[leaving]).min())


def _projected_search(product, x: Tensor, gradient: Tensor, direction: Tensor, orthant: Tensor, pseudo: Tensor,
                      lam: float) -> tuple[Tensor, Tensor] | None:
    """``(x', its gradient)``: the step along ``direction`` projected on the orthant (coordinates whose sign
    would leave it stop at 0), halved until the model falls by Armijo's share of the pseudo-gradient's
    slope; None where none does. (``lam`` is in ``pseudo``: ∇ + λσ.)"""
    t = 1.0
    for _ in range(_BACKTRACKS):
        trial = x + t * direction
        trial = _where(_sign(trial) == orthant, trial, 0.0)
        move = trial - x
        # (x and the trial both on the orthant's side of each coordinate or at 0: the norm changes by λσ·move,
        # exactly; the difference of the two norms lost steps of 1e-12 to its rounding)
        slope = float(pseudo @ move)
        if not slope < 0:
            return None
        curved = product(move)
        change = slope + 0.5 * float(move @ curved)
        if change <= _ARMIJO * slope:
            return trial, gradient + curved
        t *= 0.5
    return None


def _proximal_gradient_step(product, x: Tensor, gradient: Tensor, scale: Tensor, lam: float,
                            nonnegative: bool) -> tuple[Tensor, Tensor] | None:
    r"""``(x', its gradient)``: a proximal-gradient step in the metric of ``scale`` (a soft threshold of
    $x - ∇/(cD)$ at $λ/(cD)$), $c$ doubled until the model falls; None where it never does."""
    for doubling in range(60):
        step = 1.0 / (scale * 2.0 ** doubling)
        moved = x - step * gradient
        trial = _positive(moved - lam * step) if nonnegative else _sign(moved) * _positive(abs(moved) - lam * step)
        move = trial - x
        if not bool(move.any()):
            return None
        curved = product(move)
        change = float(gradient @ move) + 0.5 * float(move @ curved) + lam * float((abs(trial) - abs(x)).sum())
        if change < 0 and math.isfinite(change):
            return trial, gradient + curved
    return None


# The few operations whose names differ between NumPy arrays (the CPU's route) and torch tensors, by the arrays'
# kind; the rest of the module is written in the operators the two share.
def _where(condition, chosen, other):
    """``chosen`` where ``condition``, else ``other`` (either may be a Python number)."""
    return np.where(condition, chosen, other) if isinstance(condition, np.ndarray) else torch.where(condition, chosen, other)


def _sign(a):
    return np.sign(a) if isinstance(a, np.ndarray) else torch.sign(a)


def _copy(a):
    return a.copy() if isinstance(a, np.ndarray) else a.clone()


def _zeros(a):
    return np.zeros_like(a) if isinstance(a, np.ndarray) else torch.zeros_like(a)


def _same(a, b) -> bool:
    """Equal shapes and entries."""
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else torch.equal(a, b)


def _norm(a) -> float:
    """The 2-norm."""
    return float(np.linalg.norm(a)) if isinstance(a, np.ndarray) else float(a.norm())


def _positive(a):
    """max(a, 0), entry by entry."""
    return np.maximum(a, 0.0) if isinstance(a, np.ndarray) else a.clamp_min(0.0)
