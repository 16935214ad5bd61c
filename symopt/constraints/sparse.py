"""Elementwise sparsity: ``w = u ⊙ v``.

Symmetry: for each coordinate, the mirror ``(u_i, v_i) → (−u_i, −v_i)`` leaves the loss unchanged;
its fixed subspace is ``u_i = v_i = 0``, i.e. ``w_i = 0``.
Penalty: ``min_{u⊙v=w} (λ/2)(‖u‖² + ‖v‖²) = λ‖w‖₁`` (AM–GM), so decaying the factors solves the
Lasso-penalised problem; exactness threshold for a zero entry: ``|∂ℓ/∂w_i| ≤ λ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, hadamard_balance, split_product


class Sparse(Constraint):
    r"""Elementwise sparsity through the Hadamard factorisation ``w = u ⊙ v``.

    With decay ``(λ/2)(‖u‖² + ‖v‖²)`` the training objective equals ``ℓ(w) + λ‖w‖₁`` at its minima.

    Args:
        strength: λ, the coefficient of the induced ``ℓ₁`` penalty (> 0).
        seed: seed of the random, sign-independent factor initialisation.

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> w0 = lin.weight.detach().clone()
        >>> _ = symopt.constrain(lin, "weight", symopt.Sparse(strength=1e-2))
        >>> torch.allclose(lin.weight, w0)
        True
    """

    kind = "sparse"
    decayed = (0, 1)

    def __init__(self, strength: float = 1e-3, *, seed: int = 0) -> None:
        super().__init__(strength, seed=seed)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return u * v

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        return split_product(value, self.factorizer)

    def prox(self, value: Tensor, step: float) -> Tensor:
        return value.sign() * (value.abs() - step * self.strength).clamp_min(0)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0) -> float:
        lam = self.strength
        on = value.abs() > tol
        res = torch.where(on, (grad + lam * value.sign()).abs(), (grad.abs() - lam).clamp_min(0))
        return float(res.norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return torch.where(value.abs() > tol, value, torch.zeros_like(value))

    def induced_norm(self, value: Tensor) -> Tensor:
        return value.abs().sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return grad.abs().amax()

    def balance(self, u: Tensor, v: Tensor) -> float:
        return hadamard_balance(u, v)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        nonzero = int((value.abs() > tol).sum())
        return f"density {nonzero / max(value.numel(), 1):.3g} ({nonzero}/{value.numel()})"
