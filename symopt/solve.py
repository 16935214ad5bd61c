"""Layer 4 — ``symopt.solve``: DCS on a :class:`~symopt.problems.Problem`.

Uses the same parametrizations as the training API (a holder module, ``symopt.constrain``,
``symopt.penalty``), minimised by L-BFGS with a strong-Wolfe line search or by accelerated gradient
with a backtracked Lipschitz step (no step size to tune), and stops on the KKT residual of the
*original* problem, not on an iteration count.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from .attach import constrain
from .constraints import Constraint, Tied
from .constraints.budget import budget_target, split_point
from .decay import penalty
from .optimality import gradient_scale, kkt_at_snap, snap_tol
from .problems import Problem
from .result import Result, elapsed_since

_METHODS = ("auto", "lbfgs", "momentum")


def _lbfgs_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=inner, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    return lambda: opt.step(closure)


def _momentum_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    """Nesterov acceleration with a backtracked step 1/L (sufficient decrease), L allowed to shrink
    again each step, and function-value restart (O'Donoghue & Candès)."""
    params = list(params)
    state = {"x": [p.detach().clone() for p in params], "t": 1.0, "L": 1.0, "f_x": math.inf}

    def load(values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)

    def step():
        for _ in range(inner):
            f_y = float(closure().detach())  # at the current (extrapolated) point y, fills .grad
            y = [p.detach().clone() for p in params]
            grads = [p.grad.detach().clone() for p in params]
            gsq = sum(float(g.square().sum()) for g in grads)
            L = state["L"]
            while True:
                x_new = [yi - gi / L for yi, gi in zip(y, grads)]
                load(x_new)
                with torch.no_grad():
                    f_new = float(closure())
                if f_new <= f_y - 0.5 * gsq / L or L > 1e30:
                    break
                L *= 2.0
            t = state["t"] if f_new <= state["f_x"] else 1.0  # restart when the objective rises
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            load([xn + (t - 1) / t_new * (xn - xo) for xn, xo in zip(x_new, state["x"])])
            state.update(x=x_new, t=t_new, L=L / 1.5, f_x=f_new)
        load(state["x"])  # leave the parameters at the last accepted iterate, not the extrapolation

    return step


_STEPPERS = {"lbfgs": _lbfgs_stepper, "momentum": _momentum_stepper}


class _Variable(nn.Module):
    """Holds the problem's variable. A tie acts across tensors, so for :class:`Tied` the variable
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

    @property
    def theta(self) -> torch.Tensor:
        if self.copies:
            return torch.stack([getattr(self, f"copy{j}") for j in range(self.copies)])
        return self.value


def solve(problem: Problem, device=None, dtype=None, method: str = "auto", tol: float = 1e-6,
          max_iter: int = 500, progress: bool = False, inner: int = 20, history_size: int = 100,
          max_rounds: int = 40) -> Result:
    """Solve ``problem`` by DCS.

    Args:
        problem: a :class:`~symopt.problems.Problem`.
        device, dtype: where and in which precision to solve (default CPU, float64).
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

    A *budget* problem (``lasso(X, y, max_nonzero=k)``, ``target_rank=r``, ...) has no fixed λ:
    solve searches the regularisation path. Each round solves at one λ to the KKT tolerance (warm
    started) and counts the atoms of the certified point; λ then moves to the budget controller's
    target (:mod:`symopt.constraints.budget`) — evaluated at an exact solution, so its prediction is
    the support at that λ — safeguarded by bisection between the largest λ seen with too many atoms
    and the smallest with too few. It stops at the first λ whose solution has exactly the budget:
    that λ is on the path interval with that support size, and ``result.strength`` reports it.

    Returns:
        :class:`~symopt.result.Result` with status ``optimal``, ``max_iter``, ``stalled`` (the line
        search can no longer decrease the objective: ``tol`` is below what the precision allows),
        ``nan`` or, for budgets, ``budget_unreachable`` (the path jumps over the budget: no λ gives
        exactly that many atoms; ``x`` is then the solution with the nearest larger support, snapped
        to the budget).

    Example:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> symopt.solve(make_lasso(n=50, d=40, nonzeros=3)).status
        'optimal'
    """
    if method not in _METHODS:
        raise ValueError(f"solve: unknown method {method!r}; choose one of {_METHODS}")
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"solve: tol must be a finite number > 0, got {tol!r}")
    for label, count in (("max_iter", max_iter), ("max_rounds", max_rounds)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"solve: {label} must be an int >= 1, got {count!r}")
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
    data = problem.data_on(device, dtype)
    constraint = problem.constraint()
    holder = _Variable(problem.shape, device, dtype, constraint)
    loss = lambda theta: problem.loss(theta, **data)  # noqa: E731
    descent = _Descent(problem, holder, constraint, loss, data, method, tol, inner, history_size, progress)

    start = time.perf_counter()
    if constraint.budget is None:
        status, message = descent.run(max_iter, start)
    else:
        status, message = _search_path(descent, constraint, loss, max_iter, max_rounds, start)
    seconds = elapsed_since(start, device)
    theta = holder.theta.detach()
    # The point returned is the snapped point whose KKT residual was measured last.
    point = descent.point if descent.point is not None else constraint.project(theta, snap_tol(theta, tol))
    if status == "budget_unreachable":
        point = constraint.truncate(point, constraint.budget)
    x = point.to("cpu", torch.float64)
    c64 = problem.constraint().to(dtype=torch.float64)
    if constraint.budget is not None and constraint.strength > 0:
        c64.strength = constraint.strength
    objective = problem.value(x, problem.data_on("cpu", torch.float64), c64)
    return Result(
        x=x, objective=objective, violation=constraint.violation(theta) if constraint.linear else 0.0,
        kkt_residual=descent.history[-1][2] if descent.history else float("nan"),
        iterations=len(descent.history), seconds=seconds, history=descent.history, device=str(device),
        status=status, solver="dcs" if method == "auto" else f"dcs[{method}]", message=message,
        strength=constraint.strength, problem=problem,
    )


class _Descent:
    """The DCS descent at the constraint's current λ, stopped on the KKT residual."""

    def __init__(self, problem, holder, constraint, loss, data, method, tol, inner, history_size, progress):
        self.problem, self.holder, self.constraint, self.loss, self.data = problem, holder, constraint, loss, data
        self.method, self.tol, self.inner, self.history_size, self.progress = method, tol, inner, history_size, progress
        self.scale = gradient_scale(loss, problem.shape, holder.theta.device, holder.theta.dtype)
        self.history: list = []
        self.point: torch.Tensor | None = None

    def closure(self):
        self.holder.zero_grad()
        objective = self.loss(self.holder.theta) + penalty(self.holder)
        if torch.is_grad_enabled():
            objective.backward()
        return objective

    def refactor(self) -> None:
        """Re-split the last certified point into factors. DCS zeros converge to ``u = v = 0``, a
        stationary point: after λ decreases such an atom could not re-enter; ``right_inverse`` gives
        every zero a live factor again."""
        if self.point is not None and not self.holder.copies:
            with torch.no_grad():
                self.holder.value = self.point.clone()

    def run(self, budget: int, start: float) -> tuple[str, str]:
        """Up to ``budget`` outer iterations from the current factors (a fresh optimizer: λ may
        have changed since the last run)."""
        make = _STEPPERS["lbfgs" if self.method == "auto" else self.method]
        step = make(list(self.holder.parameters()), self.closure, self.inner, self.history_size)
        previous = self.holder.theta.detach().clone()
        for _ in range(budget):
            step()
            theta = self.holder.theta.detach()
            if not bool(torch.isfinite(theta).all()):
                return "nan", "non-finite iterate"
            self.point, kkt = kkt_at_snap(self.loss, self.constraint, theta, self.tol)
            violation = self.constraint.violation(theta) if self.constraint.linear else 0.0
            self.history.append((time.perf_counter() - start,
                                 self.problem.value(self.point, self.data, self.constraint), kkt))
            if self.progress:
                print(f"[symopt.solve {self.problem.name}] iter {len(self.history)}: objective "
                      f"{self.history[-1][1]:.10g}, KKT {kkt:.2e} (target {self.tol * self.scale:.2e})",
                      file=sys.stderr, flush=True)
            if kkt <= self.tol * self.scale and violation <= self.tol * max(1.0, float(theta.norm())):
                return "optimal", "KKT residual and violation below tolerance"
            if torch.equal(theta, previous):
                return "stalled", f"no progress: KKT residual {kkt:.2g} is at the objective's floating-point resolution"
            previous = theta.clone()
        return "max_iter", f"KKT residual above {self.tol:g}·scale after {len(self.history)} iterations"


def _search_path(descent: _Descent, constraint: Constraint, loss, max_iter: int, max_rounds: int,
                 start: float) -> tuple[str, str]:
    """Find λ whose solution has exactly ``constraint.budget`` atoms (see :func:`solve`)."""
    k = constraint.budget
    zero = torch.zeros(descent.problem.shape, device=descent.holder.theta.device,
                       dtype=descent.holder.theta.dtype, requires_grad=True)
    (grad0,) = torch.autograd.grad(loss(zero), zero)
    lam = constraint.strength or split_point(constraint.atoms(grad0), k)  # where k atoms would leave 0
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
        proposal = _proposal(constraint, loss, descent.point, k, lam)
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


def _proposal(constraint: Constraint, loss, point: torch.Tensor, k: int, lam: float) -> float:
    """The budget controller's λ at an exact solution: the midpoint of the k-th and (k+1)-th scores."""
    point = point.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(point), point)
    return budget_target(constraint.atoms, point.detach(), grad, k, lam)


def _centre(descent: _Descent, constraint: Constraint, loss, k: int, lam: float, max_iter: int, start: float,
            status: str, message: str, rounds: int) -> tuple[str, str]:
    """λ gives k atoms, but may sit at an end of the path's k-interval, where one more atom is about
    to enter or leave (then other solvers, to their tolerance, may see k ± 1). Try the controller's
    target once — it lies inside the interval — and keep it if it still gives k atoms."""
    found = f"λ = {lam:.8g} gives exactly {k} atoms (round {rounds}); {message}"
    target = _proposal(constraint, loss, descent.point, k, lam)
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
