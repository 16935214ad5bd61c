"""Regularisation paths: one problem solved at a decreasing sequence of strengths, each solve warm
started from the previous answer (and, for the separable families, screened by it: the working set
opens with the previous support and the worst violators), every point certified."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._clock import solver_clock
from .optimality import snap_tol
from .problems import Problem
from .problems.base import Evaluations, moves_data_once
from .proximal_newton import proximal_newton
from .result import Result
from .solver import solve
from .solver.dcs import zero_if_optimal

_OK = ("optimal", "stalled")  # points a warm start may come from


@dataclass
class Path:
    """The solutions of one problem along decreasing strengths λ₁ > λ₂ > … (what
    [`symopt.path`][symopt.path] returns).

    Attributes:
        strengths: the λ values, decreasing (float64, shape ``(k,)``).
        results: one [`Result`][symopt.Result] per λ, in the same order (status, objective, KKT
            residual, the problem at that λ).
        seconds: wall time of the whole path.

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_lasso
        >>> path = symopt.path(make_lasso(n=60, d=30, nonzeros=4), n_strengths=5)
        >>> path.nonzeros[0], path.nonzeros[-1] > 0, path.coefs.shape
        (0, True, torch.Size([5, 30]))
    """

    strengths: Tensor
    results: list[Result]
    seconds: float

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Result:
        return self.results[index]

    @property
    def coefs(self) -> Tensor:
        """The solutions stacked: ``(k, *shape)``."""
        return torch.stack([r.x for r in self.results])

    @property
    def intercepts(self) -> Tensor | None:
        """The unpenalised intercepts (``(k,)`` or ``(k, T)``), or None for a problem without one."""
        values = [r.intercept for r in self.results]
        if any(v is None for v in values):
            return None
        return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])

    @property
    def statuses(self) -> list[str]:
        return [r.status for r in self.results]

    @property
    def nonzeros(self) -> list[int]:
        """Alive atoms per point (non-zero entries, groups, singular values), as the constraint counts them."""
        counts = []
        for r in self.results:
            constraint = r.problem.constraint().to(dtype=torch.float64)
            counts.append(int((constraint.atoms(r.x) > 0).sum()))
        return counts

    def certificates(self, tol: float = 1e-6) -> list:
        """[`symopt.certify`][symopt.certify] of every point: KKT residual, ``optimal``, and the duality
        gap of the families with a dual."""
        from .certify import certify

        return [certify(r, tol=tol) for r in self.results]


@moves_data_once
def path(problem: Problem, strengths: Sequence[float] | Tensor | np.ndarray | None = None, *, n_strengths: int = 100,
         eps: float = 1e-3, **solve_options) -> Path:
    r"""Solve ``problem`` along a decreasing sequence of strengths, warm starting each solve from the
    previous answer.

    Each point is ``problem.at_strength(λ)`` started from the previous point: near each other on the
    path, solutions share most of their support, so a warm start begins on the right face. Where the
    norm is ℓ1 on entries or a norm of coordinate groups and the loss gives its curvature (Lasso,
    logistic-L1, elastic net, group and multi-task Lasso), proximal Newton from that start
    (`symopt.proximal_newton`: its models take the support plus the atoms whose gradient exceeds the
    new λ) finishes the point alone, certified as `symopt.solve` certifies (KKT residual ≤ ``tol`` ×
    ‖∇loss(0)‖); otherwise, or where that does not certify, or with options other than ``tol``,
    ``max_iter``, ``inner``, ``history_size``, ``max_rounds`` and ``working_set`` (a device, float32,
    ``polish=False``, ...), the point is [`symopt.solve`][symopt.solve] with ``start=`` the previous
    point, whose working sets open with the same support and violators — a screening rule that needs
    no safe bound.

    Args:
        problem: a problem with ``at_strength`` (every penalised family: lasso, logistic_l1,
            group_lasso, multitask_lasso, matrix_completion, ...; a budget problem's λ too). Its own
            λ is ignored.
        strengths: the λ values (positive, finite; solved and returned in decreasing order). Default:
            ``n_strengths`` values evenly spaced in log from ``problem.strength_max()`` down to
            ``eps`` times it (scikit-learn's ``lasso_path`` grid).
        n_strengths: size of the default grid.
        eps: ratio of the smallest to the largest λ of the default grid, in (0, 1).
        **solve_options: passed to every [`symopt.solve`][symopt.solve] (``tol``, ``device``,
            ``dtype``, ``max_iter``, ...), except ``start``, which the path sets.

    Returns:
        Path: the strengths, one [`Result`][symopt.Result] per strength (a failed point keeps its
        status and the next one starts from the last good point), and the total time.

    Raises:
        TypeError: ``problem`` is not a [`Problem`][symopt.Problem].
        ValueError: a problem without ``at_strength``; ``strengths`` empty, not 1-d, not positive
            or not finite; a bad ``n_strengths`` or ``eps``; ``start`` among the options; a default
            grid when $∇\mathrm{loss}(0) = 0$ (θ = 0 is optimal at every λ).

    Examples:
        >>> import torch, symopt
        >>> from symopt.problems import lasso
        >>> from sklearn.datasets import load_diabetes
        >>> X, y = load_diabetes(return_X_y=True)
        >>> path = symopt.path(lasso(X, y, 1.0, fit_intercept=True), n_strengths=20, eps=1e-2)
        >>> path.nonzeros[:4], path.nonzeros[-1], set(path.statuses)
        ([0, 2, 2, 2], 8, {'optimal'})
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"path: expected a symopt.Problem, got {type(problem).__name__}")
    if problem.at_strength is None:
        raise ValueError(f"path: '{problem.name}' cannot be re-solved at another λ (no at_strength); build it "
                         "with a penalised family (symopt.problems.lasso, logistic_l1, group_lasso, ...)")
    if "start" in solve_options:
        raise ValueError("path: start= is set by the path (each point starts from the previous one); drop it")
    grid = _grid(problem, strengths, n_strengths, eps)
    began = solver_clock()
    results, start = [], None
    evaluations = Evaluations()  # the points share their data: each starts at the gradient the last ended at
    lean = _LeanPoints.applies(solve_options)
    for lam in grid.tolist():
        point = problem.at_strength(lam)
        point.evaluations = evaluations
        result = None
        if lean is not None:
            result = lean.solve(point, start)
        if result is None:
            result = solve(point, start=start, **solve_options)
        results.append(result)
        if result.status in _OK:
            start = result.x
    return Path(grid, results, solver_clock() - began)


class _LeanPoints:
    r"""A warm-started point of a path finished by proximal Newton alone, without `symopt.solve`'s
    machinery around it.

    Along a path the previous solution has its successor's support, or nearly, and a warm-started
    `solve` ends in the same place every time: the certifier polishes the start by proximal Newton
    (`symopt.proximal_newton`) and accepts it, with no descent. What a solve builds around that
    (its options checked, its constraint built two or three times, working-set bookkeeping, a
    second snap) cost about as much as the polish itself on a 50-point Lasso path of 500×2000, and
    nearly all of a point on a small design (LassoCV on diabetes: ~1 ms a point). Here the polish runs
    directly and its point is certified by the same rule, the KKT residual of the full problem at
    most ``tol`` × ‖∇loss(0)‖ (the loss does not depend on λ, so that scale is computed once);
    a point it does not certify (proximal Newton does not apply, or stops short) goes to
    `symopt.solve` from the same start, as before. The path's first point starts from θ = 0, after
    the same exact check of λ ≥ λ_max that `solve` makes.
    """

    # The options under which a solve on the CPU in float64 with the polish on is what `solve` would
    # run; any other option (a device, float32, polish=False, a method, compile) takes `solve` itself.
    _NEUTRAL = {"tol", "max_iter", "inner", "history_size", "max_rounds", "working_set"}

    def __init__(self, tol: float) -> None:
        self.tol = tol
        self.scale: float | None = None  # ‖∇loss(0)‖, the scale of the relative tolerance

    @classmethod
    def applies(cls, solve_options: dict) -> "_LeanPoints | None":
        if not set(solve_options) <= cls._NEUTRAL or solve_options.get("working_set") is True:
            return None
        tol = solve_options.get("tol", 1e-6)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol > 0 and math.isfinite(tol)):
            return None  # (solve names the bad option)
        return cls(float(tol))

    def solve(self, point: Problem, start: Tensor | None) -> Result | None:
        """The certified point at ``point``'s λ from ``start`` (None: θ = 0, the path's first point),
        or None (then `symopt.solve` runs)."""
        began = solver_clock()
        constraint = point.constraint()
        if constraint.budget is not None or constraint.linear or not point.penalized or constraint.strength is None:
            return None
        constraint = constraint.to(dtype=torch.float64)
        loss = point.bind(point.data_on(torch.device("cpu"), torch.float64))
        if loss.value_and_grad is None or loss.curvature is None:
            return None
        from_neighbour = start is not None  # (the previous point of the path: see `proximal_newton`)
        if start is None:
            # θ = 0 where it is exactly optimal (λ ≥ λ_max), checked as `solve` checks it: its zeros
            # are exact there, where a model's step could leave an atom of 1e-17 at λ = λ_max
            zero, _ = zero_if_optimal(point, constraint, torch.device("cpu"), "auto")
            if zero is not None:
                return zero
            start, origin = torch.zeros(point.shape, dtype=torch.float64), "θ = 0"
        else:
            start, origin = start.detach().to("cpu", torch.float64), "the previous point of the path"
        try:
            if self.scale is None:
                _, grad0 = loss.value_and_grad(torch.zeros_like(start))
                self.scale = max(float(grad0.norm()), 1e-12)
            target = self.tol * self.scale
            # To a thousandth of the target, as the certifier finishes a point that is within it: the
            # tolerance is relative to ‖∇loss(0)‖, which on raw columns lets an atom of a small-scale
            # column sit far from its value (`Certifier.certify`).
            theta = proximal_newton(loss, constraint, start, 1e-3 * target, from_neighbour=from_neighbour)
            if theta is None:
                return None
            value, grad = loss.value_and_grad(theta)
            kkt = constraint.kkt_residual(theta, grad, snap_tol(theta, self.tol))
        except RuntimeError:  # a linear-algebra failure: solve meets it and reports it
            return None
        objective = float(value) + float(constraint.objective_term(theta))
        if not (kkt <= target and math.isfinite(objective)):
            return None
        seconds = solver_clock() - began
        return Result.from_point(point, theta, solver="dcs", status="optimal", seconds=seconds,
                                 history=[(seconds, objective, kkt)], device="cpu",
                                 message=f"KKT residual below tolerance after proximal Newton from {origin} "
                                         "(no descent)",
                                 strength=constraint.strength, objective=objective, constraint=constraint)


