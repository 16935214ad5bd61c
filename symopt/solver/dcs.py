"""``symopt.solve``: DCS on a [`Problem`][symopt.Problem].

Uses the same parametrizations as the training API (a `Variable` holder, ``symopt.constrain``, the
decay), minimised by L-BFGS (a lean compact-form loop on one flat vector, `flat`, or torch's, with a
strong-Wolfe line search) or by accelerated gradient with a
backtracked Lipschitz step (no step size to tune), and stops on the KKT residual of the *original*
problem, not on an iteration count. The pieces: `options` (checked once), `descent` (the loop),
`certifier` (snap, KKT, face polish), `stop` (the stop rule), `path` (budgets), `working_set`.
"""

from __future__ import annotations

import math

import torch

from .._clock import solver_clock
from ..constraints import Constraint
from ..optimality import loss_gradient, snap_tol
from ..problems import Problem
from ..problems.base import is_quadratic, moves_data_once
from ..result import Result, elapsed_since
from .descent import Descent
from .options import Options
from .path import search_path
from .working_set import applies as working_sets_apply
from .working_set import atom_count, solve_on_working_sets

# working_set=None turns working sets on for θ with at least this many atoms (coordinates, or groups):
# with fewer, the first working set (working_set.FIRST_SIZE atoms) is a large share of the problem, and a
# second round is often the whole of it (group lasso 500×1000 in groups of 5, 200 atoms: 0.11 s with
# working sets, 0.037 s without; benchmarks/RESULTS.md).
_WORKING_SETS_FROM = 1000
# ... and for least squares under an ℓ1 norm of entries (the Lasso, non-negative or not) from this many:
# below it the check from θ = 0 (`solver.descent.L1_FROM_ZERO`) takes the pulled columns into one ℓ1
# model on NumPy (`symopt.l1_model`), where each working-set round is a whole restricted solve with
# its own certificate and polish. Measured (benchmarks/RESULTS.md, twenty-fifth session; one process,
# medians of 3-5, working sets on / off): make_regression designs from 200×1000 to 2000×5000 at 0.1 to
# 0.01 λ_max 0.46–0.75×; make_lasso 200×1000 to 1500×4000 and the non-negative Lasso 500×3000 to
# 2000×2000 0.46–0.96× (one row 1.16×); tall designs 1.0–1.27× (2000×1000, 3000×2000: the first model's
# 32 candidates against the first working set's 100); from 5000 columns the working sets keep their
# lead or tie (make_lasso 2000×5000 1.07–1.26×, 5000×10000 1.06–1.17×, the non-negative 1000×5000
# 1.0–1.9× slower without them).
_L1_LEAST_SQUARES_WORKING_SETS_FROM = 5000
# ... but under an ℓ1 norm of entries with a sparse (CSR) design, only from this many stored entries (least
# squares, then the others): a product costs the stored entries, not the columns, so a full evaluation is cheap
# and each working-set round's own restricted solve, certificate and polish were most of the time. Measured on
# 16 CSR designs (benchmarks/RESULTS.md, thirtieth session; 500-20000 rows, 4000-100000 columns, 4e4-1e6 entries;
# 0.1 and 0.01 λ_max; without / with working sets): the Lasso 0.41-0.92× up to 1e6 entries (1.06-1.07× on two
# rows); logistic-L1 0.31-1.0× up to 4e5 entries (one row 1.66×), 1.10-1.57× from 5e5.
_SPARSE_L1_LEAST_SQUARES_WORKING_SETS_FROM_ENTRIES = 2_000_000
_SPARSE_L1_WORKING_SETS_FROM_ENTRIES = 500_000


