r"""The ℓ1 quadratic model's active set (`solve_l1_quadratic`), on NumPy arrays.

$\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$ is what proximal Newton
(`symopt.proximal_newton`) solves at each outer iteration of an ℓ1 problem, what LassoCV's stacked folds
and a path's points solve at each α (`symopt.estimators`), and the group model's answer where every group
is one coordinate. Its active set takes many small steps (a face's Newton step, a coordinate that reaches
zero and leaves, violators that join), each a few dozen operations on vectors and triangles of tens to a
few hundred numbers. In torch each operation costs 2–10 µs of dispatch whatever its size: a Lasso of 50
rows at 0.01 λ_max spent 85–90% of its 20 ms in 66 such steps, 86 torch operators a step (counted). NumPy
and LAPACK (through SciPy) do the same arithmetic at a fraction of that cost per call.

Why the BLAS is held to one thread here (`one_blas_thread`): NumPy's OpenBLAS threads and torch's OpenMP
threads, both busy in one process on two cores, made a product with a 1000 × 1000 H take 12 ms instead of
0.1 ms right after a torch product (measured; the active set used torch for that reason before). Held to
one thread for the call, the products of this module do not contend with torch's threads. Without
`threadpoolctl` (a dependency of symopt and of scikit-learn) the limit is not applied.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
from scipy.linalg import blas, lapack
from torch import Tensor

try:  # (a dependency; a user without it keeps the BLAS's own threads)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None

@functools.cache
def _controller():
    """The one ThreadpoolController, made at first use (it lists the loaded BLAS libraries)."""
    return ThreadpoolController()


def one_blas_thread():
    """A context in which NumPy's and SciPy's BLAS run on one thread (see the module docstring)."""
    if ThreadpoolController is None:  # pragma: no cover
        return contextlib.nullcontext()
    return _controller().limit(limits=1, user_api="blas")


def as_array(tensor: Tensor) -> np.ndarray:
    """``tensor`` as a float64 NumPy array on the CPU (no copy where it already is one)."""
    return tensor.detach().to("cpu", torch.float64).contiguous().numpy()


def quadratic_gradient(hessian: Tensor, grad: Tensor, move: Tensor) -> Tensor:
    r"""$g + H·\mathrm{move}$ (see `_model_gradient`), for torch tensors: the model's gradient at
    $x_0 + \mathrm{move}$."""
    with one_blas_thread():
        answer = _model_gradient(as_array(hessian), as_array(grad), as_array(move))
    return torch.from_numpy(answer).to(grad.device, grad.dtype)


def _model_gradient(hessian: np.ndarray, grad: np.ndarray, move: np.ndarray) -> np.ndarray:
    r"""$g + H·\mathrm{move}$ (see `_product`)."""
    return grad + _product(hessian, move)


def _product(hessian: np.ndarray, move: np.ndarray) -> np.ndarray:
    r"""$H·\mathrm{move}$ from the rows of $H$ where ``move`` is non-zero, when they are fewer than half: the
    active set moves only the coordinates its faces have held, and on LassoCV's stacked folds (a
    block-diagonal $H$ of 1000 coordinates, 60–100 of them ever on a face) the full product was half of the
    solve's time. ($H$ is symmetric: its rows, contiguous, stand for its columns.)"""
    moved = np.flatnonzero(move)
    if 2 * moved.size >= move.size:
        return hessian @ move
    return move[moved] @ hessian[moved]


class FaceFactor:
    r"""What `solve_l1_quadratic` leaves for the next call on the same $H$ and linear term (a path over λ,
    whose next start is this answer): the Cholesky factor of $H$ on the face where it ended, its
    ``face`` (coordinates in the factor's order, an integer array) and lower-triangular ``factor`` (an
    array), both None until a call leaves them; and ``gradient``, the model's gradient
    $g + H(x - x_0)$ at the answer (a tensor) where the call ended at its optimality check (None
    otherwise), which is the next call's ``grad`` when its start is that answer. A call whose start's
    non-zeros are not exactly that face forms its own factor, as without it.

    Why: along LassoCV's grid (100 α, a 1000-coordinate stacked $H$) each call's first step formed the
    factor of a face that the previous call had ended with: 150 factorisations of faces of 75–175
    coordinates in one fit; and the gradient at each answer was formed twice more (the point's
    certificate, the next call's start), a fifth of the products with $H$."""

    __slots__ = ("face", "factor", "gradient")

    def __init__(self) -> None:
        self.face: np.ndarray | None = None
        self.factor: np.ndarray | None = None
        self.gradient: Tensor | None = None


