"""Layer 3 — optimality measures shared by solvers and baselines: the snap tolerance and the KKT
residual of a problem at a point."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .constraints import Constraint
from .constraints.base import Face

# A face with at most this many coordinates is always polished: its L-BFGS solve costs about
# max_iter loss evaluations whatever the point's structure. Working-set sub-problems (100 to a few
# thousand coordinates) often have over half of them alive, and without the polish their descent
# took 7 outer rounds instead of 1 (Lasso 1000×5000: 0.20 s → 0.06 s).
SMALL_FACE = 2000
_FACE_ROUNDS = 6  # face solves at most per polish: atoms that cross 0 drop out, violators join, between them
# Faces with at most this many free coordinates are solved by Newton's method first (the Hessian by
# autograd, vectorised): one step is exact on a quadratic face (least squares), a few on the
# log-loss, where L-BFGS took ~20 evaluations (measured: a 50-point Lasso path 500×2000 spent half
# its time in face polishes).
NEWTON_FACE = 256
_NEWTON_STEPS = 8
# Newton steps at most in one active-set polish (each adds, drops or converges on a face)
_ACTIVE_SET_STEPS = 100
_PROX_STEPS = 50  # proximal-gradient steps at most per finish (proximal_finish)
_PROX_CHECK = 5  # steps between its KKT checks (each a full SVD of the iterate and of the normal part)


def snap_tol(theta: Tensor, tol: float) -> float:
    r"""Zeros arrive geometrically under DCS (and to rounding under SVT), never exactly: entries,
    groups or singular values below $\max(√\mathrm{eps}, \mathrm{tol})$ of the largest count as zero. Safe for
    certification, because the KKT residual is evaluated at the snapped point."""
    return max(math.sqrt(torch.finfo(theta.dtype).eps), tol) * max(1e-12, float(theta.abs().max()))


def loss_gradient(loss: Callable[[Tensor], Tensor], point: Tensor) -> Tensor:
    r"""$∇\mathrm{loss}(\mathrm{point})$: the loss's own ``value_and_grad`` where it has one (a
    `symopt.problems.BoundLoss` of a GLM data term), else autograd on a detached view of ``point``
    (the caller's tensor is untouched)."""
    return value_and_gradient(loss, point)[1]


def value_and_gradient(loss: Callable[[Tensor], Tensor], point: Tensor) -> tuple[Tensor, Tensor]:
    r"""$(\mathrm{loss}(\mathrm{point}), ∇\mathrm{loss}(\mathrm{point}))$, the value detached: the loss's own
    ``value_and_grad`` where it has one, else autograd on a detached view of ``point``."""
    analytic = getattr(loss, "value_and_grad", None)
    if analytic is not None:
        return analytic(point.detach())
    probe = point.detach().requires_grad_()
    with torch.enable_grad():
        value = loss(probe)
        (grad,) = torch.autograd.grad(value, probe)
    return value.detach(), grad


def kkt_at_snap(loss: Callable[[Tensor], Tensor], constraint: Constraint, theta: Tensor,
                tol: float, levels: int = 5, quick: bool = False) -> tuple[Tensor, float]:
    r"""``(snapped θ, KKT residual there)`` for $\mathrm{minimise} \mathrm{loss}(θ) + λ‖θ‖$ (or s.t. θ ∈ set).

    DCS drives an entry that belongs at zero to zero geometrically, slowly when its gradient sits
    just below λ. Snapping at ``snap_tol`` and at up to $\mathrm{levels} - 1$ tenfold larger thresholds, the
    point with the smallest residual is returned: the residual certifies the point returned, however
    it was obtained. Linear kinds project exactly, so one level suffices. ``quick`` is passed to
    ``kkt_residual`` (an estimate that may fall short: confirm with ``quick=False``).
    """
    cut = snap_tol(theta, tol)
    best = None
    sizes = None
    if not constraint.linear:
        try:
            sizes = constraint.atoms(theta.detach())
        except NotImplementedError:  # a kind without atoms: every level is tried
            sizes = None
    alive = None
    for level in range(1 if constraint.linear else levels):
        if sizes is not None:  # a level that zeroes no further atom gives the same point: skip it
            count = int((sizes > cut * 10**level).sum())
            if count == alive:
                continue
            alive = count
        point = constraint.project(theta.detach(), cut * 10**level)
        residual = constraint.kkt_residual(point, loss_gradient(loss, point), cut * 10**level, quick=quick)
        if best is None or residual < best[1]:
            best = (point, residual)
    return best


def polish_on_face(loss: Callable[[Tensor], Tensor], constraint: Constraint, point: Tensor, tol: float,
                   target: float, max_iter: int = 20, quick: bool = False,
                   active_set_only: bool = False) -> tuple[Tensor, float] | None:
    r"""``(point', KKT residual there)`` after minimising $\mathrm{loss} + λ‖·‖$ on the face of ``point``.

    Near a solution DCS has found the structure (support, alive groups, rank) long before its
    values are accurate: the entries that belong at zero shrink geometrically, slowest where their
    gradient is close to λ. On the face of the point (`Constraint.face`) the problem is smooth, and
    L-BFGS with a strong-Wolfe line search solves it in a few iterations. An atom that crosses 0
    on the way (`Face.crossed`: it was leaving the structure) is set to 0 and the smaller face is
    solved again, up to three face solves in all. Nothing is trusted: the
    result is snapped and certified by the KKT residual of the full problem, like any other point,
    and the caller keeps whichever residual is smaller. None when the kind has no face, or the
    solve fails (a NaN, a linear-algebra error), or the face of a penalty kind has over half as many
    coordinates as θ has entries and more than ``SMALL_FACE`` (the structure is not found yet, and
    the face solve would cost as much as the descent). A linear kind's face is its constraint set,
    known from the start.

    Args:
        loss: the smooth loss ℓ(θ).
        constraint: the kind and its λ.
        point: a snapped point (e.g. from [`kkt_at_snap`][symopt.optimality.kkt_at_snap]).
        tol: the relative snap tolerance (see [`snap_tol`][symopt.optimality.snap_tol]).
        target: the absolute KKT residual the caller stops at; the face solve stops at a tenth of it.
        max_iter: L-BFGS iterations at most (about as many loss evaluations).
        quick: measure the residual with ``kkt_residual(quick=True)`` (see there).
        active_set_only: polish only where the active-set Newton method applies (None elsewhere):
            the certifier's finish of a point already within tolerance.
    """
    grad = loss_gradient(loss, point)  # lets atoms the descent left at 0 enter the face
    snap = snap_tol(point, tol)
    face = constraint.face(point, snap, grad)
    if face is None:
        return None
    free = sum(t.numel() for t in face.start)
    if free > max(point.numel() // 2, SMALL_FACE) and not constraint.linear:  # structure not found (rank 177 of 200)
        return None
    if _active_set_applies(loss, face, free):
        try:
            theta = _active_set_newton(loss, constraint, face, snap, target)
            if theta is not None and bool(torch.isfinite(theta).all()):
                polished, residual = kkt_at_snap(loss, constraint, theta, tol, levels=1, quick=quick)
                if math.isfinite(residual):
                    return polished, residual
        except RuntimeError:  # a linear-algebra error: the general face solve below tries
            pass
    if active_set_only:
        return None
    try:
        for _ in range(_FACE_ROUNDS):
            theta, dropped = _solve_on_face(loss, constraint.strength, face, free, target, max_iter)
            if not bool(torch.isfinite(theta).all()):
                return None
            if dropped is None or not bool(dropped.any()):
                # Atoms that the face's optimum pulls in (their gradient there exceeds λ) join, and
                # the larger face is solved: an active-set step, so the descent need not find the
                # last atoms of the structure itself (they are the slow ones: the nearly active).
                wider = constraint.face(theta, snap, loss_gradient(loss, theta))
                joined = sum(t.numel() for t in wider.start)
                if joined <= free or joined > NEWTON_FACE:
                    break
                face, free = wider, joined
                continue
            # atoms that crossed 0 leave: polish again on the face of the point without them
            theta = theta.masked_fill(dropped, 0.0)
            face = constraint.face(theta, snap)
            free = sum(t.numel() for t in face.start)
            if free == 0:  # every atom left: θ = 0 is the point to certify
                break
        polished, residual = kkt_at_snap(loss, constraint, theta, tol, levels=1, quick=quick)
    except RuntimeError:  # e.g. an SVD or a loss meeting NaN on the way
        return None
    return (polished, residual) if math.isfinite(residual) else None


def proximal_finish(loss: Callable[[Tensor], Tensor], constraint: Constraint, point: Tensor, tol: float,
                    target: float, steps: int = _PROX_STEPS) -> tuple[Tensor, float] | None:
    r"""``(point', KKT residual there)`` after accelerated proximal-gradient steps from ``point``, for a
    kind that `Constraint.finishes_by_prox` (nuclear norm): the step its face polish cannot take.

    A low-rank face takes no new direction, and a new singular value put on a face with a small value
    makes it ill-conditioned (the norm's curvature there is of order λ/σ), so a point one small
    singular value short of the optimum waited for the factored descent to grow it, geometrically
    (china.jpg completion at 0.02 λ_max: 40 outer iterations). The proximal step
    $x^+ = \mathrm{prox}_{tλ}(y - t∇\mathrm{loss}(y))$ sets singular values on and off exactly. FISTA
    (Beck & Teboulle 2009) with a backtracked step — $t$, from 1 (the Lipschitz constant of
    completion's loss, and about that of standardised least squares), halves until
    $\mathrm{loss}(x^+) ≤ \mathrm{loss}(y) + ⟨∇\mathrm{loss}(y), x^+ - y⟩ + ‖x^+ - y‖^2 / (2t)$ — and the
    gradient restart of O'Donoghue & Candès (2015). Every ``_PROX_CHECK`` steps the iterate is
    snapped and certified by the full KKT residual, like any other point; the first below ``target``
    is returned, else the lowest seen; None when no check was made (a NaN, a linear-algebra error).
    In a one-off script, from the descent's point after 13 outer iterations on china.jpg, 5 steps
    reached the target (0.2 s) where the descent took 29 more outer iterations; from its second, 35.
    """
    x = point.detach().clone()
    y, momentum, t, best = x.clone(), 1.0, 1.0, None
    try:
        for k in range(1, steps + 1):
            value, grad = value_and_gradient(loss, y)
            value = float(value)
            for _ in range(40):  # backtracking
                trial = constraint.prox(y - t * grad, t)
                move = trial - y
                bound = value + float((grad * move).sum()) + float(move.square().sum()) / (2 * t)
                if float(loss(trial)) <= bound + 1e-12 * abs(bound):
                    break
                t *= 0.5
            else:
                return best
            following = 0.5 * (1 + math.sqrt(1 + 4 * momentum * momentum))
            if float(((y - trial) * (trial - x)).sum()) > 0:  # the momentum points uphill: restart
                y, following = trial.clone(), 1.0
            else:
                y = trial + ((momentum - 1) / following) * (trial - x)
            x, momentum = trial, following
            if k % _PROX_CHECK == 0 or k == steps:
                checked = kkt_at_snap(loss, constraint, x, tol, levels=1)
                if not math.isfinite(checked[1]):
                    return best
                if best is None or checked[1] < best[1]:
                    best = checked
                if checked[1] <= target:
                    return best
    except RuntimeError:  # an SVD meeting NaN: what was certified stands
        return best
    return best


def _active_set_applies(loss, face: Face, free: int) -> bool:
    """Whether `_active_set_newton` can polish on ``face``: an entry face with a `Face.reach` (a linear
    norm), no more than ``NEWTON_FACE`` coordinates, and a loss that gives its gradient and its
    curvature itself (a GLM data term; the rest differentiate through autograd below)."""
    return (face.reach is not None and face.mask is not None and len(face.start) == 1 and free <= NEWTON_FACE
            and getattr(loss, "value_and_grad", None) is not None and getattr(loss, "curvature", None) is not None)


def _active_set_newton(loss, constraint: Constraint, face: Face, snap: float, target: float,
                       steps: int = _ACTIVE_SET_STEPS) -> Tensor | None:
    r"""θ after an active-set Newton method on the entry faces of $\mathrm{loss}(θ) + λ‖θ‖$ (feature-sign
    search, Lee, Battle, Raina & Ng 2006, with the loss's own curvature in place of a quadratic).

    On a face the norm is linear, $λ\sum_i s_i z_i$, so Newton's step on $\mathrm{loss} + λ s^\top z$ uses the
    loss's Hessian alone. Each step stops where the first coordinate reaches 0 (`Face.reach`):
    along the segment the face objective *is* the true one, and it is convex, so a backtracked step
    never increases the true objective. That coordinate leaves the face. When the face's gradient is
    below a tenth of ``target`` (its optimum), the zeros whose gradient exceeds λ join with the
    sign that lowers the objective (`Constraint.face` with the gradient), and the wider face is
    solved; with none, θ is returned. None when the loss gives no curvature. Whatever θ it returns
    (also when a step is no descent, or a joined atom is thrown straight out on its own) is
    certified by the caller's KKT residual of the full problem, so a stop after ``steps`` Newton
    steps is safe, only less useful.

    Args:
        loss: the bound loss, with ``value_and_grad`` and ``curvature``.
        constraint: the kind and its λ; asked for each new face (`Constraint.face`).
        face: the start's face, with ``reach`` and ``mask``.
        snap: the snap threshold (`snap_tol`) faces are taken at.
        target: the absolute KKT residual the caller stops at; a face counts as solved when its
            gradient is below a tenth of it.

    Where the old polish took the face's optimum and then dropped every atom that had crossed 0 at
    once (19 of 30 on standardised breast_cancer at 0.01 λ_max, then 6 face solves that ended 2 atoms
    short), this keeps the objective on the face where it is exact.
    """
    lam = constraint.strength
    tolerance = 0.1 * target
    z, pull = _coordinates(face)
    theta, loss_grad, objective = _evaluate(loss, lam, face, z)
    widened = False  # whether the zeros of the face joined it at its smaller face's optimum
    for _ in range(steps):
        grad = loss_grad[face.mask] + lam * pull
        if z.numel() == 0 or float(grad.norm()) <= tolerance:  # the face's optimum: violators join
            wider = constraint.face(theta, snap, loss_grad)
            if wider.mask is None or not bool((wider.mask & ~face.mask).any()) or int(wider.mask.sum()) > NEWTON_FACE:
                return theta
            face, widened = wider, True
            z, pull = _coordinates(face)
            continue
        hessian = loss.curvature(theta, face.mask)
        if hessian is None:
            return None
        step, level = _face_step(hessian, grad, tolerance)
        slope = float(step @ grad)  # the objective falls at rate `slope` along −step
        if not (slope > 0 and math.isfinite(slope)):
            return theta
        reach = face.reach(z, -step)
        limit = float(reach.min())
        if limit <= 0:  # a joined atom (still at 0) would leave at once: Newton's step sends it the wrong way
            joined = face.mask & (theta == 0)
            if not widened:  # joined with the start, away from any face's optimum: solve without them first
                face = constraint.face(theta, snap)
            elif int(joined.sum()) > 1:
                # Several violators joined a face's optimum together: one at a time is a descent
                # there (it enters with the sign its gradient asks for), several together need not
                # be and can cycle (14 atoms + 3, all 3 out again, on breast_cancer). The worst one
                # joins alone: every other zero is shown a zero gradient, so the face admits no other.
                others = theta == 0
                others.view(-1)[int(loss_grad.abs().masked_fill(~joined, -1.0).argmax())] = False
                face = constraint.face(theta, snap, loss_grad.masked_fill(others, 0.0))
            else:
                return theta  # (not on a quadratic: nothing smaller to try, the descent goes on from here)
            z, pull = _coordinates(face)
            continue
        widened = False
        if level and not math.isfinite(limit):
            return theta  # (a loss unbounded below along the face: nothing to polish)
        t, accepted = (limit, False) if level else (min(1.0, limit), False)
        for _ in range(30):  # backtracking from the full step, or from where the first atom reaches 0
            trial = z - t * step
            trial_theta, trial_grad, trial_objective = _evaluate(loss, lam, face, trial)
            if trial_objective <= objective - 1e-4 * t * slope or (t == limit and trial_objective <= objective):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            return theta
        leaving = reach <= limit * (1 + 1e-12) if t == limit else None  # (ties leave together)
        if limit < 1 and not level:
            jump = _projected_arc(loss, lam, face, z, step, reach, limit, trial_objective)
            if jump is not None:
                trial, leaving, trial_theta, trial_grad, trial_objective = jump
        if leaving is None and objective - trial_objective <= 4 * torch.finfo(z.dtype).eps * abs(objective):
            return trial_theta  # a full step that no longer lowers the objective: the face's optimum to rounding
        z, theta, loss_grad, objective = trial, trial_theta, trial_grad, trial_objective
        if leaving is not None:  # the atoms that reached 0 leave: the smaller face, from θ with them at exactly 0
            if bool(z[leaving].any()):  # (the first crossing's atoms are 0 to rounding; the arc's exactly)
                z = z.masked_fill(leaving, 0.0)
                theta, loss_grad, objective = _evaluate(loss, lam, face, z)
            face = constraint.face(theta, snap)
            z, pull = _coordinates(face)
    return theta


def _coordinates(face: Face) -> tuple[Tensor, Tensor]:
    """A face's start coordinates (a copy) and its norm's gradient there (constant on a linear face)."""
    z = face.start[0].detach().clone()
    return z, _norm_gradient(face, z)


def _evaluate(loss, lam: float, face: Face, z: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(θ, ∇loss(θ), loss(θ) + λ·norm(z))`` at the face coordinates ``z``."""
    theta = face.embed(z)
    value, grad = loss.value_and_grad(theta)
    return theta, grad, float(value) + lam * float(face.norm(z))


def _face_step(hessian: Tensor, grad: Tensor, tolerance: float) -> tuple[Tensor, bool]:
    """``(step, level)``: Newton's step $H^+ g$ on the face (the pseudo-inverse: a direction of zero
    curvature, from collinear columns, gets no Newton step), or, where the gradient along the zero
    curvature directions exceeds ``tolerance``, that part of the gradient with ``level`` True.

    A face wider than the data can tell apart (n ≪ d at a tiny λ: more atoms than the rank of X) is
    flat along those directions for the loss, and there the face objective is linear, λ·sᵀz falling
    at rate ‖part‖², so Newton's step never zeroes that part of the gradient. The caller goes along
    it to the first atom that reaches 0 (the simplex method's ratio test), and that atom leaves."""
    curvatures, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.mT))
    seen = curvatures > 1e-12 * max(float(curvatures.abs().max()), 1e-300)
    if bool(seen.all()):  # (the usual case: no boolean indexing, a tenth of a small polish)
        return vectors @ ((vectors.mT @ grad) / curvatures), False
    along = vectors[:, ~seen] @ (vectors[:, ~seen].mT @ grad)
    if float(along.norm()) > tolerance:
        return along, True
    return vectors[:, seen] @ ((vectors[:, seen].mT @ grad) / curvatures[seen]), False


def _projected_arc(loss, lam: float, face: Face, z: Tensor, step: Tensor, reach: Tensor, limit: float,
                   beat: float):
    """A longer step than the first crossing: ``(coordinates, leaving, θ, ∇loss, objective)`` at the
    first of 1, 1/4, 1/16 of Newton's step (beyond ``limit``) whose objective, with every atom that
    crossed 0 set to 0, is below ``beat``; None if none is.

    Many atoms may cross before the Newton point, and one leaving per step costs a Newton step each
    (23 steps from a 5-iteration DCS point's 28 atoms to the 5 of logistic-L1 on breast_cancer). The
    projected arc (an orthant projection, Bertsekas 1982) also lies on the true objective, so its
    point is as good a point as any, and all its crossed atoms leave at once."""
    length = 1.0
    while length > max(limit, 1e-2):
        crossing = reach < length
        jump = (z - length * step).masked_fill(crossing, 0.0)
        theta, grad, objective = _evaluate(loss, lam, face, jump)
        if objective < beat:
            return jump, crossing, theta, grad, objective
        length *= 0.25
    return None


def _norm_gradient(face: Face, z: Tensor) -> Tensor:
    """∇ of the face's norm in its coordinates (constant on a linear face)."""
    if z.numel() == 0:
        return z
    if face.slope is not None:
        return face.slope.to(z.dtype)
    probe = z.detach().requires_grad_()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(face.norm(probe), probe)
    return grad


def _newton_on_face(objective, start: list[Tensor], tolerance: float,
                    second: Callable[[Tensor], Tensor | None] | None = None) -> tuple[list[Tensor], bool] | None:
    """Damped Newton on the face's objective from ``start``: ``(coordinates, converged)``, where
    ``converged`` says the gradient norm fell below ``tolerance`` there (else they are the last
    decreasing step's); None when the Hessian cannot be formed (a loss that autograd cannot
    vectorise) or no step is a descent direction. ``second(z)``, when given, is the Hessian at the
    flat coordinates ``z`` from the loss's own curvature (None: differentiate twice)."""
    sizes = [t.numel() for t in start]
    shapes = [t.shape for t in start]

    def flat_objective(z: Tensor) -> Tensor:
        return objective(*[part.reshape(shape) for part, shape in zip(torch.split(z, sizes), shapes)])

    z = torch.cat([t.detach().reshape(-1) for t in start])
    value, converged = float(flat_objective(z)), False
    for _ in range(_NEWTON_STEPS):
        point = z.detach().requires_grad_()
        (grad,) = torch.autograd.grad(flat_objective(point), point)
        if float(grad.norm()) <= tolerance:
            converged = True
            break
        hessian = None if second is None else second(z)
        if hessian is None:
            try:
                hessian = torch.autograd.functional.hessian(flat_objective, z, vectorize=True)
            except (RuntimeError, NotImplementedError, TypeError):
                return None
        try:  # the pseudo-inverse: directions the face does not see (a linear kind's normals, a
            # low-rank face's rotations) have a zero curvature and get no step, not a huge one
            curvatures, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.T))
        except RuntimeError:
            return None
        seen = curvatures > 1e-10 * max(float(curvatures.abs().max()), 1e-300)
        if not bool(seen.any()):
            return None
        step = vectors[:, seen] @ ((vectors[:, seen].T @ grad) / curvatures[seen])
        if not bool(torch.isfinite(step).all()) or float(step @ grad) <= 0:  # not a descent direction
            return None
        scale, accepted = 1.0, False
        for _ in range(30):  # backtracking: a full step on a quadratic, shorter far from the optimum
            trial = z - scale * step
            trial_value = float(flat_objective(trial))
            if trial_value <= value - 1e-4 * scale * float(step @ grad) or trial_value < value:
                z, value, accepted = trial.detach(), trial_value, True
                break
            scale *= 0.5
        if not accepted:
            break
    return [part.reshape(shape) for part, shape in zip(torch.split(z, sizes), shapes)], converged


