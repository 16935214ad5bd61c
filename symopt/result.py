"""The record every solver returns (DCS and baselines alike), so they compare field by field."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def elapsed_since(start: float, device: torch.device, clock=time.perf_counter) -> float:
    """Wall seconds since ``start`` (a reading of ``clock``: ``time.perf_counter()``, or the solver's
    `symopt._clock.solver_clock`), after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


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
    r"""Outcome of one solve.

    Attributes:
        x: the solution (CPU tensor, float64 for comparisons).
        objective: full objective at ``x`` (loss + λ·induced norm; loss alone for linear kinds).
        violation: distance of ``x`` to the constraint set (0 for penalty kinds).
        kkt_residual: distance of $-∇\mathrm{loss}(x)$ to $λ∂‖x‖$ (projected gradient for linear kinds).
        iterations: solver iterations (outer iterations for DCS).
        seconds: wall time of the solve.
        history: per iteration, ``(seconds since start, objective, kkt_residual)``.
        device: where it ran.
        status: ``"optimal"``, ``"max_iter"``, ``"stalled"``, ``"nan"`` or a baseline's own status.
        solver: name of the solver.
        message: human-readable detail.
        strength: the λ solved at (for a budget problem, the λ that [`symopt.solve`][symopt.solve] found).
        problem: the problem solved (lets [`symopt.certify`][symopt.certify] re-measure the result;
            not pickled: it holds closures).

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

    def __getstate__(self) -> dict:
        # The problem holds closures (its loss, constraint factory, cvxpy twin): a pickled result
        # keeps every number and leaves it behind (then result.intercept is None and certify asks
        # for the problem).
        state = dict(self.__dict__)
        state["problem"] = None
        return state

    @property
    def intercept(self):
        """The unpenalised intercept that goes with ``x`` (a float; a ``(T,)`` tensor for several
        targets), for problems built with ``fit_intercept=True``; None otherwise."""
        if self.problem is None or getattr(self.problem, "intercept", None) is None:
            return None
        return self.problem.intercept(self.x)

    @classmethod
    def from_point(cls, problem, x: torch.Tensor, *, solver: str, status: str, seconds: float,
                   history: list | None = None, kkt_residual: float | None = None, iterations: int | None = None,
                   device="cpu", message: str = "", strength: float | None = None,
                   evaluate_at: float | None = None, objective: float | None = None,
                   constraint=None) -> "Result":
        """The record of a solver that ended at ``x``, measured the same way whatever the solver: ``x``
        in float64 on the CPU, the problem's objective there (at λ = ``evaluate_at`` when given: the λ
        a budget search found), the constraint's ``infeasibility``, and the last KKT residual of
        ``history`` unless one is given.

        Args:
            problem: the [`Problem`][symopt.Problem] solved.
            x: the point the solver ended at.
            solver: its name.
            status: ``"optimal"``, ``"max_iter"``, ... or the solver's own.
            seconds: wall time of the solve.
            history: ``(seconds, objective, kkt_residual)`` per iteration.
            kkt_residual: the residual at ``x`` (default: the last of ``history``, NaN without one).
            iterations: default ``len(history)``.
            device: where it ran.
            message: detail for a human.
            strength: the λ to report.
            evaluate_at: the λ at which to evaluate the objective (default: the problem's own).
            objective: the objective at ``x``, when the caller measured it already in float64 on the
                CPU (it is not measured again).
            constraint: the problem's constraint in float64 on the CPU at the λ to report, when the
                caller has one (else built from the problem).

        Returns:
            Result: the record.

        Examples:
            >>> import torch, symopt
            >>> from symopt.problems import make_lasso
            >>> problem = make_lasso(n=30, d=10, nonzeros=2)
            >>> result = symopt.Result.from_point(problem, torch.zeros(10), solver="zero", status="start", seconds=0.0)
            >>> result.objective == problem.objective(torch.zeros(10, dtype=torch.float64)), result.violation
            (True, 0.0)
        """
        x = x.detach().to("cpu", torch.float64)
        if constraint is None:
            constraint = problem.constraint().to(dtype=torch.float64)
        if evaluate_at is not None:
            constraint.strength = evaluate_at
        history = list(history or [])
        if kkt_residual is None:
            kkt_residual = history[-1][2] if history else float("nan")
        if objective is None:
            objective = problem.value(x, problem.data_on("cpu", torch.float64), constraint)
        return cls(x=x, objective=objective,
                   violation=constraint.infeasibility(x), kkt_residual=kkt_residual,
                   iterations=len(history) if iterations is None else iterations, seconds=seconds, history=history,
                   device=str(device), status=status, solver=solver, message=message, strength=strength,
                   problem=problem)
