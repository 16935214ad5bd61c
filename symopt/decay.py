r"""Layer 3 — the decay on the factors, as a loss term or as optimizer parameter groups.

Both paths implement the same objective $ℓ + \sum_c (λ_c/2)‖\mathrm{factors}_c‖^2$: either add
``symopt.penalty(model)`` to the loss, or build the optimizer from ``symopt.param_groups(model)``
(factors get ``weight_decay = λ``, one group per constraint). Decay must be *coupled* (added to the
gradient): AdamW's decoupled decay does not induce the norm penalty (THEORY.md §4), so symopt warns
when it sees it on factors.

Nothing is registered in torch on import. A group from ``param_groups`` is followed by its
constraint's strength policy, which writes every new λ (``"auto"``, budgets, schedules) into its
``weight_decay``. A landing budget whose decay is *trimmed* during its ramp (it decays only the
factors of the atoms it is dropping; `symopt.constraints.strength.BudgetStrength`) cannot say that with
one ``weight_decay`` per group: its group gets 0, and an optimizer step pre-hook adds
$λ·(\mathrm{mask} ⊙ \mathrm{factor})$ to those factors' gradients instead, after any gradient scaling
and clipping, as coupled ``weight_decay`` would. ``param_groups`` registers that hook (one, global,
acting only on symopt's groups) the first time it builds a group for such a budget. [`bind`][symopt.bind] goes further for one optimizer the user passes, with hooks on
that optimizer alone (removable): it checks for decoupled decay before the first step, re-reads λ
before every step (also after ``optimizer.load_state_dict`` replaced the groups), and holds λ fixed
within a step (L-BFGS evaluates its closure many times).
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .attach import list_constraints, is_factor, owner_of
from .constraints.strength import StrengthGroup
from .constraints.warn import warn_user


class DecoupledDecayWarning(UserWarning):
    r"""A symopt factor sits in an optimizer group with decoupled (AdamW-style) weight decay.

    Decoupled decay multiplies the factors by $1 - \mathrm{lr}·λ$ outside the adaptive scaling; it is not
    the gradient of $(λ/2)‖\mathrm{factor}‖^2$, so the induced norm penalty (and the exactness of the
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
    r"""Coupled decay of all symopt factors in ``model``: $\sum_c (λ_c/2)·\sum ‖\mathrm{factor}‖^2$, one scalar.

    For every factorisation the decay is ≥ the induced penalty ($λ‖w‖_1$, $λ\sum ‖w_g‖_2$,
    $λ‖W‖_*$, $λ‖O^\top θ‖_1$), with equality at balanced factors, which every minimiser has; so
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
    handles = list_constraints(model)
    if not handles:
        first = next(model.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return sum(h.penalty() for h in handles)


def param_groups(model: nn.Module, lr: float | None = None, weight_decay: float = 0.0, **options) -> list[dict]:
    r"""Optimizer parameter groups: the factors of each constraint with ``weight_decay = λ`` (one
    group per constraint, kept in sync with ``strength="auto"``), every other parameter with the
    caller's ``weight_decay`` and options.

    Coupled ``weight_decay=λ`` adds $λ·\mathrm{factor}$ to the gradient, the gradient of
    $(λ/2)‖\mathrm{factor}‖^2$: the same objective as adding [`penalty`][symopt.penalty] to the loss. Use it with SGD,
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
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real)
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"param_groups: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if "params" in options:
        raise TypeError("param_groups: 'params' is not an option — the groups' params are the model's; "
                        "pass the model (or a submodule) to choose which parameters")
    common = dict(options)
    if lr is not None:
        common["lr"] = lr
    groups, decayed_ids = [], set()
    for handle in list_constraints(model):
        factors = [f for f in handle.decayed_factors() if id(f) not in decayed_ids]
        decayed_ids.update(id(f) for f in factors)
        if factors:
            policy = handle.constraint.policy
            _install_step_hook()  # (every symopt group: its atoms below the dtype's resolution are flushed)
            if policy.watching and policy.scale_watch is None:
                policy.scale_watch = ScaleWatch(handle.constraint, handle.decayed_factors())
            group = StrengthGroup(params=factors, **common)
            handle.constraint.policy.follow(group)  # writes weight_decay = symopt_strength = λ, now and on change
            groups.append(group)
    rest = [p for p in model.parameters() if id(p) not in decayed_ids]
    if rest:
        groups.append({"params": rest, **common, "weight_decay": weight_decay})
    return groups