@moves_data_once
def solve(problem: Problem, device=None, dtype=None, method: str = "auto", tol: float = 1e-6,
          max_iter: int = 500, progress: bool = False, inner: int = 20, history_size: int = 100,
          max_rounds: int = 40, polish: bool = True, compile: bool = False, working_set: bool | None = None,
          start=None) -> Result:
    r"""Solve ``problem`` by DCS.

    DCS minimises the smooth factored objective $\mathrm{loss}(c(\mathrm{factors})) + (λ/2)‖\mathrm{factors}‖^2$ (``c`` the
    constraint's parametrisation, the same one the training API registers), whose minimisers are
    those of $\mathrm{loss}(θ) + λ‖θ‖$ (the induced norm); for the linear kinds, with $λ$ above the
    multipliers, those of ``loss`` on the constraint set. It stops on the KKT residual of the
    original problem, measured at θ = c(factors), not on the factored gradient.

    Args:
        problem: a [`Problem`][symopt.Problem].
        device: where to solve (default CPU; ``"cuda"`` on a GPU).
        dtype: the precision of the descent (default float64). With ``torch.float32`` (half the
            memory traffic; on a GPU the fast path) the certificate (KKT residual) and the face polish
            are computed in float64 from a float64 copy of the data: float32 alone cannot resolve
            a relative residual of 1e-6.
        method: ``"auto"`` (default: the lean loop of `symopt.solver.flat` — the same factored
            objective on one flat vector, compact L-BFGS with a weak-Wolfe line search, the loss's
            own gradient where it has one — wherever it applies, i.e. for every constraint on one
            tensor whose λ is fixed during the solve; torch's L-BFGS otherwise), ``"lbfgs"`` (torch's
            L-BFGS with a strong-Wolfe line search, through the registered parametrization) or
            ``"momentum"`` (Nesterov with a backtracked Lipschitz step and restarts).
        tol: stop when the KKT residual ≤ $\mathrm{tol} × ‖∇\mathrm{loss}(0)‖$ (and, for linear kinds, the
            violation ≤ $\mathrm{tol} × ‖θ‖$).
        max_iter: maximum outer iterations (each runs up to ``inner`` L-BFGS iterations); for a
            budget problem, per λ tried.
        progress: print one line per outer iteration (objective, KKT residual) to stderr.
        inner: iterations per outer iteration (between KKT checks). A small θ (at most
            ``symopt.solver.descent.EARLY_ENTRIES`` = 64 atoms: entries, or a group norm's groups)
            whose loss gives its own curvature is first checked after ``EARLY_ITERATIONS`` = 5 (with
            ``polish``): from there the face polish, a Newton method on the face, finishes what a
            longer first descent would. Under an ℓ1 norm of entries the first check comes before
            any iteration (``QUADRATIC_EARLY_ITERATIONS`` = 0), and proximal Newton starts from θ:
            where the loss is a quadratic of at most 64 atoms (least squares: its model is the
            objective), and where the data have at least as many rows as columns, or a ridge (the
            loss's ``determined``); where a loss that is not a quadratic has more than 64 columns
            of which ∇loss(0) pulls over ``PULLED_AT_ZERO`` = 3/4 off zero, its first model from θ = 0
            is a probe (``DENSE_PROBE``): where it kept nearly all of its entries, the descent runs.
        history_size: L-BFGS memory (a long memory matters on the factored problems). The lean loop
            keeps at most ``symopt.solver.flat.HISTORY_NUMBERS`` / (factor coordinates) pairs, and at
            least 10: 100 pairs of a 10⁵-coordinate factorisation cost more to read than they save.
        max_rounds: budget problems only — most λ values tried.
        compile: run the loss through ``torch.compile`` (inductor); compiled at the health check at
            θ = 0, outside ``result.seconds``.
        polish: after each outer iteration whose KKT residual is above the target, minimise the
            objective on the face of the snapped point (its support, alive groups or rank) in
            those few smooth coordinates — by proximal Newton where the norm is ℓ1 on entries or a
            norm of coordinate groups and the loss gives its curvature (Lasso, logistic-L1, group and
            multi-task Lasso: each quadratic model solved by an active set, atoms leaving where their
            zero is optimal and violators joining), else by Newton or L-BFGS on the face — and keep
            the result
            if its KKT residual (of the full problem) is smaller (the zeros of DCS arrive only
            geometrically). A kind whose face admits no new atom and whose prox is cheap
            (``Constraint.finishes_by_prox``: the nuclear norm of a matrix up to 512 on its short
            side, factors at full width) is then finished by accelerated proximal-gradient
            (singular-value thresholding) steps, certified the same way. ``False`` gives plain DCS.
        working_set: solve a problem that can restrict itself (``problem.restrict``: Lasso, group
            lasso, logistic-L1 at a fixed λ) on growing working sets of atoms — DCS on a column
            subset of ``X``, the KKT residual of the full problem checked after each
            (`symopt.working_set`). ``None`` (default): on when θ has at least 1000 atoms
            (coordinates of a logistic-L1, groups of a group lasso), 5000 for least squares under
            ℓ1 (the Lasso's coordinates: below that its check from θ = 0 is faster);
            ``False``: always on the full problem; ``True``: required (a ``ValueError`` if the
            problem cannot be restricted).
        start: initial θ (a warm start; default 0), of ``problem.shape``. With working sets, the
            first set holds the start's non-zero atoms and the worst violators at the start (a warm
            start along a path is also a screening rule).

    A constraint may start with narrow factors (``Constraint.working_width``: penalised low rank of a
    large matrix) that widen whenever the rank fills them: the narrow problem is the full one while
    the rank stays below the width. What each switch costs and saves is measured in
    ``docs/compare.md`` and ``benchmarks/RESULTS.md``.

    A *budget* problem (``lasso(X, y, max_nonzero=k)``, ``target_rank=r``, ...) has no fixed λ:
    solve searches the regularisation path. Each round solves at one λ to the KKT tolerance (warm
    started) and counts the atoms of the certified point; λ then moves to the budget controller's
    target (`symopt.constraints.budget`) — evaluated at an exact solution, so its prediction is
    the support at that λ — safeguarded by bisection between the largest λ seen with too many atoms
    and the smallest with too few. It stops at the first λ whose solution has exactly the budget:
    that λ is on the path interval with that support size, and ``result.strength`` reports it.

    Returns:
        Result: a status and a message, never an exception from inside torch. The statuses:
            ``optimal`` (KKT residual, and violation, below tolerance); ``max_iter`` (out of
            iterations); ``stalled`` (the line search can no longer decrease the objective: ``tol``
            is below what the precision allows); ``nan`` (the objective, its gradient, the iterate
            or the factors became NaN or Inf, or were so at θ = 0); ``diverged`` (the objective
            rose for 10 iterations in a row, fell without bound, or no step size decreased it);
            ``budget_unreachable`` (budgets: the path jumps over the budget, and ``x`` is the solution
            with the nearest larger support, snapped to the budget; or the path has not reached it
            at λ = tol × λ_max, the smallest λ the tolerance resolves — a Lasso has at most n
            non-zeros — and ``x`` is the solution there, with fewer atoms). After ``nan`` or
            ``diverged``, ``x`` is the last finite certified point (θ = 0 if there was none) and
            the message names the iteration.

    Raises:
        TypeError: ``problem`` is not a [`Problem`][symopt.Problem].
        ValueError: a bad option (named in the message), or a loss that cannot be evaluated at
            θ = 0 (a shape bug, a non-scalar output, no dependence on θ).

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> symopt.solve(make_lasso(n=50, d=40, nonzeros=3)).status
        'optimal'
    """
    options = Options.check(problem, device=device, dtype=dtype, method=method, tol=tol, max_iter=max_iter,
                            progress=progress, inner=inner, history_size=history_size, max_rounds=max_rounds,
                            polish=polish, compile=compile, working_set=working_set, start=start)
    device, dtype, start = options.device, options.dtype, options.start
    constraint = problem.constraint()
    grad64 = None  # ∇loss(0) in float64, when the λ_max check computed it (the working sets reuse it)
    if start is None:
        zero, grad64 = zero_if_optimal(problem, constraint, device, method)
        if zero is not None:
            return zero
    if working_set is not False:
        usable = working_sets_apply(problem, constraint)
        if working_set and not usable:
            raise ValueError(f"solve: working_set=True needs a problem that can restrict itself at a fixed λ "
                             f"(Lasso, group lasso, logistic-L1 without a budget); '{problem.name}' cannot: "
                             "pass working_set=None or False")
        if usable and (working_set or atom_count(constraint, math.prod(problem.shape)) >= _working_sets_from(
                problem, constraint)):
            def restricted(sub: Problem, tol: float, start) -> Result:
                return solve(sub, device=device, dtype=dtype, method=method, tol=tol, max_iter=max_iter,
                             inner=inner, history_size=history_size, polish=polish, compile=compile,
                             working_set=False, start=start)

            return solve_on_working_sets(problem, restricted, device=device, tol=tol, max_iter=max_iter,
                                         progress=progress, solver=_solver_name(method), start=start,
                                         grad0=grad64, polish=polish, inner=inner)
    data = problem.data_on(device, dtype)
    if compile:
        loss_fn = torch.compile(problem.loss)
        loss = lambda theta: loss_fn(theta, **data)  # noqa: E731
    else:  # the loss's analytic gradient and curvature, where it has them, serve the loop and the polish
        loss = problem.bind(data)
    grad0, trouble = _gradient_at_zero(problem, loss, device, dtype)
    if trouble:
        return _failed_at_start(problem, constraint, device, method, trouble)
    width, full = constraint.working_width(tuple(problem.shape))
    working = constraint if width is None else constraint.with_width(width)
    exact = None
    if dtype == torch.float32:  # float32 descent, float64 certificate (and polish): 1e-6 needs more digits
        data64 = problem.data_on(device, torch.float64)
        exact = (problem.bind(data64), data64)
    descent = Descent(problem, None, working, loss, data, options, grad0, exact=exact, width=width,
                      full=full if width is not None else 0, start=start)

    began = solver_clock()  # (torch's one-time import, if a torch optimizer is built, is left out)
    if constraint.budget is None:
        verdict = descent.accept_start(began) if start is not None else None
        status, message = verdict or descent.run(max_iter, began)
    else:
        status, message = search_path(descent, constraint, loss, max_iter, max_rounds, began)
    seconds = elapsed_since(began, device, solver_clock)
    theta = descent.theta()
    if descent.point is not None:  # the snapped point whose KKT residual was measured last
        point = descent.point
    elif status in ("nan", "diverged"):  # failed before any certified point: the start
        point = torch.zeros_like(grad0)
    else:
        point = constraint.project(theta, snap_tol(theta, tol))
    if status == "budget_unreachable":
        point = constraint.truncate(point, constraint.budget)
    found = constraint.strength if constraint.budget is not None and constraint.strength > 0 else None
    # The certified point's objective was measured in float64 with it (the history's last entry); on the
    # CPU it is the number `Result.from_point` would compute again (0.3 ms of a 2 ms warm-started solve).
    on_cpu64 = torch.device(device).type == "cpu" and point.dtype == torch.float64
    measured = (descent.history[-1][1] if point is descent.point and descent.history and constraint.budget is None
                and on_cpu64 else None)
    # (the problem's constraint, already built, rather than a second one per solve)
    return Result.from_point(
        problem, point, solver=_solver_name(method), status=status, seconds=seconds, history=descent.history,
        device=device, message=message, strength=constraint.strength, evaluate_at=found, objective=measured,
        constraint=constraint.to(dtype=torch.float64) if on_cpu64 else None,
    )


