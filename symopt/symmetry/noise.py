"""Layer 3 — [`noise_collapse`][symopt.noise_collapse]: which atoms SGD's gradient noise will pull onto a mirror plane.

An atom ``θ_i = u_i v_i`` sits on the fixed point ``u_i = v_i = 0`` of its mirror symmetry. Near it, one
SGD step on a batch is linear in ``(u_i, v_i)``: with the batch gradient ``g = ∂ℓ_B/∂θ_i`` (at
``θ_i = 0``) and coupled decay λ, the modes ``u ± v`` are multiplied by ``1 − lr(λ ± g)``. Whether the
collapsed state attracts is decided by the Lyapunov exponents ``Λ± = E_B log|1 − lr(λ ± g_B)|``: if
both are negative the atom is pulled to exactly 0 and held there, whatever its mean gradient says. By
Jensen, noise lowers ``E log``: a small batch (large variance of ``g_B``) at a large learning rate
collapses atoms that full-batch gradient descent keeps, including atoms that carry signal
(``|E g| > λ``). This is the DCS paper's "a favored solution when either the weight decay or gradient
noise is large", made a number per atom.

The exponents are estimated from per-sample gradients at ``θ_i = 0`` (``torch.func``), drawing batches
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


def collapse_exponents(per_sample: Tensor, lr: float, batch_size: int, strength: float = 0.0,
                       draws: int = 4096, seed: int = 0) -> Tensor:
    """The larger Lyapunov exponent of the collapsed state ``u_i = v_i = 0`` of each atom under SGD.

    Args:
        per_sample: ``(samples, atoms)`` per-sample gradients ``∂ℓ_s/∂θ_i`` at ``θ_i = 0``.
        lr: the learning rate.
        batch_size: SGD's batch size (batches are drawn with replacement).
        strength: the coupled decay λ on the factors.
        draws: batches drawn for the expectation.
        seed: seed of the draws.

    Returns:
        Tensor: ``(atoms,)`` ``max(Λ+, Λ−)``; negative where the noise pulls the atom to 0 and holds it.

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
    plus = torch.log((1 - lr * (strength + g)).abs()).mean(dim=0)
    minus = torch.log((1 - lr * (strength - g)).abs()).mean(dim=0)
    return torch.maximum(plus, minus)


@dataclass(frozen=True)
class NoiseReport:
    """What SGD's noise will do to the atoms of one constrained tensor (see [`noise_collapse`][symopt.noise_collapse]).

    Attributes:
        name: the constrained tensor.
        atoms: flat indices of the atoms examined.
        exponents: ``max(Λ+, Λ−)`` per atom (< 0: pulled to exactly 0 and held).
        mean_gradient: the full-batch gradient at ``θ_i = 0`` per atom.
        strength: λ.
        collapsing: atoms (flat indices) whose exponent is negative.
        at_risk: collapsing atoms that carry signal: ``|mean gradient| > λ``, so full-batch gradient
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
    """Which atoms of the Hadamard-factorised tensor ``name`` (``symopt.sparse``: ``θ = u ⊙ v``) SGD
    with this learning rate and batch size will pull to exactly 0 — and a warning when some of them
    carry signal.

    For each atom ``i`` the per-sample gradients ``∂ℓ_s/∂θ_i`` are taken at ``θ`` with ``θ_i = 0`` (the
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
        UserWarning: atoms that carry signal (``|E g| > λ``) are in the collapsing regime: lower the
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