# The projected Newton step's lengths tried (`_projected_newton`) before the ratio test's step: 1, ½, ¼, ….
PROJECTED_TRIALS = 8


def solve_l1_quadratic(hessian: Tensor, grad: Tensor, start: Tensor, lam: float, nonnegative: bool = False,
                       tol: float = 0.0, max_steps: int | None = None, *, face_factor: FaceFactor | None = None,
                       initial: Tensor | None = None) -> Tensor:
    r"""$\arg\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ‖x‖_1$ (over $x ≥ 0$ with
    ``nonnegative``), $H$ positive semi-definite, by an active-set method from $x_0$ (``start``).

    On the face of the current point (its non-zeros with their signs $s$) the objective is the
    quadratic plus $λ s^\top x$: Newton's step there (the pseudo-inverse of $H$ on the face) is taken up
    to the first coordinate that reaches 0, which leaves the face; where the full step crosses zero in
    several coordinates and stopping every one of them at 0 (the projection on the face's orthant)
    lowers the model more, that step is taken and they all leave. At the face's optimum the zeros
    that violate ($|∇_i| - λ > $ ``tol``, or $-∇_i - λ$ with ``nonnegative``) join it with the signs
    that lower the objective; where Newton's step would move some of them off zero the wrong way, those
    leave again before anything moves (the worst alone stays if that is all of them: a single
    violator's step moves it the right way, feature-sign search's one coordinate at a time), so every
    step is a descent;
    no violation above ``tol``: the optimum. The face's Cholesky factor is grown by the rows that join
    and cut back where coordinates leave, not formed afresh each step. Where $H$
    is singular on the face (more columns than the data can tell apart) and the face's gradient has a
    part along its null space, the objective is linear along it and the step follows that part to
    the first coordinate that reaches 0 (the simplex method's ratio test); the null space's basis is
    then kept, one Householder reflection per coordinate that leaves, and the level steps that follow
    need no product with $H$.

    Torch tensors in and out; the steps run on NumPy arrays in float64 on the CPU (see the module
    docstring).

    Args:
        hessian: $H$, ``(k, k)``.
        grad: $∇ = g$ at ``start``, ``(k,)``.
        start: $x_0$, ``(k,)`` (feasible: ≥ 0 with ``nonnegative``).
        lam: λ > 0.
        nonnegative: $x ≥ 0$.
        tol: stop when the face's gradient norm and every violation are at most this.
        max_steps: active-set steps at most (default ``10·k + 50``); the last point is returned.
        face_factor: a `FaceFactor` this call starts from (where it matches the start's face) and leaves its
            final face's factor and gradient in.
        initial: the first iterate where it is not ``start`` (feasible as ``start`` is; the model, its expansion
            point $x_0$ included, is unchanged): a guess nearer the optimum's face, e.g. the last proximal
            Newton model's solution after a damped step.

    Examples:
        >>> import torch
        >>> H, g = torch.eye(2, dtype=torch.float64), torch.tensor([-3.0, 0.5], dtype=torch.float64)
        >>> solve_l1_quadratic(H, g, torch.zeros(2, dtype=torch.float64), 1.0).tolist()   # ½‖x‖² - 3x₀ + 0.5x₁ + ‖x‖₁
        [2.0, 0.0]
    """
    with one_blas_thread():
        x, gradient = _active_set(as_array(hessian), as_array(grad), as_array(start), float(lam),
                                  bool(nonnegative), float(tol), max_steps, face_factor,
                                  None if initial is None else as_array(initial))
    if face_factor is not None:
        face_factor.gradient = None if gradient is None else torch.from_numpy(gradient).to(grad.device, grad.dtype)
    return torch.from_numpy(x).to(start.device, start.dtype)


