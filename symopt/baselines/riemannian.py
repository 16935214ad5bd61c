r"""geoopt: rank bounds the Riemannian way, $W = U \operatorname{diag}(s) V^\top$ with ``U``, ``V`` on Stiefel
manifolds, trained by RiemannianAdam. Applies to problems whose constraint has a rank bound on a matrix
(``constraint.fixed_rank(shape)``: ``LowRank`` with ``max_rank``); a nuclear penalty, if the problem
has one, is $λ \sum |s_i|$."""

from __future__ import annotations

import time

import torch

from ..constraints import Constraint
from ..optimality import gradient_scale, loss_gradient
from ..problems import Problem
from ..result import NotApplicable, Result, elapsed_since


def solve_geoopt(problem: Problem, device=None, dtype=torch.float64, tol: float = 1e-6, max_iter: int = 10_000,
                 lr: float = 0.3, seed: int = 0) -> Result:
    r"""Hard rank ``r`` by Riemannian optimisation: $W = U \operatorname{diag}(s) V^\top$ with ``U``, ``V`` on Stiefel manifolds.

    RiemannianAdam (geoopt; learning rate decayed ×0.5 on plateaus) from a random orthonormal
    start. For a penalised problem the penalty $λ\sum |s_i|$ is added. It stops when the KKT
    residual on the rank-r manifold $≤ \mathrm{tol} × ‖∇\mathrm{loss}(0)‖$.

    Args:
        problem: a matrix [`Problem`][symopt.Problem] whose constraint is ``LowRank(max_rank=r)``.
        device: where to run (default CPU).
        dtype: the precision (default float64).
        tol: relative KKT tolerance.
        max_iter: iterations before ``status="max_iter"``.
        lr: the initial learning rate.
        seed: seed of the random start.

    Returns:
        Result: ``solver="geoopt[RiemannianAdam]"``, with the iteration history.

    Raises:
        ImportError: geoopt is not installed (``pip install 'symopt[baselines]'``).
        NotApplicable: the problem has no rank bound, is not a matrix, or is a budget problem.

    Examples:
        >>> from symopt.baselines import solve_geoopt
        >>> from symopt.problems import make_low_rank_regression
        >>> problem = make_low_rank_regression(n=60, p=8, q=6, rank=2, hard_rank=2, orthogonal=True)
        >>> result = solve_geoopt(problem, max_iter=3000)
        >>> float((result.x - problem.meta["solution"]).abs().max()) < 1e-4
        True
    """
    try:
        import geoopt
    except ImportError as err:  # pragma: no cover
        raise ImportError("the geoopt baseline needs geoopt: pip install 'symopt[baselines]'") from err
    problem.require_strength("geoopt")
    c = problem.constraint()
    rank = c.fixed_rank(tuple(problem.shape))
    if rank is None:
        raise NotApplicable("needs a rank bound on a matrix (a constraint with fixed_rank, e.g. LowRank max_rank)")
    device = torch.device(device or "cpu")
    data = problem.data_on(device, dtype)
    loss = lambda W: problem.loss(W, **data)  # noqa: E731
    c = c.to(device=device, dtype=dtype)
    U, V, s = stiefel_start(problem.shape, rank, seed, device, dtype)
    opt = geoopt.optim.RiemannianAdam([U, V, s], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=50)
    penalty = c.strength if problem.penalized else 0.0
    scale = gradient_scale(loss, problem.shape, device, dtype)
    history, status = [], "max_iter"
    start = time.perf_counter()
    for it in range(1, max_iter + 1):
        opt.zero_grad()
        W = (U * s) @ V.mT
        objective = loss(W) + penalty * s.abs().sum()
        objective.backward()
        opt.step()
        sched.step(float(objective.detach()))
        if it % 25 == 0:
            kkt = rank_kkt(c, loss, ((U * s) @ V.mT).detach())
            history.append((time.perf_counter() - start, float(objective.detach()), kkt))
            if kkt <= tol * scale:
                status = "optimal"
                break
    seconds = elapsed_since(start, device)
    return Result.from_point(problem, (U * s) @ V.mT, solver="geoopt[RiemannianAdam]", status=status,
                             seconds=seconds, history=history, iterations=it, device=device)


def stiefel_start(shape, r: int, seed: int, device, dtype) -> tuple:
    r"""The start of the geoopt baseline: ``U``, ``V`` random orthonormal (Stiefel manifold
    parameters) and ``s = 1e-3``, so $W = U \operatorname{diag}(s) V^\top$ starts near 0."""
    import geoopt

    m, n = shape
    gen = torch.Generator().manual_seed(seed)
    stiefel = geoopt.manifolds.Stiefel()
    U = geoopt.ManifoldParameter(torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=dtype)).Q.to(device),
                                 manifold=stiefel)
    V = geoopt.ManifoldParameter(torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=dtype)).Q.to(device),
                                 manifold=stiefel)
    return U, V, torch.nn.Parameter(torch.full((r,), 1e-3, device=device, dtype=dtype))


def rank_kkt(constraint: Constraint, loss, W) -> float:
    """The KKT residual of ``W`` on the rank-r manifold (singular values below 1e-12·max|W| count as 0)."""
    return constraint.kkt_residual(W, loss_gradient(loss, W), 1e-12 * float(W.abs().max()))
