r"""Layer 4 — working sets: DCS on a few columns of the design at a time, certified on all of them.

A sparse problem (Lasso, group lasso, logistic-L1) has a solution with few non-zero atoms, but
each DCS evaluation reads the whole design ``X``. A working set ``W`` of atoms (coordinates, or
whole groups) gives the problem restricted to them (`Problem.restrict`: ``X[:, W]``, the other
coordinates fixed at 0), whose evaluations cost ``|W|/d`` of the full ones. The loop (as in
celer / skglm, here with DCS as the inner solver):

1. solve the restricted problem by DCS, warm started, to half the full problem's KKT target;
2. embed its solution and measure the KKT residual of the *full* problem there (one full
   gradient): on ``W`` it is the restricted residual; outside ``W``, where θ = 0, it is
   $\max(‖g_a‖ - λ, 0)$ per atom, positive only for atoms that want to enter;
3. stop when it is below the target; else take the alive atoms plus the atoms with the largest
   $‖g_a‖$ (the worst violators), doubling the size, and repeat.

The answer is certified exactly as a plain solve's: by the full problem's KKT residual.

A warm start (`symopt.path`'s previous point) is first polished on the full problem's face (its
support and worst violators: proximal Newton's quadratic model needs only those columns) and returned when
that certifies it; the loop above runs only when it does not.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from .._clock import solver_clock
from ..optimality import loss_gradient, snap_tol
from ..problems import Problem
from ..result import Result, elapsed_since
from .certifier import Certifier

FIRST_SIZE = 100  # atoms in the first working set (at least twice the alive atoms later)


def applies(problem: Problem, constraint) -> bool:
    """Whether working sets can solve ``problem``: a family that can restrict itself, with a
    penalised constraint (no budget) whose atoms are subsets of θ's coordinates
    (``constraint.atom_ids``: entries, index groups)."""
    if problem.restrict is None or constraint.budget is not None:
        return False
    return constraint.atom_ids(math.prod(problem.shape)) is not None


def atom_count(constraint, numel: int) -> int:
    """How many atoms (coordinates, or groups) a θ with ``numel`` entries has."""
    return int(constraint.atom_ids(numel, "cpu").max()) + 1


def solve_on_working_sets(problem: Problem, solve_restricted: Callable[..., Result], *, device, tol: float,
                          max_iter: int, progress: bool, solver: str = "dcs", start: Tensor | None = None,
                          grad0: Tensor | None = None, polish: bool = True, inner: int = 20) -> Result:
    """Solve ``problem`` by DCS on growing working sets (see the module docstring).

    Args:
        problem: a problem with ``restrict`` (see `applies`).
        solve_restricted: ``solve_restricted(sub_problem, tol=, start=)`` → Result: plain DCS.
        device: where the full KKT check runs (in float64); the inner solves choose their own.
        tol: the relative KKT tolerance of the full problem (as in ``symopt.solve``).
        max_iter: most working-set rounds (each one inner solve).
        progress: one line per round to stderr.
        solver: the name the result reports.
        start: a warm start θ (of ``problem.shape``): its non-zero atoms open the first working set.
        grad0: ∇loss(0) in float64 on ``device`` when the caller has it already (else computed here).
        polish, inner: the solve's face polish switch and its iteration count (`Certifier`): with the
            polish on, a warm start is first certified and polished on the full problem's face.
    """
    data = problem.data_on(device, torch.float64)
    # (the clock starts with the data on the device, as the plain descent's and the baselines' do: on
    # a GPU the move is a copy of the whole design)
    began = solver_clock()
    constraint = problem.constraint().to(device=device, dtype=torch.float64)
    loss = problem.bind(data)
    shape, numel = tuple(problem.shape), math.prod(problem.shape)
    ids = constraint.atom_ids(numel, device)
    if grad0 is None:
        grad0 = _gradient(loss, torch.zeros(numel, device=device, dtype=torch.float64), shape)
    grad0 = grad0.reshape(-1)
    if start is None:
        theta, grad = torch.zeros(numel, device=device, dtype=torch.float64), grad0
    else:
        theta = start.detach().to(device=device, dtype=torch.float64).reshape(-1).clone()
        grad = _gradient(loss, theta, shape)
    target = tol * max(float(grad0.norm()), 1e-12)
    history: list = []
    if start is not None and polish:
        # A warm start (the previous point of a path) is usually on its answer's face, or one atom
        # from it: the polish on the full problem's face (its support and the atoms whose
        # gradient exceeds λ; curvature on those columns only) certifies it without restricting,
        # re-registering or solving a sub-problem (a 50-point path: 0.29 s → 0.2 s, 500×2000).
        try:
            point, kkt, _, _ = Certifier(loss, data, tol, target, inner, polish).certify(theta.reshape(shape),
                                                                                     constraint)
        except RuntimeError:  # a linear-algebra failure: the working sets start from the start as it is
            point, kkt = None, math.inf
        if kkt <= target:
            return _result(problem, point, loss, data, constraint, began, device, solver, history, kkt, "optimal",
                           "KKT residual below tolerance at the warm start's face (polished on the full "
                           "problem, no working set)")
        if point is not None and kkt < constraint.kkt_residual(theta.reshape(shape), grad.reshape(shape),
                                                                snap_tol(theta, tol)):
            theta, grad = point.reshape(-1), _gradient(loss, point, shape)  # (remembered: no new product)
    size, chosen, inner_iterations = FIRST_SIZE, None, 0
    status, message = "max_iter", f"KKT residual above {tol:g}·scale after {max_iter} working-set rounds"
    for round_ in range(1, max_iter + 1):
        alive = constraint.atoms(theta) > 0
        scores = constraint.dual_atoms(grad)  # an atom at 0 violates KKT when its dual atom exceeds λ
        size = max(size, 2 * int(alive.sum()))
        priority = torch.where(alive, torch.full_like(scores, math.inf), scores)
        atoms = torch.topk(priority, min(size, priority.numel())).indices
        keep = torch.zeros(priority.numel(), dtype=torch.bool, device=device)
        keep[atoms] = True
        index = torch.nonzero(keep[ids]).reshape(-1)  # sorted coordinates of the chosen atoms
        if chosen is not None and torch.equal(index, chosen):
            status, message = "stalled", (f"the working set of {len(index)} coordinates cannot grow, but the KKT "
                                          f"residual {history[-1][2]:.2g} is above the target {target:.2g}")
            break
        chosen = index
        # The restricted residual, on W, is the full one's W part: half the target leaves room for the rest.
        scale = max(float(grad0[index].norm()), 1e-12)
        sub = problem.restrict(index.cpu())
        inner = solve_restricted(sub, tol=0.5 * target / scale, start=theta[index].to("cpu").reshape(sub.shape))
        inner_iterations += inner.iterations
        if inner.status in ("nan", "diverged", "max_iter"):
            status, message = inner.status, f"working-set round {round_} ({len(index)} coordinates): {inner.message}"
            break
        theta = torch.zeros_like(theta)
        theta[index] = inner.x.to(device=device, dtype=torch.float64).reshape(-1)
        grad = _gradient(loss, theta, shape)
        kkt = constraint.kkt_residual(theta.reshape(shape), grad.reshape(shape), snap_tol(theta, tol))
        objective = problem.value(theta.reshape(shape), data, constraint, loss)
        history.append((solver_clock() - began, objective, kkt))
        if progress:
            print(f"[symopt.solve {problem.name}] working set {round_}: {len(index)} coordinates, objective "
                  f"{objective:.10g}, KKT {kkt:.2e} (target {target:.2e})", file=sys.stderr, flush=True)
        if kkt <= target:
            status, message = "optimal", (f"KKT residual below tolerance (working sets: {round_} rounds, last "
                                          f"{len(index)} of {numel} coordinates, {inner_iterations} inner iterations)")
            break
        if len(index) == numel:  # the working set is the whole problem: its solve's verdict stands
            status, message = inner.status, inner.message
            break
        size *= 2
    return _result(problem, theta.reshape(shape), loss, data, constraint, began, device, solver, history, None,
                   status, message)


def _result(problem: Problem, theta: Tensor, loss, data: dict, constraint, began: float, device, solver: str,
            history: list, kkt: float | None, status: str, message: str) -> Result:
    """The `Result` at ``theta`` (``kkt``, when given, is its residual, recorded in the history); its
    objective from the loss's remembered evaluation, passed on when measured on the CPU."""
    seconds = elapsed_since(began, device, solver_clock)
    objective = problem.value(theta, data, constraint, loss)  # (remembered: no new product)
    if kkt is not None:
        history.append((solver_clock() - began, objective, kkt))
    on_cpu = torch.device(device).type == "cpu"  # where it is the number `Result.from_point` would measure
    return Result.from_point(problem, theta, solver=solver, status=status, seconds=seconds, history=history,
                             device=device, message=message, strength=constraint.strength,
                             objective=objective if on_cpu else None, constraint=constraint if on_cpu else None)


def _gradient(loss, theta: Tensor, shape) -> Tensor:
    """∇loss of the full problem (bound to its data) at the flat θ, flat: the loss's own gradient
    where it has one (on a 500×2000 path, autograd here was a quarter of the time)."""
    return loss_gradient(loss, theta.reshape(shape)).reshape(-1)
