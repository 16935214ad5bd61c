r"""Layer 3 — Noether charges of a model's architectural symmetries (Kunin et al. 2021; Głuch &
Urbanke, arXiv 2104.05508), and a tracker that records them over training.

* Rescaling symmetry of a ReLU / linear unit j between layers l and l+1 ($w_{\mathrm{in}} → α w_{\mathrm{in}}$,
  $w_{\text{out}} → w_{\text{out}} / α$): the charge $‖w_{\text{in},j}‖^2 - ‖w_{\text{out},j}‖^2$ (bias included in ``w_in``).
* Consecutive linear layers ($W_{l+1}W_l = W_{l+1}G^{-1} · GW_l$): the matrix charge
  $W_lW_l^\top - W_{l+1}^\top W_{l+1}$ (again with the bias as an extra column of $W_l$).

Under gradient flow (small-lr full-batch GD, no decay) they are constant; with weight decay λ
(coupled, $(λ/2)‖θ‖^2$) they decay as $e^{-2λt}$, $t = \mathrm{lr} × \mathrm{steps}$.

A charge is reported only where its symmetry can be shown from the model's traced graph
(``torch.fx``): the first layer's output reaches the second layer and nothing else, through ops that
are positively homogeneous of degree 1 and act per unit (ReLU, leaky ReLU, identity, dropout, max /
average pooling, flatten — as modules, functions or methods) for a unit charge, and through no op at
all for the matrix charge. Any other op (tanh, GELU, a norm, a residual addition, a second consumer)
breaks the rescaling symmetry, so that pair is left out and the warning says why. A model ``torch.fx``
cannot trace falls back to the ``nn.Sequential`` structure, and pairs whose activation is not known
from it are left out the same way.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._format import table
from .._layers import incoming, outgoing, pairs

# Ops that keep the rescaling symmetry of a unit: positively homogeneous of degree 1, one unit at a time.
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten)
_HOMOGENEOUS_FUNCTIONS = {torch.relu, F.relu, F.leaky_relu, F.dropout, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                          F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                          F.adaptive_avg_pool3d, torch.flatten}
_HOMOGENEOUS_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
_warned: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _op_name(node, modules) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target}"


def _keeps_rescaling(node, modules) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, _HOMOGENEOUS) and not getattr(module, "return_indices", False)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _HOMOGENEOUS_METHODS
    return False


def symmetric_pairs(model: nn.Module) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Which consecutive layer pairs carry a charge, from the traced graph.

    Returns ``(found, excluded)``: ``found`` lists ``(kind, first, second)`` with kind ``"linear"``
    (nothing between the layers) or ``"units"`` (positively homogeneous per-unit ops between them);
    ``excluded`` maps ``"first→second"`` to the reason its symmetry could not be shown.
    """
    modules = dict(model.named_modules())
    candidates = pairs(model)
    found, excluded = [], {}
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # noqa: BLE001 - fx raises many types; fall back to the Sequential structure
        for pair in candidates:
            key = f"{pair.first}→{pair.second}"
            if pair.adjacent:
                found.append(("linear", pair.first, pair.second))
            elif pair.activation is not None and isinstance(pair.activation, _HOMOGENEOUS):
                found.append(("units", pair.first, pair.second))
            else:
                excluded[key] = f"torch.fx cannot trace the model ({type(error).__name__}) and no nn.Sequential " \
                                "shows what lies between the layers"
        return found, excluded
    calls: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    for pair in candidates:
        key = f"{pair.first}→{pair.second}"
        firsts, seconds = calls.get(pair.first, []), calls.get(pair.second, [])
        if len(firsts) != 1 or len(seconds) != 1:
            excluded[key] = "a layer is called more (or less) than once in forward"
            continue
        node, ops, reason = firsts[0], [], None
        while reason is None:
            users = list(node.users)
            if len(users) != 1:
                reason = f"the output of {_op_name(node, modules)} goes to {len(users)} places"
            elif users[0] is seconds[0]:
                break
            elif _keeps_rescaling(users[0], modules) and users[0].args and users[0].args[0] is node:
                ops.append(users[0])
                node = users[0]
            else:
                reason = f"{_op_name(users[0], modules)} between them is not positively homogeneous per unit"
        if reason is not None:
            excluded[key] = reason
        elif not ops:
            found.append(("linear", pair.first, pair.second))
        else:
            found.append(("units", pair.first, pair.second))
    return found, excluded


def conserved(model: nn.Module) -> dict[str, Tensor]:
    r"""The charges of ``model`` now, keyed ``"units first→second"`` (a vector, one per shared unit)
    and, for layers with nothing between them, ``"linear first→second"`` (a matrix).

    Noether: a continuous symmetry of the loss gives a quantity that gradient flow conserves. The
    rescaling $(w_{\text{in},j}, w_{\text{out},j}) → (α w_{\text{in},j}, w_{\text{out},j} / α)$ gives $‖w_{\text{in},j}‖^2 - ‖w_{\text{out},j}‖^2$;
    the ``GL`` symmetry of two adjacent linear layers gives $W_lW_l^\top - W_{l+1}^\top W_{l+1}$. With
    coupled decay λ both shrink like $e^{-2λt}$.

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
    found, excluded = symmetric_pairs(model)
    if excluded and model not in _warned:
        _warned.add(model)
        reasons = "; ".join(f"{key}: {why}" for key, why in excluded.items())
        warnings.warn(f"conserved: no charge for these layer pairs, whose symmetry the graph does not show — "
                      f"{reasons}", UserWarning, stacklevel=2)
    charges: dict[str, Tensor] = {}
    for form, first, second in found:
        w_in, w_out = incoming(modules[first]), outgoing(modules[second])
        if form == "linear":
            charges[f"linear {first}→{second}"] = w_in @ w_in.T - w_out @ w_out.T
        else:
            charges[f"units {first}→{second}"] = w_in.square().sum(1) - w_out.square().sum(1)
    return charges


class ConservationTracker:
    r"""Records [`conserved`][symopt.conserved] charges during training: call `record` every few steps.

    ``drift()`` is $\max_t ‖C(t) - C(0)‖ / ‖C(0)‖$ per charge (≈ 0 under gradient flow without
    decay), ``decay_rate()`` the fitted ``r`` of $‖C(t)‖ ≈ ‖C(0)‖e^{-rt}$ ($2λ$ under coupled
    decay λ, with $t = \mathrm{lr} × \mathrm{step}$). A drift where none is expected means the symmetry is broken:
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
        r"""Per charge: $\max_t ‖C(t) - C(0)‖ / ‖C(0)‖$ (0 when conserved)."""
        if not self.history:
            return {}
        first = self.history[0]
        return {k: max(float((h[k] - first[k]).norm()) for h in self.history) / max(float(first[k].norm()), 1e-30)
                for k in first}

    def decay_rate(self) -> dict[str, float]:
        r"""Per charge: the fitted rate ``r`` of $‖C(t)‖ ≈ ‖C(0)‖ e^{-r t}$ (least squares on the
        log, over the recorded steps); $2λ$ under decay λ with $t = \mathrm{lr} × \mathrm{step}$."""
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
