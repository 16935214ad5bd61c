"""From an iterate to a certified point: snap at the tolerance, measure the KKT residual of the
*original* problem there, and polish on the face of the snapped point when it is not yet optimal."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ..constraints import Constraint
from ..optimality import kkt_at_snap, newton_polish, polish_on_face, proximal_finish


class Certifier:
    r"""Certifies the iterates of one descent.

    A float32 descent (``exact`` given) is certified and polished in float64, from float64 copies of
    the loss and data: float32 cannot resolve a KKT residual of 1e-6 relative. The float64 copy of the
    constraint is refreshed when the descent's constraint or its λ changes (a budget search, a wider
    factor width).

    Args:
        loss, data: the descent's loss $θ -> \mathrm{loss}$ and its data.
        tol: the snap tolerance.
        target: the KKT residual at which a point is optimal.
        inner: iterations of the face polish.
        polish: whether to polish at all.
        exact: ``(loss, data)`` in float64 when the descent runs in float32.
    """

    def __init__(self, loss: Callable, data: dict, tol: float, target: float, inner: int, polish: bool,
                 exact: tuple[Callable, dict] | None = None) -> None:
        self.loss, self.data, self.tol, self.target = loss, data, tol, target
        self.inner, self.polish, self.exact = inner, polish, exact
        self._exact_constraint: tuple | None = None  # (source constraint, its λ, float64 copy)
        self.best: tuple[torch.Tensor, float] | None = None  # the lowest-residual point at this λ
        # Whether the polish and the finish have run from ``best`` itself and found nothing better:
        # they are deterministic, so from it again they would only repeat that (china.jpg completion
        # at 0.02 λ_max: three outer iterations whose points were worse than the best each polished
        # it again, 65 ms each, to the same point).
        self.best_settled = False

    def start_run(self) -> None:
        """A new run (λ may have changed): forget the best point."""
        self.best, self.best_settled = None, False

    def dtype(self, descent_dtype: torch.dtype) -> torch.dtype:
        return descent_dtype if self.exact is None else torch.float64

    def certifying(self, constraint: Constraint) -> tuple[Callable, dict, Constraint]:
        """``(loss, data, constraint)`` that points are certified (and polished) with."""
        if self.exact is None:
            return self.loss, self.data, constraint
        cached = self._exact_constraint
        if cached is None or cached[0] is not constraint or cached[1] != constraint.strength:
            exact = copy.deepcopy(constraint).to(torch.float64)
            self._exact_constraint = cached = (constraint, constraint.strength, exact)
        return self.exact[0], self.exact[1], cached[2]

    def certify(self, theta: torch.Tensor, constraint: Constraint,
                widens: Callable[[torch.Tensor], bool] | None = None,
                probe: bool = False) -> tuple[torch.Tensor, float, dict, Constraint]:
        """``(point, kkt, data, constraint)``: the snapped point with the lowest residual found so far at
        this λ, after the face polish; ``data`` and ``constraint`` are the certifying ones.

        ``widens(point)``: whether the descent will widen its narrowed factors at this snapped point (its
        rank fills their width). Such a point is never accepted, and it is not polished: a low-rank face
        keeps every direction it has, and a filled width is most often a descent whose last directions
        have not yet shrunk (a 1000 × 1000 completion of rank 10 filled 16 columns: the polish of those
        16 took a fifth of the solve and raised the residual, 62 → 80). Over 15 more generated
        completions (`python -m benchmarks.users_data --completion-sweep`), skipping it was faster on
        eleven, up to 2.4 → 1.0 s, and slower on two (an 800 × 800 of rank 20 seen at 15%, where the
        rank-16 polish was a good start; benchmarks/RESULTS.md).

        ``probe``: the descent's first check from θ = 0 where it probes for a dense answer
        (`symopt.solver.descent.DENSE_PROBE`): the polish's proximal Newton declines after its first model
        where that full model kept (nearly) all its entries, and the descent runs."""
        loss, data, certifying = self.certifying(constraint)
        quick = certifying.quick_kkt  # estimates while iterating, the exact residual to stop
        point, kkt = kkt_at_snap(loss, certifying, theta.to(self.dtype(theta.dtype)), self.tol, quick=quick)
        if widens is not None and widens(point):
            if self.best is not None and self.best[1] < kkt:
                point, kkt = self.best
            else:
                self.best, self.best_settled = (point, kkt), False
            return point, kkt, data, certifying
        settled = reused = False
        if self.best is not None and self.best[1] < kkt:
            # A float32 descent stalls at its own resolution, behind what the float64 polish
            # reached: the polish goes on from its best point instead of starting over (unless it
            # has already ended there).
            (point, kkt), settled, reused = self.best, self.best_settled, True
        arrived = kkt
        finishes = certifying.finishes_by_prox(point)
        def face_polish(start: torch.Tensor) -> tuple[torch.Tensor, float] | None:
            # (a kind finished by proximal steps has its large faces left to them: see small_faces_only)
            return polish_on_face(loss, certifying, start, self.tol, self.target, self.inner, quick,
                                  small_faces_only=finishes, probe=probe)

        if self.polish and kkt > self.target and not settled:  # also before a widening: the wider factors start better
            polished = face_polish(point)
            if polished is not None and polished[1] < kkt:
                gained = polished[1] <= 0.1 * kkt
                point, kkt = polished
                if gained and kkt > self.target and not finishes:
                    # A polish that cut the residual tenfold is on the structure's face and still
                    # converging there: where no proximal finish follows (that ends the standardised
                    # reduced-rank regressions; a second polish before it only cost 20-40%), a second
                    # one from its point may finish the solve now, where the descent's next outer
                    # iteration would only bring it back to this face (china.jpg completion at 0.1
                    # λ_max, narrow factors: 1.7 → 1.4e-2, then a second descent and polish to
                    # 1.3e-6; the second polish alone reaches 1.7e-6). Its point is kept only
                    # if it certifies: a better point that does not would hold the best-point slot, and
                    # the descent's own points, losing to it, would not be polished (china.jpg at 0.02
                    # λ_max: 0.27 → 5.4e-2 on a face of the wrong rank; 6 → 13 outer iterations).
                    again = face_polish(point)
                    if again is not None and again[1] <= self.target:
                        point, kkt = again
        if self.polish and kkt > self.target and finishes and not settled:
            finished = proximal_finish(loss, certifying, point, self.tol, self.target)
            if finished is not None and finished[1] < kkt:
                point, kkt = finished
        if self.polish and kkt > self.target and reused and not settled:
            # The descent's point lost to the best one: the descent no longer helps, and a large face
            # that Newton can take gets it (newton_polish). Not before: where the descent still gains,
            # its next round and the finish were cheaper than a dense Newton step (standardised
            # pixels: 2-3× slower with it at the first check).
            refined = newton_polish(loss, certifying, point, self.tol, self.target, quick)
            if refined is not None and refined[1] < kkt:
                point, kkt = refined
        if self.polish and 1e-6 * self.target < kkt <= self.target:
            # Within tolerance, but the tolerance is relative to ‖∇loss(0)‖: on raw columns (scales
            # 1e-3 to 1e3) it passed an atom 25% off its optimal value (a column of scale 1e-2, so
            # a gradient below the target), 1.6e-3 above the optimum's objective (positive Lasso on
            # raw breast_cancer at 0.01 λ_max). Where proximal Newton applies (an ℓ1 or a group norm) it
            # is cheap and ends on the exact optimum, so the point is finished there.
            polished = polish_on_face(loss, certifying, point, self.tol, 1e-3 * min(kkt, self.target), self.inner,
                                      quick, proximal_newton_only=True)
            if polished is not None and polished[1] < kkt:
                point, kkt = polished
        tried = self.polish and arrived > self.target  # (the polish, and the finish where it applies, ran)
        self.best, self.best_settled = (point, kkt), tried and kkt == arrived
        if quick and kkt <= self.target:
            point, kkt = kkt_at_snap(loss, certifying, point, self.tol, levels=1)
            # The best point keeps its exact residual: an estimate that fell short (a low-rank face's
            # normal part beyond its leading singular values) would otherwise stay "best", unpolished,
            # while the descent's own points lost to it (china.jpg completion: 40 outer iterations at an
            # estimate of 2.4e-5 whose residual was 6.3e-4, five times the target).
            self.best, self.best_settled = (point, kkt), False
        return point, kkt, data, certifying