def _working_sets_from(problem: Problem, constraint: Constraint) -> float:
    """How many atoms θ needs for ``working_set=None`` to turn working sets on: `_WORKING_SETS_FROM`,
    or `_L1_LEAST_SQUARES_WORKING_SETS_FROM` for a loss that is a quadratic with its own curvature
    (least squares) under an ℓ1 norm of entries (`Constraint.entry_signs`); under that norm with a sparse design
    of fewer stored entries than ``_SPARSE_L1_(LEAST_SQUARES_)WORKING_SETS_FROM_ENTRIES`` (the loss's
    ``sparse_entries``), none (inf)."""
    l1 = constraint.entry_signs() is not None
    quadratic = is_quadratic(problem.loss)
    asks = getattr(problem.loss, "sparse_entries", None)
    entries = asks(**problem.data) if l1 and asks is not None else None
    if entries is not None and entries < (_SPARSE_L1_LEAST_SQUARES_WORKING_SETS_FROM_ENTRIES if quadratic
                                          else _SPARSE_L1_WORKING_SETS_FROM_ENTRIES):
        return math.inf
    if quadratic and l1:
        return _L1_LEAST_SQUARES_WORKING_SETS_FROM
    return _WORKING_SETS_FROM


# How far above λ (relative) the analytic gradient's pull must be for zero_if_optimal to trust it; the
# two gradients differ by rounding, ~1e-15 relative
_CLEARLY = 1e-9


