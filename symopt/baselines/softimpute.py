r"""Accelerated SoftImpute: the specialised solver a user would otherwise pick for nuclear-norm
matrix completion, $\min_W \tfrac12 ‖P_Ω(W - M)‖^2_F + λ‖W‖_*$.

SoftImpute (Mazumder, Hastie & Tibshirani, JMLR 2010) is proximal gradient with step 1 (the loss's
Hessian is the mask, so $L = 1$ exactly): $W ← \operatorname{SVT}_λ\big(P_Ω(M) + P_Ω^\perp(W)\big)$.
The accelerated variant here follows AIS-Impute (Yao & Kwok, IJCAI 2015): Nesterov extrapolation
with adaptive restart, and the singular-value thresholding done on a *warm-started subspace*, one
block power step per iteration from the previous iterate's right singular vectors, instead of a
full SVD. That is what makes the method cheap at low rank: an iteration costs $O(mnk)$ for a
working width $k$ a few above the current rank, which grows when every computed singular value
survives the threshold.

It is a reference for [`symopt.solve`][symopt.solve] on completion problems: the full-SVD proximal
method (``symopt.baselines.projected``) pays $O(mn\min(m, n))$ per step and is not a fair peer.
"""

from __future__ import annotations

import math
import time

import torch

from ..optimality import gradient_scale, kkt_at_snap
from ..problems import Problem
from ..result import NotApplicable, Result, elapsed_since

_CONTINUATION = 0.7  # λ_t = max(λ, 0.7^t·λ_max): Toh & Yun's continuation (2010). Started at λ itself,
# the iterates pass through ranks near min(m, n) when λ is small, and each step pays for them
_OVERSAMPLE = 5  # extra subspace columns beyond the current rank: they let the next singular
# value be seen (and the rank grow) without a restart of the subspace


def solve_softimpute(problem: Problem, device=None, dtype=torch.float64, tol: float = 1e-6,
                     max_iter: int = 10_000, seed: int = 0) -> Result:
    r"""Accelerated SoftImpute with a warm-started randomized SVD, for ``matrix_completion`` problems.

    Iterates $Z = W_e + P_Ω(M - W_e)$ at the extrapolated point $W_e$, then
    $W ← U\,(S - λ)_+ V^\top$ from a rank-$k$ subspace of $Z$ (one power step from the last right
    singular vectors, QR, and an SVD of the $k × n$ projection). $k$ doubles whenever every one of
    its singular values exceeds λ, so the threshold is never applied to a truncated spectrum at the
    answer. It stops when the gradient mapping $‖W_{t+1} - W_e‖_F ≤ \mathrm{tol}·‖P_Ω M‖_F$ and then
    checks the KKT residual at the answer with a full SVD (outside the timer, like the scikit-learn
    baselines' status): if that check fails it tightens its own test tenfold and carries on.

    Args:
        problem: a ``matrix_completion`` [`Problem`][symopt.Problem] with a fixed λ.
        device: where to run (default CPU).
        dtype: the precision (default float64).
        tol: relative tolerance, the same scale as [`symopt.solve`][symopt.solve]'s.
        max_iter: iterations before ``status="max_iter"``.
        seed: seed of the first subspace's random columns.

    Returns:
        Result: ``solver="softimpute"``, with the iteration history (seconds, objective, gradient
        mapping) and the KKT residual measured at the answer.

    Raises:
        NotApplicable: another family, or a budget problem (``target_rank``).

    Examples:
        >>> import symopt
        >>> from symopt.baselines.softimpute import solve_softimpute
        >>> from symopt.problems import make_matrix_completion
        >>> problem = make_matrix_completion(m=40, n=30, rank=3)
        >>> result = solve_softimpute(problem)
        >>> result.status, abs(result.objective - symopt.solve(problem).objective) < 1e-8 * result.objective
        ('optimal', True)
    """
    problem.require_strength("softimpute")
    if problem.meta.get("family") != "matrix_completion":
        raise NotApplicable("SoftImpute solves nuclear-norm matrix completion only")
    device = torch.device(device or "cpu")
    data = problem.data_on(device, dtype)
    lam = float(problem.meta["strength"])
    mask = data["mask"].bool()
    observed = torch.where(mask, data["M"], torch.zeros((), device=device, dtype=dtype))  # P_Ω(M), NaN-free
    c = problem.constraint().to(device=device, dtype=dtype)
    loss = lambda w: problem.loss(w, **data)  # noqa: E731
    scale = max(float(observed.norm()), 1e-300)
    m, n = observed.shape
    full = min(m, n)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    basis = torch.randn(n, min(full, 2 * _OVERSAMPLE), generator=generator, dtype=dtype).to(device)

    def svt(Z: torch.Tensor, basis: torch.Tensor, threshold: float):
        """``(U·(S - threshold)_+, V, rank, S, new basis)`` from the subspace spanned by ``Z @ basis``."""
        while True:
            Q, _ = torch.linalg.qr(Z @ basis)
            U_small, S, Vh = torch.linalg.svd(Q.T @ Z, full_matrices=False)
            keep = int((S > threshold).sum())
            width = basis.shape[1]
            if keep < width or width == full:
                break
            # every computed value survives: the spectrum may go on above λ, so widen and redo
            extra = torch.randn(n, width, generator=generator, dtype=dtype).to(device)
            basis = torch.cat([Vh.T, extra], dim=1)[:, :min(full, 2 * width)]
        width = min(full, max(keep + _OVERSAMPLE, 2))
        return (Q @ U_small[:, :keep]) * (S[:keep] - threshold), Vh[:keep].T, keep, S, Vh[:width].T

    x = torch.zeros(m, n, device=device, dtype=dtype)
    z, t = x, 1.0
    level = float(torch.linalg.matrix_norm(observed, ord=2)) / _CONTINUATION  # λ_max: W = 0 is optimal there
    inner_tol, history, status, kkt = tol, [], "max_iter", None
    start = time.perf_counter()
    it = 0
    while it < max_iter:
        it += 1
        Z = torch.where(mask, observed, z)  # z + P_Ω(M − z): the gradient step with L = 1
        level = max(lam, level * _CONTINUATION)
        US, V, rank, S, basis = svt(Z, basis, level)
        x_new = US @ V.T
        mapping = float((x_new - z).norm())
        if float(((x_new - x) * (x_new - z)).sum()) > 0:  # adaptive restart (O'Donoghue & Candès)
            t = 1.0
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
        nuclear = float((S[:rank] - level).sum())  # ‖x‖_*, whatever the stage: the objective is at λ
        residual = torch.where(mask, x - observed, torch.zeros((), device=device, dtype=dtype))
        history.append((time.perf_counter() - start, 0.5 * float(residual.square().sum()) + lam * nuclear, mapping))
        if not math.isfinite(mapping):
            status = "nan"
            break
        if mapping <= inner_tol * scale and level == lam:
            # the user's check, outside the timer: the KKT residual at the answer (one full SVD)
            paused = time.perf_counter()
            _, kkt = kkt_at_snap(loss, c, x, tol)
            start += time.perf_counter() - paused
            if kkt <= tol * gradient_scale(loss, problem.shape, device, dtype):
                status = "optimal"
                break
            inner_tol /= 10
            z, t = x, 1.0
    seconds = elapsed_since(start, device)
    if kkt is None or status != "optimal":
        _, kkt = kkt_at_snap(loss, c, x, tol)
    return Result.from_point(problem, x, solver="softimpute", status=status, seconds=seconds, history=history,
                             kkt_residual=kkt, device=device, iterations=it)