def decay_dropped_atoms(param_groups: list[dict]) -> None:
    r"""Add the trimmed decay $λ·(\mathrm{mask} ⊙ \mathrm{factor})$ to the gradient of every symopt factor
    in ``param_groups`` whose budget trims its decay now (``Constraint.decay_mask``); such a group's
    ``weight_decay`` is 0 meanwhile. What a step pre-hook calls (see the module docstring)."""
    # (the policy's state asked once per owner and step, not once per factor: every call costs µs, on a step that
    # is all dispatch; a unit group's tensors are owners that share one policy)
    policies: dict[int, object] = {}  # id(owner) → its policy
    trims: dict[int, tuple] = {}  # id(policy) → (λ, its dropped atoms) while it trims, else None
    for group in param_groups:
        if "symopt_strength" not in group:
            continue
        for p in group["params"]:
            if p.grad is None:
                continue
            owner = owner_of(p)
            if owner is None:
                continue
            policy = policies.get(id(owner))
            if policy is None:
                policy = policies[id(owner)] = owner.policy
            if id(policy) not in trims:  # (λ is the policy's value: `Constraint.strength`)
                trims[id(policy)] = (policy.value(), policy.dropped_atoms()) if policy.trimming() else None
            trim = trims[id(policy)]
            if trim is None:
                continue
            group["weight_decay"] = 0.0  # a group restored by load_state_dict may still hold λ
            lam, dropped = trim
            if lam > 0:
                p.grad.addcmul_(p.detach(), owner.trimmed_decay_mask(p._symopt_slot, p, dropped), value=lam)


#: steps of each adaptive strength checked for a gradient scaler that nobody named
SCALE_CHECK_STEPS = 10
#: factor gradients at the step this many times smaller than backward made them: a scaler's unscaling
SCALE_RATIO = 256.0


