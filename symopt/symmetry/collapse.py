"""Layer 3 — [`diagnose`][symopt.diagnose]: is a model collapsed onto a symmetry's mirror plane?

Weight decay pulls toward zero, which lies on the mirror plane of every symmetry of a network, and
mirror planes are absorbing (Ziyin, Xu, Chuang, arXiv 2408.15495): units die (rescaling / sign
symmetry), become identical (permutation), or the layers lose rank (rotation between consecutive
linear layers). This report finds each of these per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._format import table
from .._layers import incoming, layers, outgoing, out_size, pairs


def effective_rank(matrix: Tensor) -> float:
    r"""Effective rank ``exp(H(p))`` with $p = σ / \sum σ$ the normalised singular values (Roy & Vetterli 2007).

    A smooth count of the directions a matrix uses: ``k`` for ``k`` equal singular values, between
    1 and the rank otherwise. Collapse onto a low-rank mirror plane shows as a drop of it.

    Args:
        matrix: a 2-D tensor (weights or a batch of features).

    Returns:
        float: the effective rank; 0.0 for a zero matrix.

    Raises:
        TypeError: ``matrix`` is not a tensor.
        ValueError: ``matrix`` is not 2-D, or holds NaN / Inf.

    Examples:
        >>> import torch, symopt
        >>> round(symopt.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))), 6)
        2.0
    """
    if not isinstance(matrix, Tensor):
        raise TypeError(f"effective_rank: expected a torch.Tensor, got {type(matrix).__name__}")
    if matrix.dim() != 2:
        raise ValueError(f"effective_rank: expected a 2-D matrix, got shape {tuple(matrix.shape)}; "
                         "reshape it, e.g. W.reshape(W.shape[0], -1)")
    if not bool(torch.isfinite(matrix.detach()).all()):
        raise ValueError("effective_rank: the matrix holds NaN or Inf (training diverged?); a rank of it "
                         "means nothing — roll back to a finite state first")
    s = torch.linalg.svdvals(matrix.detach().double())
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s / total
    return float(torch.exp(-(torch.special.xlogy(p, p)).sum()))


@dataclass(frozen=True)
class LayerDiagnosis:
    """One Linear / Conv layer's line in a [`Diagnosis`][symopt.Diagnosis].

    Attributes:
        name: the layer's dotted name.
        units: its number of output units / channels.
        dead: indices of dead units (zero in- or out-weights, or inactive on the inputs).
        identical: groups of units whose incoming weights agree (cosine ≥ 1 − ε).
        weight_rank: effective rank of the weight ([`effective_rank`][symopt.effective_rank]).
        feature_rank: effective rank of the layer's output features on the inputs (None without
            inputs).
        mirror_planes: the mirror planes the parameters sit on (sign / rescale, permutation,
            rotation).
        near_dead: (with inputs) live units whose output, as the next layer receives it, has an RMS
            over the batch below ``dead_fraction`` of the layer's largest: functionally dead, though
            not exactly zero.
        near_duplicate: (with inputs) groups of live units whose outputs over the batch have cosine
            ≥ ``duplicate_cosine``: functionally one unit, though their weights differ.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> with torch.no_grad(): net[0].weight[2] = 0; net[0].bias[2] = 0
        >>> symopt.diagnose(net)["0"].dead
        (2,)
    """

    name: str
    units: int
    dead: tuple[int, ...]
    identical: tuple[tuple[int, ...], ...]
    weight_rank: float
    feature_rank: float | None
    mirror_planes: tuple[str, ...] = field(default=())
    near_dead: tuple[int, ...] = field(default=())
    near_duplicate: tuple[tuple[int, ...], ...] = field(default=())


class Diagnosis(list):
    """A list of [`LayerDiagnosis`][symopt.LayerDiagnosis] that prints as a table; index it by position or layer name.

    ``collapsed`` says whether any layer has dead or identical units or sits on a mirror plane;
    ``functionally_collapsed`` also counts near-dead and near-duplicate units (found with inputs).

    Examples:
        >>> import torch, symopt
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> symopt.diagnose(net).collapsed
        False
    """

    @property
    def collapsed(self) -> bool:
        return any(d.dead or d.identical or d.mirror_planes for d in self)

    @property
    def functionally_collapsed(self) -> bool:
        return self.collapsed or any(d.near_dead or d.near_duplicate for d in self)

    def __getitem__(self, key):
        if isinstance(key, str):
            for d in self:
                if d.name == key:
                    return d
            raise KeyError(f"no layer {key!r}; have {[d.name for d in self]}")
        return super().__getitem__(key)

    def __str__(self) -> str:
        rows = [[d.name, d.units, len(d.dead), len(d.near_dead),
                 "; ".join(",".join(map(str, g)) for g in d.identical) or "-",
                 sum(len(g) for g in d.near_duplicate), d.weight_rank,
                 "-" if d.feature_rank is None else d.feature_rank, "; ".join(d.mirror_planes) or "-"] for d in self]
        return table(["layer", "units", "dead", "near-dead", "identical groups", "in near-duplicate groups",
                      "eff. rank W", "eff. rank features", "mirror planes"], rows)


def _groups(rows: Tensor, eps: float, alive: Tensor) -> list[tuple[int, ...]]:
    """Groups (size ≥ 2) of live rows with pairwise cosine ≥ 1 − eps (union-find over pairs)."""
    norms = rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (rows / norms) @ (rows / norms).T
    parent = list(range(rows.shape[0]))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    close = torch.nonzero(torch.triu(cos >= 1 - eps, diagonal=1) & alive[:, None] & alive[None, :])
    for i, j in close.tolist():
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(rows.shape[0]):
        if bool(alive[i]):
            members.setdefault(root(i), []).append(i)
    return [tuple(g) for g in members.values() if len(g) > 1]


@torch.no_grad()
def diagnose(model: nn.Module, inputs: Tensor | None = None, tol: float = 1e-6, eps: float = 1e-4, *,
             dead_fraction: float = 0.01, duplicate_cosine: float = 0.99) -> Diagnosis:
    r"""Per Linear / Conv layer: dead units, groups of identical units, effective rank of the weight
    and (given ``inputs``) of the layer's output features, and the mirror planes the parameters sit on.

    Args:
        model: the network; its Linear / Conv layers are read in module order.
        inputs: optional batch passed through ``model``; then a unit is also dead when its output is
            constant over the batch, or ≤ 0 everywhere when a ReLU follows it.
        tol: relative size below which weights count as zero (of the layer's largest row norm).
        eps: units are identical when the cosine of their incoming weights (with bias) is ≥ 1 − eps.
        dead_fraction: with ``inputs``: a live unit is *near-dead* when the RMS over the batch of
            what it sends on (the next layer's input for it, after the activation; its own output
            when no next layer takes it) is below this fraction of the layer's largest (default 1%).
        duplicate_cosine: with ``inputs``: live units are *near-duplicates* when the cosine of those
            outputs over the batch (uncentred) is at least this (default 0.99).

    Mirror planes reported: ``sign/rescale (units …)`` — in- and out-weights both zero;
    ``permutation (units i=j)`` — identical incoming *and* outgoing weights, the fixed subspace of
    swapping them; ``rotation (first→second)`` — adjacent linear layers sharing a null direction
    ($n^\top W_{\text{first}} = 0$ and $W_{\text{second}} n = 0$).

    Returns:
        Diagnosis: one [`LayerDiagnosis`][symopt.LayerDiagnosis] per layer; ``print`` shows a table.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``tol`` is negative, ``eps`` is not in [0, 1), ``dead_fraction`` or
            ``duplicate_cosine`` not in [0, 1], or a layer's weights hold NaN / Inf.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> with torch.no_grad(): net[0].weight[1] = net[0].weight[0]; net[0].bias[1] = net[0].bias[0]
        >>> symopt.diagnose(net)["0"].identical
        ((0, 1),)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: expected an nn.Module, got {type(model).__name__}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"diagnose: tol must be a number >= 0, got {tol!r}")
    if not (isinstance(eps, (int, float)) and 0 <= eps < 1):
        raise ValueError(f"diagnose: eps must be a number in [0, 1), got {eps!r}")
    for what, value in (("dead_fraction", dead_fraction), ("duplicate_cosine", duplicate_cosine)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"diagnose: {what} must be a number in [0, 1], got {value!r}")
    found = layers(model)
    broken = [name for name, module in found if not bool(torch.isfinite(incoming(module)).all())]
    if broken:
        raise ValueError(f"diagnose: NaN or Inf in the weights of {', '.join(broken)} (training diverged?); "
                         "roll back to a finite state (symopt.Guard does this each step) and diagnose that")
    modules = dict(found)
    features: dict[str, Tensor] = {}
    received: dict[str, Tensor] = {}  # what each layer receives: its input, per input unit
    if inputs is not None:
        hooks = [m.register_forward_hook(
            lambda mod, _i, out, name=name: features.__setitem__(
                name, out.detach().movedim(1, -1).reshape(-1, out_size(mod))))
            for name, m in found]
        hooks += [m.register_forward_pre_hook(
            lambda mod, args, name=name: received.__setitem__(
                name, args[0].detach().movedim(1, -1).reshape(-1, args[0].shape[1])
                if args[0].dim() > 2 else args[0].detach().reshape(-1, args[0].shape[-1])))
            for name, m in found]
        try:
            model(inputs)
        finally:
            for h in hooks:
                h.remove()
    next_of = {p.first: p for p in pairs(model)}
    planes: dict[str, list[str]] = {name: [] for name, _ in found}
    out = Diagnosis()
    for name, module in found:
        w_in = incoming(module)
        scale = max(float(w_in.norm(dim=1).max()), 1e-300)
        dead_in = w_in.norm(dim=1) <= tol * scale
        dead_out = torch.zeros_like(dead_in)
        pair = next_of.get(name)
        w_out = None if pair is None else outgoing(modules[pair.second])
        if pair is not None:
            dead_out = w_out.norm(dim=1) <= tol * max(float(w_out.norm(dim=1).max()), 1e-300)
        inactive = torch.zeros_like(dead_in)
        if name in features:
            f = features[name]
            inactive = f.std(dim=0) <= tol * max(float(f.abs().max()), 1e-300)
            if pair is not None and isinstance(pair.activation, nn.ReLU):
                inactive |= f.amax(dim=0) <= 0
        dead = dead_in | dead_out | inactive
        both = dead_in & dead_out
        if bool(both.any()):
            planes[name].append(f"sign/rescale (units {','.join(map(str, torch.nonzero(both).reshape(-1).tolist()))})")
        groups = _groups(w_in, eps, ~dead)
        if pair is not None:
            for g in groups:
                for i in g[1:]:
                    same_in = torch.allclose(w_in[i], w_in[g[0]], rtol=eps, atol=tol * scale)
                    if same_in and torch.allclose(w_out[i], w_out[g[0]], rtol=eps, atol=tol * scale):
                        planes[name].append(f"permutation (units {g[0]}={i})")
            if pair.adjacent:
                stacked = torch.cat([w_in, w_out], dim=1)  # n with nᵀ W_first = 0 and W_second n = 0
                s = torch.linalg.svdvals(stacked.double())
                if stacked.shape[0] <= stacked.shape[1] and float(s[-1]) <= tol * float(s[0]):
                    planes[name].append(f"rotation ({name}→{pair.second})")
        near_dead: tuple[int, ...] = ()
        near_duplicate: tuple[tuple[int, ...], ...] = ()
        if name in features:
            # what the next layer receives from each unit (after the activation) when a pair is known
            # and the shapes agree; the layer's own output otherwise
            sent = received.get(pair.second) if pair is not None else None
            if sent is None or sent.shape[1] != w_in.shape[0]:
                sent = features[name]
            rms = sent.double().square().mean(dim=0).sqrt()
            live = ~dead
            top = float(rms[live].max()) if bool(live.any()) else 0.0
            faint = live & (rms < dead_fraction * top)
            near_dead = tuple(torch.nonzero(faint).reshape(-1).tolist())
            near_duplicate = tuple(_groups(sent.double().T, 1 - duplicate_cosine, live & ~faint))
        out.append(LayerDiagnosis(
            name=name, units=w_in.shape[0], dead=tuple(torch.nonzero(dead).reshape(-1).tolist()),
            identical=tuple(groups), weight_rank=effective_rank(w_in),
            feature_rank=effective_rank(features[name]) if name in features else None,
            mirror_planes=tuple(planes[name]), near_dead=near_dead, near_duplicate=near_duplicate,
        ))
    return out


