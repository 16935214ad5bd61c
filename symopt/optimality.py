"""Layer 3 — optimality measures shared by solvers and baselines: the snap tolerance and the KKT
residual of a problem at a point."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .constraints import Constraint


def snap_tol(theta: Tensor, tol: float) -> float:
    """Zeros arrive geometrically under DCS (and to rounding under SVT), never exactly: entries,
    groups or singular values below ``max(√eps, tol)`` of the largest count as zero. Safe for
    certification, because the KKT residual is evaluated at the snapped point."""
    return max(math.sqrt(torch.finfo(theta.dtype).eps), tol) * max(1e-12, float(theta.abs().max()))


def kkt_at_snap(loss: Callable[[Tensor], Tensor], constraint: Constraint, theta: Tensor,
                tol: float, levels: int = 5) -> tuple[Tensor, float]:
    """``(snapped θ, KKT residual there)`` for ``minimise loss(θ) + λ‖θ‖`` (or s.t. θ ∈ set).

    DCS drives an entry that belongs at zero to zero geometrically, slowly when its gradient sits
    just below λ. Snapping at ``snap_tol`` and at up to ``levels − 1`` tenfold larger thresholds, the
    point with the smallest residual is returned: the residual certifies the point returned, however
    it was obtained. Linear kinds project exactly, so one level suffices.
    """
    cut = snap_tol(theta, tol)
    best = None
    for level in range(1 if constraint.linear else levels):
        point = constraint.project(theta.detach(), cut * 10**level).requires_grad_()
        (grad,) = torch.autograd.grad(loss(point), point)
        residual = constraint.kkt_residual(point.detach(), grad, cut * 10**level)
        if best is None or residual < best[1]:
            best = (point.detach(), residual)
    return best


def gradient_scale(loss: Callable[[Tensor], Tensor], shape, device, dtype) -> float:
    """‖∇loss(0)‖: the problem's natural scale for relative KKT tolerances."""
    zero = torch.zeros(shape, device=device, dtype=dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(zero), zero)
    return max(float(grad.norm()), 1e-12)