def _active_set(hessian: np.ndarray, grad: np.ndarray, start: np.ndarray, lam: float, nonnegative: bool,
                tol: float, max_steps: int | None, face_factor: FaceFactor | None,
                initial: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`solve_l1_quadratic` on arrays: ``(x, the model's gradient at x or None)``, the final face and
    factor left in ``face_factor``."""
    x = start.copy() if initial is None else initial.copy()
    k = x.shape[0]
    signs = np.sign(x)
    free = x != 0
    face = np.flatnonzero(free)  # in the order the coordinates joined: the factor's order
    # The Cholesky factor of H on the face, grown by the rows of the coordinates that join and cut
    # back to its leading block where they leave (O(k²) updates where a new factorisation is O(k³));
    # None: formed afresh at the next step. A positive Lasso 1000×5000 whose models took in ~400
    # coordinates spent 0.45 s in factorisations and block copies, one coordinate a step.
    factor = None
    if face_factor is not None and face_factor.factor is not None and face_factor.face.size == face.size \
            and bool(free[face_factor.face].all()):
        face, factor = face_factor.face, face_factor.factor
    # On a singular face (more columns than the data tell apart: a 100-row design with 338 non-zeros
    # from the descent), an orthonormal basis of the face's null space, kept as the level steps take
    # coordinates off the face one at a time (each an eigendecomposition of a 300 × 300 block before:
    # 1.3 s on that design)
    null = None
    fresh = 0  # how many coordinates at the face's end joined at its optimum and have not moved yet
    # The face's residual before the last full Newton step: after it the residual is rounding alone,
    # and a full step that does not halve it again is at the floor of what the face's conditioning
    # resolves. Correlated columns (AR(1) at ρ = 0.875, 74 of 81 alive) left it at 1e-10 against a
    # tolerance of 1e-12, and the loop took thousands of full steps that changed nothing.
    before_full = math.inf
    # After a level step that kept the null basis, the face's residual for the next one: it does not
    # change along the face's null space (H on the face annuls the step), so a run of level steps
    # needs no product with H (a singular face of 338 coordinates on 100 rows leaves 238 of them so);
    # `level_run` counts them, and every eighth checks the kept basis against H.
    carried, level_run = None, 0
    first_step = True  # (the first Newton step decides whether the start is worth keeping)
    # The model's gradient at x, None once x has moved: joins and the leaving again of a join's fresh
    # coordinates change the face, not x, and the next check reads the same gradient (a third of the
    # products with H in a LassoCV fit were of an x they had already been formed at).
    gradient = grad.copy() if initial is None else None
    limit = 10 * k + 50 if max_steps is None else max_steps
    for _ in range(limit):
        carried_size = None if carried is None else float(np.linalg.norm(carried))
        if carried_size is not None and carried_size > tol:
            residual, size = carried, carried_size
        else:
            if gradient is None:
                gradient = _model_gradient(hessian, grad, x - start)
            size = 0.0
            if face.size:
                residual = gradient[face] + lam * signs[face]
                size = float(np.linalg.norm(residual))
        carried = None
        if not face.size or size <= tol or size > 0.5 * before_full:
            before_full = math.inf
            violation = ((-gradient) if nonnegative else np.abs(gradient)) - lam
            violation[free] = -math.inf
            violators = np.flatnonzero(violation > tol)
            if not violators.size:
                return _leaving(x, face_factor, face, factor), gradient  # (the usual exit: no sort of every coordinate for it)
            # (the most violating first; ties in their order)
            joining = violators[np.argsort(-violation[violators], kind="stable")]
            # The violating zeros join with the signs that lower the objective, the most violating
            # first, as many as keep the face's curvature clearly positive definite (more columns than
            # the data tell apart would make each step an eigendecomposition: a 100×400 design at
            # 1e-3 λ_max took 2 s so): where the face's Newton step then moves some of them the wrong
            # way off zero, those leave again before anything moves (any subset whose step moves
            # every one the right way is a descent), down to the most violating alone, whose step
            # always is one (feature-sign search's one coordinate at a time, Lee et al. 2006). Halving the joined
            # set instead sent away coordinates whose steps were right: on LassoCV's stacked folds,
            # independent blocks of H, one fold's wrong way cost every other fold's joins a round
            # (a 100×200 fit: 48 join rounds and 25 halvings → 32 and 13). A face already singular
            # takes one coordinate at a time.
            if factor is None and face.size:
                face = face[_largest_first(face, x)]
                factor = _face_factor(hessian, face)
            if factor is None and face.size:
                joining = joining[:1]
            else:
                grown, kept = _grown(factor, hessian, face, joining)
                joining, factor = (joining[:kept], grown) if kept else (joining[:1], None)
            free[joining] = True
            signs[joining] = 1.0 if nonnegative else -np.sign(gradient[joining])
            face, fresh, null = np.concatenate([face, joining]), joining.size, None
            continue
        if factor is None and null is None and not fresh:  # (a factor formed afresh: the order is free)
            order = _largest_first(face, x)
            face, residual = face[order], residual[order]
        step, level, factor, null = _factored_step(hessian, face, residual, tol, factor, null,
                                                   checked=level_run % 8 == 0)
        face_signs = signs[face]
        moving = face_signs * step
        if fresh > 1 and bool((moving[face.size - fresh:] < 0).any()):
            kept = np.ones(face.size, dtype=bool)
            kept[face.size - fresh:] = moving[face.size - fresh:] >= 0
            if not kept[face.size - fresh:].any():
                kept[face.size - fresh] = True  # (the most violating alone moves the right way)
            leaving = face[~kept]
            free[leaving], signs[leaving] = False, 0.0
            factor = None if factor is None else _trimmed(factor, hessian, face, kept)
            face, fresh, null = face[kept], int(kept[face.size - fresh:].sum()), None
            continue
        fresh = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(moving < 0, (face_signs * x[face]) / -moving, math.inf)
        if first_step:
            first_step = False
            far = (2 * null.shape[1] >= face.size if level and null is not None
                   else int((ratios < 1).sum()) > face.size // 2)
            if face.size >= 8 and far:
                # The start's face is far from the optimum's, and each of its coordinates that must go
                # would leave in a step of its own: its Newton step crosses zero in most of them (a DCS
                # point of logistic-L1 on breast_cancer: 28 alive where the model's optimum has 4, 25
                # steps, 9 ms), or the face is singular with a null space of at least half its size
                # (a 100-row design with 338 non-zeros: at least 238 level steps). From x = 0 the
                # violators join together instead, as many as keep the face positive definite (1.4 ms
                # there; 100×400 at 1e-3 λ_max 0.16-0.23 s → 0.06-0.09 s); the method descends from any start.
                x[:] = 0.0
                gradient = None
                signs[:] = 0.0
                free[:] = False
                face, factor, null, fresh = face[:0], None, None, 0
                continue
        reach = float(ratios.min())
        if level and not math.isfinite(reach):
            return _leaving(x, face_factor, None, None), None  # linear and unbounded below along the face: nothing finite to return
        t = reach if level else min(1.0, reach)
        if not level and reach < 1.0 and factor is not None and int((ratios < 1.0).sum()) > 1:
            # Several coordinates cross zero in the full Newton step: the ratio test stops at the
            # first, and each of the others would then leave in a step (and a refactorisation) of
            # its own. The step with every crossing coordinate stopped at 0 (the projection on the
            # face's orthant, as projected Newton methods take), full or shortened, is taken instead
            # where it lowers the model more than the ratio test's step: every step still descends.
            # Only the full one was tried before: from a log-loss point of 597 non-zeros on 500 rows
            # it crossed in ~270 coordinates, lost, and the face shed one coordinate a step (142
            # steps, 0.26 s); the longest of τ = 1, ½, ¼, … that wins took 21 (0.08 s).
            projected = _projected_newton(factor, x[face], step, ratios, residual, reach, PROJECTED_TRIALS)
            if projected is not None:
                crossing, move = projected
                x[face] += move
                leaving = face[crossing]
                x[leaving], free[leaving], signs[leaving] = 0.0, False, 0.0
                factor = _trimmed(factor, hessian, face, ~crossing)
                face, gradient, before_full, null, level_run = face[~crossing], None, math.inf, None, 0
                continue
        x[face] += t * step
        gradient = None
        before_full = size if t == 1.0 and not level and t < reach else math.inf
        if t == reach:  # the coordinates that reached 0 (ties together) leave the face
            reached = ratios <= reach * (1 + 1e-12)
            leaving = face[reached]
            x[leaving], free[leaving], signs[leaving] = 0.0, False, 0.0
            factor = _trimmed(factor, hessian, face, ~reached)
            null = _null_without(null, reached) if level else None
            face = face[~reached]
            if null is not None:
                carried, level_run = residual[~reached], level_run + 1
        else:
            null = None
        if null is None:
            level_run = 0
    return _leaving(x, face_factor, face, factor), None


def _projected_newton(factor: np.ndarray, x: np.ndarray, step: np.ndarray, ratios: np.ndarray, residual: np.ndarray,
                      reach: float, trials: int) -> tuple[np.ndarray, np.ndarray] | None:
    r"""``(crossing, move)``: the projected Newton step on a face, $τ·$``step`` with every coordinate that crosses
    zero by τ stopped at 0, for the longest τ of 1, ½, ¼, … (``trials`` of them, while more than one crosses)
    whose model change beats the ratio test's step to ``reach``; None where none does. On the face, with signs s,
    the change of a move d is rᵀd + ½dᵀHd (r the face's ``residual``, ∇ + λs: the ℓ1 term is λsᵀd while no sign
    changes), H on the face the factor's LLᵀ; the ratio test's is (ρ - ρ²/2)·rᵀstep for Newton's step."""
    beaten = (reach - 0.5 * reach * reach) * float(residual @ step)
    tau = 1.0
    for _ in range(trials):
        crossing = ratios <= tau  # (one that reaches 0 exactly at τ leaves too: 0, not a rounding residue)
        if tau <= reach or int(crossing.sum()) < 2:
            return None
        move = np.where(crossing, -x, tau * step)
        change = float(residual @ move) + 0.5 * float(np.linalg.norm(factor.T @ move)) ** 2
        if change < beaten:
            return crossing, move
        tau *= 0.5
    return None


def _largest_first(face: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The positions that order ``face`` by $|x|$ at its coordinates, largest first (ties in their
    order). A factor formed in this order is cut back near its end when a coordinate reaches 0 (the
    small ones are the likely to), where `_trimmed` refactors only the rows after the first that leaves."""
    return np.argsort(-np.abs(x[face]), kind="stable")


def _leaving(x: np.ndarray, face_factor: FaceFactor | None, face: np.ndarray | None,
             factor: np.ndarray | None) -> np.ndarray:
    """``x``, with ``face`` and its ``factor`` left in ``face_factor`` (where given) for the next call."""
    if face_factor is not None:
        face_factor.face, face_factor.factor = face, factor
    return x


def cholesky_lower(block: np.ndarray) -> tuple[np.ndarray, int]:
    """``(L, info)``: LAPACK's Cholesky factor of a symmetric ``block`` (lower, C-ordered) and its info (0,
    or the order of the first leading minor that is not positive; L is valid before it). LAPACK is given
    the transpose, which is the block itself in Fortran order: no copy to reorder it."""
    upper, info = lapack.dpotrf(block.T, lower=0, clean=1)
    return upper.T, int(info)


def _lower_solve(factor: np.ndarray, right: np.ndarray) -> np.ndarray:
    """$L^{-1} B$ for a lower-triangular C-ordered ``factor`` L (LAPACK on $L^\\top$, upper in Fortran
    order, transposed)."""
    solution, _ = lapack.dtrtrs(factor.T, right, lower=0, trans=1)
    return solution


def _grown(factor: np.ndarray | None, hessian: np.ndarray, face: np.ndarray,
           joining: np.ndarray) -> tuple[np.ndarray | None, int]:
    r"""``(factor', m)``: the Cholesky factor of $H$ on ``face`` + ``joining[:m]`` from ``factor`` (on
    ``face``; None for an empty face), m the longest prefix of ``joining`` whose block keeps the
    factor clearly positive definite (its pivots above 1e-10 of their diagonal entries). The new rows
    are $W^\top = (L^{-1} H_{FJ})^\top$ and the factor of $H_{JJ} - W^\top W$, whose leading block is
    the factor of any prefix. m = 0 (``factor`` unchanged): the first coordinate alone would make the
    face singular."""
    rows = hessian[joining]
    own = rows[:, joining]
    across = None
    schur = own
    if face.size:
        across = _lower_solve(factor, rows[:, face].T)
        schur = own - across.T @ across
    corner, info = cholesky_lower(schur)
    kept = info - 1 if info else joining.size  # (info: the first minor that is not positive)
    clear = np.square(np.diag(corner)[:kept]) > 1e-10 * np.maximum(np.diag(own)[:kept], 1e-300)
    if not clear.all():
        kept = int(np.argmin(clear))
    if kept == 0:
        return factor, 0
    corner = corner[:kept, :kept]
    if across is None:
        return np.ascontiguousarray(corner), kept
    return _assembled(factor, across[:, :kept].T, corner), kept


def principal_block(hessian: np.ndarray, face: np.ndarray) -> np.ndarray:
    """$H$'s rows and columns ``face``, in its order (C-ordered, a copy). Where the face is a quarter of $H$
    or more, its rows are taken whole first and then their columns: NumPy's two contiguous gathers took half
    the time of one `np.ix_` gather (1.2 against 2.6 ms for 900 of 1000 coordinates, the same numbers);
    a narrow face is gathered directly (100 of 2000: 40 µs, against 140 through its rows)."""
    if 4 * face.size >= hessian.shape[0]:
        return np.take(np.take(hessian, face, axis=0), face, axis=1)
    return hessian[np.ix_(face, face)]


def _face_factor(hessian: np.ndarray, face: np.ndarray) -> np.ndarray | None:
    """The Cholesky factor of $H$ on ``face``, or None where it is not clearly positive definite."""
    block = principal_block(hessian, face)
    return block_factor(block, block)


def _trimmed(factor: np.ndarray | None, hessian: np.ndarray, face: np.ndarray,
             kept: np.ndarray) -> np.ndarray | None:
    r"""The Cholesky factor of $H$ on ``face[kept]`` from ``factor`` (on ``face``): its leading block up to
    the first coordinate that leaves stands, the kept rows after it keep their first columns, and
    their trailing block is the factor of their Schur complement; None as in `_grown`.

    That trailing block, for the kept rows K and the leaving columns D after the first that leaves (L's
    rows and columns there), is the factor of $L_{KK}L_{KK}^\top + L_{KD}L_{KD}^\top$: `_downdated` takes it
    from the QR factorisation of $[L_{KK}^\top;\ L_{KD}^\top]$ where at least 100 rows are kept and c = |D| is
    small beside them and the rows before the first that leaves (measured, one BLAS thread: 0.6 against 1.1 ms
    for 290 kept rows after 150, 1.7 against 4.8 for 524 after 266; no faster below ~100 rows); else it is
    formed afresh from H's block less the kept rows' first columns' products. On logistic-L1 over a
    500 × 20000 CSR design at 0.01 λ_max, projected Newton steps took 2–20 coordinates off 430-coordinate
    faces from their 9th–250th row: the trims' time 39 → 30 ms of a ~250 ms solve.
    """
    if factor is None or kept.all():
        return factor
    first = int(np.argmin(kept))
    lead = factor[:first, :first]
    rest = first + np.flatnonzero(kept[first:])
    if not rest.size:
        return np.ascontiguousarray(lead)
    rows = np.take(factor, rest, axis=0)  # (one gather of the kept rows, then their columns: see principal_block)
    across = rows[:, :first]
    gone = first + np.flatnonzero(~kept[first:])
    if rest.size >= 100 and 6 * gone.size <= 3 * first + rest.size:
        corner = _downdated(np.take(rows, rest, axis=1), np.take(rows, gone, axis=1), np.diag(hessian)[face[rest]])
    else:
        block = principal_block(hessian, face[rest])
        corner = block_factor(block - across @ across.T, block)
    return None if corner is None else _assembled(lead, across, corner)


def _downdated(kept: np.ndarray, leaving: np.ndarray, diagonal: np.ndarray) -> np.ndarray | None:
    r"""The lower Cholesky factor of $K K^\top + W W^\top$ for a lower-triangular ``kept`` K and the columns
    ``leaving`` W: $R^\top$ from the QR factorisation of $[K^\top;\ W^\top]$ (rows of R signed so that its diagonal
    is positive). None where a pivot is not above 1e-10 of the ``diagonal`` of the block it factors (as
    `block_factor`)."""
    # (blocks of 32: one reflection at a time, nb = 1, took 3.7 times as long on a 356-row factor)
    upper, _, _, info = lapack.dtpqrt(0, min(32, kept.shape[0]), kept.T, leaving.T)
    if info:
        return None
    pivots = np.diag(upper)
    if not (np.square(pivots) > 1e-10 * np.maximum(diagonal, 1e-300)).all():
        return None
    corner = np.tril(upper.T)
    corner *= np.where(pivots < 0, -1.0, 1.0)[None, :]
    return corner


def block_factor(schur: np.ndarray, block: np.ndarray) -> np.ndarray | None:
    """The Cholesky factor of a Schur complement, or None where a pivot is not above 1e-10 of the
    block's own diagonal (the grown matrix is singular to rounding)."""
    corner, info = cholesky_lower(schur)
    if info or not (np.square(np.diag(corner)) > 1e-10 * np.maximum(np.diag(block), 1e-300)).all():
        return None
    return corner


def _assembled(lead: np.ndarray, across: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """The lower-triangular ``[[lead, 0], [across, corner]]``."""
    size, added = lead.shape[0], corner.shape[0]
    whole = np.zeros((size + added, size + added))
    whole[:size, :size] = lead
    whole[size:, :size] = across
    whole[size:, size:] = corner
    return whole


def _factored_step(hessian: np.ndarray, face: np.ndarray, residual: np.ndarray, tol: float,
                   factor: np.ndarray | None, null: np.ndarray | None = None,
                   checked: bool = True) -> tuple[np.ndarray, bool, np.ndarray | None, np.ndarray | None]:
    """The face's step with its Cholesky factor or its null space kept: ``(step, level, factor, null)``.
    With ``factor``, two triangular solves; without, the factor is formed where the block is clearly
    positive definite (`block_factor`); where it is not, a level step along the null space of its pivoted
    factorisation (`pivoted_null_basis`) where ``r`` has a part above ``tol`` there, else `eigen_step`'s
    eigendecomposition; the null-space basis comes back for the next level step. With ``null`` (the block is
    known singular), a level step along it directly where ``r`` has a part above ``tol`` there and the basis
    is still null (its image under H at rounding level; with ``checked`` False that is taken on trust, a
    product with H saved), else the basis afresh."""
    block = None
    if null is not None:
        along = null @ (null.T @ residual)
        if float(np.linalg.norm(along)) > tol and (not checked or _annulled(hessian, face, along)):
            return -along, True, None, null
    else:
        if factor is None:  # (clearly positive definite, as the joins' factors are; else the null space below)
            block = principal_block(hessian, face)
            factor = block_factor(block, block)
        step = None if factor is None else newton_step(factor, residual)
        if step is not None:
            return step, False, factor, None
    if block is None:
        block = principal_block(hessian, face)
    flat = pivoted_null_basis(block)
    if flat is not None:
        along = flat @ (flat.T @ residual)
        if float(np.linalg.norm(along)) > tol:
            return -along, True, None, flat
    step, level, flat = eigen_step(block, residual, tol)
    return step, level, None, (flat if level else None)


def newton_step(factor: np.ndarray, residual: np.ndarray) -> np.ndarray | None:
    r"""Newton's step $-H^{-1} r$ from H's Cholesky factor, or None where it is not a descent step (its
    slope $r^\top \mathrm{step}$ not negative and finite: NaN and Inf fail it)."""
    solution, _ = lapack.dpotrs(factor.T, residual, lower=0)
    step = -solution
    slope = float(step @ residual)
    return step if slope < 0 and math.isfinite(slope) else None


def _annulled(hessian: np.ndarray, face: np.ndarray, direction: np.ndarray) -> bool:
    """Whether H on ``face`` maps ``direction`` to rounding level (1e-9 of its size times H's largest
    diagonal entry): a kept null basis that rounding has not drifted off the null space."""
    # (H times the direction spread over every coordinate: ``hessian[:, face] @ direction`` copied H's columns
    # first, 2.6 ms a check for a face of 571 of 828 coordinates, against 0.3 for the whole product)
    spread = np.zeros(hessian.shape[0])
    spread[face] = direction
    image = float(np.linalg.norm(_product(hessian, spread)))
    return image <= 1e-9 * float(np.linalg.norm(direction)) * max(float(np.diag(hessian).max()), 1e-300)


def pivoted_null_basis(block: np.ndarray) -> np.ndarray | None:
    r"""An orthonormal basis of a positive semi-definite ``block``'s null space from its pivoted Cholesky
    factorisation, or None where that finds none or its basis is not annulled by the block to rounding
    (`eigen_step`'s eigendecomposition decides there).

    With the pivots $P$, $P^\top B P = U^\top U$ and $U = [U_{11}\; U_{12}]$ of rank r (the pivots stop below
    1e-12 of B's largest diagonal entry, `eigen_step`'s floor on its curvatures), the columns of
    $P [-U_{11}^{-1} U_{12};\ I]$ span the null space (exactly where the trailing Schur complement is 0);
    a QR factorisation makes them orthonormal. Why not the eigendecomposition: a symmetric one with its vectors
    costs several times a Cholesky factorisation's k³/3 operations; a 571-coordinate face on 500 rows
    (logistic-L1 on a 500 × 20000 CSR design at 0.01 λ_max) took 50 ms in ``eigh``, 4 in ``dpstrf`` and 9–15
    for the whole basis, its check by one product with the block included."""
    diagonal = np.diag(block)
    largest = float(diagonal.max()) if diagonal.size else 0.0
    if not largest > 0.0 or not math.isfinite(largest):
        return None
    upper, pivots, rank, info = lapack.dpstrf(block, tol=1e-12 * largest, lower=0)
    if info < 0 or rank >= block.shape[0] or rank == 0:
        return None
    order = pivots - 1
    spanning = np.empty((block.shape[0], block.shape[0] - rank))
    # (the triangular solve reads U₁₁'s upper triangle only: what dpstrf left below it is never read)
    spanning[order[:rank]] = -lapack.dtrtrs(upper[:rank, :rank], upper[:rank, rank:], lower=0)[0]
    spanning[order[rank:]] = np.eye(block.shape[0] - rank)
    basis = np.linalg.qr(spanning)[0]
    image = float(np.linalg.norm(block @ basis))
    if not image <= 1e-9 * math.sqrt(basis.shape[1]) * largest:
        return None
    return basis


def _null_without(null: np.ndarray | None, leaving: np.ndarray) -> np.ndarray | None:
    """The null space of the face without the coordinates ``leaving`` (a mask over the face) from
    ``null``, the face's: the vectors of its span that are 0 there (for a positive semi-definite block,
    exactly the smaller block's null space), as an orthonormal basis; None when nothing is left."""
    if null is None:
        return None
    rows = null[leaving]  # each vector of the span must vanish on these
    if not rows.shape[0]:
        return null[~leaving]
    if rows.shape[0] == 1 and null.shape[1] > 1:
        # one coordinate (the usual level step): a Householder reflection takes the row to the first
        # axis, and the other reflected vectors vanish there (O(face·q) where the SVD route is O(face·q²))
        row = rows[0]
        size = float(np.linalg.norm(row))
        if size <= 1e-10 * float(np.abs(null).max()):
            return null[~leaving]
        mirror = row.copy()
        mirror[0] += size if row[0] >= 0 else -size
        mirror /= np.linalg.norm(mirror)
        kept = null[~leaving]  # (a copy: the reflection is applied to it in place)
        if not kept.shape[0]:
            return None
        # (BLAS's rank-one update on the copy's transpose, Fortran-ordered: no outer product formed. 0.07 ms
        # against 0.27 for a 650 × 106 basis, one BLAS thread; 106 such steps in one model)
        reflected = blas.dger(-2.0, mirror, kept @ mirror, a=kept.T, overwrite_a=1).T
        return reflected[:, 1:]
    _, sizes, right = np.linalg.svd(rows, full_matrices=True)
    rank = int((sizes > 1e-10 * max(float(sizes.max()), 1e-300)).sum()) if sizes.size else 0
    if rank >= null.shape[1]:
        return None
    return null[~leaving] @ right[rank:].T


def eigen_step(block: np.ndarray, residual: np.ndarray, tol: float) -> tuple[np.ndarray, bool, np.ndarray]:
    """``(step, level, null basis)`` from the eigendecomposition of a face's block: the pseudo-inverse's
    step, or, where ``r`` has a part above ``tol`` along the null space, minus that part with ``level``
    True (the objective is linear along it)."""
    curvatures, vectors = np.linalg.eigh(block)
    floor = 1e-12 * max(float(np.abs(curvatures).max()), 1e-300)
    seen = curvatures > floor
    flat = vectors[:, ~seen]
    along = flat @ (flat.T @ residual)
    if float(np.linalg.norm(along)) > tol:
        return -along, True, flat
    kept = vectors[:, seen]
    return -(kept @ ((kept.T @ residual) / curvatures[seen])), False, flat
