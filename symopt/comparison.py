"""Layer 5 — run DCS and the independent baselines on the same problems; tables and plots."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._format import readable_log_axes, table
from .baselines import solve_cvxpy, solve_geoopt, solve_proximal, solve_skglm, solve_sklearn, solve_softimpute
from .optimality import snap_tol
from .problems import (Problem, make_equality_ls, make_fixed_zeros_ls, make_group_lasso, make_lasso,
                       make_logistic_l1, make_low_rank_regression, make_matrix_completion, make_tied_least_squares)
from .result import NotApplicable, Result
from .solver import solve
from ._clock import warm_up

# name -> (generator, kwargs per size)
BUILTIN: dict[str, tuple[Callable[..., Problem], dict[str, dict]]] = {
    "lasso": (make_lasso, {"quick": dict(n=100, d=200, nonzeros=5), "default": dict(n=500, d=2000, nonzeros=20)}),
    "group_lasso": (make_group_lasso, {"quick": dict(n=100, d=200, group_size=4),
                                       "default": dict(n=500, d=1000, group_size=5)}),
    "logistic_l1": (make_logistic_l1, {"quick": dict(n=200, d=50), "default": dict(n=500, d=300)}),
    "equality_ls": (make_equality_ls, {"quick": dict(n=100, d=50, constraints=5),
                                       "default": dict(n=500, d=300, constraints=30)}),
    "fixed_zeros_ls": (make_fixed_zeros_ls, {"quick": dict(n=100, d=50, zeros=10),
                                             "default": dict(n=500, d=300, zeros=60)}),
    "tied_ls": (make_tied_least_squares, {"quick": dict(tasks=3, n=60, d=20),
                                          "default": dict(tasks=4, n=200, d=100)}),
    "matrix_completion": (make_matrix_completion, {"quick": dict(m=20, n=15, rank=2), "default": dict(m=40, n=30)}),
    "low_rank_regression": (make_low_rank_regression, {"quick": dict(n=100, p=15, q=10, rank=2),
                                                       "default": dict(n=300, p=40, q=30, rank=3)}),
    "hard_rank": (make_low_rank_regression, {"quick": dict(n=100, p=15, q=10, rank=2, hard_rank=2),
                                             "default": dict(n=300, p=40, q=30, rank=3, hard_rank=3)}),
}
SIZES = ("quick", "default")

SOLVERS: dict[str, Callable[..., Result]] = {
    "dcs": lambda p, device, dtype: solve(p, device=device, dtype=dtype),
    "cvxpy": lambda p, device, dtype: solve_cvxpy(p),
    "sklearn": lambda p, device, dtype: solve_sklearn(p),
    "projected": lambda p, device, dtype: solve_proximal(p, device=device, dtype=dtype),
    "geoopt": lambda p, device, dtype: solve_geoopt(p, device=device, dtype=dtype),
    "softimpute": lambda p, device, dtype: solve_softimpute(p, device=device, dtype=dtype),
}


@dataclass(frozen=True)
class Row:
    problem: str
    solver: str
    result: Result | None  # None: the solver does not apply to this problem
    gap: float  # (objective − best feasible objective) / max(1, |best|)
    structure: str
    agrees: bool | None  # same support / rank as the best solver's answer
    best: float = float("nan")  # best feasible objective on this problem
    note: str = ""


class Comparison(list):
    """Rows of a comparison: prints as a table; ``to_markdown``, ``to_dict``, ``plot``."""

    HEADERS = ["problem", "solver", "status", "objective", "rel. gap", "violation", "structure", "same",
               "iters", "seconds", "device"]

    def _cells(self, r: Row) -> list[str]:
        if r.result is None:
            return [r.problem, r.solver, f"n/a: {r.note}", "", "", "", "", "", "", "", ""]
        res = r.result
        return [r.problem, res.solver, res.status, f"{res.objective:.10g}", f"{r.gap:.1e}", f"{res.violation:.1e}",
                r.structure, {True: "yes", False: "NO", None: "?"}[r.agrees], str(res.iterations),
                f"{res.seconds:.3f}", res.device]

    def __str__(self) -> str:
        return table(self.HEADERS, [self._cells(r) for r in self])

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADERS) + " |", "|" + "---|" * len(self.HEADERS)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self]
        return "\n".join(lines)

    def to_dict(self) -> list[dict]:
        out = []
        for r in self:
            entry = {"problem": r.problem, "solver": r.solver, "applicable": r.result is not None}
            if r.result is not None:
                res = r.result
                entry.update(status=res.status, objective=res.objective, gap=r.gap, violation=res.violation,
                             kkt_residual=res.kkt_residual, structure=r.structure, agrees=r.agrees,
                             iterations=res.iterations, seconds=res.seconds, device=res.device)
            else:
                entry["note"] = r.note
            out.append(entry)
        return out

    @property
    def ok(self) -> bool:
        """Every DCS row is within 1e-6 relative gap of the best and agrees on the structure."""
        return all(r.gap <= 1e-6 and r.agrees for r in self if r.solver == "dcs" and r.result is not None)

    def plot(self, folder) -> list:
        """One PNG per problem: relative objective gap vs seconds per solver (log-log). Needs matplotlib."""
        import pathlib

        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover
            raise ImportError("plots need matplotlib: pip install 'symopt[plots]'") from err
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for problem in dict.fromkeys(r.problem for r in self):
            rows = [r for r in self if r.problem == problem and r.result is not None]
            best = rows[0].best if rows else 0.0
            fig, ax = plt.subplots(figsize=(6, 4))
            for r in rows:
                res = r.result
                points = res.history or [(res.seconds, res.objective, float("nan"))]
                xs = [max(t, 1e-6) for t, _, _ in points]
                ys = [max((obj - best) / max(1.0, abs(best)), 1e-16) for _, obj, _ in points]
                ax.plot(xs, ys, marker="o" if len(xs) <= 10 else None, markersize=4, label=res.solver)
            ax.set(xscale="log", yscale="log", xlabel="seconds", ylabel="relative objective gap", title=problem)
            readable_log_axes(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = folder / (problem.replace(" ", "_").replace("/", "-").replace(",", "") + ".png")
            fig.savefig(path, dpi=200)  # 2× for page-width display
            plt.close(fig)
            paths.append(path)
        return paths


def builtin_problems(names: Sequence[str] | None = None, quick: bool = False, seed: int = 0,
                     size: str | None = None) -> list[Problem]:
    """The built-in suite (or the named families) at ``size`` ``"quick"`` or ``"default"``."""
    size = size or ("quick" if quick else "default")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    names = list(names or BUILTIN)
    unknown = [n for n in names if n not in BUILTIN]
    if unknown:
        raise ValueError(f"unknown problem(s) {unknown}; built-in: {sorted(BUILTIN)}")
    return [BUILTIN[n][0](**BUILTIN[n][1][size], seed=seed) for n in names]


def structure_of(problem: Problem, x: torch.Tensor) -> tuple[str, object]:
    """``(description, key)`` of x's structure at the snap tolerance: equal keys mean the same
    support (entries, groups) or rank; linear kinds have no key (their set is fixed)."""
    c = problem.constraint().to(dtype=torch.float64)
    tol = snap_tol(x, 1e-6)
    return c.structure(x, tol), c.structure_key(x, tol)


def _compile_skglm() -> None:
    """The sklearn row of a group lasso is skglm's, whose numba kernels compile on their first fit
    in a process (~9 s here): pay that untimed on a 4-variable problem, as for torch above."""
    try:
        solve_skglm(make_group_lasso(n=8, d=4, group_size=2, active_groups=1))
    except ImportError:  # no skglm: the row will say so
        pass


def compare(problems: Problem | Sequence[Problem], solvers: Sequence[str] = tuple(SOLVERS), device=None,
            dtype=torch.float64, progress: Callable[[str], None] | None = None) -> Comparison:
    r"""Solve each problem with each solver; gaps are relative to the best feasible objective, and
    solvers that do not apply get a "not applicable" row.

    Per row: status, objective, relative gap $(f - f_{\text{best}})/\max(1, |f_{\text{best}}|)$ to the best
    feasible objective of any solver on that problem, violation, the support / rank found and
    whether it equals the best solver's (``same``), iterations and seconds. ``rows.ok`` is True
    when every DCS row is within 1e-6 relative gap of the best and agrees on the structure.

    Args:
        problems: one [`Problem`][symopt.Problem] or a list of them.
        solvers: names from ``symopt.comparison.SOLVERS``: ``"dcs"``, ``"cvxpy"``, ``"sklearn"``,
            ``"projected"``, ``"geoopt"``, ``"softimpute"`` (skglm is in the benchmarks, not here).
        device: where the torch solvers run (DCS, projected, geoopt, softimpute).
        dtype: their precision.
        progress: optional callback given one line per solve (e.g. ``print``).

    Returns:
        Comparison: a list of rows that prints as the table of ``symopt compare``.

    Raises:
        ValueError: an unknown solver name. A missing optional package or a solver without a
            method for a problem is not an error: its row says ``n/a`` and why.

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> rows = symopt.compare(make_lasso(n=50, d=80, nonzeros=3), solvers=["dcs", "projected"])
        >>> rows.ok
        True
    """
    if isinstance(problems, Problem):
        problems = [problems]
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown solver(s) {unknown}; available: {sorted(SOLVERS)}")
    # The first torch optimizer built in a process imports torch._dynamo: pay it here, untimed,
    # instead of inside whichever solver happens to run first.
    warm_up()
    if "sklearn" in solvers and any(p.meta.get("family") == "group_lasso" for p in problems):
        _compile_skglm()
    rows = Comparison()
    total, done = len(problems) * len(solvers), 0
    for problem in problems:
        results: list[tuple[str, Result | None, str]] = []
        for name in solvers:
            done += 1
            if progress:
                progress(f"[{done}/{total}] {problem.name}: {name}")
            try:
                results.append((name, SOLVERS[name](problem, device, dtype), ""))
            except (NotApplicable, ImportError) as err:
                results.append((name, None, str(err)))
        solved = [r for _, r, _ in results if r is not None]
        feasible = [r for r in solved if math.isfinite(r.objective) and r.violation <= 1e-6 * max(1, r.x.norm())]
        best = min(feasible, key=lambda r: r.objective) if feasible else None
        _, best_key = structure_of(problem, best.x) if best else ("", None)
        for name, r, note in results:
            if r is None:
                rows.append(Row(problem.name, name, None, float("nan"), "", None, note=note))
                continue
            structure, key = structure_of(problem, r.x)
            gap = (r.objective - best.objective) / max(1.0, abs(best.objective)) if best else float("nan")
            rows.append(Row(problem.name, name, r, gap, structure, key == best_key,
                            best.objective if best else float("nan")))
    return rows