class ScaleWatch:
    r"""Catches a ``GradScaler`` that an adaptive λ was not told about.

    An adaptive λ (a budget, ``"auto"``, a schedule) reads $∂ℓ/∂θ$ during backward. Under a
    ``torch.amp.GradScaler`` those are the gradients of the *scaled* loss, $S$ (2^16 by default)
    times too large, until the scaler unscales the factors' gradients before the step; a budget's λ
    then comes out $S$ times too large and its decay kills the layer (tests/test_trimmed_decay.py: at
    2^16, λ 1e4 times the told run's and every entry below 1e-12 after 400 steps). So for the first
    ``SCALE_CHECK_STEPS`` steps each factor's $⟨∂/∂f, f⟩$ is recorded as backward computes it and
    compared, before the step, with $⟨f.\mathrm{grad}, f⟩$: a ratio below ``1 / SCALE_RATIO`` is a scaler's
    unscaling (gradient clipping alone rarely divides by 256), and it warns once, naming the fix.
    Nothing is checked once the policy knows its scaler (`symopt.bind(optimizer, scaler=)`), under
    ``torch.distributed`` (the step's gradients are the replicas' mean, not this rank's), or after
    those steps (the hooks are removed: no cost afterwards).
    """

    def __init__(self, constraint, factors: list[Tensor]) -> None:
        self.constraint, self.factors = constraint, list(factors)
        self.seen: Tensor | None = None  # Σ ⟨∂/∂f, f⟩ over this step's backward passes
        self.checked, self.done = 0, False
        self._hooks = [f.register_hook(self._recorder(f)) for f in self.factors]

    def _recorder(self, factor: Tensor):
        def record(grad: Tensor) -> None:
            if self.done or self.constraint.policy.scale_watch is not self:  # λ fixed since: nothing to check
                return
            dot = (grad.detach().reshape(-1) @ factor.detach().reshape(-1)).to(torch.float64)
            self.seen = dot if self.seen is None else self.seen + dot
        return record

    def check(self) -> None:
        """Before a step: compare what backward gave the factors with what the step will use."""
        seen, self.seen = self.seen, None
        if self.done or seen is None:
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.constraint.policy.scaler is not None or distributed:
            return self.stop()
        now = sum(float(f.grad.detach().reshape(-1).double() @ f.detach().reshape(-1).double())
                  for f in self.factors if f.grad is not None)
        seen = float(seen)
        self.checked += 1
        if seen != 0 and 0 < now / seen < 1 / SCALE_RATIO:
            warn_user(f"the gradients an adaptive λ read during backward are {seen / now:.3g} times those "
                      "the optimizer steps with: a torch.amp.GradScaler unscaled them after backward, so λ "
                      "(a budget, 'auto', a schedule) is that many times too large. Hand the scaler to symopt: "
                      "symopt.bind(optimizer, scaler=scaler)")
            return self.stop()
        if self.checked >= SCALE_CHECK_STEPS:
            self.stop()

    def stop(self) -> None:
        self.done = True
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def check_gradient_scale(param_groups: list[dict]) -> None:
    """Run the `ScaleWatch` of every symopt group's strength in ``param_groups`` (a step pre-hook's
    first act, before any decay is added to the gradients)."""
    for group in param_groups:
        if "symopt_strength" in group and group["params"]:
            owner = owner_of(group["params"][0])
            watch = None if owner is None else owner.policy.scale_watch
            if watch is not None:
                watch.check()


def factor_state_layers(optimizer: torch.optim.Optimizer, factors) -> list[tuple[str, tuple[Tensor, ...]]]:
    """Every state tensor ``optimizer`` keeps shaped like its factor (SGD's momentum, Adam's two averages
    and AMSGrad's maximum, RMSprop's, Adagrad's sums), by key, as a tuple in ``factors``' order with a zero
    scratch tensor where a factor has none: the tensors a kind's ``hold_atoms`` or a symmetry move treats
    as it treats the factors. A step count is never one of them, whatever its shape."""
    states = [optimizer.state.get(f, {}) for f in factors]
    layers = []
    for key in sorted({key for state in states for key in state if key != "step"}):
        tensors = [state.get(key) for state in states]
        if any(isinstance(t, Tensor) and t.shape == f.shape for t, f in zip(tensors, factors)):
            layers.append((key, tuple(t if isinstance(t, Tensor) and t.shape == f.shape else torch.zeros_like(f)
                                      for t, f in zip(tensors, factors))))
    return layers


def gradient_layer(factors) -> tuple[Tensor, ...] | None:
    """The factors' gradients as one factor-shaped layer (a zero scratch tensor where a factor has none), or
    None where none has one: what `hold_atoms` zeroes with the factors when atoms are put on the fixed point
    between backward and the step."""
    if all(f.grad is None for f in factors):
        return None
    return tuple(torch.zeros_like(f) if f.grad is None else f.grad for f in factors)


