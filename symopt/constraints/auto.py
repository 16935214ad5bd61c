r"""The multiplier estimate behind ``strength="auto"`` (the exact-penalty kinds).

The penalty $λ‖O^\top θ‖_1$ is exact once $λ$ exceeds the Lagrange multipliers $μ = ‖O^\top ∇ℓ(θ^*)‖_∞$
(the dual norm of the loss gradient on the constrained directions at the constrained optimum). The
constraint watches $∂ℓ/∂θ$ on every backward pass (a tensor hook: no extra call in the training
loop), keeps a bias-corrected running mean of the dual norm — stochastic gradients are noisy — and
its [`Auto`][symopt.constraints.strength.Auto] policy uses $λ = \mathrm{margin} × \mathrm{estimate}$: never below the
estimate, and converging to $\mathrm{margin} · μ$ as θ converges. When observations apply (now, or when an
optimizer step ends) is the policy's business, not this module's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .state import Float64State


class MultiplierEstimate(Float64State):
    r"""Running estimate of the Lagrange multipliers, one slot per tied copy (1 otherwise).

    Buffers (saved in ``state_dict``): ``mean`` — exponential moving average of observed dual norms
    per slot, ``count`` — observations so far (for the bias correction $1 - β^\mathrm{count}$).
    """

    def __init__(self, slots: int = 1, beta: float = 0.9) -> None:
        super().__init__()
        self.beta = beta
        self.register_buffer("mean", torch.zeros(slots, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(slots, dtype=torch.float64))

    def update(self, value: float, slot: int = 0) -> None:
        """Fold one observed dual norm into slot ``slot``'s moving average."""
        self.mean[slot] = self.beta * self.mean[slot] + (1 - self.beta) * value
        self.count[slot] += 1

    def value(self) -> float:
        """The bias-corrected estimate (max over slots); 0 before the first observation."""
        seen = self.count > 0
        if not bool(seen.any()):
            return 0.0
        corrected = self.mean[seen] / (1 - self.beta ** self.count[seen])
        return float(corrected.max())


def watch_gradient(module: nn.Module, _inputs, output: Tensor) -> None:
    """Forward hook of constraints whose λ follows the gradients (auto strength, budgets,
    schedules): hand $∂ℓ/∂θ$ (with the value it was taken at) to the strength policy when backward
    computes it."""
    if module.watching and isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled():
        value = output.detach()
        output.register_hook(lambda grad: module.observe(grad, value))


def check_margin(margin: object, owner: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 1.0 or margin != margin:
        raise ValueError(f"{owner}: margin must be a number > 1 (λ = margin × multiplier estimate), got {margin!r}")
    return float(margin)