@dataclass(frozen=True)
class PermutationThreshold:
    """The stability of two identical units under coupled weight decay (see
    [`permutation_threshold`][symopt.permutation_threshold]).

    Attributes:
        threshold: $λ^*$ — with coupled decay $λ > λ^*$ the identical state attracts (the units stay one);
            below it the units split.
        curvature: the smallest eigenvalue of the loss Hessian along the antisymmetric
            perturbations $(w_i, w_j) → (w_i + δ, w_j - δ)$ ($δ$ over in- and out-weights).
        direction: its eigenvector (in-weights, bias, out-weights of unit i; unit j gets the opposite).

    Examples:
        >>> import torch, symopt
        >>> t = symopt.symmetry.collapse.PermutationThreshold(0.1, -0.2, torch.ones(3))
        >>> round(t.growth_rate(lr=0.1, strength=0.0), 6)   # log-growth per step of the split
        0.00995
    """

    threshold: float
    curvature: float
    direction: Tensor

    def growth_rate(self, lr: float, strength: float) -> float:
        r"""Log-growth per gradient-descent step of the split between the units:
        $\log|1 - \mathrm{lr} (\mathrm{curvature}/2 + λ)|$ (negative: the units merge back)."""
        return float(torch.log(torch.tensor(abs(1 - lr * (self.curvature / 2 + strength)))))


