"""Automatic strength for the linear (exact-penalty) kinds: ``strength="auto"``.

The penalty ``λ‖Oᵀθ‖₁`` is exact once ``λ`` exceeds the Lagrange multipliers ``μ = ‖Oᵀ∇ℓ(θ*)‖_∞``
(the dual norm of the loss gradient on the constrained directions at the constrained optimum). The
constraint watches ``∂ℓ/∂θ`` on every backward pass (a tensor hook: no extra call in the training
loop), keeps a bias-corrected running mean of the dual norm — stochastic gradients are noisy — and
uses ``λ = margin × estimate``: never below the estimate, and converging to ``margin · μ`` as θ
converges.

Inside an optimizer step (L-BFGS evaluates its closure many times) observations are held back and
applied when the step ends, so λ is constant within a step; ``symopt.decay`` toggles that.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor, nn

# "active": set by symopt.decay's optimizer step hooks while an optimizer step runs;
# "paused": set by symopt.certify while it takes gradients of its own.
DEFER = {"active": False, "paused": False}
_PENDING: "weakref.WeakSet[MultiplierEstimate]" = weakref.WeakSet()


class MultiplierEstimate(nn.Module):
    """Running estimate of the Lagrange multipliers, one slot per tied copy (1 otherwise).

    Buffers (saved in ``state_dict``): ``mean`` — exponential moving average of observed dual norms
    per slot, ``count`` — observations so far (for the bias correction ``1 − β^count``).
    """

    def __init__(self, slots: int = 1, beta: float = 0.9) -> None:
        super().__init__()
        self.beta = beta
        self.register_buffer("mean", torch.zeros(slots, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(slots, dtype=torch.float64))
        self.pending: dict[int, float] = {}

    def observe(self, value: float, slot: int = 0) -> None:
        # gradients taken by symopt.certify are not training's; a NaN / Inf gradient (a bad batch,
        # skipped by symopt.Guard) must not poison λ for the rest of training
        if DEFER.get("paused") or not math.isfinite(value):
            return
        if DEFER["active"]:
            self.pending[slot] = max(value, self.pending.get(slot, 0.0))
            _PENDING.add(self)
        else:
            self._update(value, slot)

    def _update(self, value: float, slot: int) -> None:
        self.mean[slot] = self.beta * self.mean[slot] + (1 - self.beta) * value
        self.count[slot] += 1

    def commit(self) -> None:
        for slot, value in self.pending.items():
            self._update(value, slot)
        self.pending.clear()

    def value(self) -> float:
        """The bias-corrected estimate (max over slots); 0 before the first observation."""
        seen = self.count > 0
        if not bool(seen.any()):
            return 0.0
        corrected = self.mean[seen] / (1 - self.beta ** self.count[seen])
        return float(corrected.max())


def commit_pending() -> None:
    """Apply the observations held back during an optimizer step."""
    for estimate in list(_PENDING):
        estimate.commit()
    _PENDING.clear()


def watch_gradient(module: nn.Module, _inputs, output: Tensor) -> None:
    """Forward hook of constraints whose λ adapts (auto strength, budgets): observe ``∂ℓ/∂θ`` (with
    the value it was taken at) when backward computes it."""
    if module.watching and isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled():
        value = output.detach()
        output.register_hook(lambda grad: module.observe(grad, value))


def check_margin(margin: object, owner: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 1.0 or margin != margin:
        raise ValueError(f"{owner}: margin must be a number > 1 (λ = margin × multiplier estimate), got {margin!r}")
    return float(margin)
