"""cvxpy on a problem's convex twin: the reference optimum."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..problems import Problem
from ..result import NotApplicable, Result


def solve_cvxpy(problem: Problem, solver: str | None = None, **options) -> Result:
    r"""Solve the cvxpy twin of ``problem``: the convex optimum, the reference DCS is checked against.

    The twin states the same objective in cvxpy's modelling language ($‖·‖_1$, $\sum ‖·‖_2$,
    ``normNuc``, linear equalities), so an interior-point solver returns the optimum to its
    tolerance (~1e-9 relative for Clarabel); the returned objective is re-evaluated in torch.

    Args:
        problem: a [`Problem`][symopt.Problem] with a cvxpy twin and a fixed λ.
        solver: a cvxpy solver name (default Clarabel; ``"SCS"`` for large nuclear-norm problems).
        **options: passed to ``cvxpy.Problem.solve`` (tolerances, ``verbose``, ...).

    Returns:
        Result: status is cvxpy's (``"optimal"``, ``"infeasible"``, ...); ``kkt_residual`` is NaN
            (cvxpy reports none), ``x`` is NaN when cvxpy found no point.

    Raises:
        ImportError: cvxpy is not installed (``pip install 'symopt[baselines]'``).
        NotApplicable: the problem has no convex twin (hard rank) or is a budget problem.

    Examples:
        >>> import symopt
        >>> from symopt.baselines import solve_cvxpy
        >>> from symopt.problems import make_lasso
        >>> problem = make_lasso(n=40, d=20, nonzeros=3)
        >>> reference, ours = solve_cvxpy(problem), symopt.solve(problem)
        >>> reference.status, abs(reference.objective - ours.objective) < 1e-7
        ('optimal', True)
    """
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the cvxpy baseline needs cvxpy: pip install 'symopt[baselines]'") from err
    problem.require_strength("cvxpy")
    if problem.cvxpy is None:
        raise NotApplicable("no convex twin")
    variable, objective, constraints = problem.cvxpy(**problem.numpy_data())
    cvx_problem = cp.Problem(cp.Minimize(objective), constraints)
    start = time.perf_counter()
    cvx_problem.solve(solver=solver or cp.CLARABEL, **options)
    seconds = time.perf_counter() - start
    if variable.value is None:
        x = torch.full(problem.shape, float("nan"), dtype=torch.float64)
    else:
        x = torch.from_numpy(np.asarray(variable.value, dtype=np.float64).reshape(problem.shape))
    return Result.from_point(problem, x, solver=f"cvxpy[{cvx_problem.solver_stats.solver_name}]",
                             status=str(cvx_problem.status), seconds=seconds,
                             iterations=int(cvx_problem.solver_stats.num_iters or 0))
