r"""Layer 3 — [`Guard`][symopt.Guard]: keep a training loop on finite ground.

One bad step (a learning rate too high for the factored landscape, a budget λ that overshoots, a
batch with an Inf) writes NaN or Inf into the factors, and from there into every later step, every
checkpoint and [`symopt.finalize`][symopt.finalize]. A guard checks each step and, when one goes wrong, rolls
the model back to its last good state — parameters (the factors included) and buffers (the
``strength="auto"`` estimates and the budget controllers' λ live there), plus the optimizer's
state — and lowers the learning rate, so the same step is not taken again.

What counts as wrong:

* a NaN / Inf loss or gradient — the step is *skipped* (nothing has changed yet); if the next step
  is bad too, the model itself is what breaks (weights grown huge but finite) and it is *rolled back*;
* a budgeted tensor that became all zeros (a budget's λ that overshot) — *rolled back*;
* a NaN / Inf parameter or buffer after the step, or in the optimizer's state (one huge finite
  gradient can put Inf in Adam's ``exp_avg_sq``, after which the parameters stop moving) — *rolled back*;
* divergence — the smoothed loss (an exponential moving average, β = 0.9, so batch noise does not
  trigger it) rose on each of the last ``patience`` steps and is above its best by more than
  $\mathrm{rise} × |\mathrm{best}|$ — *rolled back* to the state before the rise began.

A skipped or rolled-back step leaves λ as it was: the adaptive strengths (``"auto"``, budgets,
schedules) observe the gradient during ``backward()``, before the guard sees the step, so the guard
keeps a copy of their state after every accepted step and puts it back when it refuses one.

More than ``max_failures`` failures in a row raise [`Diverged`][symopt.Diverged], after the rollback: the
model is never left corrupted.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attach import list_constraints


class Diverged(RuntimeError):
    """Training kept failing after [`Guard`][symopt.Guard] rolled back ``max_failures`` times in a row; the
    model holds the last good state.

    Catch it to save the model, lower the learning rate or stop; ``guard.events`` lists what failed.

    Examples:
        >>> import torch, symopt
        >>> model = torch.nn.Linear(2, 1)
        >>> guard = symopt.guard(model, max_failures=1)
        >>> try:
        ...     for _ in range(3):                      # the 2nd failure in a row is one too many
        ...         _ = guard.check(loss=float("nan"))
        ... except symopt.Diverged:
        ...     print(len(guard.events), guard.events[-1].action)
        2 rolled_back
    """


@dataclass(frozen=True)
class GuardEvent:
    """One intervention of a [`Guard`][symopt.Guard].

    Attributes:
        step: the 1-based count of guarded steps when it happened.
        action: ``"skipped"`` (bad loss or gradient, no update made) or ``"rolled_back"``.
        reason: what was seen (``"loss is nan"``, ``"parameter '0.weight' is not finite"``, ...).

    Examples:
        >>> import torch, symopt
        >>> guard = symopt.guard(torch.nn.Linear(2, 1))
        >>> guard.check(loss=float("inf")), guard.events[0].step, guard.events[0].action
        (False, 1, 'rolled_back')
    """

    step: int
    action: str
    reason: str


def _check_number(value, name: str, low: float, high: float | None = None, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    ok = not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value) and value >= low
    if not ok or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"Guard: {name} must be {'an int' if integer else 'a number'} {span}, got {value!r}")


class Guard:
    """Checks a training loop each step and rolls back to the last good state when it breaks.

    Args:
        model: the module being trained (constrained or not).
        optimizer: its optimizer. Needed for `step` and to restore the optimizer's state and
            lower its learning rate on rollback; without it, call `check` after your own step.
        patience: steps of uninterrupted rise of the smoothed loss that count as divergence
            (``None`` turns divergence detection off; NaN / Inf are always caught).
        rise: how far above its best the smoothed loss must be, relative to ``|best|``.
        lr_factor: multiply every group's ``lr`` by this on rollback (1.0 keeps it). A scheduler that
            recomputes ``lr`` in closed form overrides it.
        max_failures: skips or rollbacks in a row before [`Diverged`][symopt.Diverged] is raised.
        every: refresh the saved state at most every ``every`` good steps (each refresh copies the
            parameters, buffers and optimizer state once; the copy costs one model's memory).

    Attributes:
        events: list of [`GuardEvent`][symopt.GuardEvent], oldest first.
        steps: guarded steps so far.

    Examples:
        >>> import torch, symopt
        >>> model = torch.nn.Linear(3, 1)
        >>> _ = symopt.sparse(model, "weight", strength=1e-3)
        >>> opt = torch.optim.SGD(symopt.param_groups(model, lr=0.1))
        >>> guard = symopt.guard(model, opt)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> loss = torch.nn.functional.mse_loss(model(x), y)
        >>> loss.backward()
        >>> guard.step(loss)
        True
        >>> x[0, 0] = float("inf")  # a corrupt batch: the step is skipped, nothing changes
        >>> opt.zero_grad(); loss = torch.nn.functional.mse_loss(model(x), y); loss.backward()
        >>> guard.step(loss), guard.events[-1].action
        (False, 'skipped')
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 patience: int | None = 50, rise: float = 1.0, lr_factor: float = 0.5,
                 max_failures: int = 5, every: int = 1) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Guard: expected an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Guard: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if patience is not None:
            _check_number(patience, "patience", 1, integer=True)
        _check_number(rise, "rise", 0.0)
        _check_number(lr_factor, "lr_factor", 0.0, 1.0)
        if lr_factor == 0:
            raise ValueError("Guard: lr_factor must be > 0 (0 would stop training); use 1.0 to keep the lr")
        _check_number(max_failures, "max_failures", 1, integer=True)
        _check_number(every, "every", 1, integer=True)
        self.model, self.optimizer = model, optimizer
        self.patience, self.rise, self.lr_factor = patience, float(rise), float(lr_factor)
        self.max_failures, self.every = max_failures, every
        self.events: list[GuardEvent] = []
        self.steps = 0
        self._failures = 0
        self._smooth = _Smoothed()
        self._saved: dict | None = None
        self._since_save = 0
        self._save()
        self._strengths: list[tuple[Tensor, Tensor]] = []
        self._keep_strengths()

    # -- the two entry points --------------------------------------------------------------------
    def step(self, loss: Tensor | float | None = None, closure=None) -> bool:
        """Check ``loss`` and the gradients, step the optimizer if they are finite, then `check`.

        Call after ``loss.backward()`` in place of ``optimizer.step()``. Returns True when the
        update was made and the model is healthy; False when the step was skipped or rolled back.
        """
        if self.optimizer is None:
            raise ValueError("Guard.step needs the optimizer: symopt.guard(model, optimizer); without one, "
                             "call guard.check(loss) after your own optimizer.step()")
        self.steps += 1
        bad = self._bad_loss(loss) or self._bad_gradients()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self._failures == 0:  # one bad batch: skip it, nothing has changed (λ put back)
                self._undo_strengths()
                self._fail("skipped", bad)
            else:  # again: the model itself is what breaks (e.g. weights grown huge but finite)
                self._restore()
                self._fail("rolled_back", bad)
            return False
        if closure is None:
            self.optimizer.step()
        else:
            self.optimizer.step(closure)
        return self._after_update(loss)

    def check(self, loss: Tensor | float | None = None) -> bool:
        """After your own ``optimizer.step()``: check ``loss`` (optional; needed for divergence
        detection), every parameter and buffer; roll back on trouble. Returns True when healthy."""
        self.steps += 1
        return self._after_update(loss)

    @property
    def rollbacks(self) -> int:
        return sum(e.action == "rolled_back" for e in self.events)

    # -- internals -------------------------------------------------------------------------------
    def _after_update(self, loss) -> bool:
        handles = list_constraints(self.model)  # once per step: the checks and the λ copy share it
        bad = self._bad_loss(loss) or self._bad_state() or self._bad_optimizer_state() or self._zeroed_budget(handles)
        if not bad and loss is not None and self.patience is not None:
            bad = self._smooth.update(_value(loss), self.patience, self.rise)
        if bad:
            self._restore()
            self._fail("rolled_back", bad)
            return False
        self._failures = 0
        self._keep_strengths(handles)
        self._since_save += 1
        if self._since_save >= self.every and self._smooth.good(self.rise):  # never save on the way up
            self._save()
        return True

    def _fail(self, action: str, reason: str) -> None:
        self._failures += 1
        self.events.append(GuardEvent(self.steps, action, reason))
        if self._failures > self.max_failures:
            raise Diverged(f"Guard: {self._failures} failed steps in a row (last: {reason}); the model holds "
                           f"the last good state. Lower the learning rate or the strength, or check the data.")

    def _bad_loss(self, loss) -> str | None:
        if loss is None:
            return None
        value = _value(loss)
        return None if math.isfinite(value) else f"the loss is {value}"

    def _bad_gradients(self) -> str | None:
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        return _first_non_finite(named, "gradient of")

    def _bad_state(self) -> str | None:
        named = list(self.model.named_parameters()) + [
            (n, b) for n, b in self.model.named_buffers() if torch.is_floating_point(b)]
        return _first_non_finite(named, "")

    def _bad_optimizer_state(self) -> str | None:
        if self.optimizer is None:
            return None
        names = {id(p): n for n, p in self.model.named_parameters()}
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
                    return f"optimizer state '{key}' of parameter '{names.get(id(p), '?')}' is not finite"
        return None

    def _zeroed_budget(self, handles) -> str | None:
        """A budgeted tensor that became all zeros: a budget of k ≥ 1 atoms cannot mean that (a λ that
        overshot, e.g. under gradient clipping), and zero factors cannot grow back."""
        for handle in handles:
            budget = handle.constraint.budget
            if budget and all(not bool(v.detach().any()) for v in handle.values()):
                return f"'{handle.name}' (budget {budget}) has every entry at 0: the layer was zeroed"
        return None

    def _policies(self, handles=None) -> list:
        found: dict[int, object] = {}
        for handle in list_constraints(self.model) if handles is None else handles:
            found.setdefault(id(handle.constraint.policy), handle.constraint.policy)
        return list(found.values())

    def _keep_strengths(self, handles=None) -> None:
        """Copy the adaptive strengths' state (an accepted step's λ)."""
        self._strengths = [(b, b.detach().clone()) for policy in self._policies(handles) for b in policy.buffers()]

    def _undo_strengths(self) -> None:
        """Put λ back where the last accepted step left it (and into the optimizer groups that follow it)."""
        with torch.no_grad():
            for buffer, value in self._strengths:
                if buffer.shape == value.shape:
                    buffer.copy_(value)
        for policy in self._policies():
            policy.publish()

    def _save(self) -> None:
        """Copy parameters, buffers (into the previous copy's memory) and the optimizer state."""
        old = self._saved or {}
        tensors = {n: t for n, t in self.model.state_dict(keep_vars=True).items() if isinstance(t, Tensor)}
        saved = {"model": {}, "optimizer": None, "smooth": self._smooth.state()}
        for name, tensor in tensors.items():
            keep = old.get("model", {}).get(name)
            if keep is not None and keep.shape == tensor.shape and keep.dtype == tensor.dtype:
                saved["model"][name] = keep.copy_(tensor.detach())
            else:
                saved["model"][name] = tensor.detach().clone()
        if self.optimizer is not None:
            saved["optimizer"] = {
                p: {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}
                for p, state in self.optimizer.state.items()
            }
        self._saved = saved
        self._since_save = 0

    def _restore(self) -> None:
        with torch.no_grad():
            current = self.model.state_dict(keep_vars=True)
            for name, value in self._saved["model"].items():
                current[name].copy_(value)
        if self.optimizer is not None:
            self.optimizer.state.clear()
            for p, state in self._saved["optimizer"].items():
                self.optimizer.state[p] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}
            for group in self.optimizer.param_groups:
                if isinstance(group.get("lr"), (float, int)):
                    group["lr"] = group["lr"] * self.lr_factor
            self.optimizer.zero_grad(set_to_none=True)
        self._smooth.load(self._saved["smooth"])
        handles = list_constraints(self.model)
        for policy in self._policies(handles):  # the restored buffers hold λ's state: into the groups with it
            policy.publish()
        self._keep_strengths(handles)


