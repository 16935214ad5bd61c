r"""Strength policies: who decides λ, the coefficient of a constraint's induced penalty $λ‖θ‖$.

A constraint owns one policy object (a tie's copies share their group's). The policy answers
``value()`` (the λ to use now), may *observe* the loss gradient $∂ℓ/∂θ$ on each backward pass, and
keeps whatever state it needs as buffers (saved in ``state_dict``, averaged across DDP ranks through
``sync_state``). Nothing here is process-global:

* ``Fixed(λ)`` — a number.
* ``Auto(margin)`` — $\mathrm{margin} ×$ a running estimate of the Lagrange multipliers, for the exact-penalty
  (linear) kinds: above the multipliers the penalty holds the constraint exactly (THEORY.md §3).
* ``BudgetStrength(rate, initial)`` — λ moved along the regularisation path until the constraint's
  budget of ``k`` atoms is the predicted support (`symopt.constraints.budget`).
* ``Scheduled(schedule)`` — $λ = \mathrm{schedule}(\mathrm{step})$, a function of the training step (warm-up, ramp).

**Steps.** An optimizer step may evaluate the loss many times (L-BFGS's closure); λ must not move
inside one step, or the line search compares objectives with different penalties. A policy therefore
has ``hold()`` / ``release()``: while held, observations are kept aside and applied when released.
[`symopt.bind`][symopt.bind] holds the policies of an optimizer's factors around each of its steps;
without it every backward pass is one step (the plain ``backward(); step()`` loop).

**Optimizer groups.** [`symopt.param_groups`][symopt.param_groups] gives each constraint's factors a
group with ``weight_decay = λ``; the policy *follows* that group (weakly) and writes every new λ into
it, so an optimizer built from it decays the factors by the current λ with no call in the loop.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .auto import MultiplierEstimate, check_margin
from .budget import (LAND_BEYOND, LONG_RAMP, LONG_RAMP_READ_EVERY, READ_EVERY, RATE, BudgetController, budget_target,
                     at_or_above, below, check_rate, leading, mean_of_largest, sampled_kth,
                     scheduled_count)
from .state import Float64State, HostCopies
from .warn import warn_user

if TYPE_CHECKING:  # pragma: no cover
    from .base import Constraint


def check_strength(strength: object, owner: str) -> float:
    """Return ``strength`` as a float after checking it is a finite number > 0."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(
            f"{owner}: strength must be a positive real number, got {type(strength).__name__}; "
            "pass e.g. strength=1e-3"
        )
    value = float(strength)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(
            f"{owner}: strength must be finite and > 0, got {strength!r}; pass e.g. strength=1e-3 "
            "(strength is the λ of the induced penalty λ·‖·‖)"
        )
    return value


class StrengthGroup(dict):
    """An optimizer parameter group made by `symopt.param_groups` (a plain ``dict`` otherwise).

    A dict subclass only so that a policy can follow it through a weak reference: when the optimizer
    goes away, so does the policy's link to its group."""


