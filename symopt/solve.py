"""Layer 4 — ``symopt.solve``: DCS on a [`Problem`][symopt.Problem].

Uses the same parametrizations as the training API (a holder module, ``symopt.constrain``,
``symopt.penalty``), minimised by L-BFGS with a strong-Wolfe line search or by accelerated gradient
with a backtracked Lipschitz step (no step size to tune), and stops on the KKT residual of the
*original* problem, not on an iteration count.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from .attach import constrain, constraints
from .constraints import Constraint, LowRank, Tied
from .constraints.budget import budget_target, split_point
from .optimality import kkt_at_snap, loss_gradient, polish_on_face, snap_tol
from .problems import Problem
from .result import Result, elapsed_since
from .working_set import applies as working_sets_apply
from .working_set import atom_count, solve_on_working_sets

_METHODS = ("auto", "lbfgs", "momentum")
# Penalised low rank on a matrix with min(m, n) >= _NARROW_FROM starts with factors of width
# _START_WIDTH, doubled whenever the rank fills them (see _Descent.widen).
_NARROW_FROM, _START_WIDTH = 128, 16
# working_set=None turns working sets on for θ with at least this many atoms (coordinates, or groups):
# with fewer, the first working set (working_set.FIRST_SIZE atoms) is a large share of the problem, and a
# second round is often the whole of it (group lasso 500×1000 in groups of 5, 200 atoms: 0.11 s with
# working sets, 0.037 s without; benchmarks/RESULTS.md).
_WORKING_SETS_FROM = 1000


def _lbfgs_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=inner, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

    def step() -> None:
        opt.step(closure)

    return step


def _momentum_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    """Nesterov acceleration with a backtracked step 1/L (sufficient decrease), L allowed to shrink
    again each step, and function-value restart (O'Donoghue & Candès)."""
    params = list(params)
    state = {"x": [p.detach().clone() for p in params], "t": 1.0, "L": 1.0, "f_x": math.inf}

    def load(values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)

    def step() -> str | None:
        """``inner`` iterations; returns a message if the step size collapsed (the caller judges it)."""
        collapsed = None
        for _ in range(inner):
            f_y = float(closure().detach())  # at the current (extrapolated) point y, fills .grad
            y = [p.detach().clone() for p in params]
            grads = [p.grad.detach().clone() for p in params]
            gsq = sum(float(g.square().sum()) for g in grads)
            if not (math.isfinite(f_y) and math.isfinite(gsq)):
                load(state["x"])
                raise _NonFinite(f"the {'objective' if not math.isfinite(f_y) else 'gradient'} is NaN or Inf "
                                 "at the extrapolated point")
            L = state["L"]
            decreased = False  # at the precision floor rounding lets some trial decrease; a wrong gradient never
            while True:
                x_new = [yi - gi / L for yi, gi in zip(y, grads)]
                load(x_new)
                with torch.no_grad():
                    f_new = float(closure())
                decreased = decreased or f_new < f_y
                if f_new <= f_y - 0.5 * gsq / L and (decreased or gsq == 0.0):
                    break
                if L > 1e30:  # no step decreases f: the precision floor, or a gradient that does not describe f
                    if not decreased:
                        collapsed = f"step size collapsed (1/L < 1e-30) at objective {f_y:.6g}"
                    break
                L *= 2.0
            t = state["t"] if f_new <= state["f_x"] else 1.0  # restart when the objective rises
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            load([xn + (t - 1) / t_new * (xn - xo) for xn, xo in zip(x_new, state["x"])])
            state.update(x=x_new, t=t_new, L=L / 1.5, f_x=f_new)
        load(state["x"])  # leave the parameters at the last accepted iterate, not the extrapolation
        return collapsed

    return step


_STEPPERS = {"lbfgs": _lbfgs_stepper, "momentum": _momentum_stepper}


_WRONG_GRADIENT = "the gradient may not describe the objective (a non-smooth, noisy or wrongly differentiated loss?)"


class _NonFinite(RuntimeError):
    """Raised by a stepper that meets a NaN or Inf objective or gradient."""


class _Watchdog:
    """What a KKT check cannot see: an objective that keeps rising (``patience`` outer iterations in a
    row) and iterates running off to infinity (‖θ‖ at least doubling ``patience // 2`` times in a row
    while the objective falls: the objective is unbounded below)."""

    def __init__(self, patience: int = 10) -> None:
        self.patience = patience
        self.rises = self.growths = 0
        self.last: tuple[float, float] | None = None

    def verdict(self, objective: float, norm: float) -> str | None:
        if self.last is not None:
            before, before_norm = self.last
            rising = objective > before + 1e-12 * max(1.0, abs(before))
            self.rises = self.rises + 1 if rising else 0
            running_off = objective < before and norm >= 2.0 * before_norm > 0
            self.growths = self.growths + 1 if running_off else 0
        self.last = (objective, norm)
        if self.rises >= self.patience:
            return f"the objective rose in each of the last {self.rises} iterations"
        if self.growths >= max(1, self.patience // 2):
            return (f"the objective falls without bound: ‖θ‖ doubled in each of the last {self.growths} "
                    "iterations (is the loss bounded below?)")
        return None


class _Variable(nn.Module):
    """Holds the problem's variable. A tie acts across tensors, so for [`Tied`][symopt.Tied] the variable
    ``(k, ...)`` is k parameters and ``theta`` stacks them."""

    def __init__(self, shape, device, dtype, constraint: Constraint):
        super().__init__()
        self.copies = shape[0] if isinstance(constraint, Tied) else 0
        if self.copies:
            for j in range(self.copies):
                self.register_parameter(f"copy{j}", nn.Parameter(torch.zeros(shape[1:], device=device, dtype=dtype)))
            constrain(self, [f"copy{j}" for j in range(self.copies)], constraint)
        else:
            self.value = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
            constrain(self, "value", constraint)
        # Handles are views (they look their factors up by name), so one lookup serves every evaluation:
        # symopt.penalty(self) would search the module tree each time (a fifth of a small problem's evaluation).
        self._handles = constraints(self)

    def decay(self) -> torch.Tensor:
        """The factors' decay ``(λ/2)·Σ‖factor‖²``: [`symopt.penalty`][symopt.penalty] of this holder."""
        return sum(h.penalty() for h in self._handles)

    @property
    def theta(self) -> torch.Tensor:
        if self.copies:
            return torch.stack([getattr(self, f"copy{j}") for j in range(self.copies)])
        return self.value

    def load(self, theta: torch.Tensor) -> None:
        """Set θ (a copy, in the holder's dtype): ``right_inverse`` splits it into factors and gives
        every zero a live factor."""
        dtype = next(self.parameters()).dtype
        with torch.no_grad():
            values = theta.to(dtype=dtype, copy=True)
            if self.copies:
                for j in range(self.copies):
                    setattr(self, f"copy{j}", values[j])
            else:
                self.value = values


def solve(problem: Problem, device=None, dtype=None, method: str = "auto", tol: float = 1e-6,
          max_iter: int = 500, progress: bool = False, inner: int = 20, history_size: int = 100,
          max_rounds: int = 40, polish: bool = True, compile: bool = False, working_set: bool | None = None,
          start=None) -> Result:
    """Solve ``problem`` by DCS.

    DCS minimises the smooth factored objective ``loss(c(factors)) + (λ/2)‖factors‖²`` (``c`` the
    constraint's parametrisation, the same one the training API registers), whose minimisers are
    those of ``loss(θ) + λ‖θ‖`` (the induced norm); for the linear kinds, with ``λ`` above the
    multipliers, those of ``loss`` on the constraint set. It stops on the KKT residual of the
    original problem, measured at θ = c(factors), not on the factored gradient.

    Args:
        problem: a [`Problem`][symopt.Problem].
        device: where to solve (default CPU; ``"cuda"`` on a GPU).
        dtype: the precision of the descent (default float64). With ``torch.float32`` (half the
            memory traffic; on a GPU the fast path) the certificate (KKT residual) and the face polish
            are computed in float64 from a float64 copy of the data: float32 alone cannot resolve
            a relative residual of 1e-6. Measured on the built-in generators (`symopt compare`'s
            default sizes, and ``make_logistic_l1(n=500, d=200)``): every family ends ``optimal`` as
            in float64. (The float64 polish goes on from its best point when the float32 descent
            stalls behind it.)
        method: ``"lbfgs"`` (L-BFGS, strong-Wolfe line search), ``"momentum"`` (Nesterov with a
            backtracked Lipschitz step and restarts) or ``"auto"`` (= ``"lbfgs"``, the faster on
            every built-in family).
        tol: stop when the KKT residual ≤ ``tol × ‖∇loss(0)‖`` (and, for linear kinds, the
            violation ≤ ``tol × ‖θ‖``).
        max_iter: maximum outer iterations (each runs up to ``inner`` L-BFGS iterations); for a
            budget problem, per λ tried.
        progress: print one line per outer iteration (objective, KKT residual) to stderr.
        inner: iterations per outer iteration (between KKT checks).
        history_size: L-BFGS memory; a long memory matters on the factored problems (logistic-L1:
            8 outer iterations with 100 vs 231 with 20, measured on ``make_logistic_l1()``).
        max_rounds: budget problems only — most λ values tried.
        compile: run the loss through ``torch.compile`` (inductor), which fuses its elementwise
            work into fewer kernels. The compilation (seconds to a minute, once per problem shape)
            happens at the health check at θ = 0, so it is not in ``result.seconds``; it pays off
            on long runs of a loss with much elementwise work, mostly on a GPU.
        polish: after each outer iteration whose KKT residual is above the target, minimise the
            objective on the face of the snapped point (its support, alive groups or rank) by
            L-BFGS in those few smooth coordinates, and keep the result if its KKT residual (of the
            full problem) is smaller. The zeros of DCS arrive geometrically, so the stopping test,
            not the descent, dominated: on ``make_logistic_l1(n=500, d=200)`` 2.10 s without,
            0.11 s with (benchmarks/RESULTS.md). ``False`` gives plain DCS.
        working_set: solve a problem that can restrict itself (``problem.restrict``: Lasso, group
            lasso, logistic-L1 at a fixed λ) on growing working sets of atoms — DCS on a column
            subset of ``X``, the KKT residual of the full problem checked after each
            (`symopt.working_set`). ``None`` (default): on when θ has at least 1000 atoms
            (coordinates of a Lasso / logistic-L1, groups of a group lasso);
            ``False``: always on the full problem; ``True``: required (a ``ValueError`` if the
            problem cannot be restricted).
        start: initial θ (a warm start; default 0), of ``problem.shape``.

    Penalised low rank of a large matrix (``min(m, n) ≥ 128``, no ``max_rank``, no budget) starts
    with factors 16 columns wide and doubles the width whenever the rank fills it: the narrow problem
    is the full one while the rank stays below the width, and its SVDs come from the factors' range
    (nuclear-norm completion 1000×1000 of rank 5: 2.9 s instead of 54 s at full width; 2000×2000:
    15 s, where full width would take about 8× the 1000×1000 time; benchmarks/RESULTS.md). While
    iterating, the nuclear-norm KKT residual estimates the normal part's leading singular values;
    the stop is decided by the exact residual.

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
            ``budget_unreachable`` (budgets: the path jumps over the budget; ``x`` is the solution
            with the nearest larger support, snapped to the budget). After ``nan`` or
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
    if not isinstance(problem, Problem):
        raise TypeError(f"solve: expected a symopt.problems.Problem (e.g. symopt.problems.lasso(X, y, 0.1)), "
                        f"got {type(problem).__name__}")
    if method not in _METHODS:
        raise ValueError(f"solve: unknown method {method!r}; choose one of {_METHODS}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"solve: tol must be a finite number > 0, got {tol!r}")
    counts = (("max_iter", max_iter), ("max_rounds", max_rounds), ("inner", inner), ("history_size", history_size))
    for label, count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"solve: {label} must be an int >= 1, got {count!r}")
    for label, flag in (("polish", polish), ("compile", compile)):
        if not isinstance(flag, bool):
            raise TypeError(f"solve: {label} must be True or False, got {type(flag).__name__}")
    if dtype is None:
        dtype = torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"solve: dtype must be torch.float32 or torch.float64, got {dtype}")
    try:
        device = torch.device(device or "cpu")
    except RuntimeError as err:
        raise ValueError(f"solve: unknown device {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("solve: device 'cuda' requested but CUDA is not available")
    if working_set is not None and not isinstance(working_set, bool):
        raise TypeError(f"solve: working_set must be True, False or None, got {type(working_set).__name__}")
    if start is not None:
        start = _checked_start(start, problem)
    constraint = problem.constraint()
    if working_set is not False:
        usable = working_sets_apply(problem, constraint)
        if working_set and not usable:
            raise ValueError(f"solve: working_set=True needs a problem that can restrict itself at a fixed λ "
                             f"(Lasso, group lasso, logistic-L1 without a budget); '{problem.name}' cannot: "
                             "pass working_set=None or False")
        if usable and start is None and (
                working_set or atom_count(constraint, math.prod(problem.shape)) >= _WORKING_SETS_FROM):
            def restricted(sub: Problem, tol: float, start) -> Result:
                return solve(sub, device=device, dtype=dtype, method=method, tol=tol, max_iter=max_iter,
                             inner=inner, history_size=history_size, polish=polish, compile=compile,
                             working_set=False, start=start)

            return solve_on_working_sets(problem, restricted, device=device, tol=tol, max_iter=max_iter,
                                         progress=progress, solver=_solver_name(method))
    data = problem.data_on(device, dtype)
    loss_fn = torch.compile(problem.loss) if compile else problem.loss
    loss = lambda theta: loss_fn(theta, **data)  # noqa: E731
    grad0, trouble = _gradient_at_zero(problem, loss, device, dtype)
    if trouble:
        return _failed_at_start(problem, constraint, device, method, trouble)
    width, full = _working_width(constraint, problem.shape)
    working = constraint if width is None else constraint.with_width(width)
    holder = _Variable(problem.shape, device, dtype, working)
    descent = _Descent(problem, holder, working, loss, data, method, tol, inner, history_size, progress, grad0,
                       polish)
    if dtype == torch.float32:  # float32 descent, float64 certificate (and polish): 1e-6 needs more digits
        data64 = problem.data_on(device, torch.float64)
        descent.exact = (lambda theta: problem.loss(theta, **data64), data64)
    if width is not None:
        descent.width, descent.full = width, full
    if start is not None:
        holder.load(start.to(device))

    began = time.perf_counter()
    if constraint.budget is None:
        status, message = descent.run(max_iter, began)
    else:
        status, message = _search_path(descent, constraint, loss, max_iter, max_rounds, began)
    seconds = elapsed_since(began, device)
    theta = descent.holder.theta.detach()
    if descent.point is not None:  # the snapped point whose KKT residual was measured last
        point = descent.point
    elif status in ("nan", "diverged"):  # failed before any certified point: the start
        point = torch.zeros_like(grad0)
    else:
        point = constraint.project(theta, snap_tol(theta, tol))
    if status == "budget_unreachable":
        point = constraint.truncate(point, constraint.budget)
    x = point.to("cpu", torch.float64)
    c64 = problem.constraint().to(dtype=torch.float64)
    if constraint.budget is not None and constraint.strength > 0:
        c64.strength = constraint.strength
    objective = problem.value(x, problem.data_on("cpu", torch.float64), c64)
    return Result(
        x=x, objective=objective, violation=c64.violation(x) if c64.linear else 0.0,
        kkt_residual=descent.history[-1][2] if descent.history else float("nan"),
        iterations=len(descent.history), seconds=seconds, history=descent.history, device=str(device),
        status=status, solver=_solver_name(method), message=message,
        strength=constraint.strength, problem=problem,
    )


def _checked_start(start, problem: Problem) -> torch.Tensor:
    if not isinstance(start, torch.Tensor):
        raise TypeError(f"solve: start must be a tensor of shape {tuple(problem.shape)}, got {type(start).__name__}")
    if tuple(start.shape) != tuple(problem.shape):
        raise ValueError(f"solve: start has shape {tuple(start.shape)}, but '{problem.name}' has θ of shape "
                         f"{tuple(problem.shape)}")
    if not torch.is_floating_point(start) or not bool(torch.isfinite(start).all()):
        raise ValueError("solve: start must hold finite floating-point values")
    return start.detach()


def _working_width(constraint: Constraint, shape) -> tuple[int | None, int]:
    """``(starting factor width, full width)``; the width is None (full from the start) except for
    penalised low rank of one large matrix (no rank bound, no budget).

    Full-width factors of an m×n matrix cost O(mn·min(m, n)) per evaluation, although the solution
    of a nuclear-norm problem has small rank r. Narrow factors cost O(mn·w) and their SVDs come from
    the range (`thin_svd`). The narrow problem is the full one while the rank stays below the width
    (the KKT residual of the nuclear norm is then the same); when the rank fills the width it may be
    the bound that stops it, so ``_Descent.widen`` doubles the width.
    """
    if not isinstance(constraint, LowRank) or constraint.max_rank is not None or constraint.budget is not None:
        return None, 0
    if len(shape) != 2 and constraint.layout == "batch":
        return None, 0
    full = min(constraint._matrix_shape(tuple(shape)))
    return (_START_WIDTH if full >= _NARROW_FROM else None), full


def _gradient_at_zero(problem: Problem, loss, device, dtype) -> tuple[torch.Tensor, str | None]:
    """∇loss(0), the start's health check: a loss that cannot be evaluated is the caller's error
    (``ValueError``, naming the problem); one that is NaN or Inf there is a ``nan`` result."""
    zero = torch.zeros(problem.shape, device=device, dtype=dtype, requires_grad=True)
    try:
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
    value = float(value.detach())
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


class _Descent:
    """The DCS descent at the constraint's current λ, stopped on the KKT residual."""

    def __init__(self, problem, holder, constraint, loss, data, method, tol, inner, history_size, progress, grad0,
                 polish):
        self.problem, self.holder, self.constraint, self.loss, self.data = problem, holder, constraint, loss, data
        self.method, self.tol, self.inner, self.history_size, self.progress = method, tol, inner, history_size, progress
        self.grad0, self.polish = grad0, polish
        self.width: int | None = None  # factor width while it is narrowed (see _working_width), and the full one
        self.full = 0
        self.scale = max(float(grad0.norm()), 1e-12)  # ‖∇loss(0)‖: the scale of relative KKT tolerances
        self.dtype = grad0.dtype
        self.exact: tuple | None = None  # (loss, data) in float64 when the descent runs in float32
        self._exact_constraint: tuple | None = None  # (source constraint, its λ, float64 copy)
        self.history: list = []
        self.point: torch.Tensor | None = None

    def closure(self):
        self.holder.zero_grad()
        objective = self.loss(self.holder.theta) + self.holder.decay()
        if torch.is_grad_enabled():
            objective.backward()
        return objective

    def _non_finite(self, theta: torch.Tensor) -> str | None:
        """Which of the iterate / its factors holds NaN or Inf, or None."""
        if not bool(torch.isfinite(theta).all()):
            return "the iterate holds"
        if not all(bool(torch.isfinite(p).all()) for p in self.holder.parameters()):
            return "the factors hold"
        return None

    def _broken(self, watchdog: "_Watchdog", what: str) -> tuple[str, str]:
        """NaN / Inf met: ``diverged`` if the iterates were already running off to infinity (the
        overflow is the symptom), else ``nan``."""
        if watchdog.growths:
            return "diverged", f"{what} after ‖θ‖ doubled while the objective fell (is the loss bounded below?){self._kept()}"
        return "nan", what + self._kept()

    def _kept(self) -> str:
        at = f"iteration {len(self.history)}" if self.history else "the start, θ = 0"
        return f"; x is the last finite certified point ({at})"

    def filled(self, point: torch.Tensor) -> bool:
        """Whether the rank of ``point`` fills a narrowed factor width (then ``widen`` acts)."""
        return self.width is not None and _alive(self.constraint, point, self.tol) >= self.width

    def widen(self, point: torch.Tensor) -> bool:
        """Double the factor width (up to full) and re-split ``point`` into the wider factors, if
        the rank fills the current width; returns whether it did. The KKT residual with the rank at
        the width only certifies the rank-bounded problem, so such a point is never accepted."""
        if not self.filled(point):
            return False
        self.width = min(2 * self.width, self.full)
        self.constraint = self.constraint.with_width(self.width if 4 * (self.width + 8) <= self.full else None)
        if self.constraint.max_rank is None:
            self.width = None  # full width from now on
        self.holder = _Variable(self.problem.shape, point.device, self.dtype, self.constraint)
        self.holder.load(point)
        return True

    def refactor(self) -> None:
        """Re-split the last certified point into factors. DCS zeros converge to ``u = v = 0``, a
        stationary point: after λ decreases such an atom could not re-enter; ``right_inverse`` gives
        every zero a live factor again."""
        if self.point is not None and not self.holder.copies:
            self.holder.load(self.point)

    @property
    def certified_dtype(self) -> torch.dtype:
        return self.dtype if self.exact is None else torch.float64

    def certifying(self) -> tuple[Callable, dict, Constraint]:
        """``(loss, data, constraint)`` that points are certified (and polished) with: the descent's
        own, or float64 copies when it runs in float32, whose ~1e-7 resolution cannot show a KKT
        residual of 1e-6 relative. The float64 constraint is copied again when λ or the width changes."""
        if self.exact is None:
            return self.loss, self.data, self.constraint
        cached = self._exact_constraint
        if cached is None or cached[0] is not self.constraint or cached[1] != self.constraint.strength:
            exact = copy.deepcopy(self.constraint).to(torch.float64)
            self._exact_constraint = cached = (self.constraint, self.constraint.strength, exact)
        return self.exact[0], self.exact[1], cached[2]

    def run(self, budget: int, start: float) -> tuple[str, str]:
        """Up to ``budget`` outer iterations from the current factors (a fresh optimizer: λ may
        have changed since the last run)."""
        make = _STEPPERS["lbfgs" if self.method == "auto" else self.method]
        step = make(list(self.holder.parameters()), self.closure, self.inner, self.history_size)
        previous = self.holder.theta.detach().clone()
        watchdog = _Watchdog()
        target = self.tol * self.scale
        best: tuple[torch.Tensor, float] | None = None  # the lowest-residual certified point of this run (one λ)
        for _ in range(budget):
            iteration = len(self.history) + 1
            try:
                collapsed = step()
                theta = self.holder.theta.detach()
                broken = self._non_finite(theta)
                if broken:
                    return self._broken(watchdog, f"iteration {iteration}: {broken} NaN or Inf")
                loss, data, constraint = self.certifying()
                quick = constraint.quick_kkt  # estimates while iterating, the exact residual to stop
                point, kkt = kkt_at_snap(loss, constraint, theta.to(self.certified_dtype), self.tol, quick=quick)
                if best is not None and best[1] < kkt:
                    # A float32 descent stalls at its own resolution, behind what the float64 polish
                    # reached: the polish goes on from its best point instead of starting over.
                    point, kkt = best
                if self.polish and kkt > target:  # also before a widening: the wider factors start better
                    polished = polish_on_face(loss, constraint, point, self.tol, target, self.inner, quick)
                    if polished is not None and polished[1] < kkt:
                        point, kkt = polished
                best = (point, kkt)
                if quick and kkt <= target:
                    point, kkt = kkt_at_snap(loss, constraint, point, self.tol, levels=1)
            except _NonFinite as err:
                return self._broken(watchdog, f"iteration {iteration}: {err}")
            except RuntimeError as err:  # e.g. a linear-algebra routine meeting NaN inside the loss
                return self._broken(watchdog, f"iteration {iteration}: torch raised {type(err).__name__}: {err}")
            objective = self.problem.value(point, data, constraint)
            if not (math.isfinite(objective) and math.isfinite(kkt)):
                return self._broken(watchdog, f"iteration {iteration}: the objective or its gradient is NaN or Inf")
            far = kkt > 1e3 * target  # far from optimal: a stuck descent then means a wrong gradient
            if collapsed and far:
                return "diverged", (f"iteration {iteration}: {collapsed} with the KKT residual {kkt:.2g} far above "
                                    f"the target: {_WRONG_GRADIENT}{self._kept()}")
            self.point = point
            violation = self.constraint.violation(theta) if self.constraint.linear else 0.0
            self.history.append((time.perf_counter() - start, objective, kkt))
            trouble = watchdog.verdict(objective, float(theta.norm()))
            if trouble:
                return "diverged", f"iteration {iteration}: {trouble}{self._kept()}"
            if self.progress:
                print(f"[symopt.solve {self.problem.name}] iter {len(self.history)}: objective "
                      f"{objective:.10g}, KKT {kkt:.2e} (target {target:.2e})", file=sys.stderr, flush=True)
            if self.widen(point):  # a fresh optimizer on the wider factors
                step = make(list(self.holder.parameters()), self.closure, self.inner, self.history_size)
                previous = self.holder.theta.detach().clone()
                continue
            if kkt <= target and violation <= self.tol * max(1.0, float(theta.norm())):
                return "optimal", "KKT residual and violation below tolerance"
            if torch.equal(theta, previous):
                if far:
                    return "stalled", (f"no progress although the KKT residual {kkt:.2g} is far above the target "
                                       f"{target:.2g}: the line search finds no decrease, so {_WRONG_GRADIENT}")
                return "stalled", f"no progress: KKT residual {kkt:.2g} is at the objective's floating-point resolution"
            previous = theta.clone()
        return "max_iter", f"KKT residual above {self.tol:g}·scale after {len(self.history)} iterations"


def _search_path(descent: _Descent, constraint: Constraint, loss, max_iter: int, max_rounds: int,
                 start: float) -> tuple[str, str]:
    """Find λ whose solution has exactly ``constraint.budget`` atoms (see [`solve`][symopt.solve])."""
    k = constraint.budget
    lam = constraint.strength or split_point(constraint.atoms(descent.grad0), k)  # where k atoms would leave 0
    too_many, too_few = 0.0, math.inf  # largest λ with > k atoms, smallest with < k
    for rounds in range(1, max_rounds + 1):
        constraint.strength = lam  # fixed within a round (also stops the training-loop controller)
        descent.refactor()
        status, message = descent.run(max_iter, start)
        if status not in ("optimal", "stalled"):
            return status, f"at λ = {lam:.6g} (round {rounds}): {message}"
        point = descent.point
        alive = _alive(constraint, point, descent.tol)
        if descent.progress:
            print(f"[symopt.solve {descent.problem.name}] λ = {lam:.8g}: {alive} atoms (budget {k})",
                  file=sys.stderr, flush=True)
        if alive == k:
            return _centre(descent, constraint, loss, k, lam, max_iter, start, status, message, rounds)
        if alive > k:
            too_many = max(too_many, lam)
        else:
            too_few = min(too_few, lam)
        if too_many > 0 and too_few < math.inf and too_few / too_many < 1 + 1e-9:
            return "budget_unreachable", (f"the path jumps over {k} atoms near λ = {too_many:.8g} "
                                          f"(the solution has {alive} there); snapped to the budget")
        proposal = _proposal(constraint, loss, descent.point, k, lam, descent.dtype)
        if too_many > 0 and too_few < math.inf:
            if not too_many < proposal < too_few:  # safeguard: bisection in log λ
                proposal = math.sqrt(too_many * too_few)
        else:  # not bracketed yet: at least a factor 2 per round (plateaus of the path are long)
            proposal = max(proposal, 2.0 * lam) if alive > k else min(proposal, 0.5 * lam)
        lam = proposal
    return "max_iter", f"no λ with exactly {k} atoms within {max_rounds} rounds (last λ = {lam:.6g})"


def _alive(constraint: Constraint, point: torch.Tensor, tol: float) -> int:
    """Atoms of a certified (snapped) point: each is zero or above the snap threshold (a rebuilt
    low-rank matrix has rounding-level σ where it was snapped)."""
    return int((constraint.atoms(point) > snap_tol(point, tol)).sum())


def _proposal(constraint: Constraint, loss, point: torch.Tensor, k: int, lam: float, dtype) -> float:
    """The budget controller's λ at an exact solution: the midpoint of the k-th and (k+1)-th scores."""
    point = point.to(dtype)  # the certified point may be float64 over a float32 descent
    return budget_target(constraint.atoms, point, loss_gradient(loss, point), k, lam)


def _centre(descent: _Descent, constraint: Constraint, loss, k: int, lam: float, max_iter: int, start: float,
            status: str, message: str, rounds: int) -> tuple[str, str]:
    """λ gives k atoms, but may sit at an end of the path's k-interval, where one more atom is about
    to enter or leave (then other solvers, to their tolerance, may see k ± 1). Try the controller's
    target once — it lies inside the interval — and keep it if it still gives k atoms."""
    found = f"λ = {lam:.8g} gives exactly {k} atoms (round {rounds}); {message}"
    target = _proposal(constraint, loss, descent.point, k, lam, descent.dtype)
    if abs(math.log(target / lam)) < 1e-3:
        return status, found
    saved = ([p.detach().clone() for p in descent.holder.parameters()], descent.point, len(descent.history))
    constraint.strength = target
    descent.refactor()
    new_status, new_message = descent.run(max_iter, start)
    if new_status in ("optimal", "stalled") and _alive(constraint, descent.point, descent.tol) == k:
        return new_status, f"λ = {target:.8g} gives exactly {k} atoms (round {rounds + 1}, centred); {new_message}"
    with torch.no_grad():  # back to the λ that worked
        for p, value in zip(descent.holder.parameters(), saved[0]):
            p.copy_(value)
    constraint.strength = lam
    descent.point = saved[1]
    del descent.history[saved[2]:]
    return status, found