class _Smoothed:
    """EMA of the loss (β = 0.9, bias-corrected), its best value and the current streak of rises."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0
        self.best = math.inf
        self.last = math.inf
        self.streak = 0

    def state(self) -> tuple:
        return self.mean, self.count, self.best, self.last, self.streak

    def load(self, state: tuple) -> None:
        self.mean, self.count, self.best, self.last, self.streak = state

    def _ceiling(self, rise: float) -> float:
        return self.best + rise * max(abs(self.best), 1e-12)

    def good(self, rise: float) -> bool:
        r"""Worth saving: not on a rise, and within $\mathrm{rise} × |\mathrm{best}|$ of the best smoothed loss."""
        if self.count == 0:
            return True
        return self.streak == 0 and self.last <= self._ceiling(rise)

    def update(self, value: float, patience: int, rise: float) -> str | None:
        self.mean = 0.9 * self.mean + 0.1 * value
        self.count += 1
        smoothed = self.mean / (1 - 0.9 ** self.count)
        self.streak = self.streak + 1 if smoothed > self.last else 0
        self.last = smoothed
        self.best = min(self.best, smoothed)
        if self.streak >= patience and smoothed > self._ceiling(rise):
            return (f"divergence: the smoothed loss rose for {self.streak} steps in a row, "
                    f"from {self.best:.4g} to {smoothed:.4g}")
        return None


def _value(loss) -> float:
    return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)


def _first_non_finite(named: list[tuple[str, Tensor]], what: str) -> str | None:
    if not named:
        return None
    device = named[0][1].device
    flags = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in named]).cpu()  # one sync
    if bool(flags.all()):
        return None
    bad = [name for (name, _), ok in zip(named, flags.tolist()) if not ok]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"NaN or Inf in the {what + ' ' if what else ''}'{bad[0]}'{more}"


def guard(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **options) -> Guard:
    """A [`Guard`][symopt.Guard] for ``model`` (and ``optimizer``): ``guard.step(loss)`` replaces
    ``optimizer.step()``; it skips or rolls back a step that breaks the model.

    A NaN / Inf loss or gradient skips the step; NaN / Inf in a parameter or buffer after a step,
    a second bad step in a row, or divergence (the smoothed loss rose ``patience`` steps in a row
    and is ``rise`` above its best) restores the last good parameters, buffers and optimizer state
    and scales ``lr`` by ``lr_factor``.

    Args:
        model: the module being trained.
        optimizer: its optimizer (needed for `Guard.step` and to restore its state).
        **options: ``patience``, ``rise``, ``lr_factor``, ``max_failures``, ``every`` (see
            [`Guard`][symopt.Guard]).

    Returns:
        Guard: holding a snapshot of the current (good) state.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not an optimizer.
        ValueError: an option out of range (the message names it).

    Examples:
        >>> import torch, symopt
        >>> model = torch.nn.Linear(2, 1)
        >>> symopt.guard(model).check(loss=0.5)
        True
    """
    return Guard(model, optimizer, **options)
