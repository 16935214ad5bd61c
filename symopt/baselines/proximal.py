"""Projected / proximal gradient (FISTA with backtracking and restart) on the original variable.

The classic alternative to DCS: the constraint's ``prox`` (soft-thresholding, block shrinkage, SVT)
or, for the linear kinds, its ``project``. Same torch loss, same device.
"""

from __future__ import annotations

import math
import time

import torch

from ..optimality import gradient_scale, kkt_at_snap
from ..problems import Problem
from ..result import Result, elapsed_since


def solve_proximal(problem: Problem, device=None, dtype=torch.float64, tol: float = 1e-6,
                   max_iter: int = 20_000) -> Result:
    r"""Accelerated proximal / projected gradient (FISTA) on the original variable θ.

    Penalty kinds take the proximal step of $λ‖·‖$ (soft thresholding of entries, groups or
    singular values); linear kinds project onto the set, $θ - O O^\top θ$. The step $1/L$ is found
    by backtracking on the quadratic upper bound. It stops when the KKT residual
    $≤ \mathrm{tol} × ‖∇\mathrm{loss}(0)‖$, the same test as [`symopt.solve`][symopt.solve].

    Args:
        problem: a [`Problem`][symopt.Problem] with a fixed λ.
        device: where to run (default CPU).
        dtype: the precision (default float64).
        tol: relative KKT tolerance.
        max_iter: iterations before ``status="max_iter"``.

    Returns:
        Result: ``solver="proximal"``, with the iteration history.

    Raises:
        NotApplicable: a budget problem (no fixed λ).

    Examples:
        >>> from symopt.baselines import solve_proximal
        >>> from symopt.problems import make_equality_ls
        >>> result = solve_proximal(make_equality_ls(n=40, d=10, constraints=2))
        >>> result.status, result.violation < 1e-12
        ('optimal', True)
    """
    problem.require_strength("proximal")
    device = torch.device(device or "cpu")
    data = problem.data_on(device, dtype)
    c = problem.constraint().to(device=device, dtype=dtype)
    step_of = c.prox  # the norm's proximal map; a linear kind's is the projection onto its set

    loss = lambda x: problem.loss(x, **data)  # noqa: E731

    def loss_and_grad(x):
        x = x.detach().requires_grad_()
        value = loss(x)
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad

    x = torch.zeros(problem.shape, device=device, dtype=dtype)
    scale = gradient_scale(loss, problem.shape, device, dtype)
    z, t, L = x.clone(), 1.0, 1.0
    history, status = [], "max_iter"
    start = time.perf_counter()
    for it in range(1, max_iter + 1):
        fz, gz = loss_and_grad(z)
        while True:  # backtracking on the quadratic upper bound
            x_new = step_of(z - gz / L, 1.0 / L)
            diff = x_new - z
            f_new, _ = loss_and_grad(x_new)
            if f_new <= fz + float((gz * diff).sum()) + 0.5 * L * float(diff.square().sum()) + 1e-15 * abs(fz):
                break
            L *= 2.0
        if float(((x_new - x) * (x_new - z)).sum()) > 0:  # adaptive restart (O'Donoghue & Candès)
            t = 1.0
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + (t - 1) / t_new * (x_new - x)
        x, t = x_new, t_new
        L /= 1.5  # let the step grow back
        point, kkt = kkt_at_snap(loss, c, x, tol)
        history.append((time.perf_counter() - start, problem.value(point, data, c), kkt))
        if not math.isfinite(kkt):
            status = "nan"
            break
        if kkt <= tol * scale:
            status = "optimal"
            break
    seconds = elapsed_since(start, device)
    return Result.from_point(problem, x, solver="projected" if c.linear else "proximal", status=status,
                             seconds=seconds, history=history, device=device)
