"""The record every solver returns (DCS and baselines alike), so they compare field by field."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def elapsed_since(start: float, device: torch.device) -> float:
    """Wall seconds since ``start`` (``time.perf_counter()``), after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class NotApplicable(ValueError):
    """A solver has no method for this problem (e.g. cvxpy for a problem without a convex twin).

    [`symopt.compare`][symopt.compare] shows it as ``n/a: <message>`` instead of failing the run.

    Examples:
        >>> import symopt
        >>> from symopt.baselines import solve_sklearn
        >>> from symopt.problems import make_equality_ls
        >>> try:
        ...     solve_sklearn(make_equality_ls(n=20, d=5, constraints=1))
        ... except symopt.baselines.NotApplicable as why:
        ...     print(why)
        no scikit-learn solver for equality_ls
    """


@dataclass
class Result:
    """Outcome of one solve.

    Attributes:
        x: the solution (CPU tensor, float64 for comparisons).
        objective: full objective at ``x`` (loss + λ·induced norm; loss alone for linear kinds).
        violation: distance of ``x`` to the constraint set (0 for penalty kinds).
        kkt_residual: distance of ``−∇loss(x)`` to ``λ∂‖x‖`` (projected gradient for linear kinds).
        iterations: solver iterations (outer iterations for DCS).
        seconds: wall time of the solve.
        history: per iteration, ``(seconds since start, objective, kkt_residual)``.
        device: where it ran.
        status: ``"optimal"``, ``"max_iter"``, ``"stalled"``, ``"nan"`` or a baseline's own status.
        solver: name of the solver.
        message: human-readable detail.
        strength: the λ solved at (for a budget problem, the λ that [`symopt.solve`][symopt.solve] found).
        problem: the problem solved (lets [`symopt.certify`][symopt.certify] re-measure the result).

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> result = symopt.solve(make_lasso(n=40, d=20, nonzeros=3))
        >>> result.status, result.solver, result.kkt_residual < 1e-6, result.history[-1][1] == result.objective
        ('optimal', 'dcs', True, True)
    """

    x: torch.Tensor
    objective: float
    violation: float
    kkt_residual: float
    iterations: int
    seconds: float
    history: list = field(default_factory=list)
    device: str = "cpu"
    status: str = "optimal"
    solver: str = "dcs"
    message: str = ""
    strength: float | None = None
    problem: object = field(default=None, repr=False, compare=False)