def _grid(problem: Problem, strengths, n_strengths: int, eps: float) -> Tensor:
    if strengths is None:
        if isinstance(n_strengths, bool) or not isinstance(n_strengths, int) or n_strengths < 1:
            raise ValueError(f"path: n_strengths={n_strengths!r} must be an int >= 1")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"path: eps={eps!r} must be in (0, 1) (the smallest λ over the largest)")
        top = problem.strength_max()
        if not top > 0:
            raise ValueError(f"path: ∇loss(0) = 0 for '{problem.name}': θ = 0 is optimal at every λ; pass strengths=")
        return torch.from_numpy(top * np.geomspace(1.0, eps, n_strengths))
    try:
        grid = torch.as_tensor(np.asarray(strengths, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"path: strengths must be a 1-d sequence of positive numbers, got {strengths!r}") from err
    if grid.dim() != 1 or grid.numel() == 0:
        raise ValueError(f"path: strengths must be a non-empty 1-d sequence, got shape {tuple(grid.shape)}")
    if not bool(torch.isfinite(grid).all()) or not bool((grid > 0).all()):
        bad = [v for v in grid.tolist() if not (math.isfinite(v) and v > 0)]
        raise ValueError(f"path: every strength must be positive and finite, got {bad[:3]}")
    return torch.sort(grid, descending=True).values
