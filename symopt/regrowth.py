r"""Layer 3 — [`regrow`][symopt.regrow]: exact zeros during training, and zeros that leave fast.

A factored atom near its mirror's fixed point moves geometrically. For $θ_i = u_i v_i$ trained
by SGD with the decay λ, the factors' Hessian at $u_i = v_i = 0$ is $[[λ, g_i], [g_i, λ]]$
(THEORY §3): the atom shrinks by the factor $1 - \mathrm{lr}(λ - |g_i|)$ per step when the loss
pulls less than λ, and grows by $1 + \mathrm{lr}(|g_i| - λ)$ when it pulls more. Two things follow:

* a zero that should be zero is never exactly zero before the end of training (1e-17, then 1e-250,
  never 0): `finalize`'s snap does it at the end (an entry atom below the dtype's smallest normal,
  1.2e-38 in float32, goes to 0 on the way: `symopt.decay.flush_unresolved`);
* a zero that should *leave* it does so from wherever the decay had left it. After λ is lowered (a
  schedule, a fine-tuning at a smaller λ, a shift in the data) the atoms that should enter have
  spent the previous phase shrinking: from 1e-250 at the rate $\mathrm{lr}(|g_i| - λ)$ per step
  they need tens of thousands of steps, and from an exact 0.0 (float underflow) they never leave
  (`python -m benchmarks.regrowth`, λ lowered from 0.5 to 0.05 λ_max: plain GD 1.4–5% above
  scikit-learn's optimum after 5000 steps on diabetes, breast_cancer and wine).

A `Regrowth` watches $∂ℓ/∂θ$ (a moving average $\bar g$ over optimizer steps: batch gradients are
noisy) and, every ``every`` steps (10; 50 for low rank, whose decision costs factorisations of
r × r matrices), asks the constraint about each atom near zero
($\mathrm{atom}_i ≤ c \max_j \mathrm{atom}_j$, $c$ = ``near_zero``, the maximum over the decisions so far):

* **snap** — the pull is below λ ($\mathrm{dual\_atom}_i(\bar g) < λ$: zero satisfies the atom's KKT
  condition and is attracting): its factors are put on the fixed point ($u_i = v_i = 0$), where no
  gradient moves them, with their entries of this step's gradient and of the optimizer's state
  (momentum would move them back off it), and held there until
* **regrow** — the pull exceeds λ (zero violates KKT): the atom is seeded at
  $s \max_j \mathrm{atom}_j$ ($s$ = ``seed_size``; when every atom is 0, at one proximal gradient
  step's size $\mathrm{lr}(\mathrm{dual\_atom}_i(\bar g) - λ)$) along $-\bar g$, with balanced factors ([`Constraint.seed_atoms`][symopt.Constraint]):
  the direction of a proximal gradient step from zero, which the factors' own gradient, zero at the
  fixed point, cannot take. The first-order change of the penalised objective is
  $-(\mathrm{dual\_atom}_i - λ)·\mathrm{size}_i < 0$.

Seeded atoms start above the snap threshold ($s > c$), so an atom is not snapped again until the
decay has brought it back below it. The zeros and the λ are the training's; nothing else changes:
at a point where every atom's KKT condition holds, a `Regrowth` only makes the zeros exact.

A kind whose atoms are not entries of the factors first moves the factors so that they are
([`Constraint.isolate_small_atoms`][symopt.Constraint]): a singular direction of $UV^\top$ near zero
becomes a column pair once θ's small part is taken out of $U$ and the live columns are rotated (the
rotation applied to the gradients and the optimizer's state too). Its pulls are shared: the singular
values of the gradient's part off the live directions ([`Constraint.atom_pulls`][symopt.Constraint]).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from .attach import list_constraints
from .constraints.base import Constraint
from .decay import FIRST_MOMENTS, SECOND_MOMENTS, check_scaler, factor_state_layers, gradient_layer, group_holding


class _Watched:
    """One watched constraint: its members (one tensor, or several sharing one set of atoms: a channel
    group) and the running state of its atoms."""

    def __init__(self, handle, group: dict) -> None:
        self.constraint: Constraint = handle.constraint
        self.members = handle.members
        self.target = handle.target  # the list for a constraint over several tensors, else the one
        self.group = group  # the optimizer group holding the factors: its lr sizes a seed from zero
        values = [m.value.detach() for m in self.members]
        self.means = [torch.zeros_like(v, dtype=torch.promote_types(v.dtype, torch.float32)) for v in values]
        self.count = 0  # steps folded into `means` (their bias correction)
        with torch.no_grad():
            atoms = self.constraint.atom_sizes(tuple(f.detach() for f in self.factors), self.target(values)).numel()
        self.held = torch.zeros(atoms, dtype=torch.bool, device=values[0].device)
        self.folded = [False] * len(self.members)  # whether this step's backward has decayed each mean yet
        self.snapped = 0
        self.regrown = 0
        self.peak = 0.0  # the largest atom seen at a decision: "near zero" is relative to it

    @property
    def factors(self) -> tuple[Tensor, ...]:
        """Every member's factors in order (for a channel group: the gates and the first ω, then each ω)."""
        return tuple(f for m in self.members for f in m.factors)


