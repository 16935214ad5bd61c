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

from .state import HostCopies


class MultiplierEstimate(HostCopies):
    r"""Running estimate of the Lagrange multipliers, one slot per tied copy (1 otherwise).

    Buffers (saved in ``state_dict``): ``mean`` — exponential moving average of observed dual norms
    per slot, ``count`` — observations so far (for the bias correction $1 - β^\mathrm{count}$).

    Observations fold in on the buffers' device (`fold`: a dual norm stays a 0-d tensor, and a
    non-finite one is skipped there), and `value` reads a host copy of the estimate, taken from the
    buffers at the first read after `refresh`: on a GPU every read of a buffer is a synchronisation,
    and the policy asks λ on every step (five reads a step before, 0.25 now: `Auto`).

    Examples:
        >>> import torch
        >>> estimate = MultiplierEstimate()
        >>> estimate.fold(torch.tensor(2.0, dtype=torch.float64)); estimate.value()   # the host copy, until refresh
        0.0
        >>> estimate.refresh(); estimate.value()
        2.0
        >>> estimate.fold(torch.tensor(4.0, dtype=torch.float64)); estimate.refresh()
        >>> round(estimate.value(), 6)    # (0.9 · 0.1 · 2 + 0.1 · 4) / (1 − 0.9²)
        3.052632
    """

    def __init__(self, slots: int = 1, beta: float = 0.9) -> None:
        super().__init__()
        self.beta = beta
        self.register_buffer("mean", torch.zeros(slots, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(slots, dtype=torch.float64))

    def fold(self, value: Tensor, slot: int = 0) -> None:
        """Fold one observed dual norm (a 0-d tensor, any device and dtype) into slot ``slot``'s moving
        average, on the buffers' device; not a finite number: ignored (a bad batch must not poison λ)."""
        if self.__dict__.get("_host_value") is None:
            self.value()  # (the copy is of the state before this fold: a resumed run reads what the saved one did)
        value = value.detach().to(device=self.mean.device, dtype=torch.float64)
        finite = torch.isfinite(value)
        blended = self.beta * self.mean[slot] + (1 - self.beta) * torch.where(finite, value, 0.0)
        self.mean[slot] = torch.where(finite, blended, self.mean[slot])
        self.count[slot] += finite.to(torch.float64)

    def refresh(self) -> None:
        """Forget the host copy: the next `value`, or the next `fold` before it folds, reads the buffers
        (one transfer)."""
        self.__dict__["_host_value"] = None

    def value(self) -> float:
        """The bias-corrected estimate (max over slots); 0 before the first observation. From the host
        copy, taken at the first read after `refresh` (or after a move, cast or load)."""
        cached = self.__dict__.get("_host_value")
        if cached is None:
            means, counts = torch.stack([self.mean, self.count]).tolist()
            corrected = [m / (1 - self.beta ** c) for m, c in zip(means, counts) if c > 0]
            cached = self.__dict__["_host_value"] = max(corrected) if corrected else 0.0
        return cached

    def reload_state(self) -> None:
        """After a move, cast or load (`HostCopies` calls it) or `symopt.sync_strengths`: re-read."""
        super().reload_state()
        self.refresh()


def watch_gradient(module: nn.Module, _inputs, output: Tensor) -> None:
    """Forward hook of constraints whose λ follows the gradients (auto strength, budgets,
    schedules): hand $∂ℓ/∂θ$ (with the value it was taken at) to the strength policy when backward
    computes it. On a pass whose gradient the policy does not read (`Strength.reads_next_gradient`: a
    budget between its readings, a schedule) only the step is counted, by the tensors the policy asks
    to count it (`Strength.counts_unread_pass`: one of a pool's)."""
    if module.watching and isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled():
        policy = module.policy
        if not policy.reads_next_gradient():
            # (the digits CNN's two channel pools have eight tensors: two counting hooks instead of eight
            # gradient hooks took ~0.1 ms off its 5-6 ms ramp step, measured: benchmarks/RESULTS.md)
            if policy.counts_unread_pass(module):
                output.register_hook(lambda _grad: policy.observe_unread(module))
            return
        value = output.detach()
        output.register_hook(lambda grad: module.observe(grad, value))


def check_margin(margin: object, owner: str) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 1.0 or margin != margin:
        raise ValueError(f"{owner}: margin must be a number > 1 (λ = margin × multiplier estimate), got {margin!r}")
    return float(margin)
