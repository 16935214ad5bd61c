"""Budgets in the solver: find the λ of the regularisation path whose solution has exactly the budget
of atoms (see [`symopt.solve`][symopt.solve]): solve at one λ to the KKT tolerance, count the atoms,
move λ to the budget controller's target, safeguarded by bisection."""

from __future__ import annotations

import math
import sys

import torch

from ..constraints import Constraint
from ..constraints.budget import budget_target, split_point
from ..optimality import loss_gradient
from .descent import Descent, alive


def search_path(descent: Descent, constraint: Constraint, loss, max_iter: int, max_rounds: int,
                start: float) -> tuple[str, str]:
    """Find λ whose solution has exactly ``constraint.budget`` atoms (see [`solve`][symopt.solve])."""
    k = constraint.budget
    lam = constraint.strength or split_point(constraint.dual_atoms(descent.grad0), k)  # where k atoms would leave 0
    too_many, too_few = 0.0, math.inf  # largest λ with > k atoms, smallest with < k
    # Below tol·λ_max the KKT tolerance no longer tells an atom at 0 from one about to leave it: the
    # search goes no lower. A budget the path has not reached by then is one the data do not allow
    # (a Lasso has at most n non-zeros, a positive one only the entries pulled upward); before, the
    # search halved λ for its 40 rounds and ended on a meaningless count at λ ~ 1e-10.
    floor = descent.tol * float(constraint.dual_norm(descent.grad0))
    # The bracket's width (in log λ) when the last proposal was made inside it: the controller's target is
    # kept only while it at least halves the bracket every round; else the round bisects (a Lasso on columns
    # of scales 1e-2..1e2 whose path goes from 6 to 8 atoms within 3% of λ: the target, computed at each
    # 8-atom solution, moved λ up 1% a round, and the search ended at max_iter after 40 rounds).
    bracket_then = None
    for rounds in range(1, max_rounds + 1):
        constraint.strength = lam  # fixed within a round (also stops the training-loop controller)
        descent.refactor()
        status, message = descent.run(max_iter, start)
        if status not in ("optimal", "stalled"):
            return status, f"at λ = {lam:.6g} (round {rounds}): {message}"
        point = descent.point
        atoms = alive(constraint, point)
        if descent.progress:
            print(f"[symopt.solve {descent.problem.name}] λ = {lam:.8g}: {atoms} atoms (budget {k})",
                  file=sys.stderr, flush=True)
        if atoms == k:
            return _centre(descent, constraint, loss, k, lam, max_iter, start, status, message, rounds)
        if atoms > k:
            too_many = max(too_many, lam)
        else:
            too_few = min(too_few, lam)
        if too_many > 0 and too_few < math.inf and too_few / too_many < 1 + 1e-9:
            return "budget_unreachable", (f"the path jumps over {k} atoms near λ = {too_many:.8g} "
                                          f"(the solution has {atoms} there); snapped to the budget")
        proposal = _proposal(constraint, loss, descent.point, k, lam, descent.dtype)
        if too_many > 0 and too_few < math.inf:
            bracket = math.log(too_few / too_many)
            crawling = bracket_then is not None and bracket > 0.5 * bracket_then
            if crawling or not too_many < proposal < too_few:  # safeguard: bisection in log λ
                proposal = math.sqrt(too_many * too_few)
            bracket_then = bracket
        else:  # not bracketed yet: at least a factor 2 per round (plateaus of the path are long)
            proposal = max(proposal, 2.0 * lam) if atoms > k else min(proposal, 0.5 * lam)
            if atoms < k and proposal < floor:
                if lam <= floor:
                    return "budget_unreachable", (
                        f"at λ = {lam:.6g} (tol × λ_max, the smallest λ the tolerance resolves) the solution "
                        f"has {atoms} atoms, fewer than the budget {k}: the path does not reach it (a Lasso "
                        "has at most n non-zeros; a non-negative one only entries its gradient pulls "
                        "upward); x is that solution. Lower the budget, or tol to search further")
                proposal = floor  # the last λ the search tries
        lam = proposal
    return "max_iter", f"no λ with exactly {k} atoms within {max_rounds} rounds (last λ = {lam:.6g})"


def _proposal(constraint: Constraint, loss, point: torch.Tensor, k: int, lam: float, dtype) -> float:
    """The budget controller's λ at an exact solution: the midpoint of the k-th and (k+1)-th scores."""
    point = point.to(dtype)  # the certified point may be float64 over a float32 descent
    return budget_target(constraint.top_dual_atoms, point, loss_gradient(loss, point), k, lam)


def _centre(descent: Descent, constraint: Constraint, loss, k: int, lam: float, max_iter: int, start: float,
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
    if new_status in ("optimal", "stalled") and alive(constraint, descent.point) == k:
        return new_status, f"λ = {target:.8g} gives exactly {k} atoms (round {rounds + 1}, centred); {new_message}"
    with torch.no_grad():  # back to the λ that worked
        for p, value in zip(descent.holder.parameters(), saved[0]):
            p.copy_(value)
    constraint.strength = lam
    descent.point = saved[1]
    del descent.history[saved[2]:]
    return status, found
