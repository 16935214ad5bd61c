"""Layer 3 — Noether charges of a model's architectural symmetries (Kunin et al. 2021; Głuch &
Urbanke, arXiv 2104.05508), and a tracker that records them over training.

* Rescaling symmetry of a ReLU / linear unit j between layers l and l+1 (``w_in → α w_in``,
  ``w_out → w_out / α``): the charge ``‖w_in,j‖² − ‖w_out,j‖²`` (bias included in ``w_in``).
* Consecutive linear layers (``W_{l+1}W_l = W_{l+1}G⁻¹ · GW_l``): the matrix charge
  ``W_lW_lᵀ − W_{l+1}ᵀW_{l+1}`` (again with the bias as an extra column of ``W_l``).

Under gradient flow (small-lr full-batch GD, no decay) they are constant; with weight decay λ
(coupled, ``(λ/2)‖θ‖²``) they decay as ``e^{−2λt}``, ``t = lr × steps``. The unit charges hold for
any positively homogeneous activation (ReLU, leaky ReLU, identity); the matrix charge needs no
activation between the layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._format import table
from .._layers import incoming, outgoing, pairs

_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity)


def conserved(model: nn.Module) -> dict[str, Tensor]:
    """The charges of ``model`` now, keyed ``"units first→second"`` (a vector, one per shared unit)
    and, for layers with nothing between them, ``"linear first→second"`` (a matrix).

    Noether: a continuous symmetry of the loss gives a quantity that gradient flow conserves. The
    rescaling ``(w_in,j, w_out,j) → (α w_in,j, w_out,j / α)`` gives ``‖w_in,j‖² − ‖w_out,j‖²``;
    the ``GL`` symmetry of two adjacent linear layers gives ``W_lW_lᵀ − W_{l+1}ᵀW_{l+1}``. With
    coupled decay λ both shrink like ``e^{−2λt}``.

    Args:
        model: the network; consecutive Linear / Conv layers are paired in module order.

    Returns:
        dict[str, Tensor]: the charges (empty when no pair has a symmetry).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> {k: tuple(v.shape) for k, v in symopt.conserved(net).items()}
        {'units 0→2': (4,)}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"conserved: expected an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    charges: dict[str, Tensor] = {}
    for pair in pairs(model):
        first, second = modules[pair.first], modules[pair.second]
        w_in, w_out = incoming(first), outgoing(second)
        if pair.adjacent:
            charges[f"linear {pair.first}→{pair.second}"] = w_in @ w_in.T - w_out @ w_out.T
        elif pair.activation is None or isinstance(pair.activation, _HOMOGENEOUS):
            charges[f"units {pair.first}→{pair.second}"] = w_in.square().sum(1) - w_out.square().sum(1)
    return charges


class ConservationTracker:
    """Records [`conserved`][symopt.conserved] charges during training: call `record` every few steps.

    ``drift()`` is ``max_t ‖C(t) − C(0)‖ / ‖C(0)‖`` per charge (≈ 0 under gradient flow without
    decay), ``decay_rate()`` the fitted ``r`` of ``‖C(t)‖ ≈ ‖C(0)‖e^{−rt}`` (``2λ`` under coupled
    decay λ, with ``t = lr × step``). A drift where none is expected means the symmetry is broken:
    by decay, a large learning rate, or a layer that is not what it seems.

    Args:
        model: the network to watch.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> tracker = symopt.ConservationTracker(net)
        >>> tracker.record(0); tracker.record(1)
        >>> tracker.drift()["units 0→2"]
        0.0
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ConservationTracker: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.steps: list[float] = []
        self.history: list[dict[str, Tensor]] = []

    def record(self, step: float | None = None) -> None:
        """Store the charges now, at ``step`` (default: the number of records so far)."""
        with torch.no_grad():
            self.history.append({k: v.detach().clone() for k, v in conserved(self.model).items()})
        self.steps.append(float(len(self.steps) if step is None else step))

    def drift(self) -> dict[str, float]:
        """Per charge: ``max_t ‖C(t) − C(0)‖ / ‖C(0)‖`` (0 when conserved)."""
        if not self.history:
            return {}
        first = self.history[0]
        return {k: max(float((h[k] - first[k]).norm()) for h in self.history) / max(float(first[k].norm()), 1e-30)
                for k in first}

    def decay_rate(self) -> dict[str, float]:
        """Per charge: the fitted rate ``r`` of ``‖C(t)‖ ≈ ‖C(0)‖ e^{−r t}`` (least squares on the
        log, over the recorded steps); ``2λ`` under decay λ with ``t = lr × step``."""
        out = {}
        for key in (self.history[0] if self.history else {}):
            ts = torch.tensor(self.steps, dtype=torch.float64)
            logs = torch.tensor([math.log(max(float(h[key].norm()), 1e-300)) for h in self.history],
                                dtype=torch.float64)
            tc = ts - ts.mean()
            out[key] = -float((tc * (logs - logs.mean())).sum() / tc.square().sum()) if len(ts) > 1 else 0.0
        return out

    def __str__(self) -> str:
        drift, rate = self.drift(), self.decay_rate()
        return table(["charge", "‖C(0)‖", "drift", "fitted decay rate"],
                     [[k, float(self.history[0][k].norm()), drift[k], rate[k]] for k in drift])
