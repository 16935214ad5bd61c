"""Fixed zeros ``θ[mask] = 0``: the ``Subspace`` constraint in the coordinate basis, elementwise.

``θ = w`` off the mask and ``θ[mask] = a ⊙ b``. Symmetry ``(a_i, b_i) → (−a_i, −b_i)``; fixed
subspace ``θ[mask] = 0``; penalty ``λ‖θ[mask]‖₁``, exact once ``λ ≥ ‖∇ℓ(θ*)[mask]‖_∞``.
No dense basis is formed: memory and time are O(numel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, hadamard_balance, split_product


class FixedZeros(Constraint):
    r"""Entries selected by a boolean ``mask`` must be zero (exact ℓ₁ penalty on them).

    Args:
        mask: bool tensor of the parameter's shape; True marks an entry that must be 0.
        strength: λ (> 0), or ``"auto"`` (default): ``margin ×`` a running estimate of the
            multipliers ``‖(∂ℓ/∂θ)[mask]‖_∞``.
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 3)
        >>> mask = ~torch.eye(3, dtype=torch.bool)          # keep only the diagonal
        >>> _ = symopt.constrain(lin, "weight", symopt.FixedZeros(mask, strength=1.0))
        >>> lin.parametrizations.weight.original1.shape     # one factor pair per masked entry
        torch.Size([6])
    """

    kind = "fixed_zeros"
    linear = True
    decayed = (1, 2)

    def __init__(self, mask, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0) -> None:
        super().__init__(strength, seed=seed, margin=margin)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"{type(mask).__name__}" + (f" of dtype {mask.dtype}" if isinstance(mask, Tensor) else "")
            raise TypeError(f"FixedZeros: mask must be a bool torch.Tensor, got {got}; use mask.bool()")
        if not bool(mask.any()):
            raise ValueError("FixedZeros: mask selects no entry, so it constrains nothing; mark zeros with True")
        self.register_buffer("mask", mask.detach().clone(), persistent=False)
        self.register_buffer("index", mask.reshape(-1).nonzero().squeeze(1), persistent=False)

    def validate(self, tensor: Tensor, name: str) -> None:
        if tuple(self.mask.shape) != tuple(tensor.shape):
            raise ValueError(
                f"FixedZeros on '{name}': mask has shape {tuple(self.mask.shape)} but the parameter has "
                f"shape {tuple(tensor.shape)}; pass a bool mask of the parameter's shape"
            )

    def forward(self, w: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return w.reshape(-1).index_put((self.index,), a * b).view_as(w)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b = split_product(value.reshape(-1)[self.index], self.factorizer)
        return self.project(value), a, b

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return value.masked_fill(self.mask, 0.0)

    def induced_norm(self, value: Tensor) -> Tensor:
        return value[self.mask].abs().sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return grad[self.mask].abs().amax()

    def balance(self, w: Tensor, a: Tensor, b: Tensor) -> float:
        return hadamard_balance(a, b)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        return f"zeros {int(self.index.numel())}/{value.numel()}"

    def extra_repr(self) -> str:
        return f"zeros={int(self.index.numel())}, {super().extra_repr()}"
