"""Tied tensors ``θ_1 = … = θ_k``: ``θ_j = m + u_j ⊙ v_j`` with a shared, free centre ``m``.

Symmetry: for each copy, ``(u_j, v_j) → (−u_j, −v_j)``; fixed subspace ``δ_j = u_j ⊙ v_j = 0`` for
all j, i.e. every copy equals ``m``. Penalty: ``λ Σ_j ‖δ_j‖₁`` (= ``λ min_m Σ_j ‖θ_j − m‖₁``),
exact once ``λ ≥ max_j ‖∇_{θ_j} ℓ(θ*)‖_∞`` at the tied optimum θ*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .auto import MultiplierEstimate, watch_gradient
from .base import Constraint, hadamard_balance, split_product


class Tied(Constraint):
    r"""Ties k ≥ 2 tensors of one shape, dtype and device (register with [`symopt.tie`][symopt.tie]).

    This object is the *group*: it owns the shared centre ``m`` (an ``nn.Parameter``, not decayed);
    each tied tensor gets a `TiedMember` parametrization ``θ_j = m + u_j ⊙ v_j`` whose factors
    are decayed. The methods below act on the members' values, as a sequence or stacked along a
    new first axis (``project`` returns them stacked).

    Args:
        strength: λ (> 0), or ``"auto"`` (default): ``margin ×`` the largest running estimate of
            ``‖∂ℓ/∂θ_j‖_∞`` over the copies.
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        >>> _ = symopt.tie(net, ["0.weight", "1.weight"], strength=1.0)
        >>> net[0].parametrizations.weight[0].group.center.shape
        torch.Size([3, 3])
    """

    kind = "tied"
    linear = True

    def __init__(self, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0) -> None:
        super().__init__(strength, seed=seed, margin=margin)
        self.register_parameter("center", None)  # set by init_center when the tie is registered

    def validate_members(self, tensors: Sequence[Tensor], names: Sequence[str]) -> None:
        if len(tensors) < 2:
            raise ValueError(f"Tied: needs at least two tensors to tie, got {list(names)}")
        if len(set(names)) != len(names) or len({id(t) for t in tensors}) != len(tensors):
            raise ValueError(f"Tied: a tensor cannot be tied with itself; got {list(names)}")
        first, name0 = tensors[0], names[0]
        for t, name in zip(tensors[1:], names[1:]):
            for what in ("shape", "dtype", "device"):
                if getattr(t, what) != getattr(first, what):
                    raise ValueError(
                        f"Tied: '{name}' has {what} {getattr(t, what)} but '{name0}' has "
                        f"{getattr(first, what)}; tied tensors must agree in shape, dtype and device"
                    )

    def init_center(self, values: Sequence[Tensor]) -> None:
        """Centre = mean of the current values, so registration keeps every value."""
        self.center = nn.Parameter(torch.stack([v.detach() for v in values]).mean(0))
        if self.auto:  # one running estimate per copy
            self.estimate = MultiplierEstimate(len(values)).to(device=values[0].device)

    def member(self, index: int) -> TiedMember:
        return TiedMember(self, index)

    def project(self, values: Sequence[Tensor], tol: float = 0.0) -> Tensor:
        """Orthogonal projection onto the tie set: every copy replaced by the mean (stacked)."""
        stacked = torch.stack(list(values))
        return stacked.mean(0).expand_as(stacked).clone()

    def violation(self, values: Sequence[Tensor], tol: float = 0.0) -> float:
        stacked = torch.stack(list(values))
        return float((stacked - stacked.mean(0)).norm())

    def induced_norm(self, values: Sequence[Tensor]) -> Tensor:
        stacked = torch.stack(list(values))
        return (stacked - stacked.median(0).values).abs().sum()

    def dual_norm(self, grads: Sequence[Tensor]) -> Tensor:
        return torch.stack([g.abs().amax() for g in grads]).amax()

    def prox(self, values: Sequence[Tensor], step: float) -> Tensor:
        return self.project(values)

    def kkt_residual(self, values: Sequence[Tensor], grads: Sequence[Tensor], tol: float = 0.0,
                     quick: bool = False) -> float:
        """Norm of the gradient projected onto the tie set: ``√k·‖mean_j g_j‖``."""
        return float(torch.stack(list(grads)).mean(0).norm()) * len(grads) ** 0.5

    def structure(self, values: Sequence[Tensor], tol: float = 0.0) -> str:
        return f"{len(values)} copies"


class TiedMember(Constraint):
    """Parametrization of one tied tensor: ``θ_j = group.center + u_j ⊙ v_j``; decays ``u_j, v_j``."""

    kind = "tied"
    linear = True
    decayed = (0, 1)

    def __init__(self, group: Tied, index: int) -> None:
        nn.Module.__init__(self)  # λ, its estimate and the random stream all belong to the group
        self.group = group
        self.index = index
        self.factorizer = group.factorizer
        self.attached_to: str | None = None
        self.budget, self.adaptive = None, False
        self.register_forward_hook(watch_gradient)

    @property
    def auto(self) -> bool:
        return self.group.auto

    @property
    def watching(self) -> bool:
        return self.group.auto

    @property
    def strength(self) -> float:  # always the group's: one λ for the whole tie
        return self.group.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.group.strength = value

    def multiplier(self) -> float | None:
        return self.group.multiplier()

    def observe(self, grad: Tensor, value: Tensor | None = None) -> None:
        self.group.estimate.observe(float(grad.detach().abs().amax()), slot=self.index)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return torch.addcmul(self.group.center, u, v)  # one fused kernel, no u ⊙ v temporary

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        return split_product(value - self.group.center, self.factorizer)

    def balance(self, u: Tensor, v: Tensor) -> float:
        return hadamard_balance(u, v)

    def extra_repr(self) -> str:
        return f"copy {self.index}"
