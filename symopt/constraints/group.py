r"""Structured (group) sparsity: one scalar gate per group, $w_g = s_g · ω_g$.

Symmetry: $(s_g, ω_g) → (-s_g, -ω_g)$; fixed subspace $s_g = 0, ω_g = 0$, i.e. $w_g = 0$.
Penalty: $\min_{s ω = w_g} (λ/2)(s^2 + ‖ω‖^2) = λ‖w_g‖_2$, so the decay solves the group lasso
$ℓ(w) + λ \sum_g ‖w_g‖_2$; a zero group is exact when $‖∂ℓ/∂w_g‖_2 ≤ λ$. Budget ``max_groups=g``: λ
adapts to the point of the group-lasso path with g non-zero groups.

Groups are either the slices along an axis (``dim``: rows, channels, input features) or arbitrary
disjoint index sets of the flattened tensor (``groups``) that cover every entry once.

Weights ``c_g > 0`` (the weighted group lasso, $λ \sum_g c_g ‖w_g‖_2$, e.g. $c_g = \sqrt{|g|}$ so
that large groups are not favoured) scale the product instead of the decay: $w_g = s_g ω_g / c_g$.
The decay stays one λ for every factor (one optimizer group, as the rest of symopt), and
$\min_{sω/c = w_g} (λ/2)(s^2 + ‖ω‖^2) = λ c_g ‖w_g‖_2$. A zero group is exact when
$‖∂ℓ/∂w_g‖_2 ≤ λ c_g$.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Constraint, Example, Face, entering, largest, random_gate
from .budget import RATE, check_budget


class GroupSparse(Constraint):
    r"""Group sparsity with a scalar gate per group; decay $(λ/2)(‖s‖^2 + ‖ω‖^2)$ induces $λ \sum_g ‖w_g‖_2$.

    Factors: the gates ``s`` (one per group) and $ω$ of the shape of ``w``; $w = s[g(i)] · ω_i$.

    Args:
        dim: the axis that indexes the groups (``0`` = output rows / channels of a Linear / Conv,
            ``1`` = input features of a Linear; negative counts from the end). Default 0.
        strength: λ (> 0). Default 1e-3; with a budget, the starting λ (default: from the first
            gradient).
        max_groups: budget: λ adapts during training until exactly this many groups are non-zero;
            [`symopt.finalize`][symopt.finalize] keeps the largest groups.
        groups: instead of ``dim``: a list of index lists into ``w.reshape(-1)``, disjoint and
            covering every entry, or an int ``k`` for consecutive groups of ``k`` entries.
        adapt_rate: fraction of the way log λ moves toward the budget's target per optimizer step.
        total_steps: the steps until training ends: the budget then arrives on a schedule and lands
            exactly (see [`Constraint`][symopt.Constraint] and docs/hard-constraints.md).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        seed: seed of the factor initialisation.
        weights: one finite weight $c_g > 0$ per group (a sequence or 1-d tensor, in group order):
            the penalty becomes $λ \sum_g c_g ‖w_g‖_2$. Default: all 1.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(5, 3)
        >>> _ = symopt.constrain(lin, "weight", symopt.GroupSparse(dim=1, strength=1e-2))
        >>> lin.parametrizations.weight.original0.shape    # one gate per input feature
        torch.Size([5])
        >>> v = torch.nn.Module(); v.w = torch.nn.Parameter(torch.randn(5))
        >>> _ = symopt.constrain(v, "w", symopt.GroupSparse(groups=[[0, 3], [1, 2, 4]]))
        >>> v.parametrizations.w.original0.shape
        torch.Size([2])
        >>> weighted = symopt.GroupSparse(groups=[[0, 3], [1, 2, 4]], strength=0.1, weights=[2 ** 0.5, 3 ** 0.5])
        >>> round(float(weighted.induced_norm(torch.tensor([3.0, 0, 0, 4.0, 0]))), 4)   # √2 · 5
        7.0711
    """

    kind = "group_sparse"
    decayed = (0, 1)
    trims_decay = True

    @classmethod
    def example(cls) -> Example:
        return Example(lambda: cls(0, 0.3), ((4, 5),))

    def atom_ids(self, numel: int, device=None) -> Tensor | None:
        # Index groups are subsets of θ's coordinates (a design's columns); slices along an axis of
        # a reshaped tensor are not.
        if self.dim is not None:
            return None
        return self.group_ids(torch.empty(numel, device=device)).to(device)

    def compressed_structure(self) -> str | None:
        return "units"

    def unit_axis(self, ndim: int) -> int | None:
        return None if self.dim is None else self.dim % ndim

    def __init__(self, dim: int | None = None, strength: float | None = None, *,
                 groups: int | Sequence[Sequence[int]] | None = None, max_groups: int | None = None,
                 adapt_rate: float = RATE, seed: int = 0, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75), weights: Sequence[float] | Tensor | None = None,
                 land_on_the_way: bool | None = None) -> None:
        k = check_budget(max_groups, "max_groups", "GroupSparse")
        weights = _checked_weights(weights)
        super().__init__(strength, seed=seed, budget=None if k is None else ("count", k), adapt_rate=adapt_rate,
                         total_steps=total_steps, ramp=ramp, land_on_the_way=land_on_the_way)
        if groups is not None and dim is not None:
            raise ValueError("GroupSparse: pass either dim (slices along an axis) or groups (index sets), not both")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"GroupSparse: dim must be an int axis, got {type(dim).__name__}")
        self.dim = 0 if dim is None and groups is None else dim
        self.group_size: int | None = None
        self.register_buffer("group_index", None, persistent=False)
        # c_g: part of the constraint's definition, like the groups (not state: not in a state_dict)
        self.register_buffer("weights", weights, persistent=False)
        if groups is None:
            return
        if isinstance(groups, int) and not isinstance(groups, bool):
            if groups < 1:
                raise ValueError(f"GroupSparse: groups={groups} must be a group size >= 1")
            self.group_size = groups
        elif isinstance(groups, Sequence) and not isinstance(groups, str):
            self.group_index = _index_of(groups)
        else:
            raise TypeError(f"GroupSparse: groups must be an int size or a list of index lists, got {groups!r}")

    # -- grouping -----------------------------------------------------------------------------
    def validate(self, tensor: Tensor, name: str) -> None:
        if self.dim is not None:
            if tensor.dim() == 0:
                raise ValueError(f"GroupSparse on '{name}': a 0-d tensor has no axis to group along")
            if not -tensor.dim() <= self.dim < tensor.dim():
                raise ValueError(
                    f"GroupSparse on '{name}': dim={self.dim} is out of range for a tensor of shape "
                    f"{tuple(tensor.shape)}; choose dim in [{-tensor.dim()}, {tensor.dim() - 1}]"
                )
        elif self.group_size is not None:
            if tensor.numel() % self.group_size:
                raise ValueError(
                    f"GroupSparse on '{name}': group size {self.group_size} does not divide its "
                    f"{tensor.numel()} entries; pass a divisor or explicit index lists"
                )
        elif self.group_index.numel() != tensor.numel():
            raise ValueError(
                f"GroupSparse on '{name}': the groups cover {self.group_index.numel()} indices 0.."
                f"{self.group_index.numel() - 1} but the parameter has {tensor.numel()} entries; "
                "groups must cover every entry of reshape(-1) exactly once"
            )
        if self.weights is not None and self.weights.numel() != self._group_count(tensor):
            raise ValueError(f"GroupSparse on '{name}': {self.weights.numel()} weights for "
                             f"{self._group_count(tensor)} groups; pass one weight per group, in group order")
        self.resolve_budget(self._group_count(tensor), name, "groups")

    def _group_count(self, tensor: Tensor) -> int:
        if self.dim is not None:
            return tensor.shape[self.dim % tensor.dim()]
        if self.group_size is not None:
            return tensor.numel() // self.group_size
        return int(self.group_index.max()) + 1

    def group_ids(self, value: Tensor) -> Tensor:
        """Group id of every entry of ``value.reshape(-1)`` (index groups only)."""
        if self.group_index is None:  # equal consecutive groups: built once the size is known
            self.group_index = torch.arange(value.numel(), device=value.device) // self.group_size
        return self.group_index

    def group_norms(self, value: Tensor) -> Tensor:
        r"""$‖w_g‖_2$ for every group, in group order."""
        if self.dim is not None:
            return self._rows(value).norm(dim=1)  # its backward is 0, not NaN, at a zero group
        return self._group_squares(value).sqrt()

    def _rows(self, value: Tensor) -> Tensor:
        """``value`` with one row per group (``dim`` groups)."""
        axis = self.dim % value.dim()
        return value.movedim(axis, 0).reshape(value.shape[axis], -1)

    def _group_sums(self, value: Tensor) -> Tensor:
        r"""$\sum_{i∈g} w_i$ for every group, in group order."""
        if self.dim is not None:
            return self._rows(value).sum(dim=1)
        index = self.group_ids(value)
        return value.new_zeros(int(index.max()) + 1).index_add(0, index, value.reshape(-1))

    def _group_squares(self, value: Tensor) -> Tensor:
        r"""$‖w_g‖_2^2$ for every group, in group order."""
        return self._group_sums(value.square())

    def weighted(self, per_group: Tensor) -> Tensor:
        """``per_group`` times the weights $c_g$ (unchanged without weights)."""
        return per_group if self.weights is None else per_group * self.weights.to(per_group)

    def unweighted(self, per_group: Tensor) -> Tensor:
        """``per_group`` divided by the weights $c_g$ (unchanged without weights)."""
        return per_group if self.weights is None else per_group / self.weights.to(per_group)

    def spread(self, per_group: Tensor, value: Tensor) -> Tensor:
        """Per-group scalars laid out to multiply ``value`` entrywise (broadcast or gathered)."""
        if self.dim is not None:
            shape = [1] * value.dim()
            shape[self.dim % value.dim()] = -1
            return per_group.view(shape)
        return per_group[self.group_ids(value)].view(value.shape)

    # -- the contract -------------------------------------------------------------------------
    def forward(self, gates: Tensor, omega: Tensor) -> Tensor:
        return self.spread(self.unweighted(gates), omega) * omega

    def pullback(self, factors, grad: Tensor) -> tuple[Tensor, Tensor]:
        # θ = (s_g / c_g) ω: ∂/∂ω = g ⊙ (s/c) spread, ∂/∂s_g = Σ_{i∈g} g_i ω_i / c_g (the closed form:
        # autograd's graph was about a third of each lean-descent evaluation of a group lasso)
        gates, omega = factors
        return self.unweighted(self._group_sums(grad * omega)), grad * self.spread(self.unweighted(gates), omega)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        # balanced: s_g² = ‖ω_g‖² = c_g‖w_g‖, the minimiser of the decay over s ω / c = w_g
        gates = random_gate(self.atoms(value), self.factorizer)
        # ω_g = c_g w_g / s_g; zero groups have ω_g = 0 with a live gate so ω_g gets gradient.
        return gates, value / self.spread(self.unweighted(gates), value)

    def prox(self, value: Tensor, step: float) -> Tensor:
        norms = self.group_norms(value)
        cut = step * self.weighted(torch.full_like(norms, self.strength))
        scale = (1 - cut / norms.clamp_min(torch.finfo(value.dtype).tiny)).clamp_min(0)
        return value * self.spread(scale, value)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        norms = self.group_norms(value)
        lam = self.weighted(torch.full_like(norms, self.strength))  # λ c_g
        unit = value / self.spread(norms.clamp_min(torch.finfo(value.dtype).tiny), value)
        active = self.group_norms(grad + self.spread(lam, value) * unit)
        res = torch.where(norms > tol, active, (self.group_norms(grad) - lam).clamp_min(0))
        return float(res.norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        keep = (self.group_norms(value) > tol).to(value.dtype)
        return value * self.spread(keep, value)

    def atoms(self, value: Tensor) -> Tensor:
        return self.weighted(self.group_norms(value))

    def dual_atoms(self, grad: Tensor) -> Tensor:
        return self.unweighted(self.group_norms(grad))

    def top_dual_atoms(self, point: Tensor, count: int, reading: str = "point") -> Tensor:
        return self.dual_atoms(point)  # group norms are symmetric: no negated copy of the point

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:
        # slot 0: the gates (one per group); slot 1: ω, each entry in its group's place
        return dropped if slot == 0 else self.spread(dropped, factor).expand_as(factor)

    def unresolved_atoms(self, factors: tuple[Tensor, ...]) -> Tensor:
        # a group whose norm is below the smallest normal (its entries' squares underflow: 0); a NaN is kept
        return ~(self.group_norms(self.forward(*factors)) < torch.finfo(factors[1].dtype).tiny)

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        gates, omega = factors
        gates.masked_fill_(~keep, 0.0)
        omega.mul_(self.spread(keep.to(omega.dtype), omega))  # s_g = 0 and ω_g = 0: the mirror's fixed point

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Tensor, size: Tensor) -> None:
        # w_g = −size_g·g_g/‖g_g‖ as s_g = √(c_g size_g), ω_g = −√(c_g size_g)·g_g/‖g_g‖: then
        # s_g ω_g / c_g = w_g and s_g² = ‖ω_g‖², the split at which the decay is λ c_g ‖w_g‖
        gates, omega = factors
        root = self.weighted(size.to(gates.dtype)).sqrt()
        norms = self.group_norms(grad).to(omega.dtype).clamp_min(torch.finfo(omega.dtype).tiny)
        direction = -grad.to(omega.dtype) / self.spread(norms, omega)
        gates.copy_(torch.where(which, root, gates))
        chosen = self.spread(which, omega).expand_as(omega)
        omega.copy_(torch.where(chosen, direction * self.spread(root, omega), omega))

    def truncate(self, value: Tensor, k: int) -> Tensor:
        keep = largest(self.atoms(value), k).to(value.dtype)
        return value * self.spread(keep, value)

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face:
        # Same alive groups: there Σ_g ‖θ_g‖ is smooth (no group at 0). The square root is taken of
        # the alive groups only, so no gradient meets √0. With the gradient, the worst zero groups
        # with ‖g_g‖ > λ (at most a quarter of the alive ones) enter, started a small step along
        # −g_g so that their norm is not at its kink.
        norms = self.group_norms(value)
        alive = norms > tol
        start = value
        if grad is not None:
            grad_norms = self.group_norms(grad)
            # the dual atoms ‖g_g‖ / c_g, from the norms already taken
            joining = entering(torch.where(alive, 0.0, self.unweighted(grad_norms) - self.strength), int(alive.sum()))
            if bool(joining.any()):
                step = 1e-3 * (float(norms[alive].mean()) if bool(alive.any()) else 1.0)
                direction = -grad / self.spread(grad_norms.clamp_min(torch.finfo(grad.dtype).tiny), grad)
                start = value + self.spread(joining.to(value.dtype) * step, value) * direction
                alive = alive | joining
        free = self.spread(alive.to(value.dtype), value).expand_as(value) > 0
        zeros = torch.zeros_like(value)

        def embed(z: Tensor) -> Tensor:
            return zeros.masked_scatter(free, z)

        weights = self.weighted(torch.ones_like(norms))[alive]
        return Face(start=(start[free],), embed=embed,
                    norm=lambda z: (self._group_squares(embed(z))[alive].sqrt() * weights).sum(),
                    mask=free)

    def induced_norm(self, value: Tensor) -> Tensor:
        return self.atoms(value).sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return self.dual_atoms(grad).amax()

    def balance(self, gates: Tensor, omega: Tensor) -> float:
        # the weights scale the product, not the factors: balanced is still s_g² = ‖ω_g‖²
        gsq = gates.detach().square()
        osq = self.group_norms(omega.detach()).square()
        denom = float((gsq + osq).sum())
        return float((gsq - osq).abs().sum()) / denom if denom > 0 else 0.0

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        norms = self.group_norms(value.detach())
        alive = int((norms > tol).sum())
        where = f"dim={self.dim}" if self.dim is not None else "index groups"
        budget = "" if self.budget is None else f", budget {self.budget}"
        weighted = "" if self.weights is None else ", weighted"
        return f"groups {alive}/{norms.numel()} ({where}{budget}{weighted})"

    def extra_repr(self) -> str:
        where = f"dim={self.dim}" if self.dim is not None else (
            f"group_size={self.group_size}" if self.group_size else f"groups={int(self.group_index.max()) + 1}")
        weighted = "" if self.weights is None else ", weighted"
        return f"{where}{weighted}, {super().extra_repr()}"


def _checked_weights(weights) -> Tensor | None:
    """The group weights as a float64 1-d tensor, or a named error (before anything is built)."""
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, Tensor)) and not hasattr(
            weights, "__array__"):
        raise TypeError(f"GroupSparse: weights must be a sequence or 1-d tensor of floats, got {type(weights).__name__}")
    try:
        tensor = torch.as_tensor(weights, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"GroupSparse: weights must be numbers, got {weights!r}") from err
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"GroupSparse: weights must be a non-empty 1-d list (one per group), got shape "
                         f"{tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        raise ValueError(f"GroupSparse: weights must be finite and > 0, got {tensor.tolist()[:8]}; a weight of 0 "
                         "(an unpenalised group) cannot be written as a gated product: leave those coordinates "
                         "out of the constraint (or, for an intercept, use fit_intercept=True)")
    return tensor


def _index_of(groups: Sequence[Sequence[int]]) -> Tensor:
    """Entry → group id for explicit index lists; checks they are disjoint, non-empty and contiguous."""
    ids: dict[int, int] = {}
    for g, members in enumerate(groups):
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or len(members) == 0:
            raise ValueError(f"GroupSparse: group {g} must be a non-empty list of indices, got {members!r}")
        for i in members:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"GroupSparse: group {g} has index {i!r}; indices are ints >= 0")
            if i in ids:
                raise ValueError(f"GroupSparse: index {i} is in groups {ids[i]} and {g}; groups must be disjoint")
            ids[i] = g
    if not ids:
        raise ValueError("GroupSparse: groups is empty")
    missing = sorted(set(range(max(ids) + 1)) - set(ids))
    if missing:
        raise ValueError(f"GroupSparse: indices {missing[:5]} are in no group; groups must cover every entry")
    return torch.tensor([ids[i] for i in range(len(ids))], dtype=torch.long)
