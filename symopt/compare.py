"""Layer 5 — run DCS and the independent baselines on the same problems and tabulate them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._format import table
from .baselines import solve_cvxpy, solve_proximal, solve_sklearn
from .optimality import snap_tol
from .problems import (Problem, make_equality_ls, make_group_lasso, make_lasso, make_logistic_l1,
                       make_matrix_completion)
from .result import Result
from .solve import solve

# name -> (generator, full-size kwargs, --quick kwargs)
BUILTIN: dict[str, tuple[Callable[..., Problem], dict, dict]] = {
    "lasso": (make_lasso, dict(n=500, d=2000, nonzeros=20), dict(n=100, d=200, nonzeros=5)),
    "group_lasso": (make_group_lasso, dict(n=500, d=1000, group_size=5), dict(n=100, d=200, group_size=4)),
    "logistic_l1": (make_logistic_l1, dict(n=500, d=300), dict(n=200, d=50)),
    "equality_ls": (make_equality_ls, dict(n=500, d=300, constraints=30), dict(n=100, d=50, constraints=5)),
    "matrix_completion": (make_matrix_completion, dict(m=40, n=30), dict(m=20, n=15, rank=2)),
}

SOLVERS: dict[str, Callable[..., Result]] = {
    "dcs": lambda p, device: solve(p, device=device),
    "cvxpy": lambda p, device: solve_cvxpy(p),
    "sklearn": lambda p, device: solve_sklearn(p),
    "proximal": lambda p, device: solve_proximal(p, device=device),
}


@dataclass(frozen=True)
class Row:
    problem: str
    result: Result
    gap: float  # (objective − best feasible objective) / max(1, |best|)
    structure: str
    agrees: bool  # same support / rank as the best solver's answer


class Comparison(list):
    """Rows of a comparison; prints as a table."""

    def __str__(self) -> str:
        headers = ["problem", "solver", "status", "objective", "rel. gap", "violation", "structure", "same",
                   "iters", "seconds", "device"]
        return table(headers, [
            [r.problem, r.result.solver, r.result.status, f"{r.result.objective:.10g}", f"{r.gap:.1e}",
             f"{r.result.violation:.1e}", r.structure, "yes" if r.agrees else "NO", r.result.iterations,
             f"{r.result.seconds:.3f}", r.result.device]
            for r in self
        ])

    @property
    def ok(self) -> bool:
        """Every DCS row is within 1e-6 relative gap of the best and agrees on the structure."""
        return all(r.gap <= 1e-6 and r.agrees for r in self if r.result.solver == "dcs")


def builtin_problems(names: Sequence[str] | None = None, quick: bool = False, seed: int = 0) -> list[Problem]:
    names = list(names or BUILTIN)
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise ValueError(f"unknown problem(s) {unknown}; built-in: {sorted(BUILTIN)}")
    return [BUILTIN[n][0](**BUILTIN[n][2 if quick else 1], seed=seed) for n in names]


def _pattern(problem: Problem, x: torch.Tensor) -> tuple[str, object]:
    c = problem.constraint().to(dtype=torch.float64)
    tol = snap_tol(x, 1e-6)
    if c.linear:
        return c.structure(x, tol), None
    if c.kind == "low_rank":
        key = int((torch.linalg.svdvals(c.matrix(x)) > tol).sum())
    elif c.kind == "group_sparse":
        key = tuple((c.group_norms(x) > tol).tolist())
    else:
        key = tuple((x.abs() > tol).reshape(-1).tolist())
    return c.structure(x, tol), key


def compare(problems: Sequence[Problem], solvers: Sequence[str] = tuple(SOLVERS), device=None) -> Comparison:
    """Solve each problem with each applicable solver; gaps are relative to the best feasible objective.

    Example:
        >>> import symopt
        >>> from symopt.compare import builtin_problems, compare
        >>> rows = compare(builtin_problems(["lasso"], quick=True), solvers=["dcs", "proximal"])
        >>> rows.ok
        True
    """
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown solver(s) {unknown}; available: {sorted(SOLVERS)}")
    rows = Comparison()
    for problem in problems:
        results = []
        for name in solvers:
            try:
                results.append(SOLVERS[name](problem, device))
            except (ValueError, ImportError):
                continue  # not applicable to this family, or the package is not installed
        feasible = [r for r in results if math.isfinite(r.objective) and r.violation <= 1e-6 * max(1, r.x.norm())]
        best = min(feasible, key=lambda r: r.objective) if feasible else None
        _, best_key = _pattern(problem, best.x) if best else ("", None)
        for r in results:
            structure, key = _pattern(problem, r.x)
            gap = (r.objective - best.objective) / max(1.0, abs(best.objective)) if best else float("nan")
            rows.append(Row(problem.name, r, gap, structure, key == best_key))
    return rows