def hold_landed_state(optimizer: torch.optim.Optimizer) -> None:
    """Put the atoms a landing dropped since the last step on the fixed point in ``optimizer``'s state of
    their factors (what the landings ask with ``hold_state_at_next_step``; a step pre-hook's last act):
    first moments 0, second moments a large normal value (`landed_second_moment`).
    The optimizer's update of those entries is then exactly 0, step after step. Without it a landed
    atom's momentum decays into subnormal floats and stays there, and the optimizer's step on those
    entries costs several times a normal one on a CPU. The factors themselves are held by the landing's
    forward pre-hook."""
    if not optimizer.state:
        return
    for group in optimizer.param_groups:
        if "symopt_strength" not in group:
            continue
        for p in group["params"]:
            owner = owner_of(p)
            record = None if owner is None else owner.__dict__.get("_state_due")
            if record is None:
                continue
            owners, holder, factors, keep = record
            for o in owners:
                if o.__dict__.get("_state_due") is record:
                    del o.__dict__["_state_due"]
            # (not the gradients: the landing zeroed the factors before this step's forward, so at the mirror's
            # fixed point their gradients are 0 already, the decay's λ·factor too)
            layers = factor_state_layers(optimizer, factors)
            with torch.no_grad():
                kept = None  # per factor: 1.0 where an atom is kept, 0.0 where it landed
                for key, layer in layers:
                    if key in SECOND_MOMENTS:
                        if kept is None:
                            kept = tuple(torch.ones_like(f) for f in factors)
                            _hold(holder, kept, keep)
                        for t, k in zip(layer, kept):
                            t.mul_(k).add_(1 - k, alpha=landed_second_moment(t.dtype))
                    else:
                        _hold(holder, layer, keep)


def _hold(holder, layer: tuple[Tensor, ...], keep: Tensor | None) -> None:
    """The landed atoms of ``layer`` (factor-shaped tensors) at 0: ``holder.hold_landed`` (the landing's own
    hold, whose masks the next forward's hold reuses), or all of it where a set landed (``keep`` None)."""
    if keep is None:
        for t in layer:
            t.zero_()
    else:
        holder.hold_landed(layer, keep)


# Optimizer state of known meaning: running means of g (moved like g) and of g² or |g| (moved so
# that they stay non-negative; `symopt.regrow` takes another optimizer's non-negative state for the second kind).
FIRST_MOMENTS = frozenset({"momentum_buffer", "exp_avg", "grad_avg", "mu_product"})
SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf"})


def landed_second_moment(dtype: torch.dtype) -> float:
    r"""What `hold_landed_state` writes into a second-moment estimate (Adam's ``exp_avg_sq``, RMSprop's,
    Adagrad's sums) at a landed atom: $\sqrt{\max}$ of the dtype (1.8e19 in float32).

    The atom's first moment and gradient are 0, so every one of these optimizers' updates there is 0
    whatever this value is (Adam's $m̂/(\sqrt{v̂} + ε)$, Adagrad's $g/\sqrt{Σ g^2}$). Not 0: torch's
    ``sqrt`` costs 13 times a normal element on a 0 and 35 times on a subnormal (torch 2.13 on an Intel
    Xeon with AVX-512, any ``ATEN_CPU_CAPABILITY``; NumPy's root of 0 is not slow there), and Adam takes
    the root of every entry each step: the digits MLP's step after its landing was 1.9 times the dense
    step with zeros there against 1.6 with a normal value.
    Large: Adam's $β_2 = 0.999$ takes about 1.3e5 steps (RMSprop's 0.99: 1.3e4) to decay it to a
    subnormal, where a landing-time value of ~1e-24 would get there in 3e4."""
    return float(torch.finfo(dtype).max) ** 0.5


#: optimizer steps between two flushes of the atoms below the dtype's resolution (`flush_unresolved`)
FLUSH_EVERY = 16


