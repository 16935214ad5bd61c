"""Layer 3 — the decay on the factors, as a loss term or as optimizer parameter groups.

Both paths implement the same objective ``ℓ + Σ_c (λ_c/2)‖factors_c‖²``: either add
``symopt.penalty(model)`` to the loss, or build the optimizer from ``symopt.param_groups(model)``
(factors get ``weight_decay = λ``, one group per constraint). Decay must be *coupled* (added to the
gradient): AdamW's decoupled decay does not induce the norm penalty (THEORY.md §4), so symopt warns
when it sees it on factors.

Global optimizer step hooks (registered on import) make this work with no extra call: before a
step they check each optimizer once for decoupled decay and copy every ``strength="auto"`` λ into
its group's ``weight_decay``; during the step they hold back multiplier observations (L-BFGS
evaluates its closure many times), applied when the step ends.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch import Tensor, nn

from .attach import constraints, is_factor, owner_of
from .constraints.auto import DEFER, commit_pending


class DecoupledDecayWarning(UserWarning):
    """A symopt factor sits in an optimizer group with decoupled (AdamW-style) weight decay.

    Decoupled decay multiplies the factors by ``1 − lr·λ`` outside the adaptive scaling; it is not
    the gradient of ``(λ/2)‖factor‖²``, so the induced norm penalty (and the exactness of the
    linear kinds) does not follow. Raised as a warning by [`check_optimizer`][symopt.check_optimizer].

    Examples:
        >>> import torch, symopt, warnings
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = symopt.check_optimizer(torch.optim.AdamW(lin.parameters(), weight_decay=0.1))
        >>> caught[0].category is symopt.DecoupledDecayWarning
        True
    """


def penalty(model: nn.Module) -> Tensor:
    """Coupled decay of all symopt factors in ``model``: ``Σ_c (λ_c/2)·Σ‖factor‖²``, one scalar.

    For every factorisation the decay is ≥ the induced penalty (``λ‖w‖₁``, ``λΣ‖w_g‖₂``,
    ``λ‖W‖_*``, ``λ‖Oᵀθ‖₁``), with equality at balanced factors, which every minimiser has; so
    minimising ``loss + penalty(model)`` minimises ``loss + induced penalty``. Use it with an
    optimizer that has no weight decay on the factors (or any optimizer, AdamW included).

    Args:
        model: the module holding the constraints (and its submodules).

    Returns:
        Tensor: a differentiable scalar on the model's device (a zero when nothing is constrained).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> float(symopt.penalty(lin)) > 0
        True
    """
    handles = constraints(model)
    if not handles:
        first = next(model.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return sum(h.penalty() for h in handles)


def param_groups(model: nn.Module, lr: float | None = None, weight_decay: float = 0.0, **options) -> list[dict]:
    """Optimizer parameter groups: the factors of each constraint with ``weight_decay = λ`` (one
    group per constraint, kept in sync with ``strength="auto"``), every other parameter with the
    caller's ``weight_decay`` and options.

    Coupled ``weight_decay=λ`` adds ``λ·factor`` to the gradient, the gradient of
    ``(λ/2)‖factor‖²``: the same objective as adding [`penalty`][symopt.penalty] to the loss. Use it with SGD,
    Adam, RMSprop, ... but not AdamW (decoupled; see [`DecoupledDecayWarning`][symopt.DecoupledDecayWarning]).

    Args:
        model: the module holding the constraints.
        lr: learning rate put in every group (optional: the optimizer's default otherwise).
        weight_decay: decay of the parameters that are *not* symopt factors (≥ 0).
        **options: any other per-group option (``momentum``, ``betas``, ...), put in every group.

    Returns:
        list[dict]: one group per constraint (keys ``params``, ``weight_decay`` = λ,
            ``symopt_strength``) and a last group with every other parameter.

    Raises:
        ValueError: ``weight_decay`` is negative or not a number.
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> opt = torch.optim.SGD(symopt.param_groups(lin, lr=0.1), lr=0.1)
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.1, 0.0]
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"param_groups: weight_decay must be a number >= 0, got {weight_decay!r}")
    common = dict(options)
    if lr is not None:
        common["lr"] = lr
    groups, decayed_ids = [], set()
    for handle in constraints(model):
        factors = [f for f in handle.decayed_factors() if id(f) not in decayed_ids]
        decayed_ids.update(id(f) for f in factors)
        if factors:
            groups.append({"params": factors, **common, "weight_decay": handle.strength,
                           "symopt_strength": handle.strength})
    rest = [p for p in model.parameters() if id(p) not in decayed_ids]
    if rest:
        groups.append({"params": rest, **common, "weight_decay": weight_decay})
    return groups


def check_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Warn ([`DecoupledDecayWarning`][symopt.DecoupledDecayWarning]) and return True if any symopt factor gets decoupled
    weight decay from ``optimizer``.

    Runs automatically before an optimizer's first step (and again when groups are added), so a
    call is only needed to check up front.

    Args:
        optimizer: any ``torch.optim.Optimizer``; AdamW, and groups with
            ``decoupled_weight_decay=True``, count as decoupled.

    Returns:
        bool: True when a group with decoupled, non-zero decay holds a symopt factor.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> symopt.check_optimizer(torch.optim.SGD(symopt.param_groups(lin, lr=0.1)))
        False
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"check_optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    decoupled_type = isinstance(optimizer, torch.optim.AdamW)
    for index, group in enumerate(optimizer.param_groups):
        decoupled = decoupled_type or bool(group.get("decoupled_weight_decay", False))
        if not decoupled or not group.get("weight_decay", 0):
            continue
        if any(is_factor(p) for p in group["params"]):
            warnings.warn(
                f"{type(optimizer).__name__} group {index} applies decoupled weight decay "
                f"({group['weight_decay']:g}) to symopt factors; decoupled decay does not induce the "
                "constraint's norm penalty. Use a coupled optimizer (SGD, Adam) with "
                "symopt.param_groups(model), or weight_decay=0 on factors plus symopt.penalty(model).",
                DecoupledDecayWarning,
                stacklevel=3,
            )
            return True
    return False


_checked: "weakref.WeakKeyDictionary[torch.optim.Optimizer, int]" = weakref.WeakKeyDictionary()


def _before_step(optimizer, _args, _kwargs) -> None:
    # Decoupled-decay check once per optimizer (and again if groups are added).
    groups = len(optimizer.param_groups)
    if _checked.get(optimizer) != groups:
        _checked[optimizer] = groups
        check_optimizer(optimizer)
    for group in optimizer.param_groups:  # λ of strength="auto" moves: keep weight_decay equal to it
        if "symopt_strength" in group and group["params"]:
            owner = owner_of(group["params"][0])
            if owner is not None:
                group["weight_decay"] = group["symopt_strength"] = owner.strength
    DEFER["active"] = True


def _after_step(_optimizer, _args, _kwargs) -> None:
    DEFER["active"] = False
    commit_pending()


register_optimizer_step_pre_hook(_before_step)
register_optimizer_step_post_hook(_after_step)