class Regrowth:
    r"""The hooks of [`regrow`][symopt.regrow]: running means of $∂ℓ/∂θ$, the held zeros and the
    counts of what was done (see the module docstring for the rule).

    Args:
        optimizer: the optimizer whose steps drive it (build this object with
            [`regrow`][symopt.regrow], which checks every argument).
        watched: the watched tensors by name.
        every: decide every this many steps (None: each kind's ``regrowth_every``).
        beta: factor of the moving average of $∂ℓ/∂θ$.
        near_zero: relative size below which an atom is near zero.
        seed_size: relative size at which an atom is seeded.
        scaler: the GradScaler whose scale θ's gradients carry, or None.

    Attributes:
        steps: optimizer steps seen.
        snapped: per tensor, how many atoms were put exactly on zero (an atom can count more than once).
        regrown: per tensor, how many atoms were seeded off zero.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(6, 1, bias=False)
        >>> _ = symopt.sparse(lin, "weight", strength=0.1)
        >>> opt = torch.optim.SGD(symopt.param_groups(lin, lr=0.2), lr=0.2)
        >>> growth = symopt.regrow(lin, opt, every=5)
        >>> _ = torch.manual_seed(0); x = torch.randn(64, 6); y = x[:, :2].sum(1, keepdim=True)
        >>> for _ in range(500):
        ...     opt.zero_grad(); (lin(x) - y).square().mean().backward(); opt.step()
        >>> growth.remove()
        >>> int((lin.weight[0, 2:] == 0).sum())   # the four unused inputs: exactly 0
        4
    """

    def __init__(self, optimizer: torch.optim.Optimizer, watched: dict[str, _Watched], *, every: int | None,
                 beta: float, near_zero: float, seed_size: float, scaler) -> None:
        self.optimizer = optimizer
        self.every, self.beta, self.near_zero, self.seed_size, self.scaler = every, beta, near_zero, seed_size, scaler
        self.steps = 0
        self._watched = watched
        self._hooks = [m.parametrization.register_forward_hook(self._forward_hook(w, i))
                       for w in watched.values() for i, m in enumerate(w.members)]
        self._hooks.append(optimizer.register_step_pre_hook(self._before_step))

    @property
    def snapped(self) -> dict[str, int]:
        return {name: w.snapped for name, w in self._watched.items()}

    @property
    def regrown(self) -> dict[str, int]:
        return {name: w.regrown for name, w in self._watched.items()}

    def held(self, name: str) -> Tensor:
        """Which atoms of ``name`` are held exactly at zero now (a bool copy, in ``atoms`` order)."""
        return self._get(name).held.clone()

    def _get(self, name: str) -> _Watched:
        if name not in self._watched:
            raise ValueError(f"Regrowth: '{name}' is not watched; watched: {sorted(self._watched)}")
        return self._watched[name]

    def _forward_hook(self, watched: _Watched, index: int):
        def hook(_module, _inputs, output) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled()):
                return
            output.register_hook(lambda grad: self._fold(watched, index, grad))

        return hook

    @torch.no_grad()
    def _fold(self, watched: _Watched, index: int, grad: Tensor) -> None:
        """Fold member ``index``'s θ gradient into its moving average as backward computes it: the first
        backward pass of a step decays the average, later ones (gradient accumulation) add to the same
        step's share. One pass over θ, no copy kept."""
        # A GradScaler's scale (it changes only in update(), after the step) multiplies θ's gradient;
        # the optimizer sees the gradients unscaled, and so must λ's comparison. The scaler handed to
        # regrow, else the one handed to symopt.bind for this optimizer.
        scaler = self.scaler or getattr(getattr(self.optimizer, "_symopt_binding", None), "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        weight = 1 - self.beta
        mean = watched.means[index]
        grad = grad.to(mean.dtype)
        if not watched.folded[index]:
            watched.folded[index] = True
            if scale == 1.0:
                mean.lerp_(grad, weight)
                return
            mean.mul_(self.beta)
        mean.add_(grad, alpha=weight / scale)

    def _before_step(self, _optimizer, _args, _kwargs) -> None:
        self.steps += 1
        for watched in self._watched.values():
            if not any(watched.folded):
                continue  # no backward for this constraint this step
            watched.folded = [False] * len(watched.folded)
            watched.count += 1
            if self.steps % (self.every or watched.constraint.regrowth_every) == 0:
                self._decide(watched)

    @torch.no_grad()
    def _decide(self, watched: _Watched) -> None:
        constraint = watched.constraint
        if not all(bool(torch.isfinite(mean).all()) for mean in watched.means):
            # a bad batch (NaN / Inf gradients: a GradScaler's skipped step) reached the average:
            # start it again rather than decide on it
            for mean in watched.means:
                mean.zero_()
            watched.count = 0
            return
        if watched.count == 0:
            return  # nothing folded since the last reset
        means = [mean / (1 - self.beta ** watched.count) for mean in watched.means]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Replicas must take the same decision: θ's gradient is each rank's own (DDP averages
            # the factors' gradients, not θ's), so average the means first.
            for mean in means:
                torch.distributed.all_reduce(mean)
                mean /= torch.distributed.get_world_size()
        factors = tuple(f.detach() for f in watched.factors)
        values = [m.parametrization.forward(*(f.detach() for f in m.factors)) for m in watched.members]
        means = [mean.to(value.dtype) for mean, value in zip(means, values)]
        sizes = constraint.atom_sizes(factors, watched.target(values), watched.held).reshape(-1)
        largest = constraint.largest_atom(factors, sizes)
        # Near zero relative to the largest atom the tensor has had, not only to today's: when every
        # atom decays together (λ above the tensor's λ_max, a dead layer or head), none is ever small
        # next to the largest, and the zeros would arrive only by underflow.
        watched.peak = max(watched.peak, float(largest))
        # The atoms near zero, each given slots of its own first: a symmetry move of the factors (none for
        # entries and groups), with the gradients and the optimizer's state moved alike.
        near, move = constraint.isolate_small_atoms(factors, watched.held, sizes, self.near_zero * watched.peak)
        if move is not None:
            for layer, squared in self._layers(watched)[1:]:
                move(layer, squared)
        pull = constraint.atom_pulls(factors, watched.target(means), near | watched.held).reshape(-1)
        lam = constraint.strength
        snap = near & ~watched.held & (pull < lam)
        grow = (watched.held | near) & (pull > lam)
        watched.held = (watched.held | snap) & ~grow
        watched.snapped += int(snap.sum())
        watched.regrown += int(grow.sum())
        if bool(watched.held.any()):
            self._hold(watched)  # before seeding: a kind's seeds are orthogonal to what stays alive
        if bool(grow.any()):
            if float(largest) > 0:
                size = torch.full_like(pull, self.seed_size * float(largest))
            else:  # every atom is 0 (λ was above λ_max): one proximal gradient step's size from zero
                size = float(watched.group["lr"]) * (pull - lam).clamp_min(0)
            constraint.seed_atoms(factors, grow, watched.target(means), size)

    def _layers(self, watched: _Watched) -> list[tuple[tuple[Tensor, ...], bool]]:
        """The factor-shaped tensors a snap or a symmetry move must treat alike, each with whether it is
        a second-moment estimate: the factors, this step's gradients, and every optimizer state tensor
        shaped like its factor (SGD's momentum, Adam's two averages, RMSprop's, Adagrad's sums)."""
        params = watched.factors
        layers = [(tuple(p.detach() for p in params), False)]
        grads = gradient_layer(params)
        if grads is not None:
            layers.append((grads, False))
        for key, layer in factor_state_layers(self.optimizer, params):
            layers.append((layer, _second_moment(key, layer)))
        return layers

    def _hold(self, watched: _Watched) -> None:
        """Put the held atoms on the fixed point in the factors, in this step's gradients and in the
        optimizer's state of the factors. With zero factors, gradient and state, the updates of these
        optimizers are exactly 0 (the factors' gradient g·v and the decay λu vanish there), so the atom
        stays exactly 0 after every step without a pass over it each step."""
        keep = ~watched.held
        for layer, _ in self._layers(watched):
            watched.constraint.hold_atoms(layer, keep)

    def state_dict(self) -> dict:
        """The running means, counts and held zeros, for a checkpoint (with the model's and the
        optimizer's): a resumed run takes the same decisions."""
        return {"steps": self.steps,
                "tensors": {name: {"means": [mean.clone() for mean in w.means], "count": w.count,
                                   "held": w.held.clone(), "snapped": w.snapped, "regrown": w.regrown,
                                   "peak": w.peak}
                            for name, w in self._watched.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (the same tensors watched).

        Raises:
            ValueError: the state watches other tensors, or its shapes differ.
        """
        tensors = state.get("tensors", {}) if isinstance(state, dict) else {}
        if set(tensors) != set(self._watched):
            raise ValueError(f"Regrowth.load_state_dict: the state watches {sorted(tensors)}, this one "
                             f"{sorted(self._watched)}; build the Regrowth with the same names")
        for name, saved in tensors.items():
            w = self._watched[name]
            shapes = [m.shape for m in saved["means"]]
            if shapes != [m.shape for m in w.means] or saved["held"].shape != w.held.shape:
                raise ValueError(f"Regrowth.load_state_dict: '{name}' has other shapes in the state")
        self.steps = int(state["steps"])
        for name, saved in tensors.items():
            w = self._watched[name]
            for mean, value in zip(w.means, saved["means"]):
                mean.copy_(value)
            w.held.copy_(saved["held"])
            w.count, w.snapped, w.regrown = int(saved["count"]), int(saved["snapped"]), int(saved["regrown"])
            w.peak = float(saved.get("peak", 0.0))  # (a checkpoint from before the peak was kept: 0)

    def remove(self) -> None:
        """Take the hooks off the model and the optimizer (held zeros stay zero until a step moves them)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _second_moment(key: str, layer: tuple[Tensor, ...]) -> bool:
    # (another optimizer's non-negative state is taken for a second moment)
    if key in FIRST_MOMENTS or key in SECOND_MOMENTS:
        return key in SECOND_MOMENTS
    return all(bool((t >= 0).all()) for t in layer)


def _check_number(label: str, number, low: float, high: float) -> float:
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not low < number < high:
        raise ValueError(f"regrow: {label} must be a number in ({low:g}, {high:g}), got {number!r}")
    return float(number)


def regrow(model: nn.Module, optimizer: torch.optim.Optimizer, names=None, *, every: int | None = None,
           beta: float = 0.99, near_zero: float = 1e-3, seed_size: float = 1e-2, scaler=None) -> Regrowth:
    r"""Make a fixed-λ (or scheduled-λ) training run's zeros exact, and let zeros that should leave do
    so at once: snap attracted atoms near zero onto the mirror's fixed point, and seed repelled ones
    off it along $-∂ℓ/∂θ$ (the module docstring has the rule and why).

    Works with any optimizer that steps once per batch (SGD with or without momentum, Adam, RMSprop)
    and its learning-rate schedules, under gradient accumulation (θ's gradients summed until the
    step), a ``GradScaler`` (pass it) and DDP (the decisions use the replicas' mean gradient).

    Args:
        model: the model with the constraints.
        optimizer: the optimizer holding their factors (from [`param_groups`][symopt.param_groups]).
        names: the constrained tensors, as ``list_constraints`` names them (default: every one whose kind
            can regrow an atom and has no budget: ``sparse``, ``group_sparse`` on one tensor or over
            several, a channel's weight, bias and BatchNorm entries, ``nonnegative``, whose pull
            off zero is $(-∂ℓ/∂θ_i)^+$, and ``low_rank`` on one matrix, whose atoms are singular
            directions: θ's small singular part is taken out of $U$ and the live columns are rotated
            so that those directions are column pairs, see [`LowRank.isolate_small_atoms`][symopt.LowRank]).
        every: decide every this many optimizer steps (≥ 1). Default: each kind's ``regrowth_every``,
            10 steps, and 50 for ``low_rank``, whose decision takes QR factorisations and SVDs of its
            r-column factors (on the digits MLP's two full-width factors, every 10 steps cost 2.2× the
            plain run's training CPU; the β = 0.99 window averages about 100
            steps, so a direction snapped 40 steps later has lost nothing).
        beta: factor of the moving average of $∂ℓ/∂θ$ over steps, in (0, 1). The default's window (about
            100 steps) averages minibatch noise: on the digits MLP (Adam, batch 64, λ = 1e-3,
            ``python -m benchmarks.regrowth --mlp``) 0.9 regrew 45,000 atoms in 30 epochs that the
            decay then took back, 0.99 3,500, with the plain run's accuracy and sparsity.
        near_zero: an atom may be snapped or seeded when its size is at most this fraction of the
            largest atom the tensor has had at a decision (so a tensor whose atoms all decay together
            still gets exact zeros), in (0, 1).
        seed_size: a seeded atom starts at this fraction of the largest atom, in (near_zero, 1).
        scaler: the ``torch.amp.GradScaler`` scaling the losses, if any (θ's gradients are the scaled
            loss's; they are divided by its scale). Default: the one given to
            [`bind`][symopt.bind] for this optimizer, if any.

    Returns:
        Regrowth: ``held(name)``, ``snapped``, ``regrown``, ``state_dict()`` / ``load_state_dict()``;
            ``remove()`` takes the hooks off.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``optimizer`` not a ``torch.optim.Optimizer``,
            ``scaler`` not a GradScaler.
        ValueError: L-BFGS (its closure evaluates several times per step); a name without a
            constraint, with a kind that cannot seed an atom, with a budget (a budget lands its own
            zeros: ``total_steps``), or whose factors the optimizer does not hold; nothing to watch;
            bad ``every`` / ``beta`` / ``near_zero`` / ``seed_size``. Nothing is installed then.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=1e-2)
        >>> growth = symopt.regrow(lin, torch.optim.Adam(symopt.param_groups(lin, lr=1e-2)))
        >>> growth.remove()
        >>> growth.held("weight").shape      # one flag per entry: which are held at exactly 0
        torch.Size([8])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"regrow: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"regrow: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("regrow: L-BFGS evaluates its closure several times per step, so θ's gradient per step "
                         "is not one batch's; regrow watches optimizers that step once per batch (SGD, Adam, ...)")
    if every is not None and (isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1):
        raise ValueError(f"regrow: every must be an int >= 1 or None, got {every!r}")
    beta = _check_number("beta", beta, 0.0, 1.0)
    near_zero = _check_number("near_zero", near_zero, 0.0, 1.0)
    seed_size = _check_number("seed_size", seed_size, near_zero, 1.0)
    check_scaler(scaler, "regrow")
    handles = {h.name: h for h in list_constraints(model)}
    able = [n for n, h in handles.items() if h.constraint.can_regrow]
    if names is None:
        names = [n for n in able if handles[n].constraint.budget is None]
        if not names:
            raise ValueError("regrow: no constrained tensor to watch: it needs a kind that can seed an atom "
                             f"(sparse, group_sparse, nonnegative, low_rank) without a budget; the model has {sorted(handles)}")
    else:
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("regrow: names is empty; give the constrained tensors to watch, or None for all")
    watched = {}
    for name in names:
        if name not in handles:
            raise ValueError(f"regrow: '{name}' is not constrained; constrained: {sorted(handles)}")
        if name not in able:
            raise ValueError(f"regrow: '{name}' is {handles[name].kind}, whose atoms cannot be seeded off zero; "
                             f"regrowable: {able}")
        if handles[name].constraint.budget is not None:
            raise ValueError(f"regrow: '{name}' has a budget, which decides its zeros itself (give it "
                             "total_steps to land them exactly); regrow is for a fixed or scheduled λ")
        group = group_holding(optimizer, [f for m in handles[name].members for f in m.factors])
        if group is None:
            raise ValueError(f"regrow: the optimizer does not hold the factors of '{name}'; build it from "
                             "symopt.param_groups(model)")
        watched[name] = _Watched(handles[name], group)
    return Regrowth(optimizer, watched, every=None if every is None else int(every), beta=beta, near_zero=near_zero, seed_size=seed_size,
                    scaler=scaler)
