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
                tol: float) -> tuple[Tensor, float]:
    """``(snapped θ, KKT residual there)`` for ``minimise loss(θ) + λ‖θ‖`` (or s.t. θ ∈ set)."""
    cut = snap_tol(theta, tol)
    point = constraint.project(theta.detach(), cut).requires_grad_()
    (grad,) = torch.autograd.grad(loss(point), point)
    return point.detach(), constraint.kkt_residual(point.detach(), grad, cut)


def gradient_scale(loss: Callable[[Tensor], Tensor], shape, device, dtype) -> float:
    """‖∇loss(0)‖: the problem's natural scale for relative KKT tolerances."""
    zero = torch.zeros(shape, device=device, dtype=dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(zero), zero)
    return max(float(grad.norm()), 1e-12)