def permutation_threshold(model: nn.Module, layer: str, units: tuple[int, int], loss_fn, inputs: Tensor,
                          targets: Tensor) -> PermutationThreshold:
    r"""The weight decay $λ^*$ above which two identical units of a Linear layer stay identical.

    Two units with the same in- and out-weights sit on the fixed subspace of the permutation that swaps
    them. Gradient descent keeps them there; whether a small difference grows or dies is decided by the
    loss Hessian along the antisymmetric perturbations $(w_i + δ, w_j - δ)$: with coupled decay λ the
    difference is multiplied each step by $1 - \mathrm{lr} (h/2 + λ)$ along the eigenvector of the smallest
    eigenvalue ``h``, so the identical state attracts iff $λ > λ^* = \max(0, -h/2)$.

    Args:
        model: a plain model (no symopt constraint on the two layers involved).
        layer: the dotted name of the Linear layer that holds the two units.
        units: the two unit indices (identical in- and out-weights).
        loss_fn: ``loss_fn(output, targets)`` of the full batch.
        inputs: the batch of inputs.
        targets: their targets.

    Returns:
        PermutationThreshold: ``threshold``, ``curvature``, ``direction`` and ``growth_rate(lr, λ)``.

    Raises:
        ValueError: no Linear layer ``layer`` with a Linear consumer, unit indices out of range or
            equal, units that are not identical, or a constrained layer.

    Examples:
        >>> import torch, symopt
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1)).double()
        >>> with torch.no_grad():
        ...     net[0].weight[1] = net[0].weight[0]; net[0].bias[1] = net[0].bias[0]
        ...     net[2].weight[0, 1] = net[2].weight[0, 0]
        >>> X = torch.randn(64, 3, dtype=torch.float64)
        >>> t = symopt.permutation_threshold(net, "0", (0, 1), torch.nn.functional.mse_loss, X, X[:, :1] ** 2)
        >>> t.threshold >= 0
        True
    """
    modules = dict(model.named_modules())
    first = modules.get(layer)
    pair = {p.first: p for p in pairs(model)}.get(layer)
    if not isinstance(first, nn.Linear) or pair is None or not isinstance(modules[pair.second], nn.Linear):
        raise ValueError(f"permutation_threshold: '{layer}' must be a Linear layer followed by a Linear consumer "
                         "of its units")
    second = modules[pair.second]
    if any(hasattr(m, "parametrizations") for m in (first, second)):
        raise ValueError(f"permutation_threshold: '{layer}' or '{pair.second}' carries a constraint; the threshold "
                         "is of the model's own symmetry — use a plain (exported) model")
    i, j = units
    if i == j or not (0 <= i < first.out_features and 0 <= j < first.out_features):
        raise ValueError(f"permutation_threshold: units must be two different indices below {first.out_features}, "
                         f"got {units}")
    w_in, w_out = incoming(first), outgoing(second)
    if not (torch.allclose(w_in[i], w_in[j]) and torch.allclose(w_out[i], w_out[j])):
        raise ValueError(f"permutation_threshold: units {i} and {j} of '{layer}' are not identical (in- and "
                         "out-weights); the threshold is that of the identical state")
    base = {name: p.detach() for name, p in model.named_parameters()}
    sign = torch.zeros(first.out_features, dtype=first.weight.dtype, device=first.weight.device)
    sign[i], sign[j] = 1.0, -1.0
    n_in, has_bias = first.in_features, first.bias is not None
    w1, b1, w2 = f"{layer}.weight", f"{layer}.bias", f"{pair.second}.weight"

    def loss_along(delta: Tensor) -> Tensor:
        params = dict(base)
        params[w1] = base[w1] + torch.outer(sign, delta[:n_in])
        if has_bias:
            params[b1] = base[b1] + sign * delta[n_in]
        params[w2] = base[w2] + torch.outer(delta[n_in + has_bias:], sign)
        return loss_fn(torch.func.functional_call(model, params, (inputs,)), targets)

    size = n_in + int(has_bias) + second.out_features
    hessian = torch.autograd.functional.hessian(loss_along, torch.zeros(size, dtype=first.weight.dtype,
                                                                         device=first.weight.device))
    values, vectors = torch.linalg.eigh(hessian.double())
    h = float(values[0])
    return PermutationThreshold(max(0.0, -h / 2), h, vectors[:, 0])
