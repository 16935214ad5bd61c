"""Layer 3 — [`syre`][symopt.syre]: remove unwanted symmetries by decaying toward random anchors
(Ziyin, Xu, Chuang, arXiv 2408.15495; the maths is in `symopt.constraints.anchor`)."""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Sequence

from torch import nn
from torch.nn.utils import parametrize

from ..attach import Handle, constrain, resolve
from ..constraints import Anchor, Constraint
from ..constraints.base import require_floating
from ..constraints.strength import check_strength


def _plain_parameter_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's parameters as the user sees them (``lin.weight``), not the
    tensors that live inside a parametrization (factors, a tie's anchor)."""
    names = []
    for mod_name, module in model.named_modules():
        if "parametrizations" in mod_name.split("."):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        names += [prefix + leaf for leaf, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            names += [prefix + leaf for leaf in module.parametrizations]
    return names


def syre(model: nn.Module, strength: float, names: Sequence[str] | None = None, sigma: float | None = None,
         anisotropy: float = 0.0, seed: int = 0) -> list[Handle]:
    r"""Decay ``names`` (default: every parameter) toward fixed random anchors instead of zero.

    Each tensor φ gets the penalty $(λ/2) \sum D_{ii} (φ_i - θ_{0,i})^2$ with $θ_0 \sim N(0, σ_0^2)$ and
    $D_{ii} \sim U(1 - ε, 1 + ε)$ ($ε = \mathrm{anisotropy}$), applied like the constraints' decay:
    ``symopt.penalty(model)`` or ``symopt.param_groups(model)``. No mirror plane of the loss
    survives (identical units, dead units, rotations between layers), so weight decay no longer pulls
    the model into a collapsed state.

    Args:
        model: the module whose parameters get anchors.
        strength: λ (> 0).
        names: dotted parameter names; ``None`` means every parameter of ``model``.
        sigma: anchor std $σ_0$; ``None``: 0.01 × each tensor's std at registration.
        anisotropy: ε in [0, 1); > 0 also breaks rotation-type symmetries.
        seed: anchors are regenerated from ``seed`` and the parameter's name.

    Returns:
        list[Handle]: one handle per anchored tensor (kind ``"anchor"``); they appear in
            [`symopt.list_constraints`][symopt.list_constraints] and [`symopt.report`][symopt.report] like the constraints.

    Raises:
        ValueError: before changing anything, if a tensor carries a symopt constraint (syre
            removes exactly the mirror symmetry that DCS builds) or is otherwise parametrized,
            or if ``names`` repeat; also a bad ``strength``, ``sigma`` or ``anisotropy``.
        TypeError: ``names`` is a string rather than a list, or ``seed`` is not an int.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> [h.name for h in symopt.syre(net, strength=1e-3)]
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    check_strength(strength, "syre")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"syre: seed must be an int, got {type(seed).__name__}")
    if names is None:
        names = _plain_parameter_names(model)
    elif isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError("syre: names must be a list of parameter names, e.g. ['0.weight', '2.weight']")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"syre: names repeat a parameter: {names}")
    plan, constrained = [], []
    for name in names:  # validate everything before changing anything
        module, leaf = resolve(model, name)
        if parametrize.is_parametrized(module, leaf):
            kinds = [type(p).__name__ for p in module.parametrizations[leaf]]
            if any(isinstance(p, Constraint) for p in module.parametrizations[leaf]):
                constrained.append(f"'{name}' ({', '.join(kinds)})")
                continue
            raise ValueError(f"syre: '{name}' is already parametrized ({', '.join(kinds)}); syre needs a plain parameter")
        tensor = module._parameters.get(leaf)
        if tensor is None:
            params = sorted(n for n, p in module._parameters.items() if p is not None)
            raise ValueError(f"syre: '{name}': {type(module).__name__} has no parameter '{leaf}'; its parameters: {params}")
        require_floating(tensor, name)
        anchor = Anchor(strength, sigma=sigma, anisotropy=anisotropy, seed=int(seed), stream=zlib.crc32(name.encode()))
        anchor.validate(tensor, name)
        plan.append((name, anchor))
    if constrained:
        free = [n for n in names if all(f"'{n}'" not in c for c in constrained)]
        raise ValueError(
            "syre refused, nothing changed: " + ", ".join(constrained) + " carry a symopt constraint; syre removes "
            "exactly the mirror symmetry that constraint relies on. Leave them out, e.g. names=" + repr(free)
        )
    return [constrain(model, name, anchor) for name, anchor in plan]
