"""Layer 3 — optimality measures shared by solvers and baselines: the snap tolerance and the KKT
residual of a problem at a point."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._clock import warm_up
from .constraints import Constraint
from .constraints.base import Face
from .proximal_newton import NEWTON_FACE, declines_only_for_size, proximal_newton

# A face with at most this many coordinates is always polished: its L-BFGS solve costs about
# max_iter loss evaluations whatever the point's structure. Working-set sub-problems (100 to a few
# thousand coordinates) often have over half of them alive, and without the polish their descent
# took 7 outer rounds instead of 1 (Lasso 1000×5000: 0.20 s → 0.06 s).
SMALL_FACE = 2000
# ... except a group lasso's face where proximal Newton declined its model as too large (more than
# `proximal_newton.GROUP_FACE` entries: a descent's point on a wide design that still holds many small
# groups): there the face solve took ~20 ms and did not certify, and the descent's next outer iteration
# went on regardless (make_regression 150×1200 of effective rank 50 in groups of 5 at 0.01 λ_max, 211 groups
# alive: 82 → 64 ms without it). Measured in one process, alternated, on the wide group sweep's 112 rows and
# 240 drawn from three seeds (benchmarks/RESULTS.md, twenty-seventh session): it applies on eight rows
# (150×1200 to 200×2000 at 0.03–0.01 λ_max), 0.67–0.83× on seven, the eighth within 10%; on none of the
# group, raw-column and multi-task sweeps; the geometric means 0.99–1.00.
SKIP_TOO_LARGE_GROUP_MODELS = True
_FACE_ROUNDS = 6  # face solves at most per polish: atoms that cross 0 drop out, violators join, between them
# A polished point still above the target takes Newton's method on its face (`newton_polish`) up to
# CURVATURE_FACE free coordinates when the loss gives its curvature (a dense eigendecomposition of that
# size, ~0.1 s); a face mapped from other coordinates (low rank) only where θ has at most
# MAPPED_ENTRIES entries (its dense curvature).
CURVATURE_FACE = 1024
MAPPED_ENTRIES = 4096
# Faces with at most NEWTON_FACE free coordinates (`symopt.proximal_newton`) are solved by Newton's
# method first.
_NEWTON_STEPS = 8
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
                tol: float, levels: int = 5, quick: bool = False, as_is: bool = False) -> tuple[Tensor, float]:
    r"""``(snapped θ, KKT residual there)`` for $\mathrm{minimise} \mathrm{loss}(θ) + λ‖θ‖$ (or s.t. θ ∈ set).

    DCS drives an entry that belongs at zero to zero geometrically, slowly when its gradient sits
    just below λ. Snapping at ``snap_tol`` and at up to $\mathrm{levels} - 1$ tenfold larger thresholds, the
    point with the smallest residual is returned: the residual certifies the point returned, however
    it was obtained. Linear kinds project exactly, so one level suffices. ``quick`` is passed to
    ``kkt_residual`` (an estimate that may fall short: confirm with ``quick=False``). ``as_is``: the
    point unsnapped is a candidate too (a point whose zeros are exact, as proximal Newton's are: the
    snap is relative to θ's largest entry, and on columns of scales 1e-3 to 1e3 an optimum holds
    entries below it that it needs; a Lasso at 0.001 λ_max with an entry of 1.8e-7 beside one of 1.05
    on a column of norm 6e3: snapped, 2e-2; as it is, 2e-11).
    """
    cut = snap_tol(theta, tol)
    cuts = [cut] if constraint.linear else [cut * 10**level for level in range(levels)]
    if as_is and not constraint.linear:
        cuts = [0.0, *cuts]
    return constraint.best_snapped_kkt(theta.detach(), cuts, lambda snapped: loss_gradient(loss, snapped), quick=quick)


def polish_on_face(loss: Callable[[Tensor], Tensor], constraint: Constraint, point: Tensor, tol: float,
                   target: float, max_iter: int = 20, quick: bool = False,
                   proximal_newton_only: bool = False, small_faces_only: bool = False,
                   probe: bool = False) -> tuple[Tensor, float] | None:
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

    An ℓ1 norm on entries (`Constraint.entry_signs`: the Lasso, logistic-L1, the elastic net, their
    non-negative forms) or a norm of coordinate groups (`Constraint.atom_ids`: the group lasso) with
    a loss that gives its own gradient and curvature (the GLM data terms) is polished by proximal
    Newton instead (`symopt.proximal_newton`): its quadratic models take in the atoms whose pull
    exceeds λ and drop the ones that belong at 0 without a pass over the data per change of the
    face; the face solve below runs where it does not apply (not where it declined a group lasso's point
    as too large for one model: None then, see ``SKIP_TOO_LARGE_GROUP_MODELS``).

    Args:
        loss: the smooth loss ℓ(θ).
        constraint: the kind and its λ.
        point: a snapped point (e.g. from [`kkt_at_snap`][symopt.optimality.kkt_at_snap]).
        tol: the relative snap tolerance (see [`snap_tol`][symopt.optimality.snap_tol]).
        target: the absolute KKT residual the caller stops at; the face solve stops at a tenth of it.
        max_iter: L-BFGS iterations at most (about as many loss evaluations).
        quick: measure the residual with ``kkt_residual(quick=True)`` (see there).
        proximal_newton_only: polish only where proximal Newton applies (None elsewhere): the
            certifier's finish of a point already within tolerance.
        small_faces_only: polish only a face of at most ``SMALL_FACE`` coordinates (None for a larger
            one): for a kind the caller finishes by proximal steps (`Constraint.finishes_by_prox`).
            Twenty L-BFGS iterations do not resolve a large low-rank face, even at the optimum's
            rank (digits' 1797 × 64 completion at 0.1 λ_max: rank 27, 50k coordinates, 65-100 ms
            for a residual of 267; 300 rows of it with the optimum's 15 singular values 1% off: the
            residual 5.2 → 51 with the face's exact norm, 5.2 → 5.0 with its variational form), where
            the proximal finish that follows reached the target alone; a small face (a rank-9
            regression on digits' 64 pixels, 666 coordinates) is still polished first, which saved
            that finish three outer rounds.
        probe: proximal Newton's ``probe`` (θ = 0 probed for a dense answer; None where it declines: the
            descent runs, no face solve).
    """
    # A norm whose atoms are entries or groups of them: proximal Newton, its quadratic models solved
    # by an active set (None where it does not apply: it says where)
    declined = False
    try:
        theta = proximal_newton(loss, constraint, point, target, probe=probe)
        declined = theta is None
    except RuntimeError:  # a linear-algebra error: the general face solve below tries
        theta = None
    if theta is not None and bool(torch.isfinite(theta).all()):
        # (its atoms are exact zeros or the model's values: measured as they are too, not only snapped,
        # since an entry below the snap on a column of large scale may be one the optimum needs)
        polished, residual = kkt_at_snap(loss, constraint, theta, tol, levels=1, quick=quick, as_is=True)
        if math.isfinite(residual):
            return polished, residual
    if proximal_newton_only or (probe and declined):
        return None
    if declined and SKIP_TOO_LARGE_GROUP_MODELS and declines_only_for_size(loss, constraint, point):
        # Proximal Newton declined a group lasso's point whose model would exceed GROUP_FACE: the descent
        # has not found the structure, and twenty L-BFGS iterations on that face (~1000 coordinates) did not
        # certify it; the next outer iteration's descent goes on from the point instead (see
        # SKIP_TOO_LARGE_GROUP_MODELS).
        return None
    grad = loss_gradient(loss, point)  # lets atoms the descent left at 0 enter the face
    snap = snap_tol(point, tol)
    face = constraint.face(point, snap, grad)
    if face is None:
        return None
    free = sum(t.numel() for t in face.start)
    if free > max(point.numel() // 2, SMALL_FACE) and not constraint.linear:  # structure not found (rank 177 of 200)
        return None
    if small_faces_only and free > SMALL_FACE:
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


def newton_polish(loss: Callable[[Tensor], Tensor], constraint: Constraint, point: Tensor, tol: float,
                  target: float, quick: bool = False) -> tuple[Tensor, float] | None:
    """``(point', KKT residual there)`` after Newton's method on the face of ``point``, where that face is
    mapped from other coordinates (low rank: not θ's entries, which proximal Newton polishes) and
    too large for the face polish's Newton (more than ``NEWTON_FACE`` coordinates, at most
    ``CURVATURE_FACE``) and its Hessian comes from the loss's curvature (`_face_hessian`); None
    otherwise. The certifier's last resort for a point that the face polish and the proximal finish
    left above the target: L-BFGS stalls on an ill-conditioned face (a nuclear-norm regression on
    digits' raw pixels, some always 0: ~10% a round, "stalled" after 39 outer iterations), where
    Newton lands on the face's optimum; taken earlier, before the finish, it made the well-conditioned
    solves (standardised pixels) 4-7× slower, where the finish is enough."""
    snap = snap_tol(point, tol)
    face = constraint.face(point, snap)
    if face is None or face.mask is not None:  # (a face of θ's entries has proximal Newton in the polish)
        return None
    free = sum(t.numel() for t in face.start)
    second = _face_hessian(loss, constraint.strength, face) if NEWTON_FACE < free <= CURVATURE_FACE else None
    if second is None:
        return None
    newton = _newton_on_face(_face_objective(loss, constraint.strength, face), [t.detach() for t in face.start],
                             0.1 * target, second)
    if newton is None:
        return None
    with torch.no_grad():
        theta = face.embed(*newton[0])
    if not bool(torch.isfinite(theta).all()):
        return None
    return kkt_at_snap(loss, constraint, theta, tol, levels=1, quick=quick)


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


def _newton_on_face(objective, start: list[Tensor], tolerance: float,
                    second: Callable[[Tensor], Tensor | None] | None = None) -> tuple[list[Tensor], bool] | None:
    """Damped Newton on the face's objective from ``start``: ``(coordinates, converged)``, where
    ``converged`` says the gradient norm fell below ``tolerance`` there (else they are the last
    decreasing step's); None when the Hessian cannot be formed (a loss that autograd cannot
    vectorise) or no step is a descent direction. ``second(z)``, when given, is the Hessian at the
    flat coordinates ``z`` from the loss's own curvature (None: differentiate twice)."""
    shapes = [t.shape for t in start]

    def flat_objective(z: Tensor) -> Tensor:
        return objective(*_unflattened(z, shapes))

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
    return _unflattened(z, shapes), converged


def _unflattened(z: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    """The coordinate tensors of ``shapes`` from their concatenated flat form ``z``."""
    return [part.reshape(shape) for part, shape in zip(torch.split(z, [math.prod(s) for s in shapes]), shapes)]


def _face_objective(loss, lam: float, face: Face) -> Callable[..., Tensor]:
    """The face's objective, loss + λ·norm, of its coordinate tensors."""
    return lambda *c: loss(face.embed(*c)) + lam * face.norm(*c)


def _face_hessian(loss, lam: float, face: Face) -> Callable[[Tensor], Tensor | None] | None:
    r"""``z ↦`` the face objective's Hessian from the loss's curvature, or None when the loss or the face
    cannot say (then Newton differentiates the whole objective twice).

    On a face of θ's entries (``Face.mask``): the curvature on those entries plus λ times the face
    norm's Hessian (autograd on the norm alone, no data). On a face mapped from other coordinates
    (a low-rank face's factors), where θ has at most ``MAPPED_ENTRIES`` entries:
    $J^\top H J + ∇^2_z ⟨G, \mathrm{embed}(z)⟩ + λ ∇^2 \mathrm{norm}$, with $H$ the loss's curvature on
    every entry, $G$ its gradient and $J$ the map's Jacobian; the last two terms by `torch.func` on the
    map and the norm alone (no data). Differentiating the whole objective twice costs a pass over the
    data per coordinate: 0.5-0.6 s a Hessian for a 740-coordinate face of a regression on digits'
    1797 rows, where this takes about 0.065 s (the Jacobian 8 ms, the map's term 21 ms, the norm's 35 ms)."""
    curvature = getattr(loss, "curvature", None)
    if curvature is None:
        return None
    if face.mask is not None:
        if len(face.start) != 1:
            return None

        def on_entries(z: Tensor) -> Tensor | None:
            with torch.no_grad():
                theta = face.embed(z)
            on_data = curvature(theta, face.mask)
            if on_data is None:
                return None
            on_norm = torch.autograd.functional.hessian(lambda c: face.norm(c), z.detach(), vectorize=True)
            return on_data + lam * on_norm

        return on_entries
    shapes = [t.shape for t in face.start]

    def flat_embed(z: Tensor) -> Tensor:
        return face.embed(*_unflattened(z, shapes)).reshape(-1)

    def mapped(z: Tensor) -> Tensor | None:
        z = z.detach()
        with torch.no_grad():
            theta = face.embed(*_unflattened(z, shapes))
        if theta.numel() > MAPPED_ENTRIES:
            return None
        on_data = curvature(theta, torch.ones_like(theta, dtype=torch.bool))
        if on_data is None:
            return None
        grad = loss_gradient(loss, theta).reshape(-1).detach()
        jacobian = torch.func.jacfwd(flat_embed)(z)
        bend = torch.func.hessian(lambda v: (grad * flat_embed(v)).sum())(z)  # the map's own curvature along G
        on_norm = torch.func.hessian(lambda v: face.norm(*_unflattened(v, shapes)))(z)
        return jacobian.mT @ on_data @ jacobian + bend + lam * on_norm

    return mapped


def _solve_on_face(loss, lam: float, face: Face, free: int, target: float, max_iter: int):
    """Newton (small faces), then L-BFGS on the face: ``(θ at its end, the atoms that crossed 0 or None)``."""
    coordinates = [t.detach().clone(memory_format=torch.contiguous_format) for t in face.start]
    tolerance = 0.1 * target
    if 0 < free <= NEWTON_FACE:
        newton = _newton_on_face(_face_objective(loss, lam, face), coordinates, tolerance,
                                 _face_hessian(loss, lam, face))
        if newton is not None:
            coordinates, converged = newton
            if converged:
                with torch.no_grad():
                    return face.embed(*coordinates), None if face.crossed is None else face.crossed(*coordinates)
    coordinates = [t.detach().clone(memory_format=torch.contiguous_format).requires_grad_() for t in coordinates]
    warm_up()  # (the process's first torch optimizer imports torch._dynamo: left out of the solver's clock)
    optimizer = torch.optim.LBFGS(coordinates, lr=1.0, max_iter=max_iter, history_size=max_iter,
                                  line_search_fn="strong_wolfe", tolerance_change=0.0,
                                  tolerance_grad=0.1 * target / math.sqrt(max(free, 1)))

    # A loss that gives its own gradient (`BoundLoss.value_and_grad`) is not differentiated through:
    # its ∂ℓ/∂θ goes into the face's map θ = embed(coordinates) directly (the backward through a
    # 1000 × 1000 completion's masked square was most of each evaluation's backward pass).
    analytic = getattr(loss, "value_and_grad", None)

    norm = face.norm if face.variational_norm is None else face.variational_norm  # (see Face.variational_norm)

    def closure() -> Tensor:
        optimizer.zero_grad()
        theta = face.embed(*coordinates)
        penalty = lam * norm(*coordinates)
        if analytic is None:
            value = loss(theta) + penalty
            value.backward()
            return value
        fit, grad = analytic(theta.detach())
        torch.autograd.backward([theta, penalty], [grad.to(theta.dtype), torch.ones_like(penalty)])
        return (fit + penalty).detach()

    optimizer.step(closure)
    with torch.no_grad():
        theta = face.embed(*coordinates)
        dropped = None if face.crossed is None else face.crossed(*coordinates)
    return theta, dropped


def gradient_scale(loss: Callable[[Tensor], Tensor], shape, device, dtype) -> float:
    """‖∇loss(0)‖: the problem's natural scale for relative KKT tolerances."""
    grad = loss_gradient(loss, torch.zeros(shape, device=device, dtype=dtype))
    return max(float(grad.norm()), 1e-12)