def flush_unresolved(optimizer: torch.optim.Optimizer) -> None:
    r"""Once in ``FLUSH_EVERY`` steps of ``optimizer``: every atom of a symopt factorisation whose value is
    below its dtype's smallest normal number (`Constraint.unresolved_atoms`: $|u_i v_i| <$ 1.2e-38 in
    float32) goes to its mirror's fixed point, $u_i = v_i = 0$, with this step's gradients and the first
    moments in the optimizer's state; there its gradient and decay are 0 and it stays.

    Why: an atom the decay drives to the fixed point shrinks geometrically (THEORY §3) and passes through
    the subnormal floats, where each operation on a CPU costs tens of times a normal one, the weight's
    matrix products included. The digits MLP under Adam at a fixed λ = 1e-4 had 1476 subnormal entries in
    one 256 × 256 weight after 2000 steps, its products ran at 480 µs against ~20, and its step grew from
    2.1 to 6.6 ms (the dense step: 1.4–1.6): 3.1 times the dense run over 100 epochs, 1.6 with this flush,
    1.5 with the CPU's flush-to-zero mode (``torch.set_flush_denormal(True)``, which also covers
    activations and gradients; `benchmarks/RESULTS.md`). The flush changes θ by less than the dtype
    resolves, where the decay was taking it. Nothing else is touched: other parameters, the second
    moments (normal for ~1e5 more steps) and the process's floating-point mode are the user's.
    Kinds that do not say (`unresolved_atoms` None) are left alone.

    Then, the same way, the factor entries a kind names with `Constraint.unresolved_entries` go to 0 one by one:
    a low-rank factor's row for a hidden unit that no longer fires, or an input that is always 0, has no loss
    gradient and shrinks entry by entry, not as an atom (the digits MLP at a fixed λ on full-width factors:
    2.4e4 subnormal entries after 2000 steps, its step 2 → 20 ms).

    The same flush sets every first moment of a symopt factor (`FIRST_MOMENTS`: SGD's momentum, Adam's
    ``exp_avg``) at or below that number to 0, entry by entry and whatever the kind (`flush_subnormal_moments`):
    a live atom whose gradient is exactly 0 for a few hundred steps (an input unit that a sparse layer before
    it no longer feeds) has its first moment decay into the subnormals too (1225 of a 256 × 256 factor's on
    the digits MLP's ramp), and the update such a moment makes, below ``lr`` · 1.2e-38 / ``eps``, moves no
    weight of size above ~1e-25 at all: the weights are unchanged to the bit."""
    if not any("symopt_strength" in group for group in optimizer.param_groups):
        return  # (the hook is global: another optimizer of the process is none of symopt's business)
    steps = optimizer.__dict__.get("_symopt_flush_steps", 0) + 1
    optimizer.__dict__["_symopt_flush_steps"] = steps
    if steps % FLUSH_EVERY:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            if "symopt_strength" not in group:
                continue
            owners: dict[int, tuple] = {}
            for p in group["params"]:
                flush_subnormal_moments(optimizer.state.get(p))
                owner = owner_of(p)
                if owner is not None:
                    owners.setdefault(id(owner), (owner, []))[1].append(p)
            for owner, params in owners.values():
                if len(params) != len(owner.decayed) or owner.decayed != tuple(range(len(params))):
                    continue  # (a kind whose factors are not all decayed: not one this flush knows)
                factors = tuple(sorted(params, key=lambda f: f._symopt_slot))
                keep = owner.unresolved_atoms(factors)
                if keep is not None and not _nothing_to_flush(keep):
                    _flush(optimizer, factors, lambda layer: owner.hold_atoms(layer, keep))
                entries = owner.unresolved_entries(factors)
                if entries is not None and not all(_nothing_to_flush(kept) for kept in entries):
                    _flush(optimizer, factors, lambda layer: _zero_outside(layer, entries))


def _flush(optimizer: torch.optim.Optimizer, factors: tuple[Tensor, ...], hold) -> None:
    """``hold`` (a function of a factor-shaped layer, in place) on the factors, their gradients and their first
    moments in ``optimizer``'s state."""
    hold(factors)
    # (this step's gradients too: backward read them before the flush, at the old factors, and the step would
    # write them back into the zeros it just made)
    grads = gradient_layer(factors)
    if grads is not None:
        hold(grads)
    for key, layer in factor_state_layers(optimizer, factors):
        if key not in SECOND_MOMENTS:
            hold(layer)


def _zero_outside(layer: tuple[Tensor, ...], keep: tuple[Tensor, ...]) -> None:
    for tensor, kept in zip(layer, keep):
        tensor.masked_fill_(~kept, 0.0)