class Strength(Float64State):
    """Base class of the strength policies (see the module docstring). Their buffers stay float64
    through a cast of the model (`symopt.constraints.state`).

    Subclasses define ``value()`` and, when λ follows the gradients, ``watching = True``,
    ``_observation`` (what one backward pass contributes) and ``_commit`` (apply one step's
    observations); ``describe()`` is the text of the constraint's repr. Pass an instance as any
    constraint's ``strength=``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> handle = symopt.sparse(lin, "weight", strength=symopt.Scheduled(lambda t: 1e-3 * min(1, t / 100 + 0.01)))
        >>> isinstance(handle.constraint.policy, symopt.Strength), handle.strength
        (True, 1e-05)
    """

    watching: ClassVar[bool] = False
    #: whether the decay is trimmed to the atoms a landing budget drops during its ramp (`BudgetStrength`)
    trims: bool = False
    #: the ``torch.amp.GradScaler`` whose scale the observed gradients carry (set by ``symopt.bind``)
    scaler = None
    #: the check of ``symopt.param_groups`` for a gradient scaler nobody named (``decay.ScaleWatch``;
    #: opaque here, and not copied with the policy)
    scale_watch = None

    def __init__(self) -> None:
        super().__init__()
        self._holds = 0
        self._paused = 0
        self._pending: list = []
        # what the backward pass under way has reported, by constraint (`_gather`), and that pass's id
        self._backward: dict[int, list] = {}
        self._backward_task: int | None = None
        self._followers: list[weakref.ref] = []
        self._orphaned_warned = False
        self.bound = 0  # how many symopt.bind bindings copy λ into their optimizer's groups every step

    # -- what a consumer asks ---------------------------------------------------------------------
    def value(self) -> float:  # pragma: no cover - abstract
        """λ now."""
        raise NotImplementedError

    def multiplier(self) -> float | None:
        """The running multiplier estimate, where the policy keeps one (``Auto``)."""
        return None

    def sync_state(self) -> list[Tensor]:
        """The state tensors that replicas must agree on (averaged by `symopt.sync_strengths`)."""
        return []

    def reload_state(self) -> None:
        """The state tensors were written from outside (`symopt.sync_strengths`): forget any host copy
        of them. Policies that keep none have nothing to do."""

    def schedule_of_budget(self):
        """A budget's ``(total_steps, ramp start, ramp end)``, None for anything else."""
        return None

    def has_landed(self) -> bool:
        """Whether a scheduled budget has landed (its dropped atoms are held at exactly 0)."""
        return False

    def trimming(self) -> bool:
        """Whether the decay acts now on the atoms outside the budget's current count only (the ramp of a
        landing budget; see `BudgetStrength`)."""
        return False

    def dropped_atoms(self) -> Tensor | None:
        """While `trimming`: the atoms the decay acts on (1.0; 0.0 for those it spares, over all the
        budget's atoms in order, in the value's dtype), as the last reading saw them; None before one."""
        return None

    def group_decay(self) -> float:
        """The ``weight_decay`` of an optimizer group of this policy's factors: λ, or 0 while `trimming`
        (`symopt.decay` then adds the decay of the dropped atoms' factors to their gradients itself)."""
        return 0.0 if self.trimming() else self.value()

    def lands_set(self) -> bool:
        """Whether an exact-penalty constraint lands on its set at a given step (`Landing`)."""
        return False

    def lands(self) -> bool:
        """Whether this policy lands at a known step: a scheduled budget, or an exact-penalty set with
        ``total_steps`` (`Landing`). `has_landed` says when it has."""
        return self.schedule_of_budget() is not None or self.lands_set()

    def resize(self, slots: int, device=None) -> None:
        """Prepare for ``slots`` tensors observed separately (a tie's copies); most policies keep one
        state for all."""

    def describe(self) -> str:
        return f"strength={self.value():g}"

    # -- observations -----------------------------------------------------------------------------
    def observe(self, constraint: Constraint, value: Tensor, grad: Tensor) -> None:
        """Called by the gradient hook with $∂ℓ/∂θ$ at ``value``: turn it into an observation,
        applied now, or when the step ends while the policy is held. Ignored while paused (gradients
        taken by `symopt.certify`) and when not finite (a bad batch must not poison λ)."""
        if not self.watching or self._paused:
            return
        if self.scaler is not None and self.scaler.is_enabled():
            grad = grad / _scale_of(self.scaler, grad)  # the gradient of the loss, not of the scaled loss
        if self._gather(constraint, (value, grad)):
            return
        observation = self._observation(constraint, value, grad)
        if observation is not None:
            self._accept(observation)

    def reads_next_gradient(self) -> bool:
        """Whether the observation of the coming backward pass reads $∂ℓ/∂θ$: a layer that can compute
        its output without forming θ (`Constraint.thin_factors`) does so only where this is False. Every
        watching policy reads it, unless it says otherwise (a budget between its readings)."""
        return self.watching

    def counts_unread_pass(self, constraint: Constraint) -> bool:
        """Whether ``constraint``'s backward counts a pass on which `reads_next_gradient` is False (the
        gradient hook of `watch_gradient`, the factored layer's of `symopt.attach`): every constraint
        of a policy by default; a pool's first tensor alone (`PooledBudget`), whose pass is then one
        step without its other tensors reporting."""
        return True

    def observe_unread(self, constraint: Constraint) -> None:
        """The observation of a backward pass on which `reads_next_gradient` was False and ``constraint``'s θ
        was not formed (`_unread_observation`): a budget or a schedule counts the step. Ignored where
        `observe` ignores one (not watching, paused)."""
        if not self.watching or self._paused:
            return
        if self._gather(constraint, None):
            return
        observation = self._unread_observation(constraint)
        if observation is not None:
            self._accept(observation)

    def _unread_observation(self, constraint: Constraint):
        return None

    def _gather(self, constraint: Constraint, reading: tuple[Tensor, Tensor] | None) -> bool:
        r"""Keep what ``constraint`` reports during a backward pass (``(value, ∂ℓ/∂θ)``, or None: θ not
        formed) for the end of that pass, where everything it reported becomes one step (`_end_of_backward`).
        A θ formed more than once in a forward pass — a layer applied twice (a recurrent cell, a block
        shared across depth), or its ``.weight`` read by other code — reports once per use, each with
        its use's part of $∂ℓ/∂θ$: the parts add up to the gradient, and the pass counts one step, so
        that ``total_steps`` counts optimizer steps (a layer applied twice per step landed at half the
        ramp before). False outside a backward pass (a direct call: observed at once)."""
        task = torch._C._current_graph_task_id()
        if task < 0:
            return False
        if reading is not None and not self.reads_next_gradient():
            reading = None  # (a step that reads no gradient, a budget's between readings: none is kept to the end)
        if self._backward_task != task:
            if self._backward:
                self._end_of_backward()  # (a pass that raised before its end: what it reported is one step)
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            except RuntimeError:  # pragma: no cover - inside a graph task, a callback can always be queued
                return False
            self.__dict__["_backward_task"] = task  # (see `_end_of_backward`)
        entry = self._backward.get(id(constraint))
        if entry is None:
            self._backward[id(constraint)] = [constraint, reading]
        elif reading is not None:
            entry[1] = reading if entry[1] is None else (entry[1][0], entry[1][1] + reading[1])
        return True

    def _end_of_backward(self) -> None:
        """The observations of the backward pass that ended, one per constraint, applied as one step."""
        entries = list(self._backward.values())
        # (plain attributes written past nn.Module.__setattr__'s parameter, buffer and module checks: this
        # runs on every backward pass of every constrained layer, a few µs each on a dispatch-bound step)
        self.__dict__.update(_backward={}, _backward_task=None)
        observations = []
        for constraint, reading in entries:
            observation = (self._unread_observation(constraint) if reading is None
                           else self._observation(constraint, *reading))
            if observation is not None:
                observations.append(observation)
        if observations:
            self._accept(*observations)

    def _accept(self, *observations) -> None:
        """Apply the observations of one step now, or keep them for the end of the step while held."""
        if self._holds:
            self._pending.extend(observations)
        else:
            self._commit(list(observations))

    def _observation(self, constraint: Constraint, value: Tensor, grad: Tensor):
        return None

    def _commit(self, observations: list) -> None:
        """Apply the observations of one step (several within an L-BFGS step)."""

    # -- steps and pauses -------------------------------------------------------------------------
    def hold(self) -> None:
        """Start of an optimizer step: keep λ fixed until `release`."""
        self._holds += 1

    def release(self) -> None:
        """End of an optimizer step: apply what was observed during it."""
        self._holds = max(0, self._holds - 1)
        if not self._holds:
            pending, self._pending = self._pending, []
            self._commit(pending)

    def abandon(self) -> None:
        """Forget an unfinished step (it raised): drop its holds and observations."""
        self._holds, self._pending, self._backward, self._backward_task = 0, [], {}, None

    @contextmanager
    def paused(self):
        """Ignore observations inside the block (gradients that are not training's)."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    # -- optimizer groups -------------------------------------------------------------------------
    def follow(self, group: StrengthGroup) -> None:
        """Write λ into ``group["weight_decay"]`` now and whenever it changes."""
        self._followers = [ref for ref in self._followers if ref() is not None and ref() is not group]
        self._followers.append(weakref.ref(group))
        self.publish()

    def publish(self) -> None:
        """Copy λ into the groups this policy follows (after any change of state)."""
        lam, decay, alive = self.value(), self.group_decay(), []
        for ref in self._followers:
            group = ref()
            if group is not None:
                group["weight_decay"], group["symopt_strength"] = decay, lam
                alive.append(ref)
        if self._followers and not alive and not self._orphaned_warned and not self.bound:
            # The optimizer that held these groups is gone, or optimizer.load_state_dict replaced its
            # groups by plain dicts: λ moves but no weight_decay follows it any more.
            self._orphaned_warned = True
            warn_user("an adaptive strength changed, but the optimizer groups from symopt.param_groups that "
                      "followed it are gone (optimizer.load_state_dict replaces them): call "
                      "symopt.bind(optimizer) so that weight_decay keeps following λ, or rebuild the optimizer "
                      "from symopt.param_groups(model)")
        self._followers = alive

    def handover(self, successor: Strength) -> Strength:
        """Give the groups this policy follows to ``successor`` (a strength that replaces it)."""
        successor._followers = list(self._followers)
        successor.publish()
        return successor

    # A copy (deepcopy, pickle) belongs to no optimizer: it follows no group and holds no step.
    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_followers=[], _holds=0, _paused=0, _pending=[], _orphaned_warned=False, bound=0, scaler=None,
                     scale_watch=None, _backward={}, _backward_task=None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        for name, default in (("_followers", []), ("_holds", 0), ("_paused", 0), ("_pending", []),
                              ("_orphaned_warned", False), ("bound", 0), ("_backward", {}), ("_backward_task", None)):
            self.__dict__.setdefault(name, default)


def _scale_of(scaler, grad: Tensor) -> Tensor | float:
    """A GradScaler's scale, as its tensor where it has one on ``grad``'s device: ``get_scale()`` reads it
    to the host, a synchronisation on a GPU at every backward pass of a model with an adaptive λ."""
    scale = getattr(scaler, "_get_scale_async", lambda: None)()
    if isinstance(scale, Tensor) and scale.device == grad.device:
        return scale
    return scaler.get_scale()


class Fixed(Strength):
    """λ is a number given by the user (what ``strength=0.1`` builds).

    Args:
        strength: λ, a finite number > 0.
        owner: the name used in error messages.

    Examples:
        >>> from symopt.constraints.strength import Fixed
        >>> Fixed(0.1).value()
        0.1
    """

    def __init__(self, strength: float, owner: str = "strength") -> None:
        super().__init__()
        self.strength = check_strength(strength, owner)

    def value(self) -> float:
        return self.strength


class Auto(HostCopies, Strength):
    r"""$λ = \mathrm{margin} ×$ a running estimate of the Lagrange multipliers (exact-penalty kinds).

    The multiplier of a linear constraint is the dual norm of the loss gradient on the constrained
    directions at the constrained optimum; the estimate is a bias-corrected moving average of that
    dual norm over the backward passes (stochastic gradients are noisy), one slot per tied copy.
    λ is 0 until the first observation. Each step's dual norm folds in on θ's device; λ is read from
    the estimate (one transfer) on one step in ``READ_EVERY`` (4), the steps counted in a buffer so
    that a resumed run reads on the same steps: a moving average over about ten steps moves little in
    four, and on a GPU every read is a synchronisation (five a step before).

    Args:
        margin: λ = margin × the estimate (> 1).
        slots: how many running estimates (a tie's copies), λ uses the largest.
        owner: the name used in error messages.

    Examples:
        >>> import torch
        >>> from symopt.constraints.strength import Auto
        >>> auto = Auto(margin=2.0)
        >>> auto.record(0.5); auto.value()
        1.0
    """

    watching = True

    def __init__(self, margin: float = 1.5, slots: int = 1, owner: str = "strength") -> None:
        super().__init__()
        self.margin = check_margin(margin, owner)
        self.estimate = MultiplierEstimate(slots)
        # the steps folded into the estimate: λ is read from it on one step in READ_EVERY (a buffer, so
        # that a resumed run reads it on the same steps and ends bit-identical)
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))
        self._register_load_state_dict_pre_hook(_count_steps_from_zero)

    def resize(self, slots: int, device=None) -> None:
        """One running estimate per tied copy (fresh)."""
        self.estimate = MultiplierEstimate(slots).to(device=device)

    def value(self) -> float:
        return self.margin * self.estimate.value()

    def multiplier(self) -> float | None:
        """The running estimate, read from its buffers now (a report's, not a step's, question)."""
        self.estimate.refresh()
        return self.estimate.value()

    def sync_state(self) -> list[Tensor]:
        return [self.estimate.mean, self.estimate.count]

    def describe(self) -> str:
        return "strength=auto"

    def record(self, multiplier: float, slot: int = 0) -> None:
        """Observe one multiplier value directly (what the gradient hook does with a dual norm)."""
        if math.isfinite(multiplier) and not self._paused:
            self._accept((torch.tensor(float(multiplier), dtype=torch.float64), slot))

    def _observation(self, constraint, value, grad):
        # (a 0-d tensor on θ's device: reading it here would synchronise a GPU on every backward pass)
        return torch.as_tensor(constraint.dual_norm(grad.detach())), constraint.slot

    def _commit(self, observations) -> None:
        # Within one step, the largest dual norm per slot: the conservative reading (a non-finite one
        # makes the step's reading non-finite, which the estimate skips).
        largest: dict[int, list[Tensor]] = {}
        for multiplier, slot in observations:
            largest.setdefault(slot, []).append(multiplier.reshape(()))
        for slot, multipliers in largest.items():
            self.estimate.fold(torch.stack(multipliers).amax() if len(multipliers) > 1 else multipliers[0], slot)
        if not largest:
            return
        # λ follows the estimate on one step in READ_EVERY, as a budget reads its atoms (a moving average
        # over about ten steps moves little in four), and on every step until it has seen a finite one
        steps = self.host("step") + 1
        self.write("step", steps)
        if steps % READ_EVERY == 0 or self.estimate.value() == 0.0:
            self.estimate.refresh()
            self.publish()


class BudgetStrength(HostCopies, Strength):
    r"""λ adapted so that the constraint's budget of ``k`` atoms is the predicted support (see
    `symopt.constraints.budget` for the controller and why it is this one).

    With ``total_steps`` the budget *arrives* during training and *lands*: no decay before the ramp
    starts (the features form), then the count follows the cubic schedule of gradual pruning from all
    atoms to ``k`` over the ramp; at its end the constraint puts the factors of every atom outside the
    ``k`` largest on the fixed subspace of their mirror symmetry (both factors exactly 0), where every
    gradient method leaves them: from then on the budget holds exactly, λ drops to 0 (the decay would
    only shrink the kept atoms now), and the ``k`` atoms train on (a fine-tuning phase, as after pruning).

    **Trimmed decay during the ramp** (``trims``, set by kinds whose factors split by atom: `Sparse`,
    `NonNegative`, `GroupSparse`, channels): the decay acts only on the factors of the atoms outside
    the current count's largest, so the penalty is the *trimmed* norm $λ\sum_{i > k(t)} a_{(i)}$ (the
    atoms beyond the k(t) largest; Bertsimas, Copenhaver & Mazumder 2017), whose zero set is exactly
    "at most k(t) atoms". The atoms the budget keeps are not shrunk on the way, which the plain norm
    does to all of them (the Lasso's bias). On the digits MLP this is the difference between losing
    1.5–2.6 accuracy points to gradual magnitude pruning and matching it (`benchmarks.compression`,
    benchmarks/RESULTS.md). λ is the same controller's: the dropped atoms are pushed to 0 by the λ at
    which the plain path would drop them.

    **Landing on the way** (``lands_early``, set by the kinds whose atoms own their factors' entries:
    `Sparse`, `NonNegative`, `GroupSparse`, channels and heads, alone or pooled). The decay moves a
    factor only as fast as the optimizer moves it (Adam: about ``lr`` a step, whatever λ), so on a short
    ramp, or on a trained model whose factors are far from 0, the dropped atoms are still where they
    were when the ramp ends, and the landing is one cut of everything beyond ``k`` (a trained digits MLP
    at 95% sparsity: accuracy 0.97 → 0.24 at that step). So each reading of the ramp also lands, at
    the next forward, the atoms ranked beyond ``LAND_BEYOND`` (1.5) × the scheduled count by size
    (about that many on a tensor of more than 16k atoms, whose edge is read from a sample,
    `budget.sampled_kth`): the cut follows the cubic schedule, as gradual magnitude pruning's does, a
    step behind the decay, and the atoms between the count and 1.5 times it are left to the trimmed
    decay and the gradient. What it costs: an atom still forming from a small start (a feature that
    grows late) is cut if it ranks that low, which the decay alone would let grow; a later ramp start
    gives features time, and ``land_on_the_way=False`` at registration (``lands_early = False`` on the
    policy) turns it off. Rank budgets do not
    land on the way (landing a singular direction rotates the factors by an SVD). Measured in
    `benchmarks.compression` (benchmarks/RESULTS.md).

    **Readings.** The controller reads the atoms on one step in ``every`` (an attribute,
    ``budget.READ_EVERY`` = 4; on a ramp of at least ``budget.LONG_RAMP`` steps
    ``budget.LONG_RAMP_READ_EVERY`` = 8), and on every step whose gradients are taken inside the step of an
    optimizer bound by `symopt.bind` (an L-BFGS closure; a plain ``backward(); step()`` loop takes them
    before the step, bound or not); λ and the dropped set stay as the last reading left them in between.

    Args:
        initial: the starting λ; None to take it from the first gradient.
        rate: fraction of the way log λ moves toward its target per step, in (0, 1].
        owner: the name used in error messages.
        schedule: ``(total_steps, ramp start, ramp end)`` (see ``budget.check_total_steps``), or None for
            a constant budget that never lands by itself.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> handle = symopt.sparse(lin, "weight", max_nonzero=4)     # builds a BudgetStrength
        >>> type(handle.constraint.policy).__name__, handle.strength   # λ unknown until a gradient
        ('BudgetStrength', 0.0)
    """

    def __init__(self, initial: float | None = None, rate: float = RATE, owner: str = "strength",
                 schedule: tuple[int, float, float] | None = None) -> None:
        super().__init__()
        start = None if initial is None else check_strength(initial, owner)
        self.controller = BudgetController(start, check_rate(rate, owner))
        self.schedule = schedule
        self.trims = False  # set by the constraint when its kind can decay the dropped atoms alone
        self.lands_early = False  # set by the constraint when its kind lands an atom by zeroing its entries
        self._early_keep: Tensor | None = None  # the atoms the next forward keeps (a reading's; see lands_early)
        self._dropped: Tensor | None = None  # the atoms the trimmed decay acts on (from the last reading)
        self.every = READ_EVERY  # the controller reads the atoms on one step in `every`
        # the steps so far (a buffer: a resumed run reads on the same steps and follows the same schedule)
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))
        if schedule is not None:
            total, first, last = schedule
            self.ramp = (int(first * total), max(int(first * total) + 1, int(round(last * total))))
            if self.ramp[1] - self.ramp[0] >= LONG_RAMP:
                self.every = LONG_RAMP_READ_EVERY
            self.register_buffer("landed", torch.zeros((), dtype=torch.float64))
        self._register_load_state_dict_pre_hook(_count_steps_from_zero)
        # the dropped atoms of the last reading go into the state_dict when there are some, so that a
        # resumed run decays the same entries until its next reading (not a buffer: its size is known
        # only once the constraint is registered, and only a trimmed ramp has one)
        self._register_state_dict_hook(_save_dropped)
        self._register_load_state_dict_pre_hook(_load_dropped, with_module=True)

    @property
    def watching(self) -> bool:  # type: ignore[override]
        return not self._counters()[1]

    def value(self) -> float:
        return self.controller.value()

    def _counters(self) -> tuple[int, bool]:
        """``(steps so far, landed)``, from the host copies of the buffers (`HostCopies`), kept as one
        tuple until `write` or `reload_state` changes them: a budget's hooks ask them ~50 times a training
        step (the digits MLP's three budgets), each ask ~1.5 µs through the copies."""
        counters = self.__dict__.get("_counters_now")
        if counters is None:
            if self.schedule is None:
                counters = (int(self.host("step")), False)
            else:
                step, landed = self.host("step", "landed")
                counters = (int(step), bool(landed))
            self.__dict__["_counters_now"] = counters
        return counters

    def write(self, name: str, value: float) -> None:
        super().write(name, value)
        self.__dict__.pop("_counters_now", None)

    def reload_state(self) -> None:
        super().reload_state()
        self.__dict__.pop("_counters_now", None)

    def sync_state(self) -> list[Tensor]:
        return [self.controller.log_strength, self.step]

    def describe(self) -> str:
        if self._counters()[1]:
            return f"strength={self.value():g} (landed)"
        return f"strength={self.value():g} (adapting)"

    def count(self, budget: int, atom_total: int) -> int:
        """The atoms a budget of ``budget`` (of ``atom_total``) keeps now: itself, or its schedule's count."""
        if self.schedule is None:
            return budget
        return scheduled_count(self._counters()[0], atom_total, budget, *self.ramp)

    def target(self, top_atoms, value: Tensor, grad: Tensor, budget: int, atom_total: int, keep=None):
        """The observation of a reading (a step `quiet` lets through): ``(λ target, dropped atoms, steps
        since the last reading, atoms kept on the way)``: the controller's target for the current count
        (None if not a usable λ); when the decay is trimmed, which atoms are outside the count's largest
        (``atoms <`` the count-th largest, over ``top_atoms(value)``, all the atoms in order; or outside
        ``keep(atoms, count)``, a bool mask, where the kept set has a rule of its own: a global budget's
        one unit per layer), as 1.0 / 0.0 in the value's dtype: the mask a step multiplies the decay by;
        and on a ramp that lands on the way (``lands_early``), the atoms the next forward keeps off the
        fixed subspace, by the same rule for ``LAND_BEYOND`` × the count (bool; None otherwise)."""
        # (named in torch's profiler: most of a reading runs in NumPy on the CPU, which it does not see; the name is
        # given only while a profiler records, since entering it costs ~5 µs a reading per tensor otherwise)
        if not torch.autograd._profiler_enabled():
            return self._reading(top_atoms, value, grad, budget, atom_total, keep)
        with torch.profiler.record_function("symopt.budget_reading"):
            return self._reading(top_atoms, value, grad, budget, atom_total, keep)

    def _reading(self, top_atoms, value: Tensor, grad: Tensor, budget: int, atom_total: int, keep):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP broadcasts rank 0's buffers at each forward (broadcast_buffers=True) without a trace on
            # them: the copies follow at each reading (a reading transfers to the host anyway)
            self.reload_state()
        count = self.count(budget, atom_total)
        atoms = top_atoms(value.detach(), count + 1, "point").reshape(-1)
        dropped = early = None
        if self.trimming():
            # (the trimmed decay spares exactly the count's largest atoms: the k-th largest, exactly)
            total, kth, _ = leading(atoms, count)
            size = total / count
            dropped = below(atoms, kth, value.dtype) if keep is None else (~keep(atoms, count)).to(value.dtype)
        else:
            size = mean_of_largest(atoms, count)  # (the step's scale alone: `mean_of_largest`)
        target = budget_target(top_atoms, value, grad, count, self.value(), size=size)
        landing = self._landing_count(count, atom_total)
        if landing is not None and keep is not None:
            early = keep(atoms, landing)
        elif landing is not None:
            # (ties with the landing-th largest stay; atoms that are not finite, a diverged run, land nothing)
            edge = sampled_kth(atoms, landing)
            early = at_or_above(atoms, edge) if math.isfinite(edge) else None
        return (target if math.isfinite(target) and target > 0 else None, dropped, 1 if self._holds else self.every,
                early)

    def reads_next_gradient(self) -> bool:
        return self.watching and (bool(self._paused) or self.quiet() is None)

    def _unread_observation(self, constraint):
        return self.quiet()  # (what `_observation` returns on such a step: the step is counted)

    def quiet(self) -> str | None:
        """Why this step reads no atoms: ``"warm-up"`` before the ramp, ``"between readings"`` on the
        steps between two readings (one in ``every``, once λ is known); None on a reading step. Within
        a step of an optimizer bound by `symopt.bind` (L-BFGS: many evaluations per step, each costlier
        than a reading) every step reads."""
        step = self._counters()[0]
        if self.schedule is not None and step < self.ramp[0]:
            return "warm-up"
        if step % self.every and not self._holds and math.isfinite(self.controller.log_value()):
            return "between readings"
        return None

    def schedule_of_budget(self):
        return self.schedule

    def has_landed(self) -> bool:
        return self._counters()[1]

    def trimming(self) -> bool:
        if not self.trims or self.schedule is None:
            return False
        step, landed = self._counters()
        return not landed and step >= self.ramp[0]

    def dropped_atoms(self) -> Tensor | None:
        return self._dropped if self.trimming() else None

    def _landing_count(self, count: int, atom_total: int) -> int | None:
        """At a reading of a ramp that lands on the way: how many atoms stay off their fixed subspace,
        ``LAND_BEYOND`` × the scheduled ``count``; None when that is all of them, or off the ramp."""
        if not self.lands_early or not self.trimming():
            return None
        keep = math.ceil(LAND_BEYOND * count)
        return keep if keep < atom_total else None

    def early_landing(self) -> Tensor | None:
        """The atoms the last reading keeps off the fixed subspace on the ramp's way (bool over the
        atoms; see ``lands_early``), once: the landing hook that takes it lands every other atom (and
        none that landed before stays off); None when there is nothing to land."""
        keep, self._early_keep = self._early_keep, None
        return keep if keep is not None and not self._counters()[1] else None

    def landed_early(self, budget: int, atom_total: int) -> bool:
        """Whether atoms may have landed on the way (`early_landing`) and must be held at 0 before each
        forward (an optimizer's momentum moves them off for a while); False once the budget has landed
        (its own hold takes over). From the step count alone: the scheduled count only falls, so no
        atom has landed while LAND_BEYOND × the count is every atom."""
        return self._landing_count(self.count(budget, atom_total), atom_total) is not None

    def next_landing(self, budget: int, atom_total: int, moved: Callable[[], bool]) -> tuple[str | None, Tensor | None]:
        """What a budget's landing hook does before this forward, one decision for every kind:
        ``("land", None)`` at the end of the ramp (keep the ``budget`` largest atoms, land the rest);
        ``("early", keep)`` where a reading left atoms to land on the way (`early_landing`); ``("hold",
        None)`` where landed atoms must go back to 0 because something wrote to the factors since they
        were held (``moved()``: a layer applied twice in one pass is not written again); ``(None,
        None)`` otherwise. ``moved`` is asked only once something has landed (a unit group's factors
        do not exist yet at registration's first forward)."""
        # (asked before every forward of every tensor the budget holds, and a function of the step count
        # until something lands: decided once per step and budget, not in a dozen calls each time)
        key = (*self._counters(), budget, atom_total, self.lands_early, self.trims)
        memo = self.__dict__.get("_landing_memo")
        if memo is None or memo[0] != key:
            memo = self.__dict__["_landing_memo"] = (key, self._landing_plan(budget, atom_total))
        plan = memo[1]
        if plan != "may hold":
            return plan, None
        if not moved():
            return None, None
        early = self.early_landing()
        return ("early", early) if early is not None else ("hold", None)

    def _landing_plan(self, budget: int, atom_total: int) -> str | None:
        """`next_landing`'s decision before it looks at the factors: None (the warm-up, or nothing landed and
        nothing to land), ``"land"`` (the ramp has ended), or ``"may hold"`` (atoms have landed: held where
        something wrote to the factors, landed where a reading left some out)."""
        if self.schedule is not None:
            step, landed = self._counters()
            if not landed and step < self.ramp[0]:
                return None  # (the warm-up: nothing is due, nothing has landed)
        if self.landing_due():
            return "land"
        return "may hold" if self.has_landed() or self.landed_early(budget, atom_total) else None

    def landing_due(self) -> bool:
        """Whether the ramp has ended and the budget has not landed yet."""
        if self.schedule is None:
            return False
        step, landed = self._counters()
        return not landed and step >= self.ramp[1]

    def mark_landed(self) -> None:
        """The budget landed: the structure is now held by the fixed subspace, so the decay would only
        shrink the kept atoms (the Lasso's bias): λ drops to 0 for the fine-tuning."""
        self.write("landed", 1.0)
        self.controller.forget()
        self.publish()

    def _observation(self, constraint, value, grad):
        if constraint.budget is None:
            return None
        return self.quiet() or self.target(constraint.top_dual_atoms, value, grad, constraint.budget,
                                           getattr(constraint, "atom_total", 0))

    def _commit(self, observations) -> None:
        if observations:
            self.write("step", self.host("step") + 1)
        points = [o for o in observations if not isinstance(o, str)]
        if not points:
            return
        if points[-1][1] is not None:
            self._dropped = points[-1][1]
        if points[-1][3] is not None:
            self._early_keep = points[-1][3]
        targets = [t for t, *_ in points if t is not None]
        if targets:
            # The last point of a step is where the optimizer stopped; before λ is known, the first point
            # (where the step started) sets its scale. λ moves by the compounded rate of the steps since
            # the last reading.
            known = math.isfinite(self.controller.log_value())
            self.controller.update(targets[-1] if known else targets[0], steps=points[-1][2])
        self.publish()


#: entries a budget's state_dict holds only while it has them (`_save_dropped`): a freshly registered budget's
#: state_dict lacks them, and loading a checkpoint that holds them restores them
OPTIONAL_STATE = ("dropped", "early_keep")


def _save_dropped(module: BudgetStrength, state_dict, prefix, _metadata) -> None:
    if module._dropped is not None:
        state_dict[prefix + "dropped"] = module._dropped
    if module._early_keep is not None:  # (a reading's landing not applied yet: the resumed run applies it)
        state_dict[prefix + "early_keep"] = module._early_keep


def _load_dropped(module: BudgetStrength, state_dict, prefix, *_args) -> None:
    module._dropped = state_dict.pop(prefix + "dropped", None)
    module._early_keep = state_dict.pop(prefix + "early_keep", None)


def _count_steps_from_zero(state_dict, prefix, *_args) -> None:
    """Checkpoints of a budget without ``total_steps``, or of an ``"auto"`` strength, written before it
    counted its steps load with the count at 0 (it only sets which steps read the atoms, or λ)."""
    state_dict.setdefault(prefix + "step", torch.zeros((), dtype=torch.float64))


class Scheduled(HostCopies, Strength):
    r"""$λ = \mathrm{schedule}(\mathrm{step})$: λ as a function of the training step (0, 1, 2, ...).

    A step is one backward pass, or one optimizer step under [`symopt.bind`][symopt.bind] (an
    L-BFGS step with many closure evaluations counts once). The step count is a buffer, so a resumed
    checkpoint continues the schedule. Use it for a warm-up (λ small while the features form) or a
    gradual ramp to the final strength, as gradual magnitude pruning ramps its sparsity.

    Args:
        schedule: a function $\mathrm{step} -> λ$ returning a finite number > 0 for every step.
        owner: the name used in error messages.

    Examples:
        >>> from symopt.constraints.strength import Scheduled
        >>> ramp = Scheduled(lambda t: 1e-3 * min(1.0, (t + 1) / 100))
        >>> ramp.value()
        1e-05
    """

    watching = True

    def __init__(self, schedule: Callable[[int], float], owner: str = "strength") -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"{owner}: Scheduled needs a function step -> λ, got {type(schedule).__name__}")
        self.schedule = schedule
        self.owner = owner
        check_strength(schedule(0), f"{owner}: schedule(0)")
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    def steps(self) -> int:
        """The steps so far, from the host copy (`HostCopies`)."""
        return int(self.host("step"))

    def value(self) -> float:
        step = self.steps()
        return check_strength(self.schedule(step), f"{self.owner}: schedule({step})")

    def sync_state(self) -> list[Tensor]:
        return [self.step]

    def describe(self) -> str:
        return f"strength={self.value():g} (scheduled, step {self.steps()})"

    def _observation(self, constraint, value, grad):
        return True

    def reads_next_gradient(self) -> bool:
        return False  # (it counts the steps; λ is the schedule's, whatever the gradient)

    def _unread_observation(self, constraint):
        return True

    def _commit(self, observations) -> None:
        if observations:
            self.write("step", self.host("step") + 1)
            self.publish()


class Landing(HostCopies, Strength):
    r"""An exact-penalty constraint (a tie, a subspace, fixed zeros) that *lands* on its set at a given
    step: before it, λ is ``inner``'s (``"auto"`` or a number); at step ``land_at`` the constraint puts its factors on the
    fixed subspace of its mirror symmetry (the set holds exactly, whatever the optimizer left), holds
    them there from then on, and λ drops to 0 (the decay of factors held at 0 does nothing).

    Why: an exact penalty holds the set only once training has converged with λ above the
    multipliers. Adam's per-coordinate steps left two tied layers of a digits MLP 1.4e-3 apart after 30
    epochs (``examples/tie_under_adam.py``), so a model that must end tied lands at a known step instead.

    Args:
        inner: the policy before the landing.
        schedule: ``(total_steps, ramp start, ramp end)``; the landing step is ``round(end · total_steps)``.

    Examples:
        >>> from symopt.constraints.strength import Fixed, Landing
        >>> policy = Landing(Fixed(0.5), (100, 0.1, 0.75))
        >>> policy.land_at, policy.value(), policy.landing_due()
        (75, 0.5, False)
    """

    watching = True

    def __init__(self, inner: Strength, schedule: tuple[int, float, float]) -> None:
        super().__init__()
        self.inner = inner
        total, _, last = schedule
        self.land_at = max(1, int(round(last * total)))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))
        self.register_buffer("landed", torch.zeros((), dtype=torch.float64))
        self._first_slot: int | None = None

    def _counters(self) -> tuple[int, bool]:
        """``(steps so far, landed)``, from the host copies of the buffers (`HostCopies`)."""
        step, landed = self.host("step", "landed")
        return int(step), bool(landed)

    def value(self) -> float:
        return 0.0 if self._counters()[1] else self.inner.value()

    def multiplier(self) -> float | None:
        return self.inner.multiplier()

    def resize(self, slots: int, device=None) -> None:
        self.inner.resize(slots, device)

    def sync_state(self) -> list[Tensor]:
        return self.inner.sync_state() + [self.step]

    def has_landed(self) -> bool:
        return self._counters()[1]

    def lands_set(self) -> bool:
        return True

    def landing_due(self) -> bool:
        step, landed = self._counters()
        return not landed and step >= self.land_at

    def mark_landed(self) -> None:
        self.write("landed", 1.0)
        self.publish()

    def describe(self) -> str:
        return f"{self.inner.describe()}, lands at step {self.land_at}" + (" (landed)" if self._counters()[1] else "")

    def _observation(self, constraint, value, grad):
        # One step per backward pass: a tie's later copies each report, so only one of them ticks: the
        # one that reported first (the backward visits them in the same order every time).
        slot = constraint.slot
        if self._first_slot is None:
            self._first_slot = slot
        inner = self.inner._observation(constraint, value, grad) if self.inner.watching else None
        return (inner, slot == self._first_slot)

    def _commit(self, observations) -> None:
        if self._counters()[1]:
            return
        if any(tick for _, tick in observations):
            self.write("step", self.host("step") + 1)
        inner = [o for o, _ in observations if o is not None]
        if inner:
            self.inner._commit(inner)
        self.publish()