def zero_if_optimal(problem: Problem, constraint: Constraint, device,
                    method: str) -> tuple[Result | None, torch.Tensor | None]:
    """θ = 0 when it is the exact optimum: a penalised problem at λ ≥ ‖∇loss(0)‖_* (λ_max). Checked in
    float64 before any descent, because there the descent cannot be exact: its iterates start off 0
    and reach it only geometrically, and at λ = λ_max exactly one atom's pull balances the penalty
    (skglm's alpha_max tests: a spurious group of norm 1e-6 reported "optimal", or "stalled").
    Returns ``(result or None, ∇loss(0) in float64 or None)``."""
    if constraint.linear or constraint.budget is not None or not problem.penalized or constraint.strength is None:
        return None, None
    data = problem.data_on(device, torch.float64)
    exact = constraint.to(device=device, dtype=torch.float64)
    zero = torch.zeros(problem.shape, device=device, dtype=torch.float64)
    analytic = getattr(problem.bind(data), "value_and_grad", None)
    if analytic is not None:
        # The data term's own gradient settles every λ clearly below λ_max, without autograd's graph
        # (the check 0.47 → 0.29 ms on breast_cancer's logistic-L1, of a ~7 ms solve, and the bound
        # loss keeps the evaluation for the start's gradient after it); it agrees with autograd's to
        # rounding, so within _CLEARLY of λ_max autograd decides, as below.
        try:
            grad = analytic(zero)[1]
        except (RuntimeError, TypeError, IndexError, ValueError):
            return None, None  # the full solve reports a loss that fails at 0, with its message
        if bool(torch.isfinite(grad).all()) and exact.dual_norm_exceeds(grad, constraint.strength * (1 + _CLEARLY)):
            return None, grad
    try:
        # autograd, as ``Problem.strength_max`` computes λ_max: at λ = λ_max exactly both must agree to the bit
        grad = loss_gradient(lambda theta: problem.loss(theta, **data), zero)
    except (RuntimeError, TypeError, IndexError, ValueError):
        return None, None  # the full solve reports a loss that fails at 0, with its message
    if not bool(torch.isfinite(grad).all()):
        return None, None
    if exact.dual_norm_exceeds(grad, constraint.strength):
        return None, grad
    pull = float(exact.dual_norm(grad))
    zero = zero.cpu()  # (the result's point lives on the CPU, whatever device the check ran on)
    result = Result.from_point(problem, zero, solver=_solver_name(method), status="optimal", seconds=0.0,
                               history=[(0.0, problem.objective(zero), 0.0)], device=device,
                               message=f"θ = 0 is optimal: λ = {constraint.strength:.6g} ≥ ‖∇loss(0)‖_* = {pull:.6g} "
                                       "(λ_max), checked before any descent", strength=constraint.strength)
    return result, grad


