r"""Fenchel duals of the penalised families: a dual-feasible point from any primal θ, and its value.

For $\mathrm{minimise} F(Aθ) + λ‖θ‖$ the dual is $\mathrm{maximise} -F*(ν) s.t. ‖A^\top ν‖_* ≤ λ$ ($‖·‖_*$ the dual
norm: ℓ∞, largest group norm, spectral norm). From θ take $ν = ∇F(Aθ)$ — the optimal dual point
when θ is optimal — and scale it into the feasible set: $A^\top ν = ∇ℓ(θ)$, so the scale is
$\min(1, λ / ‖∇ℓ(θ)‖_*)$. Weak duality makes $P(θ) - D(ν) ≥ P(θ) - P* ≥ 0$: the gap certifies
how far θ is from optimal in objective, without knowing the optimum.

Each function returns $D(ν)$ and $ν$ given θ, the data, and the constraint (for λ and ‖·‖_*).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..constraints import Constraint
from .design import rmatvec
from .glm import DataTerm, LogLoss, SquaredError


def _feasible(nu: Tensor, grad: Tensor, constraint: Constraint) -> Tensor:
    dual = float(constraint.dual_norm(grad))
    return nu * min(1.0, constraint.strength / dual) if dual > 0 else nu


def completion_dual(theta: Tensor, data: dict[str, Tensor], constraint: Constraint) -> tuple[float, Tensor]:
    r"""$F(Θ) = \tfrac12 ‖P_Ω(Θ - M)‖^2$ (A = identity): $F*(N) = \langle N, M\rangle + \tfrac12 ‖N‖^2$ for N supported on Ω."""
    M, mask = data["M"], data["mask"]
    nu = mask * (theta - M)
    nu = _feasible(nu, nu, constraint)
    return float(-(nu * M).sum() - 0.5 * nu.square().sum()), nu


def glm_dual(term):
    r"""The Fenchel dual of a family with a [`DataTerm`][symopt.problems.glm.DataTerm]: sample
    weights, a profiled intercept and an elastic-net ridge.

    $F(z) = \sum ω_i f(z_i, y_i)$ ($ω$ the normalised weights). Its conjugate, at $ν$ with
    $ν_i = 0$ where $ω_i = 0$: least squares $\langle ν, y\rangle + \tfrac12 \sum ν_i^2/ω_i$; log-loss
    $\sum ω_i H(p_i)$, $p = y + ν/ω$, $H(p) = p \log p + (1 - p) \log(1 - p)$. The profiled
    intercept adds the constraint $\sum ν_i = 0$, which $ν = ∇F(Xw + b*)$ meets exactly
    (``b*`` zeroes it) and every rescaling keeps.

    Without a ridge, $ν$ is scaled into $‖X^\top ν‖_* ≤ λ$ as in the plain families. With a ridge
    $μ > 0$ the regulariser $G = (μ/2)‖w‖^2 + λΦ(w)$ has a finite conjugate everywhere,
    $G*(s) = \langle s, w\rangle - G(w)$ at $w = \operatorname{prox}_{λΦ/μ}(s/μ)$ (asked of the constraint: any penalty
    kind), and $D(ν) = -F*(ν) - G*(-X^\top ν)$ needs no scaling.
    """

    def dual(theta: Tensor, data: dict[str, Tensor], constraint: Constraint) -> tuple[float, Tensor]:
        X, weights = data["X"], data.get("weights")
        y = data["y"] if "y" in data else data["Y"]  # low_rank_regression names its targets Y
        n = X.shape[0]
        theta = theta.reshape(X.shape[1], *y.shape[1:])
        with torch.no_grad():
            z = term.predictor(theta, X, y, weights)
        omega = (torch.full((n,), 1.0 / n, dtype=z.dtype, device=z.device) if weights is None
                 else weights.to(z.dtype)).reshape(-1, *([1] * (z.dim() - 1)))
        nu = omega * term.fit.slope(z, y)
        grad = rmatvec(X, nu)
        if term.ridge:
            return float(-term.fit.conjugate(nu, y, omega) - _regulariser_conjugate(-grad, term.ridge, constraint)), nu
        nu = _feasible(nu, grad, constraint)
        return float(-term.fit.conjugate(nu, y, omega)), nu

    return dual


def _regulariser_conjugate(s: Tensor, ridge: float, constraint: Constraint) -> Tensor:
    r"""``G*(s)`` for $G(w) = (\mathrm{ridge}/2)‖w‖^2 + λΦ(w)$: the sup is attained at $\operatorname{prox}_{λΦ/\mathrm{ridge}}(s/\mathrm{ridge})$."""
    w = constraint.prox(s / ridge, 1.0 / ridge)
    return (s * w).sum() - 0.5 * ridge * w.square().sum() - constraint.objective_term(w)


# The plain families' duals: unweighted, no intercept, no ridge (``F*(ν) = ⟨ν, y⟩ + (n/2)‖ν‖²`` for
# least squares, vector or matrix targets; ``(1/n) Σ p log p + (1 − p) log(1 − p)``, ``p = nν + y``,
# for the mean log-loss).
least_squares_dual = glm_dual(DataTerm(SquaredError()))
logistic_dual = glm_dual(DataTerm(LogLoss()))
