"""Structured (group) sparsity: one scalar gate per slice along an axis, ``w_g = s_g · ω_g``.

Symmetry: ``(s_g, ω_g) → (−s_g, −ω_g)``; fixed subspace ``s_g = 0, ω_g = 0``, i.e. ``w_g = 0``.
Penalty: ``min_{s ω = w_g} (λ/2)(s² + ‖ω‖²) = λ‖w_g‖₂``, so the decay solves the group lasso
``ℓ(w) + λ Σ_g ‖w_g‖₂``; a zero group is exact when ``‖∂ℓ/∂w_g‖₂ ≤ λ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, random_gate


class GroupSparse(Constraint):
    r"""Group sparsity: the slices ``w.select(dim, g)`` are the groups, each with a scalar gate.

    Factors: ``s`` of shape ``(w.shape[dim],)`` and ``ω`` of the shape of ``w``;
    ``w = s[g] · ω`` broadcast along ``dim``. Decay ``(λ/2)(‖s‖² + ‖ω‖²)`` induces ``λ Σ_g ‖w_g‖₂``.

    Args:
        dim: the axis that indexes the groups (``0`` = output rows / channels of a Linear / Conv,
            ``1`` = input features of a Linear). Negative values count from the end.
        strength: λ (> 0).
        seed: seed of the factor initialisation.

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(5, 3)
        >>> _ = symopt.constrain(lin, "weight", symopt.GroupSparse(dim=1, strength=1e-2))
        >>> lin.parametrizations.weight.original0.shape    # one gate per input feature
        torch.Size([5])
    """

    kind = "group_sparse"
    decayed = (0, 1)

    def __init__(self, dim: int = 0, strength: float = 1e-3, *, seed: int = 0) -> None:
        super().__init__(strength, seed=seed)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"GroupSparse: dim must be an int axis, got {type(dim).__name__}")
        self.dim = dim

    def validate(self, tensor: Tensor, name: str) -> None:
        if tensor.dim() == 0:
            raise ValueError(f"GroupSparse on '{name}': a 0-d tensor has no axis to group along")
        if not -tensor.dim() <= self.dim < tensor.dim():
            raise ValueError(
                f"GroupSparse on '{name}': dim={self.dim} is out of range for a tensor of shape "
                f"{tuple(tensor.shape)}; choose dim in [{-tensor.dim()}, {tensor.dim() - 1}]"
            )

    def _axis(self, value: Tensor) -> int:
        return self.dim % value.dim()

    def _gate_shape(self, value: Tensor) -> list[int]:
        shape = [1] * value.dim()
        shape[self._axis(value)] = -1
        return shape

    def group_norms(self, value: Tensor) -> Tensor:
        """``‖w_g‖₂`` for every group, shape ``(w.shape[dim],)``."""
        axis = self._axis(value)
        return value.movedim(axis, 0).reshape(value.shape[axis], -1).norm(dim=1)

    def forward(self, gates: Tensor, omega: Tensor) -> Tensor:
        return gates.view(self._gate_shape(omega)) * omega

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        gates = random_gate(self.group_norms(value), self.factorizer)
        # ω_g = w_g / s_g; zero groups have ω_g = 0 with a live gate so ω_g gets gradient.
        return gates, value / gates.view(self._gate_shape(value))

    def prox(self, value: Tensor, step: float) -> Tensor:
        norms = self.group_norms(value)
        scale = (1 - step * self.strength / norms.clamp_min(torch.finfo(value.dtype).tiny)).clamp_min(0)
        return value * scale.view(self._gate_shape(value))

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0) -> float:
        lam = self.strength
        norms = self.group_norms(value)
        on = norms > tol
        unit = value / norms.clamp_min(torch.finfo(value.dtype).tiny).view(self._gate_shape(value))
        active = self.group_norms(grad + lam * unit)
        res = torch.where(on, active, (self.group_norms(grad) - lam).clamp_min(0))
        return float(res.norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        keep = (self.group_norms(value) > tol).to(value.dtype)
        return value * keep.view(self._gate_shape(value))

    def induced_norm(self, value: Tensor) -> Tensor:
        return self.group_norms(value).sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return self.group_norms(grad).amax()

    def balance(self, gates: Tensor, omega: Tensor) -> float:
        gsq = gates.detach().square()
        osq = self.group_norms(omega.detach()).square()
        denom = float((gsq + osq).sum())
        return float((gsq - osq).abs().sum()) / denom if denom > 0 else 0.0

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        norms = self.group_norms(value.detach())
        alive = int((norms > tol).sum())
        return f"groups {alive}/{norms.numel()} (dim={self.dim})"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, strength={self.strength:g}"