def _gradient_at_zero(problem: Problem, loss, device, dtype) -> tuple[torch.Tensor, str | None]:
    """∇loss(0), the start's health check: a loss that cannot be evaluated is the caller's error
    (``ValueError``, naming the problem); one that is NaN or Inf there is a ``nan`` result."""
    zero = torch.zeros(problem.shape, device=device, dtype=dtype, requires_grad=True)
    analytic = getattr(loss, "value_and_grad", None)
    try:
        if analytic is not None:  # the data term's own gradient (autograd here was ~5% of a warm-started solve)
            value, grad = analytic(zero.detach())
            return _checked_at_zero(float(value), grad)
        value = loss(zero)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"solve: the loss of '{problem.name}' must return a scalar tensor, got {got}")
        grad = None
        if value.requires_grad:
            (grad,) = torch.autograd.grad(value.reshape(()), zero, allow_unused=True)
    except (RuntimeError, TypeError, IndexError) as err:
        raise ValueError(f"solve: the loss of '{problem.name}' fails at θ = 0 of shape {tuple(problem.shape)} "
                         f"({type(err).__name__}: {err}); check the loss against the data and the shape") from err
    if grad is None:
        raise ValueError(f"solve: the loss of '{problem.name}' does not depend on θ (no gradient flows to it)")
    return _checked_at_zero(float(value.detach()), grad)


def _checked_at_zero(value: float, grad: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    if not math.isfinite(value):
        return grad, f"the loss is {value} at the start θ = 0; check the data and the loss"
    if not bool(torch.isfinite(grad).all()):
        return grad, "the loss gradient at the start θ = 0 holds NaN or Inf (a loss not differentiable at 0?)"
    return grad.detach(), None


def _solver_name(method: str) -> str:
    return "dcs" if method == "auto" else f"dcs[{method}]"


def _failed_at_start(problem: Problem, constraint: Constraint, device, method: str, message: str) -> Result:
    x = torch.zeros(problem.shape, dtype=torch.float64)
    return Result(x=x, objective=float("nan"), violation=0.0, kkt_residual=float("nan"), iterations=0,
                  seconds=0.0, history=[], device=str(device), status="nan",
                  solver=_solver_name(method), message=message,
                  strength=constraint.strength, problem=problem)