def _nothing_to_flush(keep: Tensor) -> bool:
    """Whether a flush's mask keeps every atom, asked on the CPU only: most flushes find nothing, and there
    one test saves the holds of factors, gradients and moments (0.4–0.7 ms a flush on the digits MLP's three
    weights, measured); on a GPU the test is a read to the host, a synchronisation, so the holds run whatever
    they find."""
    return keep.device.type == "cpu" and bool(keep.all())


def flush_subnormal_moments(state: dict | None) -> None:
    """Set the entries of the first moments in one parameter's optimizer ``state`` (`FIRST_MOMENTS`) whose
    magnitude is at or below their dtype's smallest normal number to 0 (see `flush_unresolved`); second
    moments are left alone (normal for ~1e5 more steps, and a root of 0 is as slow as one of a subnormal
    on the CPUs where this matters). One ``hardshrink`` a tensor: 14 µs at 65k float32 entries, where a
    comparison and a ``masked_fill_`` took 140 µs on this project's Xeon."""
    if not state:
        return
    for key in FIRST_MOMENTS:
        moment = state.get(key)
        if isinstance(moment, Tensor) and moment.is_floating_point() and moment.dim() > 0:
            moment.copy_(nn.functional.hardshrink(moment, torch.finfo(moment.dtype).tiny))


_step_hook = None


def _before_any_step(optimizer, _args, _kwargs) -> None:
    if getattr(optimizer, "_symopt_binding", None) is None:  # a bound optimizer's own hook does it
        check_gradient_scale(optimizer.param_groups)
        decay_dropped_atoms(optimizer.param_groups)
        hold_landed_state(optimizer)
        flush_unresolved(optimizer)


def _install_step_hook() -> None:
    """Register `_before_any_step` (the scaler check, the trimmed decay, the landed atoms' state, the
    flush of atoms below resolution) as a global optimizer step pre-hook, once per process: the first
    time `param_groups` builds a group of symopt factors."""
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_pre_hook(_before_any_step)


def group_holding(optimizer: torch.optim.Optimizer, factors) -> dict | None:
    """The optimizer's parameter group that holds any of ``factors`` (None if none does): its ``lr``
    is the step size that `symopt.watch_noise` and `symopt.regrow` read."""
    ids = {id(f) for f in factors}
    return next((g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])), None)


def check_scaler(scaler, owner: str) -> None:
    """Refuse (``TypeError``) a ``scaler`` that is not None and not a ``torch.amp.GradScaler``."""
    if scaler is not None and not (callable(getattr(scaler, "get_scale", None))
                                   and callable(getattr(scaler, "is_enabled", None))):
        raise TypeError(f"{owner}: scaler must be a torch.amp.GradScaler (get_scale, is_enabled), got "
                        f"{type(scaler).__name__}")


def check_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Warn ([`DecoupledDecayWarning`][symopt.DecoupledDecayWarning]) and return True if any symopt factor gets decoupled
    weight decay from ``optimizer``.

    [`bind`][symopt.bind] runs it before the optimizer's first step (and again when groups are
    added); call it to check up front.

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


