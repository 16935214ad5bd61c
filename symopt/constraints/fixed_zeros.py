r"""Fixed zeros $θ[\mathrm{mask}] = 0$: the ``Subspace`` constraint in the coordinate basis, elementwise.

$θ[\sim \mathrm{mask}] = w$ and $θ[\mathrm{mask}] = a ⊙ b$. Symmetry $(a_i, b_i) → (-a_i, -b_i)$; fixed
subspace $θ[\mathrm{mask}] = 0$; penalty $λ‖θ[\mathrm{mask}]‖_1$, exact once $λ ≥ ‖∇ℓ(θ^*)[\mathrm{mask}]‖_∞$.
No dense basis is formed: memory and time are O(numel).

Layout: ``w`` holds only the free entries, so no parameter (nor its gradient or optimiser
state) is spent on a slot that the mask overwrites. The entries are placed by one gather,
$θ = \mathrm{cat}(w, a ⊙ b)[\mathrm{source}]$, whose backward is a scatter: a bool mask would be 4× smaller
than the int32 ``source`` but masked kernels are 3–4× slower on CPU (measured at 512², see
``benchmarks/RESULTS.md``), and the step time matters more than 1 byte per entry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, Example, hadamard_balance, split_product


class FixedZeros(Constraint):
    r"""Entries selected by a boolean ``mask`` must be zero (exact ℓ₁ penalty on them).

    Args:
        mask: bool tensor of the parameter's shape; True marks an entry that must be 0.
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ a running estimate of the
            multipliers $‖(∂ℓ/∂θ)[\mathrm{mask}]‖_∞$.
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.
        total_steps: the optimizer steps until training ends: the set then *lands* at
            ``round(ramp[1] · total_steps)`` (the decayed factors go to 0, their mirror's fixed
            subspace, which is the set) and holds exactly from then on, whatever the optimizer.
        ramp: ``(start, end)`` fractions of ``total_steps``; the landing is at ``end`` (default 0.75).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 3)
        >>> mask = ~torch.eye(3, dtype=torch.bool)          # keep only the diagonal
        >>> _ = symopt.constrain(lin, "weight", symopt.FixedZeros(mask, strength=1.0))
        >>> free, a, b = symopt.list_constraints(lin)[0].members[0].factors
        >>> free.shape, a.shape                              # the 3 free entries; a pair per zero
        (torch.Size([3]), torch.Size([6]))
    """

    kind = "fixed_zeros"
    linear = True
    decayed = (1, 2)

    @classmethod
    def example(cls) -> Example:
        mask = torch.zeros(4, 5, dtype=torch.bool)
        mask[0, :2] = mask[3, 4] = True
        return Example(lambda: cls(mask, 1.0), ((4, 5),))

    def __init__(self, mask, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0,
                 total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75)) -> None:
        super().__init__(strength, seed=seed, margin=margin, total_steps=total_steps, ramp=ramp)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"{type(mask).__name__}" + (f" of dtype {mask.dtype}" if isinstance(mask, Tensor) else "")
            raise TypeError(f"FixedZeros: mask must be a bool torch.Tensor, got {got}; use mask.bool()")
        if not bool(mask.any()):
            raise ValueError("FixedZeros: mask selects no entry, so it constrains nothing; mark zeros with True")
        flat = mask.detach().reshape(-1)
        self.shape = tuple(mask.shape)
        self.free = int(flat.numel() - flat.sum())
        # source[i]: where θ's entry i sits in cat(w, a ⊙ b) (free entries first, in order)
        source = torch.empty_like(flat, dtype=torch.int64)
        source[~flat] = torch.arange(self.free, device=flat.device)
        source[flat] = torch.arange(self.free, flat.numel(), device=flat.device)
        small = flat.numel() <= torch.iinfo(torch.int32).max
        self.register_buffer("source", source.int() if small else source, persistent=False)

    @property
    def mask(self) -> Tensor:
        """The bool mask (True: the entry must be 0), rebuilt from ``source``."""
        return (self.source >= self.free).view(self.shape)

    @property
    def zeros(self) -> int:
        """Number of entries the mask constrains."""
        return self.source.numel() - self.free

    def validate(self, tensor: Tensor, name: str) -> None:
        if self.shape != tuple(tensor.shape):
            raise ValueError(
                f"FixedZeros on '{name}': mask has shape {self.shape} but the parameter has "
                f"shape {tuple(tensor.shape)}; pass a bool mask of the parameter's shape"
            )

    def forward(self, w: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([w, a * b]).index_select(0, self.source).view(self.shape)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = self.mask
        a, b = split_product(value[mask], self.factorizer)
        return value[~mask], a, b

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return value.masked_fill(self.mask, 0.0)

    def induced_norm(self, value: Tensor) -> Tensor:
        return value.abs().masked_fill(~self.mask, 0.0).sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        # called on every backward pass under strength="auto": masked_fill, not a (slower) masked_select
        return grad.abs().masked_fill(~self.mask, 0.0).amax()

    def balance(self, w: Tensor, a: Tensor, b: Tensor) -> float:
        return hadamard_balance(a, b)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        return f"zeros {self.zeros}/{value.numel()}"

    def extra_repr(self) -> str:
        return f"zeros={self.zeros}, {super().extra_repr()}"