def strength_policy(strength, *, linear: bool, budget: bool, margin: float, rate: float, owner: str,
                    schedule: tuple[int, float, float] | None = None) -> Strength:
    """The policy a constraint's ``strength=`` argument asks for.

    ``"auto"`` (linear kinds only) → `Auto`; a budget → `BudgetStrength` (starting at ``strength``
    when given); a number → `Fixed`; None → the kind's default (1e-3 for penalty kinds, ``"auto"`` for
    linear ones); a `Strength` object is used as it is.
    """
    if isinstance(strength, Strength):
        return strength
    margin, rate = check_margin(margin, owner), check_rate(rate, owner)  # checked whatever the policy
    if isinstance(strength, str):
        if strength != "auto":
            raise TypeError(f"{owner}: strength must be a positive real number or 'auto', got {strength!r}; "
                            "pass e.g. strength=1e-3")
        if not linear:
            raise ValueError(
                f"{owner}: strength='auto' applies to the exact-penalty kinds (Subspace, FixedZeros, Tied); "
                "give a number, e.g. strength=1e-3, or a budget (max_nonzero=, max_groups=, target_rank=)"
            )
        return Auto(margin, owner=owner)
    if budget:
        return BudgetStrength(strength, rate, owner=owner, schedule=schedule)
    if strength is None:
        return Auto(margin, owner=owner) if linear else Fixed(1e-3, owner)
    return Fixed(strength, owner)