class Binding:
    """The hooks [`bind`][symopt.bind] installed on one optimizer; ``remove()`` takes them off.

    Before each step: the decoupled-decay check (once, and again when groups are added); every
    group of symopt factors gets ``weight_decay`` = its constraint's current λ; the strength policies
    of the optimizer's factors are held, so λ stays fixed within the step. After the step they are
    released and apply what they observed during it. A step that raised leaves its policies held:
    the next step (or ``remove``) abandons that step's observations first, so one failure does not
    freeze λ.

    Args:
        optimizer: the optimizer to hook (use [`bind`][symopt.bind], which returns this object).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> opt = torch.optim.SGD(symopt.param_groups(lin, lr=0.1))
        >>> binding = symopt.bind(opt)
        >>> binding is symopt.bind(opt), binding.remove()
        (True, None)
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.scaler = None
        self._checked_groups = -1
        self._held: list = []
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)]
        self._synced = self._policies()  # they need not warn that their param_groups were replaced
        for policy in self._synced:
            policy.bound += 1

    def _policies(self) -> list:
        found: dict[int, object] = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                owner = owner_of(p)
                if owner is not None:
                    found.setdefault(id(owner.policy), owner.policy)
        return list(found.values())

    def _before_step(self, optimizer, _args, _kwargs) -> None:
        self._abandon()
        if self._checked_groups != len(optimizer.param_groups):
            self._checked_groups = len(optimizer.param_groups)
            check_optimizer(optimizer)
        for group in optimizer.param_groups:
            if "symopt_strength" in group and group["params"]:
                owner = owner_of(group["params"][0])
                if owner is not None:
                    group["weight_decay"], group["symopt_strength"] = owner.policy.group_decay(), owner.strength
        check_gradient_scale(optimizer.param_groups)
        decay_dropped_atoms(optimizer.param_groups)
        hold_landed_state(optimizer)
        flush_unresolved(optimizer)
        self._held = self._policies()
        for policy in self._held:
            policy.hold()

    def _after_step(self, _optimizer, _args, _kwargs) -> None:
        held, self._held = self._held, []
        for policy in held:
            policy.release()

    def _abandon(self) -> None:
        held, self._held = self._held, []
        for policy in held:
            policy.abandon()

    def remove(self) -> None:
        """Take the hooks off the optimizer (and drop an unfinished step's hold)."""
        self._abandon()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for policy in self._synced:
            policy.bound -= 1
            if self.scaler is not None and policy.scaler is self.scaler:
                policy.scaler = None
        self._synced = []
        if getattr(self.optimizer, "_symopt_binding", None) is self:
            del self.optimizer._symopt_binding


def bind(optimizer: torch.optim.Optimizer, scaler=None) -> Binding:
    """Install symopt's step hooks on ``optimizer`` (that optimizer only): the decoupled-decay
    check before its first step, ``weight_decay`` = λ for every group of symopt factors before every
    step, and λ held fixed within a step.

    Without it, a plain ``loss.backward(); optimizer.step()`` loop with groups from
    [`param_groups`][symopt.param_groups] already decays by the current λ. Bind when the optimizer
    evaluates a closure several times per step (L-BFGS) with an adaptive λ (``"auto"``, budgets,
    schedules), when its groups are not from ``param_groups`` (AdamW over ``model.parameters()``:
    the check then warns), or after ``optimizer.load_state_dict`` (which replaces the groups).
    With a ``torch.amp.GradScaler``, pass it: an adaptive λ reads $∂ℓ/∂θ$ during backward, where the
    gradients are those of the *scaled* loss, and would be as many times too large as the scale (a
    budget's λ with them, and the decay the optimizer then applies to unscaled gradients).

    Args:
        optimizer: a ``torch.optim.Optimizer`` holding symopt factors.
        scaler: the ``torch.amp.GradScaler`` that scales this optimizer's losses: the adaptive λ of
            its factors divide what they observe by its current scale.

    Returns:
        Binding: call ``.remove()`` to take the hooks off. Binding an optimizer twice returns the
            same binding.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, or ``scaler`` has no
            ``get_scale`` / ``is_enabled`` (not a GradScaler).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.subspace(lin, "weight", torch.ones(1, 6))          # strength="auto"
        >>> opt = torch.optim.LBFGS(lin.parameters(), max_iter=5)
        >>> binding = symopt.bind(opt)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = lin(torch.ones(4, 3)).square().mean() + symopt.penalty(lin)
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)        # λ moves once, after the step, not between evaluations
        >>> int(lin.parametrizations.weight[0].policy.estimate.count.item())
        1
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"bind: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    check_scaler(scaler, "bind")
    binding = getattr(optimizer, "_symopt_binding", None)
    if binding is None:
        binding = Binding(optimizer)
        optimizer._symopt_binding = binding
    if scaler is not None:
        binding.scaler = scaler
        for policy in binding._synced:
            policy.scaler = scaler
    return binding
