r"""Layer 3 — the face polish of an ℓ1 penalty on entries: proximal Newton, its quadratic models
solved by an active-set method in NumPy.

For $\min_θ ℓ(θ) + λ\sum_i |θ_i|$ (the Lasso, logistic-L1, the elastic net; with $θ ≥ 0$ the
non-negative Lasso) near a point whose support DCS has roughly found, each outer iteration

1. takes the candidates $C$: the point's non-zeros and the zeros whose pull exceeds λ
   (`Constraint.dual_atoms`), and the loss's value, gradient $g$ and curvature $H$ on $C$
   (`DataTerm.curvature`: with a profiled intercept, its Schur complement);
2. solves the quadratic model $\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$
   over $C$ exactly (`solve_l1_quadratic`: feature-sign search, Lee, Battle, Raina & Ng 2006);
3. steps to its solution, backtracked on the true objective (proximal Newton: Lee, Sun & Saunders
   2014; glmnet's and skglm's outer loop), and stops when the KKT residual is below the target.

On least squares the model is the objective, and one outer iteration lands on the optimum. The
point of the split is where the work goes: a 5-iteration DCS point on standardised breast_cancer
has 28 of its 30 atoms alive where the optimum has 5, and each atom that leaves is one step of the
active set. Taken on the true objective, each step cost a curvature and one to four evaluations of
the loss over the data (a logistic evaluation solves for its intercept); on the model it costs a
few NumPy operations on a 30 × 30 matrix, and the data are read once per outer iteration.
Whatever it returns, the caller certifies by the KKT residual of the full problem.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .constraints import Constraint

_OUTER = 30  # proximal Newton iterations at most (quadratic convergence: 1 on least squares, 3-8 on the log-loss)
_BACKTRACKS = 30
_ARMIJO = 1e-4


def solve_l1_quadratic(hessian: Tensor, grad: Tensor, start: Tensor, lam: float, nonnegative: bool = False,
                       tol: float = 0.0, max_steps: int | None = None) -> Tensor:
    r"""$\arg\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$ (over $x ≥ 0$ with
    ``nonnegative``), $H$ positive semi-definite, by an active-set method from $x_0$ (``start``).

    On the face of the current point (its non-zeros with their signs $s$) the objective is the
    quadratic plus $λ s^\top x$: Newton's step there (the pseudo-inverse of $H$ on the face) is taken up
    to the first coordinate that reaches 0, which leaves the face. At the face's optimum the zero
    with the largest violation ($|∇_i| - λ$, or $-∇_i - λ$ with ``nonnegative``) joins it with the sign
    that lowers the objective, one at a time, so that every step is a descent (for one joined
    coordinate the step moves it off zero the right way); none above ``tol``: the optimum. Where $H$
    is singular on the face (more columns than the data can tell apart) and the face's gradient has a
    part along its null space, the objective is linear along it and the step follows that part to
    the first coordinate that reaches 0 (the simplex method's ratio test).

    Torch on the CPU, not NumPy: NumPy's OpenBLAS threads and torch's OpenMP threads, both busy in one
    process on two cores, made a 1 ms solve take 5–20 ms at random (measured; not with
    ``OPENBLAS_NUM_THREADS=1``).

    Args:
        hessian: $H$, ``(k, k)``.
        grad: $∇ = g$ at ``start``, ``(k,)``.
        start: $x_0$, ``(k,)`` (feasible: ≥ 0 with ``nonnegative``).
        lam: λ > 0.
        nonnegative: $x ≥ 0$.
        tol: stop when the face's gradient norm and every violation are at most this.
        max_steps: active-set steps at most (default ``10·k + 50``); the last point is returned.

    Examples:
        >>> import torch
        >>> H, g = torch.eye(2, dtype=torch.float64), torch.tensor([-3.0, 0.5], dtype=torch.float64)
        >>> solve_l1_quadratic(H, g, torch.zeros(2, dtype=torch.float64), 1.0).tolist()   # ½‖x‖² - 3x₀ + 0.5x₁ + ‖x‖₁
        [2.0, 0.0]
    """
    x = start.clone()
    k = x.shape[0]
    signs = torch.sign(x)
    free = x != 0
    face = free.nonzero().squeeze(1)
    limit = 10 * k + 50 if max_steps is None else max_steps
    for _ in range(limit):
        gradient = torch.addmv(grad, hessian, x - start)
        if face.numel():
            residual = gradient.index_select(0, face).add_(signs.index_select(0, face), alpha=lam)
        if not face.numel() or float(residual.norm()) <= tol:
            violation = ((-gradient) if nonnegative else gradient.abs()).sub_(lam).masked_fill_(free, -math.inf)
            worst, j = violation.max(0)
            if not float(worst) > tol:
                return x
            j = int(j)
            free[j] = True
            signs[j] = 1.0 if nonnegative else -torch.sign(gradient[j])
            face = free.nonzero().squeeze(1)
            continue
        step, level = _face_step(hessian.index_select(0, face).index_select(1, face), residual, tol)
        face_signs = signs.index_select(0, face)
        moving = face_signs * step
        ratios = torch.where(moving < 0, (face_signs * x.index_select(0, face)) / -moving, math.inf)
        reach = float(ratios.min())
        if level and not math.isfinite(reach):
            return x  # linear and unbounded below along the face: nothing finite to return
        t = reach if level else min(1.0, reach)
        x.index_add_(0, face, step, alpha=t)
        if t == reach:  # the coordinates that reached 0 (ties together) leave the face
            leaving = face[ratios <= reach * (1 + 1e-12)]
            x[leaving], free[leaving], signs[leaving] = 0.0, False, 0.0
            face = free.nonzero().squeeze(1)
    return x


def _face_step(block: Tensor, residual: Tensor, tol: float) -> tuple[Tensor, bool]:
    """``(step, level)`` on a face: Newton's $-H^{-1} r$ by Cholesky where the block is positive definite
    (a quarter of the time of the eigendecomposition on 40-120 coordinates, measured), else from the
    eigendecomposition: the pseudo-inverse's step, or, where ``r`` has a part above ``tol`` along the
    null space, minus that part with ``level`` True (the objective is linear along it)."""
    try:
        step = -torch.cholesky_solve(residual[:, None], torch.linalg.cholesky(block)).squeeze(1)
        slope = float(step @ residual)  # < 0 and finite: a descent step (NaN and Inf fail it)
        if slope < 0 and math.isfinite(slope):
            return step, False
    except RuntimeError:  # not positive definite: collinear columns, more of them than samples
        pass
    curvatures, vectors = torch.linalg.eigh(block)
    floor = 1e-12 * max(float(curvatures.abs().max()), 1e-300)
    seen = curvatures > floor
    flat = vectors[:, ~seen]
    along = flat @ (flat.mT @ residual)
    if float(along.norm()) > tol:
        return -along, True
    kept = vectors[:, seen]
    return -(kept @ ((kept.mT @ residual) / curvatures[seen])), False


def _candidates(constraint: Constraint, theta: Tensor, grad: Tensor, lam: float, limit: int) -> Tensor | None:
    """The entries a quadratic model is taken on: θ's non-zeros and the zeros whose pull exceeds λ,
    at most ``alive // 2 + 8`` of those (the strongest pulls: the next outer iteration takes the
    others); None when that is more than ``limit`` entries.

    The cap keeps the model's active set from building a structure one atom a step, each step a
    Cholesky factorisation of the growing face: from a working set's zero start (100 candidates,
    all pulled) that was 86 steps, and from 86 non-zeros with 114 pulled (a sub-problem of a
    1000×5000 non-negative Lasso) 0.05 s. A DCS point after a few iterations, or a path's previous
    point, has few (0 or 1 on the small real problems of `benchmarks.small_solves`)."""
    alive = theta != 0
    excess = (constraint.dual_atoms(grad).view_as(theta) - lam).masked_fill(alive, 0.0)
    pulled = excess > 0
    count = int(alive.sum())
    room = count // 2 + 8
    if int(pulled.sum()) > room:
        pulled = torch.zeros_like(pulled)
        pulled.view(-1)[torch.topk(excess.reshape(-1), room).indices] = True
    return alive | pulled if count + int(pulled.sum()) <= limit else None


def proximal_newton(loss, constraint: Constraint, point: Tensor, target: float) -> Tensor | None:
    r"""θ after proximal Newton from ``point`` (see the module docstring), or None where it does not
    apply: a kind that is not an ℓ1 norm on entries (`Constraint.entry_signs`), a loss without its
    own ``value_and_grad`` and ``curvature`` (or one that gives no curvature: several targets), or
    more than ``NEWTON_FACE`` candidates at the start. Stops when the KKT residual is below a tenth of ``target``, when a
    model's step no longer lowers the objective, or after ``_OUTER`` iterations.

    Args:
        loss: the bound loss (``value_and_grad``, ``curvature``).
        constraint: the kind and its λ.
        point: the start (a snapped point: its zeros exact).
        target: the absolute KKT residual the caller certifies against.
    """
    signs = constraint.entry_signs()
    if signs is None or getattr(loss, "value_and_grad", None) is None or getattr(loss, "curvature", None) is None:
        return None
    from .optimality import NEWTON_FACE  # (the size up to which a face's Hessian is formed)

    lam, nonnegative = float(constraint.strength), signs == "nonnegative"
    theta = point.detach().clone()
    value, grad = loss.value_and_grad(theta)
    objective = float(value) + lam * float(constraint.induced_norm(theta))
    tolerance = 0.1 * target
    for outer in range(_OUTER):
        # (the caller polishes a point above its target: the first check would only confirm it)
        if outer and constraint.kkt_residual(theta, grad) <= tolerance:
            break
        candidates = _candidates(constraint, theta, grad, lam, NEWTON_FACE)
        if candidates is None:
            return None if outer == 0 else theta  # (what the iterations so far reached: the caller certifies it)
        if not bool(candidates.any()):
            return theta  # θ = 0, and no zero is pulled off it: optimal
        hessian = loss.curvature(theta, candidates)
        if hessian is None:
            return None
        # (on the CPU in float64: k ≤ NEWTON_FACE numbers, and each step reads a few of them back)
        start = theta[candidates].to("cpu", torch.float64)
        local = grad[candidates].to("cpu", torch.float64)
        # The model's own tolerance: far below the caller's, so that on least squares (where it is
        # exact) one outer iteration is the last.
        x = solve_l1_quadratic(hessian.to("cpu", torch.float64), local, start, lam, nonnegative, 0.01 * tolerance)
        move = x - start
        decrease = float(local @ move) + lam * (float(x.abs().sum()) - float(start.abs().sum()))
        if not decrease < 0:
            break  # the model sees no descent: the point is its optimum to the model's resolution
        direction = move.to(theta.device, theta.dtype)
        full = x.to(theta.device, theta.dtype)
        rounding = 8 * torch.finfo(theta.dtype).eps * max(abs(objective), 1e-300)
        if -decrease <= rounding:
            # The model's decrease is below what the objective can resolve (raw breast_cancer's
            # logistic-L1 at a KKT residual of 1e-7: 1e-17 against an objective of 0.22): Armijo's test
            # only sees rounding there, and backtracked to t = 2e-6 six times. The model's step is
            # taken if the objective does not rise beyond rounding, and the polish ends.
            trial = theta.clone()
            trial[candidates] = full
            trial_value, trial_grad = loss.value_and_grad(trial)
            trial_objective = float(trial_value) + lam * float(constraint.induced_norm(trial))
            if trial_objective <= objective + rounding:
                theta = trial
            break
        t, accepted = 1.0, False
        for _ in range(_BACKTRACKS):
            trial = theta.clone()
            # (the full step writes the model's solution itself: its zeros exact, not 0 to rounding)
            trial[candidates] = full if t == 1.0 else theta[candidates] + t * direction
            trial_value, trial_grad = loss.value_and_grad(trial)
            trial_objective = float(trial_value) + lam * float(constraint.induced_norm(trial))
            if trial_objective <= objective + _ARMIJO * t * decrease:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        theta, grad, objective = trial, trial_grad, trial_objective
    return theta
