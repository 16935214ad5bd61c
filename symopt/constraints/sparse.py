r"""Elementwise sparsity: $w = u ⊙ v$.

Symmetry: for each coordinate, the mirror $(u_i, v_i) → (-u_i, -v_i)$ leaves the loss unchanged;
its fixed subspace is $u_i = v_i = 0$, i.e. $w_i = 0$.
Penalty: $\min_{u⊙v=w} (λ/2)(‖u‖^2 + ‖v‖^2) = λ‖w‖_1$ (AM–GM), so decaying the factors solves the
Lasso-penalised problem; exactness threshold for a zero entry: $|∂ℓ/∂w_i| ≤ λ$.
Budget ``max_nonzero=k``: λ adapts to the point of the Lasso path with k non-zeros
(`symopt.constraints.budget`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, Example, Face, entering, hadamard_balance, largest, split_product
from .budget import RATE, entry_budget


class Sparse(Constraint):
    r"""Elementwise sparsity through the Hadamard factorisation $w = u ⊙ v$.

    With decay $(λ/2)(‖u‖^2 + ‖v‖^2)$ the training objective equals $ℓ(w) + λ‖w‖_1$ at its minima.

    Args:
        strength: λ, the coefficient of the induced $ℓ_1$ penalty (> 0). Default 1e-3; with a
            budget, the starting λ (default: taken from the first gradient).
        max_nonzero: budget ``k``: λ adapts during training until exactly k entries are non-zero
            (the Lasso-path point with support size k); [`symopt.finalize`][symopt.finalize] keeps the k largest.
        density: the budget as a fraction of the entries ($k = \mathrm{round}(\mathrm{density} · \mathrm{numel})$).
        adapt_rate: fraction of the way log λ moves toward the budget's target per optimizer step.
        total_steps: the steps until training ends: the budget then arrives on a schedule and lands
            exactly (see [`Constraint`][symopt.Constraint] and docs/hard-constraints.md).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        seed: seed of the random, sign-independent factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> w0 = lin.weight.detach().clone()
        >>> _ = symopt.constrain(lin, "weight", symopt.Sparse(strength=1e-2))
        >>> torch.allclose(lin.weight, w0)
        True
    """

    kind = "sparse"
    decayed = (0, 1)
    hadamard_atoms = True
    trims_decay = True

    @classmethod
    def example(cls) -> Example:
        return Example(lambda: cls(0.3), ((4, 5),))

    def entry_signs(self) -> str | None:
        return "any"

    def atom_ids(self, numel: int, device=None) -> Tensor | None:
        return torch.arange(numel, device=device)  # every coordinate is an atom

    def compressed_structure(self) -> str | None:
        return "entries"

    def __init__(self, strength: float | None = None, *, max_nonzero: int | None = None,
                 density: float | None = None, adapt_rate: float = RATE, seed: int = 0,
                 total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75),
                 land_on_the_way: bool | None = None) -> None:
        budget = entry_budget(max_nonzero, density, "Sparse")
        super().__init__(strength, seed=seed, budget=budget, adapt_rate=adapt_rate, total_steps=total_steps,
                         ramp=ramp, land_on_the_way=land_on_the_way)

    def validate(self, tensor: Tensor, name: str) -> None:
        self.resolve_budget(tensor.numel(), name, "non-zeros")

    def atoms(self, value: Tensor) -> Tensor:
        return value.abs().reshape(-1)

    # |−g| = |g|: the ℓ1 norm is symmetric, so the dual atoms need no negated copy (the base class's
    # two negations were two passes over the tensor at each of a budget's readings)
    def dual_atoms(self, grad: Tensor) -> Tensor:
        return self.atoms(grad)

    def top_dual_atoms(self, point: Tensor, count: int, reading: str = "point") -> Tensor:
        return self.atoms(point)

    def unresolved_atoms(self, factors: tuple[Tensor, ...]) -> Tensor:
        u, v = factors
        return ~((u * v).abs() < torch.finfo(u.dtype).tiny)  # (a NaN is kept: the guard's to see, not ours to hide)

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        u, v = factors
        self._zero_outside(u, v, keep.view_as(u).to(u.dtype))

    def hold_landed(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        u, v = factors
        self._zero_outside(u, v, self.held_mask(keep, u))

    @staticmethod
    def _zero_outside(u: Tensor, v: Tensor, mask: Tensor) -> None:
        # u_i = v_i = 0 where mask_i = 0: the mirror's fixed point, which no gradient leaves (a product
        # with the 1.0 / 0.0 mask: masked_fill_ was 20× slower, `held_mask`)
        u.mul_(mask)
        v.mul_(mask)

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:
        return dropped.view_as(factor)  # u_i and v_i both belong to entry i

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Tensor, size: Tensor) -> None:
        # θ_i = −sign(g_i)·size_i as u_i = −sign(g_i)·√size_i, v_i = √size_i: |u_i| = |v_i|, the
        # split at which (λ/2)(u_i² + v_i²) = λ|θ_i|
        u, v = factors
        which = which.view_as(u)
        root = size.to(u.dtype).view_as(u).sqrt()
        u.copy_(torch.where(which, -grad.sign().to(u.dtype) * root, u))
        v.copy_(torch.where(which, root, v))

    def truncate(self, value: Tensor, k: int) -> Tensor:
        keep = largest(value.abs(), k).view_as(value)
        return torch.where(keep, value, torch.zeros_like(value))

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return u * v

    def pullback(self, factors, grad: Tensor) -> tuple[Tensor, Tensor]:
        u, v = factors
        return grad * v, grad * u

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        return split_product(value, self.factorizer)

    def prox(self, value: Tensor, step: float) -> Tensor:
        return value.sign() * (value.abs() - step * self.strength).clamp_min(0)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        return float(l1_kkt_residuals(value, grad, self.strength, tol).norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return torch.where(value.abs() > tol, value, torch.zeros_like(value))

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face:
        # Same support and signs: there ‖θ‖₁ = Σ sign(θ_i)·θ_i, linear in the non-zeros. A zero whose
        # gradient exceeds λ joins with the sign that lowers the objective, −sign(g_i): the worst
        # violators, at most a quarter of the support (more means the support itself is not found).
        support = value.abs() > tol
        signs = value.sign()
        if grad is not None:
            joining = entering(torch.where(support, 0.0, grad.abs() - self.strength), int(support.sum()))
            signs = torch.where(joining, -grad.sign(), signs)
            support = support | joining
        signs = signs[support]
        zeros = torch.zeros_like(value)
        # An entry on its way to 0 (a float32 descent can stop with one left at 1e-4) would cross
        # it on the face, where the linear norm then rewards it for growing with the wrong sign.
        return Face(start=(value[support],), embed=lambda z: zeros.masked_scatter(support, z),
                    norm=lambda z: (signs * z).sum(),
                    crossed=lambda z: torch.zeros_like(support).masked_scatter(support, signs * z < 0),
                    mask=support)

    def induced_norm(self, value: Tensor) -> Tensor:
        return value.abs().sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return grad.abs().amax()

    def balance(self, u: Tensor, v: Tensor) -> float:
        return hadamard_balance(u, v)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        nonzero = int((value.abs() > tol).sum())
        budget = "" if self.budget is None else f", budget {self.budget}"
        return f"density {nonzero / max(value.numel(), 1):.3g} ({nonzero}/{value.numel()}{budget})"


def l1_kkt_residuals(value: Tensor, grad: Tensor, lam: float, tol: float = 0.0) -> Tensor:
    r"""Each entry's distance of $-∇_i$ from $λ\,∂|θ_i|$: $|∇_i + λ\,\mathrm{sign}(θ_i)|$ where
    $|θ_i| >$ ``tol``, $(|∇_i| - λ)^+$ at zero. Its norm is `Sparse.kkt_residual`; LassoCV's stacked
    folds take it per fold, without a constraint object per α."""
    on = value.abs() > tol
    return torch.where(on, (grad + lam * value.sign()).abs(), (grad.abs() - lam).clamp_min(0))