def _face_hessian(loss, lam: float, face: Face) -> Callable[[Tensor], Tensor | None] | None:
    """``z ↦`` the face objective's Hessian from the loss's curvature on the face's entries
    (``Face.mask``) plus λ times the face norm's (autograd on the norm alone, no data), or None when
    the loss or the face cannot say (then Newton differentiates the whole objective twice)."""
    curvature = getattr(loss, "curvature", None)
    if curvature is None or face.mask is None or len(face.start) != 1:
        return None

    def second(z: Tensor) -> Tensor | None:
        with torch.no_grad():
            theta = face.embed(z)
        on_data = curvature(theta, face.mask)
        if on_data is None:
            return None
        on_norm = torch.autograd.functional.hessian(lambda c: face.norm(c), z.detach(), vectorize=True)
        return on_data + lam * on_norm

    return second


def _solve_on_face(loss, lam: float, face: Face, free: int, target: float, max_iter: int):
    """Newton (small faces), then L-BFGS on the face: ``(θ at its end, the atoms that crossed 0 or None)``."""
    coordinates = [t.detach().clone(memory_format=torch.contiguous_format) for t in face.start]
    tolerance = 0.1 * target
    if 0 < free <= NEWTON_FACE:
        newton = _newton_on_face(lambda *c: loss(face.embed(*c)) + lam * face.norm(*c), coordinates, tolerance,
                                 _face_hessian(loss, lam, face))
        if newton is not None:
            coordinates, converged = newton
            if converged:
                with torch.no_grad():
                    return face.embed(*coordinates), None if face.crossed is None else face.crossed(*coordinates)
    coordinates = [t.detach().clone(memory_format=torch.contiguous_format).requires_grad_() for t in coordinates]
    optimizer = torch.optim.LBFGS(coordinates, lr=1.0, max_iter=max_iter, history_size=max_iter,
                                  line_search_fn="strong_wolfe", tolerance_change=0.0,
                                  tolerance_grad=0.1 * target / math.sqrt(max(free, 1)))

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss(face.embed(*coordinates)) + lam * face.norm(*coordinates)
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        theta = face.embed(*coordinates)
        dropped = None if face.crossed is None else face.crossed(*coordinates)
    return theta, dropped


def gradient_scale(loss: Callable[[Tensor], Tensor], shape, device, dtype) -> float:
    """‖∇loss(0)‖: the problem's natural scale for relative KKT tolerances."""
    grad = loss_gradient(loss, torch.zeros(shape, device=device, dtype=dtype))
    return max(float(grad.norm()), 1e-12)
