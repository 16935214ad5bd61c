r"""Non-negative sparsity: $θ = \tfrac12 u ⊙ u$.

Symmetry: for each coordinate the mirror $u_i → -u_i$ leaves θ, hence the loss, unchanged; its fixed
subspace is $u_i = 0$, i.e. $θ_i = 0$. The factorisation reaches only $θ ≥ 0$: the orthant is a
hard set built into the factors, not a penalty.
Penalty: the decay $(λ/2)‖u‖^2 = λ \sum_i θ_i = λ‖θ‖_1$ on the orthant, with equality at every
factorisation (there is no balance to reach), so decaying ``u`` solves the non-negative Lasso
$\min_{θ ≥ 0} ℓ(θ) + λ \sum θ_i$. A zero is optimal iff $-∂ℓ/∂θ_i ≤ λ$; at a zero the factor's Hessian
is $λ + ∂ℓ/∂θ_i$, so a zero that should be zero attracts $u_i$ geometrically.

Pitfall (THEORY.md §1): the fixed subspace is invariant under every gradient method, so a coordinate
*exactly* at $u_i = 0$ could never grow. Registration therefore stores a zero (or a negative entry,
which it projects onto the orthant with a warning) as $θ_i = 1\times 10^{-12} ×$ the typical magnitude, from
which a coordinate that the loss wants positive grows at the geometric rate $-∂ℓ/∂θ_i - λ$.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Constraint, Example, Face, entering, largest, zero_scale
from .warn import warn_user
from .budget import RATE, entry_budget

# A registered zero becomes this fraction of the typical magnitude: off the mirror plane, so that it can
# grow, and below the float64 resolution of any entry of that magnitude.
_SEED_FRACTION = 1e-12


class NonNegative(Constraint):
    r"""Non-negative, sparse θ through $θ = \tfrac12 u ⊙ u$ (register with [`symopt.nonnegative`][symopt.nonnegative]).

    With decay $(λ/2)‖u‖^2$ the training objective is $ℓ(θ) + λ \sum θ_i$ over $θ ≥ 0$: the
    non-negative Lasso (scikit-learn's ``Lasso(positive=True)``), with θ ≥ 0 held by construction.

    Args:
        strength: λ, the coefficient of the induced $λ \sum θ_i$ (> 0). Default 1e-3; with a budget,
            the starting λ (default: taken from the first gradient).
        max_nonzero: budget ``k``: λ adapts until exactly k entries are positive.
        density: the budget as a fraction of the entries.
        adapt_rate: fraction of the way log λ moves toward the budget's target per step.
        total_steps: the steps until training ends: the budget then arrives on a schedule and lands
            exactly (see [`Constraint`][symopt.Constraint] and docs/hard-constraints.md).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        seed: seed of the factors' random signs.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.abs_()
        >>> handle = symopt.nonnegative(lin, "weight", strength=0.1)
        >>> abs(float(handle.penalty()) - 0.1 * float(lin.weight.sum())) < 1e-6   # decay = λ‖θ‖₁, always
        True
    """

    kind = "nonnegative"
    decayed = (0,)

    @classmethod
    def example(cls) -> Example:
        return Example(lambda: cls(0.3), ((4, 5),), draw=lambda z: z.abs() + 0.1)

    def __init__(self, strength: float | None = None, *, max_nonzero: int | None = None,
                 density: float | None = None, adapt_rate: float = RATE, seed: int = 0,
                 total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75),
                 land_on_the_way: bool | None = None) -> None:
        budget = entry_budget(max_nonzero, density, "NonNegative")
        super().__init__(strength, seed=seed, budget=budget, adapt_rate=adapt_rate, total_steps=total_steps,
                         ramp=ramp, land_on_the_way=land_on_the_way)

    def entry_signs(self) -> str | None:
        return "nonnegative"

    def atom_ids(self, numel: int, device=None) -> Tensor | None:
        # every coordinate is an atom: working sets choose entries, scored by their pull (−g_i)⁺
        return torch.arange(numel, device=device)

    # -- factors ----------------------------------------------------------------------------------
    def validate(self, tensor: Tensor, name: str) -> None:
        self.resolve_budget(tensor.numel(), name, "non-zeros")

    def forward(self, u: Tensor) -> Tensor:
        return 0.5 * u * u

    def pullback(self, factors, grad: Tensor) -> tuple[Tensor]:
        # ∂⟨g, ½u²⟩/∂u = g ⊙ u: the closed form (autograd's graph was a third of an evaluation of the
        # lean descent on raw diabetes)
        (u,) = factors
        return (grad * u,)

    def right_inverse(self, value: Tensor) -> tuple[Tensor]:
        negative = int((value < 0).sum())
        if negative:
            warn_user(f"NonNegative: {negative} negative entries of {value.numel()} are stored as 0 (their "
                      "projection onto θ ≥ 0); the value changed")
        positive = value.clamp_min(0)
        seed = _SEED_FRACTION * zero_scale(positive)
        signs, _ = self.factorizer.signs_and_jitter(value.shape, value)
        return (signs * (2 * torch.where(positive > 0, positive, seed)).sqrt(),)

    def balance(self, u: Tensor) -> float:
        return 0.0  # one factor: the decay equals λ‖θ‖₁ at every point

    # -- penalty half -----------------------------------------------------------------------------
    def induced_norm(self, value: Tensor) -> Tensor:
        return value.abs().sum()  # Σθ_i on the orthant

    def dual_norm(self, grad: Tensor) -> Tensor:
        r"""$\max_i (-g_i)⁺$: the smallest λ at which θ = 0 is optimal (only a negative gradient pushes
        an entry up)."""
        return (-grad).clamp_min(0).amax()

    def prox(self, value: Tensor, step: float) -> Tensor:
        return (value - step * self.strength).clamp_min(0)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        return float(orthant_kkt_residuals(value, grad, self.strength, tol).norm())

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face:
        # On the support the norm is Σθ_i, linear; a zero whose −g_i exceeds λ joins it.
        support = value > tol
        if grad is not None:
            support = support | entering(torch.where(support, 0.0, -grad - self.strength), int(support.sum()))
        zeros = torch.zeros_like(value)
        start = value[support].clamp_min(0)
        return Face(start=(start,), embed=lambda z: zeros.masked_scatter(support, z),
                    norm=lambda z: z.sum(),
                    crossed=lambda z: torch.zeros_like(support).masked_scatter(support, z < 0),
                    mask=support)

    # -- feasible half ----------------------------------------------------------------------------
    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        """Onto the orthant, entries ``<= tol`` set to 0."""
        return torch.where(value > tol, value, torch.zeros_like(value))

    def infeasibility(self, value: Tensor) -> float:
        """Distance to the orthant $θ ≥ 0$ (0 for any value the factors produce)."""
        return float(value.clamp_max(0).norm())

    # -- budgets and structure --------------------------------------------------------------------
    def atoms(self, value: Tensor) -> Tensor:
        return value.clamp_min(0).reshape(-1)

    trims_decay = True

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:
        return dropped.view_as(factor)

    def unresolved_atoms(self, factors: tuple[Tensor, ...]) -> Tensor:
        (u,) = factors
        return ~(self.forward(u) < torch.finfo(u.dtype).tiny)  # (½u² below the smallest normal; a NaN is kept)

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        (u,) = factors
        u.mul_(keep.view_as(u).to(u.dtype))  # u_i = 0: the fixed point of u_i → −u_i

    def hold_landed(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        (u,) = factors
        u.mul_(self.held_mask(keep, u))  # (`held_mask`: a product, not masked_fill_)

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Tensor, size: Tensor) -> None:
        # θ_i = size_i as u_i = √(2 size_i): off the orthant's corner in the only direction the
        # factorisation reaches, the one a pull (−g_i)⁺ > λ asks for (regrow seeds no other atom)
        (u,) = factors
        root = (2 * size.to(u.dtype).view_as(u)).sqrt()
        u.copy_(torch.where(which.view_as(u), root, u))

    def truncate(self, value: Tensor, k: int) -> Tensor:
        keep = largest(value, k).view_as(value)
        return torch.where(keep, value, torch.zeros_like(value))

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        positive = int((value > tol).sum())
        budget = "" if self.budget is None else f", budget {self.budget}"
        return f"non-negative, density {positive / max(value.numel(), 1):.3g} ({positive}/{value.numel()}{budget})"

    def compressed_structure(self) -> str | None:
        return "entries"


def orthant_kkt_residuals(value: Tensor, grad: Tensor, lam: float, tol: float = 0.0) -> Tensor:
    r"""Each entry's KKT residual for $λ\sum_i θ_i$ over $θ ≥ 0$: $|∇_i + λ|$ where $θ_i >$ ``tol``,
    $(-∇_i - λ)^+$ at zero. Its norm is `NonNegative.kkt_residual`; LassoCV's stacked folds take it
    per fold, without a constraint object per α."""
    on = value > tol
    return torch.where(on, (grad + lam).abs(), (-grad - lam).clamp_min(0))
