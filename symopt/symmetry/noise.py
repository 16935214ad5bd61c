r"""Layer 3 — [`noise_collapse`][symopt.noise_collapse]: which atoms SGD's gradient noise will pull onto a mirror plane.

An atom $θ_i = u_i v_i$ sits on the fixed point $u_i = v_i = 0$ of its mirror symmetry. Near it, one
SGD step on a batch is linear in ``(u_i, v_i)``: with the batch gradient $g = ∂ℓ_B/∂θ_i$ (at
$θ_i = 0$) and coupled decay λ, the modes $u ± v$ are multiplied by $1 - \mathrm{lr}(λ ± g)$. Whether the
collapsed state attracts is decided by the Lyapunov exponents $Λ± = E_B \log|1 - \mathrm{lr}(λ ± g_B)|$: if
both are negative the atom is pulled to exactly 0 and held there, whatever its mean gradient says. By
Jensen, noise lowers ``E log``: a small batch (large variance of $g_B$) at a large learning rate
collapses atoms that full-batch gradient descent keeps, including atoms that carry signal
($|E g| > λ$). This is the DCS paper's "a favored solution when either the weight decay or gradient
noise is large", made a number per atom.

The exponents are estimated from per-sample gradients at $θ_i = 0$ (``torch.func``), drawing batches
of the given size with replacement.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attach import list_constraints, remove
from ..decay import group_holding


def collapse_exponents(per_sample: Tensor, lr: float, batch_size: int, strength: float = 0.0,
                       draws: int = 4096, seed: int = 0) -> Tensor:
    r"""The larger Lyapunov exponent of the collapsed state $u_i = v_i = 0$ of each atom under SGD.

    Args:
        per_sample: ``(samples, atoms)`` per-sample gradients $∂ℓ_s/∂θ_i$ at $θ_i = 0$.
        lr: the learning rate.
        batch_size: SGD's batch size (batches are drawn with replacement).
        strength: the coupled decay λ on the factors.
        draws: batches drawn for the expectation.
        seed: seed of the draws.

    Returns:
        Tensor: ``(atoms,)`` $\max(Λ+, Λ-)$; negative where the noise pulls the atom to 0 and holds it.

    Examples:
        >>> import torch, symopt
        >>> g = torch.tensor([[3.0], [-2.6]])              # mean 0.2 > λ = 0: gradient descent grows it
        >>> float(symopt.symmetry.noise.collapse_exponents(g, lr=0.3, batch_size=64)[0]) > 0
        True
        >>> float(symopt.symmetry.noise.collapse_exponents(g, lr=0.3, batch_size=1)[0]) < 0   # batch 1: collapses
        True
    """
    n = per_sample.shape[0]
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (draws, batch_size), generator=generator).to(per_sample.device)
    g = per_sample[index].mean(dim=1)  # (draws, atoms): the batch gradients
    plus, minus = _step_logs(g, lr, strength).mean(dim=1)
    return torch.maximum(plus, minus)


def _step_logs(g: Tensor, lr: float, strength: float) -> Tensor:
    """``log|1 − lr(λ + g)|`` and ``log|1 − lr(λ − g)|`` stacked on a new first axis: the log-factors
    by which one SGD step with batch gradient ``g`` multiplies the modes ``u ± v`` near ``u = v = 0``
    (their means over batches are the Lyapunov exponents)."""
    return torch.stack([torch.log((1 - lr * (strength + g)).abs()), torch.log((1 - lr * (strength - g)).abs())])


@dataclass(frozen=True)
class NoiseReport:
    r"""What SGD's noise will do to the atoms of one constrained tensor (see [`noise_collapse`][symopt.noise_collapse]).

    Attributes:
        name: the constrained tensor.
        atoms: flat indices of the atoms examined.
        exponents: $\max(Λ+, Λ-)$ per atom (< 0: pulled to exactly 0 and held).
        mean_gradient: the full-batch gradient at $θ_i = 0$ per atom.
        strength: λ.
        collapsing: atoms (flat indices) whose exponent is negative.
        at_risk: collapsing atoms that carry signal: $|\text{mean gradient}| > λ$, so full-batch gradient
            descent would keep them.

    Examples:
        >>> import torch, symopt
        >>> r = symopt.symmetry.noise.NoiseReport("w", (0, 1), torch.tensor([-0.1, 0.2]),
        ...                                       torch.tensor([0.5, 0.5]), 0.0)
        >>> r.collapsing, r.at_risk
        ((0,), (0,))
    """

    name: str
    atoms: tuple[int, ...]
    exponents: Tensor
    mean_gradient: Tensor
    strength: float

    @property
    def collapsing(self) -> tuple[int, ...]:
        return tuple(a for a, e in zip(self.atoms, self.exponents.tolist()) if e < 0)

    @property
    def at_risk(self) -> tuple[int, ...]:
        return tuple(a for a, e, g in zip(self.atoms, self.exponents.tolist(), self.mean_gradient.tolist())
                     if e < 0 and abs(g) > self.strength)


def noise_collapse(model: nn.Module, name: str, loss_fn, inputs: Tensor, targets: Tensor, *, lr: float,
                   batch_size: int, atoms=None, draws: int = 4096, seed: int = 0) -> NoiseReport:
    r"""Which atoms of the Hadamard-factorised tensor ``name`` (``symopt.sparse``: $θ = u ⊙ v$) SGD
    with this learning rate and batch size will pull to exactly 0 — and a warning when some of them
    carry signal.

    For each atom ``i`` the per-sample gradients $∂ℓ_s/∂θ_i$ are taken at $θ$ with $θ_i = 0$ (the
    collapsed state), over the samples given, and turned into the Lyapunov exponents of
    [`collapse_exponents`][symopt.symmetry.noise.collapse_exponents]. The cost is one vmapped gradient
    per atom over the samples: pass ``atoms=`` for a large tensor.

    Args:
        model: the model, with a Hadamard constraint on ``name``.
        name: the constrained tensor's dotted name.
        loss_fn: ``loss_fn(output, target)`` for **one** sample (batch dimension 1), as in training.
        inputs: the training inputs (or a representative subset), batch first.
        targets: their targets, batch first.
        lr: SGD's learning rate.
        batch_size: SGD's batch size.
        atoms: flat indices of the atoms to examine (default: all; at most 1024).
        draws: batches drawn for each exponent.
        seed: seed of the draws.

    Returns:
        NoiseReport: exponents per atom, ``collapsing`` and ``at_risk``.

    Warns:
        UserWarning: atoms that carry signal ($|E g| > λ$) are in the collapsing regime: lower the
            learning rate or raise the batch size (the message gives the counts).

    Raises:
        ValueError: ``name`` has no constraint with Hadamard atoms, bad ``lr`` / ``batch_size``, or
            more than 1024 atoms without ``atoms=``.

    Examples:
        >>> import torch, symopt
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> _ = symopt.sparse(model, "weight", strength=1e-6)
        >>> X, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> report = symopt.noise_collapse(model, "weight", torch.nn.functional.mse_loss, X, y, lr=0.01,
        ...                                batch_size=32)
        >>> report.exponents.shape
        torch.Size([3])
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"noise_collapse: lr must be a number > 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"noise_collapse: batch_size must be an int >= 1, got {batch_size!r}")
    handle = next((h for h in list_constraints(model) if h.name == name), None)
    if handle is None or not handle.constraint.hadamard_atoms:
        raise ValueError(f"noise_collapse: '{name}' has no constraint whose atoms are Hadamard pairs "
                         "θ_i = u_i v_i (symopt.sparse and its kin); constrain it first")
    theta = handle.members[0].value.detach()
    flat = theta.reshape(-1)
    chosen = list(range(flat.numel())) if atoms is None else [int(a) for a in atoms]
    if len(chosen) > 1024:
        raise ValueError(f"noise_collapse: '{name}' has {len(chosen)} atoms; pass atoms= (at most 1024 at a time)")

    plain = copy.deepcopy(model)  # θ as a plain parameter: the gradient is taken with respect to θ itself
    for member in next(h for h in list_constraints(plain) if h.name == name).members:
        remove(member.module, member.tensor)

    def sample_loss(value, x, y):
        out = torch.func.functional_call(plain, {name: value}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample_grad = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    columns = []
    with torch.no_grad():
        for i in chosen:  # the collapsed state of atom i: θ_i = 0, the others as they are
            point = flat.clone()
            point[i] = 0.0
            grads = per_sample_grad(point.view_as(theta), inputs, targets)
            columns.append(grads.reshape(grads.shape[0], -1)[:, i])
    per_sample = torch.stack(columns, dim=1).double()
    strength = float(handle.strength)
    report = NoiseReport(name, tuple(chosen),
                         collapse_exponents(per_sample, float(lr), int(batch_size), strength, draws, seed),
                         per_sample.mean(dim=0), strength)
    if report.at_risk:
        warnings.warn(f"noise_collapse: at lr={lr} and batch_size={batch_size}, SGD's noise pulls "
                      f"{len(report.at_risk)} of {len(chosen)} atoms of '{name}' that carry signal (|E g| > λ) to "
                      f"exactly 0 ({len(report.collapsing)} collapsing in all); lower the learning rate or raise the "
                      "batch size", UserWarning, stacklevel=2)
    return report


class _Running:
    """Running statistics of one watched tensor's atoms while they sit near their fixed point."""

    def __init__(self, numel: int, device, dtype=torch.float64) -> None:
        # Moving averages of the samples and of their squares (for standard errors), per atom:
        # log|1 − lr(λ + g_B)|, log|1 − lr(λ − g_B)| and g_B.
        self.first = torch.zeros(3, numel, device=device, dtype=dtype)
        self.second = torch.zeros(3, numel, device=device, dtype=dtype)
        self.count = torch.zeros(numel, device=device, dtype=torch.long)  # consecutive steps near 0
        self.pending: Tensor | None = None  # ∂ℓ/∂θ summed over this step's backward passes
        self.value: Tensor | None = None    # θ at this step's forward


class NoiseWatch:
    r"""The hooks of [`watch_noise`][symopt.watch_noise]: running estimates of each atom's collapse
    exponents from the batch gradients SGD actually takes, and a warning when signal is being lost.

    An atom is *watched* while $|θ_i| ≤ c \max|θ|$, with $c$ = ``near_zero`` (there the batch gradient at θ is the
    gradient at the collapsed state $θ_i = 0$ the criterion needs); its estimates restart when it
    leaves. Each optimizer step, before the update, folds that step's batch gradient $g_B$ (summed
    over the step's backward passes), its learning rate and λ into exponential moving averages
    (factor ``beta``) of $\log|1 - \mathrm{lr}(λ ± g_B)|$ and of $g_B$: Monte Carlo estimates of the
    Lyapunov exponents of [`collapse_exponents`][symopt.symmetry.noise.collapse_exponents], drawn
    by training itself. After ``warmup`` steps near 0 an atom is judged: *collapsing* when both
    exponents are negative, *at risk* when it also carries signal ($|E g_B| > λ$); `report` gives
    these estimates. The warning is stricter: it fires (once per tensor) only for at-risk atoms whose
    verdict holds by two standard errors of the averages, since one batch-1 step's sample is far
    noisier than the exponents are large (a few 1e-3 per step).

    Args:
        model: the model (build this object with [`watch_noise`][symopt.watch_noise], which checks
            every argument).
        optimizer: plain SGD holding the watched factors.
        names: the watched tensors.
        beta: factor of the moving averages.
        warmup: steps near 0 before an atom is judged.
        every: judge every this many steps.
        near_zero: relative size below which an atom is near its fixed point.

    Attributes:
        steps: optimizer steps seen.
        warned: names of the tensors a warning was issued for (once each).

    Examples:
        >>> import torch, symopt
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> _ = symopt.sparse(model, "weight", strength=1e-3)
        >>> opt = torch.optim.SGD(symopt.param_groups(model), lr=0.01)
        >>> watch = symopt.watch_noise(model, opt, warmup=5)
        >>> for _ in range(10):
        ...     opt.zero_grad(); model(torch.randn(2, 4)).square().mean().backward(); opt.step()
        >>> watch.remove()
        >>> watch.steps, watch.report("weight").name
        (10, 'weight')
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, names, *, beta: float,
                 warmup: int, every: int, near_zero: float) -> None:
        self.beta, self.warmup, self.every, self.near_zero = beta, warmup, every, near_zero
        self.optimizer = optimizer
        self.steps = 0
        self.warned: set[str] = set()
        self._watched: dict[str, tuple] = {}  # name → (constraint, its optimizer group, running stats)
        handles = {h.name: h for h in list_constraints(model)}
        for name in names:
            member = handles[name].members[0]
            theta = member.value.detach()
            self._watched[name] = (handles[name].constraint, group_holding(optimizer, member.factors),
                                   _Running(theta.numel(), theta.device))
        self._hooks = [self._watched[name][0].register_forward_hook(self._forward_hook(name))
                       for name in self._watched]
        self._hooks.append(optimizer.register_step_pre_hook(self._before_step))

    def _forward_hook(self, name: str):
        running = self._watched[name][2]

        def hook(_module, _inputs, output) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad and torch.is_grad_enabled()):
                return
            running.value = output.detach()

            def take(grad: Tensor) -> None:
                flat = grad.detach().reshape(-1).to(running.first.dtype)
                running.pending = flat if running.pending is None else running.pending + flat

            output.register_hook(take)

        return hook

    def _before_step(self, _optimizer, _args, _kwargs) -> None:
        self.steps += 1
        for name, (constraint, group, running) in self._watched.items():
            grad, value = running.pending, running.value
            running.pending = None
            if grad is None or value is None or not bool(torch.isfinite(grad).all()):
                continue  # no backward for this tensor this step, or a bad batch (Guard's business)
            size = value.reshape(-1).abs().to(grad.dtype)
            scale = float(size.max())
            near = size <= self.near_zero * scale if scale > 0 else torch.ones_like(size, dtype=torch.bool)
            lr, strength = float(group["lr"]), float(constraint.strength)
            samples = torch.cat([_step_logs(grad, lr, strength), grad.unsqueeze(0)])
            b = self.beta
            running.first.copy_(torch.where(near, b * running.first + (1 - b) * samples, 0.0))
            running.second.copy_(torch.where(near, b * running.second + (1 - b) * samples.square(), 0.0))
            running.count.copy_(torch.where(near, running.count + 1, torch.zeros_like(running.count)))
            if self.steps % self.every == 0 and name not in self.warned:
                report = self.report(name)
                sure = self._confident(name, report)
                if sure:
                    self.warned.add(name)
                    warnings.warn(
                        f"watch_noise: at lr={lr:g} SGD's batch noise is holding {len(sure)} atoms of '{name}' "
                        f"that carry signal (|E g| > λ = {strength:g}) at 0 ({len(report.collapsing)} collapsing of "
                        f"{len(report.atoms)} near 0, step {self.steps}); lower the learning rate or raise the batch "
                        "size (symopt.noise_collapse gives the exponents per setting)", UserWarning, stacklevel=4)

    def _confident(self, name: str, report: NoiseReport) -> tuple[int, ...]:
        """The at-risk atoms whose verdict survives two standard errors: both exponents below 0 and
        ``|E g|`` above λ by $z = 2$ standard errors of their moving averages (a batch-1 run's
        samples are noisy enough that the bare estimates flip sign by chance)."""
        if not report.at_risk:
            return ()
        running = self._watched[name][2]
        index = torch.tensor(report.at_risk, dtype=torch.long, device=running.count.device)
        mean, spread = self._moments(running, index)
        # An EMA of n samples with factor β weighs them like min(n, (1 + β)/(1 − β)) independent ones.
        n = running.count[index].to(mean.dtype).clamp(max=(1 + self.beta) / (1 - self.beta))
        error = 2 * spread / n.sqrt()
        sure = ((mean[0] + error[0] < 0) & (mean[1] + error[1] < 0)
                & (mean[2].abs() - error[2] > report.strength))
        return tuple(index[sure].tolist())

    def _moments(self, running: _Running, index: Tensor) -> tuple[Tensor, Tensor]:
        """Bias-corrected means and standard deviations of the three averaged samples at ``index``."""
        correction = 1 - self.beta ** running.count[index].to(running.first.dtype)
        mean = running.first[:, index] / correction
        spread = (running.second[:, index] / correction - mean.square()).clamp(min=0).sqrt()
        return mean, spread

    def report(self, name: str) -> NoiseReport:
        """The atoms of ``name`` watched for at least ``warmup`` steps near 0, with their estimated
        exponents (bias-corrected averages) and mean batch gradients, as a
        [`NoiseReport`][symopt.symmetry.noise.NoiseReport].

        Raises:
            ValueError: ``name`` is not watched.
        """
        if name not in self._watched:
            raise ValueError(f"NoiseWatch.report: '{name}' is not watched; watched: {sorted(self._watched)}")
        constraint, _group, running = self._watched[name]
        atoms = (running.count >= self.warmup).nonzero().reshape(-1)
        mean, _ = self._moments(running, atoms)
        return NoiseReport(name, tuple(atoms.tolist()), torch.maximum(mean[0], mean[1]), mean[2],
                           float(constraint.strength))

    def remove(self) -> None:
        """Take the hooks off the model and the optimizer."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def watch_noise(model: nn.Module, optimizer: torch.optim.Optimizer, names=None, *, beta: float = 0.999,
                warmup: int = 200, every: int = 50, near_zero: float = 1e-3) -> NoiseWatch:
    r"""Watch a training run for the collapse [`noise_collapse`][symopt.noise_collapse] predicts, and
    warn when SGD's noise is holding atoms that carry signal at exactly 0.

    [`noise_collapse`][symopt.noise_collapse] needs the data and a loss for one sample and answers
    for one setting; this needs neither: it hooks the Hadamard-factorised tensors and the optimizer
    and estimates the same Lyapunov exponents $E \log|1 - \mathrm{lr}(λ ± g_B)|$ from the batch gradients
    the run takes, at the learning rate each step uses (schedules included). See
    [`NoiseWatch`][symopt.NoiseWatch] for which atoms are judged and when. The criterion is plain
    SGD's (the map $(u, v) → (u, v) - \mathrm{lr}(λ(u, v) + g_B(v, u))$); momentum and adaptive optimizers
    change it, so they are refused.

    Args:
        model: the model, with ``symopt.sparse`` (Hadamard) constraints.
        optimizer: a ``torch.optim.SGD`` without momentum holding their factors.
        names: the constrained tensors to watch (default: every Hadamard-factorised one).
        beta: factor of the moving averages (the window is about $1 / (1 - \mathrm{beta})$ steps).
        warmup: steps an atom must sit near 0 before it is judged (≥ 1).
        every: judge (and maybe warn) every this many steps.
        near_zero: an atom is near its fixed point when $|θ_i| ≤ c \max|θ|$, $c$ = ``near_zero``.

    Returns:
        NoiseWatch: ``report(name)`` gives the current estimates; ``remove()`` takes the hooks off.

    Warns:
        UserWarning: once per tensor, when some watched atoms are collapsing and carry signal, both
            by two standard errors.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not a ``torch.optim.Optimizer``.
        ValueError: an optimizer other than plain SGD (momentum, Nesterov, Adam…); a name without a
            Hadamard constraint, or whose factors the optimizer does not hold; nothing to watch; bad
            ``beta`` / ``warmup`` / ``every`` / ``near_zero``.

    Examples:
        >>> import torch, symopt
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> _ = symopt.sparse(model, "weight", strength=1e-3)
        >>> watch = symopt.watch_noise(model, torch.optim.SGD(symopt.param_groups(model), lr=0.01))
        >>> watch.report("weight").atoms        # none judged before `warmup` steps
        ()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch_noise: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"watch_noise: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if type(optimizer) is not torch.optim.SGD or any(g.get("momentum", 0) or g.get("nesterov", False)
                                                      for g in optimizer.param_groups):
        raise ValueError(f"watch_noise: the collapse criterion is plain SGD's; got {type(optimizer).__name__}"
                         + (" with momentum" if type(optimizer) is torch.optim.SGD else "")
                         + ". Use torch.optim.SGD(..., momentum=0), or symopt.noise_collapse for a what-if")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta < 1:
        raise ValueError(f"watch_noise: beta must be a number in (0, 1), got {beta!r}")
    for label, number in (("warmup", warmup), ("every", every)):
        if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
            raise ValueError(f"watch_noise: {label} must be an int >= 1, got {number!r}")
    if isinstance(near_zero, bool) or not isinstance(near_zero, numbers.Real) or not 0 <= near_zero < 1:
        raise ValueError(f"watch_noise: near_zero must be a number in [0, 1), got {near_zero!r}")
    handles = {h.name: h for h in list_constraints(model)}
    hadamard = [n for n, h in handles.items() if h.constraint.hadamard_atoms]
    if names is None:
        names = hadamard
        if not names:
            raise ValueError("watch_noise: the model has no Hadamard-factorised tensor (symopt.sparse) to watch")
    else:
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in hadamard:
                raise ValueError(f"watch_noise: '{name}' has no constraint whose atoms are Hadamard pairs "
                                 f"θ_i = u_i v_i; watchable: {hadamard}")
    for name in names:
        if group_holding(optimizer, handles[name].members[0].factors) is None:
            raise ValueError(f"watch_noise: the optimizer does not hold the factors of '{name}'; "
                             "build it from symopt.param_groups(model)")
    return NoiseWatch(model, optimizer, names, beta=float(beta), warmup=int(warmup), every=int(every),
                      near_zero=float(near_zero))
