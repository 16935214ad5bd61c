"""Group sparsity across tensors: one gate per unit shared by every tensor that belongs to it.

A channel of a conv is its weight slice ``W[c]``, its bias ``b[c]`` and the following BatchNorm's
$γ[c], β[c]$. Each tensor ``t`` gets $θ_t[c] = s_c · ω_t[c]$ with one gate $s_c$ for all of them.

Symmetry: $(s_c, ω_{1..T}[c]) → (-s_c, -ω_{1..T}[c])$ for each unit; fixed subspace ``s_c = 0,
ω_t[c] = 0`` for every t, i.e. the whole unit is zero. Penalty: ``min (λ/2)(s_c² + Σ_t ‖ω_t[c]‖²) =
λ ‖(W[c], b[c], γ[c], β[c])‖₂``, the group lasso whose groups span the tensors; a zero unit is exact
when the norm of its joint gradient is ≤ λ. A unit whose bias and norm entries are zero emits exactly 0,
so [`export`][symopt.export] removes it even behind a zero-padded consumer, where a dead weight with a
live bias could not go.

Budget ``max_groups=k``: one λ for the group, adapted at each reading of the joint unit norms
of all the tensors (the controller of `symopt.constraints.budget`), so exactly k units stay alive; with
``total_steps`` the budget lands: the other units' gates and every tensor's $ω$ for them go to the fixed
subspace at once, and stay there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .base import (Constraint, GroupMember, acts_on_factors, chain_original, equal_in_layers, held,
                   hold_state_at_next_step, largest_in_parts, moved_since_held, random_gate)
from .budget import RATE, check_budget, check_land_on_the_way, check_total_steps
from .pooled import PooledBudget

#: the unit id of an index that belongs to no unit (a unit map's entry): shared by every unit, as multi-query
#: attention's one k/v head in a fused q|k|v projection is read by every query head. It is not gated and not decayed
#: (a free factor of the tensor holds it: `UnitGroupsMember`), no unit's norm counts it, and no landing touches it.
SHARED = -1


class UnitBudget(PooledBudget):
    """The budget controller of a [`UnitGroups`][symopt.constraints.unit_groups.UnitGroups]: once every
    tensor of the group has reported its value and gradient in a backward pass, one target from the
    joint unit norms (a unit's atom spans all the tensors)."""

    def _observation(self, constraint, value, grad):
        self._round[constraint.slot] = (value.detach(), grad.detach(), None)
        if len(self._round) < self.members:
            return None
        parts = [self._round[i] for i in sorted(self._round)]
        self._round = {}
        quiet = self.quiet()
        if quiet is not None:
            return quiet
        group = constraint.group

        # A global budget's trimmed ramp compares the units of different layers relative to their layer:
        # each unit's atom is divided by its layer's mean unit norm now (`UnitGroups.layer_scales`).
        # (a group of one layer has no scales: its unit norms, a few dozen small operators, are not formed for them)
        spans = group.spans_layers and self.trimming()
        scales = group.layer_scales(group.unit_norms([p[0] for p in parts])) if spans else None

        # The controller works on flat tensors: the parts laid out in one, and the unit norms read back from that
        # layout. Where every tensor's units lie on its first axis, unit i at index i, each tensor is a (units ×
        # entries) matrix as it lies: side by side they make one matrix with a row per unit, whose row norms are the
        # unit norms, so each of the reading's two unit norms is one operator (over the pieces, a dozen: a channel
        # budget's reading on a dispatch-bound CNN step). Otherwise the parts are concatenated flat and split back.
        if group.units_lead_rows():
            def laid_out(i: int) -> Tensor:
                return torch.cat([p[i].reshape(group.units, -1) for p in parts], dim=1).view(-1)

            def norms_of(flat: Tensor) -> Tensor:
                return torch.linalg.vector_norm(flat.view(group.units, -1), dim=1)
        else:
            shapes = [p[0].shape for p in parts]
            sizes = [p[0].numel() for p in parts]

            def laid_out(i: int) -> Tensor:
                return torch.cat([p[i].reshape(-1) for p in parts])

            def norms_of(flat: Tensor) -> Tensor:
                return group.unit_norms([piece.view(shape) for piece, shape in zip(flat.split(sizes), shapes)])

        def unit_atoms(flat: Tensor, count: int, reading: str) -> Tensor:
            norms = norms_of(flat)
            return norms if scales is None else norms / scales

        value, grad = laid_out(0), laid_out(1)
        # with several layers each keeps its largest unit, as the landing will (`keep_mask`)
        target, dropped, steps, early = self.target(unit_atoms, value, grad, self.budget, self.atom_total,
                                                    keep=group.keep_mask if scales is not None or group.equal_parts
                                                    else None)
        if dropped is not None and scales is not None:
            # a dropped unit's decay is λ times its layer's scale (the weighted group lasso whose
            # thresholds the relative atoms compare)
            dropped = dropped * scales.to(dropped.dtype)
        return target, dropped, steps, early


class UnitGroups(Constraint, register=False):
    r"""One group per unit (slice along ``dim``) spanning several tensors, with one shared gate.

    Register with [`symopt.group_sparse`][symopt.group_sparse] and a list of names, e.g.
    ``["conv.weight", "conv.bias", "bn.weight", "bn.bias"]``: every tensor must have the same number
    of units along ``dim``. The first tensor's parametrization stores the gates ``s`` (with its own
    $ω$); the others read them. Decay: $(λ/2)(‖s‖^2 + \sum_t ‖ω_t‖^2)$, which is
    $λ \sum_c ‖θ_{·}[c]‖_2$ at the balanced point.

    Args:
        dim: the axis of every tensor that indexes the units (default 0: output channels / rows), or one per
            tensor; an entry may be a tuple of increasing axes whose entries index the units together, numbered
            row-major (a mixture of experts' ``(experts, outputs, inputs)`` tensor: ``(0, 1)``, with a unit map
            folding each neuron's gate and up rows into one unit). Such a tensor may be the group's only one.
        strength: λ (> 0), default 1e-3; with a budget, the starting λ (default: from the first gradients).
        seed: seed of the gates' signs.
        max_groups: budget: λ adapts until exactly this many units are non-zero across the tensors.
        adapt_rate: fraction of the way log λ moves toward the budget's target per step.
        total_steps: the steps until training ends: the budget then arrives on a schedule and lands
            exactly (as for [`GroupSparse`][symopt.GroupSparse]).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        unit_maps: per tensor, the unit of each index along its axis (None, or a None entry: index i is unit i),
            e.g. the rows of a head's q, k and v in one fused projection; `SHARED` (-1) marks an index of no unit,
            shared by all (multi-query attention's k and v rows in that projection): not gated, not decayed, kept by
            every landing. Unit ids count from 0 in each set.
        sets: one *layer index* per tensor, for one budget over several layers (a global channel
            budget, as Torch-Pruning's ``global_pruning``): tensors of the same set share its units,
            each set brings its own, and the gates, λ and ``max_groups`` span all of them. The units
            of set j are numbered after those of sets 0..j−1. Default: one set.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        >>> handle = symopt.group_sparse(net, ["0.weight", "0.bias", "1.weight", "1.bias"], strength=1e-3)
        >>> handle.constraint.unit_norms(handle.values()).shape      # one norm per channel
        torch.Size([4])
        >>> net[1].parametrizations.bias.original0 is not None       # each tensor its own ω ...
        True
        >>> handle.constraint.gates is net[0].parametrizations.weight.original0   # ... one gate per channel
        True
    """

    kind = "group_sparse"
    multi_tensor = True

    def __init__(self, dim: int | Sequence[int] = 0, strength: float | None = None, *, seed: int = 0,
                 unit_maps: Sequence[Tensor | None] | None = None, structure_name: str = "units",
                 max_groups: int | None = None, adapt_rate: float = RATE, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75), sets: Sequence[int] | None = None,
                 land_on_the_way: bool | None = None, equal_parts: int | None = None) -> None:
        if isinstance(strength, str):
            raise ValueError("group_sparse over several tensors: give a number for strength (λ > 0); "
                             "'auto' is not available for groups that span tensors")
        dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, Sequence) else [dim]
        if any(not _is_axis(d) and not (isinstance(d, tuple) and d and all(_is_axis(a) for a in d)) for d in dims):
            raise TypeError(f"group_sparse over several tensors: dim must be an int axis (or one per tensor, each an "
                            f"int or a tuple of ints: the axes whose entries together index the units), got {dim!r}")
        k = check_budget(max_groups, "max_groups", "group_sparse over several tensors")
        schedule = check_total_steps(total_steps, ramp, "group_sparse over several tensors")
        if schedule is not None and k is None:
            raise ValueError("group_sparse over several tensors: total_steps schedules a budget; give max_groups=")
        on_the_way = check_land_on_the_way(land_on_the_way, schedule, True, "group_sparse over several tensors")
        if k is None:
            super().__init__(1e-3 if strength is None else strength, seed=seed)
        else:
            super().__init__(UnitBudget(strength, adapt_rate, owner="UnitGroups", schedule=schedule), seed=seed,
                             budget=("count", k))
            # a unit's gate and its ω in every tensor (UnitGroupsMember.dropped_entries): the decay trims,
            # and units land on the way by zeroing them (unless asked not to)
            self.policy.trims, self.policy.lands_early = True, on_the_way
        if equal_parts is not None and (isinstance(equal_parts, bool) or not isinstance(equal_parts, int)
                                        or equal_parts < 1):
            raise TypeError(f"group_sparse: equal_parts must be an int >= 1, got {equal_parts!r}")
        if equal_parts is not None and k is None:
            raise ValueError("group_sparse: equal experts share a budget; give max_groups= (a multiple of the experts)")
        # (the units in that many equal runs, each keeping the same count of the budget: a mixture's experts)
        self.equal_parts = equal_parts
        self.dim = dims[0]
        self.dims = dims  # one per tensor, or one for all
        # per tensor: the unit of each index along its axis (None: index i is unit i). Attention heads
        # use it: the rows of q, k and v of head h are all unit h.
        self.unit_maps = list(unit_maps) if unit_maps is not None else None
        if sets is not None and (isinstance(sets, (str, bytes)) or not isinstance(sets, Sequence)
                                 or any(isinstance(j, bool) or not isinstance(j, int) for j in sets)):
            raise TypeError(f"group_sparse: sets must be a list of int layer indices, one per tensor; got {sets!r}")
        self.sets = list(sets) if sets is not None else None
        self.set_units: list[int] = []  # the units of each set, in order (set j's come after set j-1's)
        self.structure_name = structure_name
        # for heads (set by symopt.attention_heads; export reads it): per attention block, None for an
        # nn.MultiheadAttention, or for a hand-written block its name, its q / k / v / out layer names,
        # its head count and the attribute holding it
        self.attention_blocks: list[dict | None] | None = None
        self.copies: list[nn.Module] = []  # the members' ParametrizationLists (plain list: no cycle)
        self._norms: Tensor | None = None  # the joint unit norms while the members register
        self._expected = 0
        self._count = 0
        # per tensor: whether its unit map is the identity (index i is unit i, every unit: a layer's channels
        # in a group of one layer), so that laying per-unit scalars along it is a view, not a gather
        self._plain_maps: tuple[bool, ...] = ()
        # per tensor: whether some of its indices are shared (no unit's: `SHARED` in its unit map), and its size
        # along the unit axis
        self._shared: tuple[bool, ...] = ()
        self._full_sizes: tuple[int, ...] = ()

    # -- registration (the multi-tensor protocol of attach) ------------------------------------------
    def validate_members(self, tensors: Sequence[Tensor], names: Sequence[str]) -> None:
        # (one tensor is served where a GroupSparse cannot say its units: several axes, or a unit map)
        if len(tensors) < 2 and self.unit_maps is None and not any(isinstance(d, tuple) for d in self.dims):
            raise ValueError(f"group_sparse over several tensors needs at least two names, got {list(names)}; "
                             "for one tensor pass its name as a string")
        if len(self.dims) not in (1, len(tensors)):
            raise ValueError(f"group_sparse: give one dim for all the tensors or one per tensor ({len(tensors)}), "
                             f"got {self.dims}")
        if self.unit_maps is not None and len(self.unit_maps) != len(tensors):
            raise ValueError(f"group_sparse: unit_maps needs one entry per tensor ({len(tensors)}), got {len(self.unit_maps)}")
        sets = self.sets if self.sets is not None else [0] * len(tensors)
        if len(sets) != len(tensors) or sorted(set(sets)) != list(range(max(sets) + 1)):
            raise ValueError(f"group_sparse: sets needs one layer index per tensor, numbered 0, 1, ... without "
                             f"gaps; got {sets} for {len(tensors)} tensors")
        axes, maps, counts = [], [], []
        for i, (t, name) in enumerate(zip(tensors, names)):
            d = self.dims[i] if len(self.dims) > 1 else self.dims[0]
            several = d if isinstance(d, tuple) else (d,)
            if t.dim() == 0 or not all(-t.dim() <= a < t.dim() for a in several):
                raise ValueError(f"group_sparse: dim={d} is out of range for '{name}' of shape "
                                 f"{tuple(t.shape)}; every tensor needs the unit axis")
            ordered = tuple(a % t.dim() for a in several)
            if isinstance(d, tuple) and (len(set(ordered)) != len(ordered) or list(ordered) != sorted(ordered)):
                raise ValueError(f"group_sparse: the unit axes dim={d} of '{name}' must be distinct and in increasing "
                                 "order (their entries are numbered row-major, as the unit map reads them)")
            size = math.prod(t.shape[a] for a in ordered)
            ids = self.unit_maps[i] if self.unit_maps is not None else None
            ids = torch.arange(size) if ids is None else torch.as_tensor(ids, dtype=torch.long).reshape(-1)
            if ids.numel() != size or (ids.numel() and int(ids.min()) < SHARED):
                raise ValueError(f"group_sparse: the unit map of '{name}' must give a unit id >= 0 (or {SHARED}: an "
                                 f"index shared by every unit) to each of its {size} indices along dim={d}")
            if ids.numel() and int(ids.max()) == SHARED:
                raise ValueError(f"group_sparse: the unit map of '{name}' gives no index of it a unit ({SHARED} "
                                 "everywhere); leave the tensor out of the group")
            if isinstance(d, tuple) and bool((ids == SHARED).any()):
                raise ValueError(f"group_sparse: the unit map of '{name}' marks indices {SHARED} (shared), which "
                                 "units over several axes do not take")
            axes.append(ordered if isinstance(d, tuple) else ordered[0])
            maps.append(ids)
            counts.append(int(ids.max()) + 1 if ids.numel() else 0)
        set_units = []
        for j in range(max(sets) + 1):
            members = [i for i, s in enumerate(sets) if s == j]
            if len({counts[i] for i in members}) != 1:
                listing = ", ".join(f"'{names[i]}': {counts[i]}" for i in members)
                where = "the tensors" if self.sets is None else f"the tensors of layer {j}"
                raise ValueError(f"group_sparse: {where} must have the same number of units along dim={self.dim} "
                                 f"({listing}); list the weight, bias and norm entries of one layer")
            set_units.append(counts[members[0]])
        # set j's units are numbered after those of the sets before it: one gate per unit of every layer
        offsets = [sum(set_units[:j]) for j in range(len(set_units))]
        # (a shared index keeps its SHARED mark: it is no set's)
        maps = [torch.where(ids == SHARED, ids, ids + offsets[s]).to(t.device) for ids, s, t in zip(maps, sets, tensors)]
        self.set_units = set_units
        first = tensors[0]
        for t, name in zip(tensors[1:], names[1:]):
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"group_sparse: '{name}' is {t.dtype} on {t.device}, '{names[0]}' is "
                                 f"{first.dtype} on {first.device}; one dtype and device for all the tensors")
        self.axes, self.units = axes, sum(set_units)
        if self.budget_spec is not None:
            self.resolve_budget(self.units, ", ".join(names), "units")
            if self.budget < len(set_units):
                raise ValueError(f"group_sparse: max_groups={self.budget} is below the {len(set_units)} layers of the "
                                 f"global budget, and every layer keeps at least one unit; give max_groups >= "
                                 f"{len(set_units)}")
            parts = self.equal_parts
            if parts and (any(n % parts for n in set_units) or self.budget % parts
                          or self.budget < parts * len(set_units)):
                raise ValueError(f"group_sparse: equal experts need every layer's units in {parts} experts (got "
                                 f"{set_units} neurons) and max_groups a multiple of the {parts} experts, at least "
                                 f"{parts} per layer (got {self.budget}); e.g. max_groups="
                                 f"{parts * max(len(set_units), self.budget // parts)}")
            self.policy.budget, self.policy.atom_total = self.budget, self.atom_total
        shared = tuple(bool((ids == SHARED).any()) for ids in maps)
        for i, ids in enumerate(maps):  # buffers: model.to(device) moves them with the factors
            if not shared[i]:
                self.register_buffer(f"unit_map{i}", ids, persistent=False)
                continue
            # ω holds the unit indices only (in order), the free factor the shared ones: θ is their concatenation
            # along the axis, put back in the map's order by `order{i}` (none where the shared indices come last)
            owned = (ids != SHARED).nonzero().reshape(-1)
            free = (ids == SHARED).nonzero().reshape(-1)
            self.register_buffer(f"unit_map{i}", ids[owned], persistent=False)
            # (in the full layout a shared index points at one more unit, whose per-unit scalar is 1: `spread`)
            self.register_buffer(f"full_map{i}", ids.masked_fill(ids == SHARED, self.units), persistent=False)
            self.register_buffer(f"owned_index{i}", owned, persistent=False)
            self.register_buffer(f"shared_index{i}", free, persistent=False)
            placed = torch.cat([owned, free])
            if not bool((placed.cpu() == torch.arange(placed.numel())).all()):
                self.register_buffer(f"order{i}", torch.argsort(placed), persistent=False)
        self._shared = shared
        self._full_sizes = tuple(ids.numel() for ids in maps)
        self._count = len(maps)
        self._plain_maps = tuple(ids.numel() == self.units and bool((ids.cpu() == torch.arange(self.units)).all())
                                 for ids in maps)
        self._norms = self.unit_norms([t.detach() for t in tensors])

    def prepare(self, count: int, device: torch.device) -> None:
        self.copies = []
        self._expected = count
        if self.budget is not None:
            self.policy.members = count

    def member(self, index: int) -> UnitGroupsMember:
        member = UnitGroupsMember(self, index)
        if self.policy.schedule_of_budget() is not None:
            member.register_forward_pre_hook(_land_units_when_due)
        return member

    def land_all(self, keep: Tensor | None = None) -> None:
        """Land the budget: the ``budget`` units of largest joint norm are kept; every other unit's
        gate and its $ω$ in every tensor go to 0, the mirror's fixed subspace. With ``keep`` (on the
        ramp's way, `BudgetStrength.early_landing`: a bool mask over the units): the units outside it
        land, and the budget has not landed yet."""
        early = keep is not None
        with torch.no_grad():
            if not early:
                norms = self.unit_norms([self._value(i) for i in range(len(self.copies))])
                scales = self.layer_scales(norms)
                keep = self.keep_mask(norms if scales is None else norms / scales)
            self.landed_keep.copy_(keep & self.landed_keep)
            self.hold(range(len(self.copies)))
            hold_state_at_next_step([copy[0] for copy in self.copies], self, self.factors(), self.landed_keep)
        if not early:
            self.policy.mark_landed()

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        """Put every unit outside ``keep`` on the fixed subspace in ``factors``, the members' factors in
        order — the gates and the first tensor's $ω$, then each other tensor's $ω$ — or tensors shaped
        like them (their gradients, an optimizer's state): $s_c = 0$ and $ω_t[c] = 0$ for every t."""
        gates, *omegas = factors
        self._zero_units(keep, gates, dict(enumerate(omegas)))

    @property
    def can_regrow(self) -> bool:
        # (regrow hands a kind every factor of its members, and a tensor with shared indices has a free factor
        # beside its ω, which no seed or hold of a unit may touch: not served)
        return super().can_regrow and not any(self._shared)

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Sequence[Tensor], size: Tensor) -> None:
        # unit c at θ_t[c] = −size_c · g_t[c] / ‖g_·[c]‖ (the joint norm over the tensors), as
        # s_c = √size_c and ω_t[c] = −√size_c · g_t[c] / ‖g_·[c]‖: then s_c² = Σ_t ‖ω_t[c]‖², the split at
        # which the decay is λ‖θ_·[c]‖
        gates, *omegas = factors
        root = size.to(gates.dtype).sqrt()
        norms = self.unit_norms(grad).to(gates.dtype).clamp_min(torch.finfo(gates.dtype).tiny)
        gates.copy_(torch.where(which, root, gates))
        for i, (omega, g) in enumerate(zip(omegas, grad)):
            direction = -g.to(omega.dtype) / self.spread(norms, omega, i)
            chosen = self.spread(which, omega, i).expand_as(omega)
            omega.copy_(torch.where(chosen, direction * self.spread(root, omega, i), omega))

    def hold(self, tensors) -> None:
        """The dropped units' gates and their $ω$ in each of ``tensors`` (indices) at 0: the landing
        does all of them, and each tensor's forward its own (momentum would move them off)."""
        self._zero_units(self.landed_keep, self.gates, {i: self._omega(i) for i in tensors})

    def _zero_units(self, keep: Tensor, gates: Tensor, omegas: dict[int, Tensor]) -> None:
        """$s_c = 0$ in ``gates`` and $ω_t[c] = 0$ in each ``omegas[t]`` (tensor t's ω, or a tensor like it)
        for every unit c outside ``keep``: the mirror's fixed point."""
        # (the landed units are held before every forward of every tensor of the group: their masks are kept while
        # that buffer is unchanged, `from_landing_mask`; any other mask, a regrowth's, is laid out once)
        held = keep is getattr(self, "landed_keep", None)  # (a group without a budget has none)

        def mask(name, like, make: Callable[[], Tensor]) -> Tensor:
            return self.from_landing_mask(keep, name, like, make) if held else make()

        gates.masked_fill_(mask("dropped units", None, lambda: ~keep), 0.0)
        for i, omega in omegas.items():
            omega.mul_(mask(("units", i), (omega.dtype, omega.device),
                            lambda: self.spread(keep.to(omega.dtype), omega, i)))

    def factors(self) -> tuple[Tensor, ...]:
        """The shared gates, then each tensor's $ω$: every factor of the group."""
        return (self.gates, *(self._omega(i) for i in range(len(self.copies))))

    def _omega(self, index: int) -> Tensor:
        """Tensor ``index``'s $ω$ (the first tensor's parametrization stores the gates before it)."""
        return chain_original(self.copies[index], 1 if index == 0 else 0)

    def bind(self, copy: nn.Module) -> None:
        self.copies.append(copy)
        if len(self.copies) == self._expected:
            self._norms = None  # registration is over: a later right_inverse is an assignment

    @property
    def gates(self) -> Tensor:
        """The shared gates ``s`` (stored by the first tensor's parametrization)."""
        if not self.copies:
            raise RuntimeError("UnitGroups: no tensor is registered yet; use symopt.group_sparse(model, [names])")
        return chain_original(self.copies[0], 0)

    def regate(self, index: int, value: Tensor) -> Tensor:
        """New gates for an assignment of ``value`` to tensor ``index``: a unit whose gate is 0 could
        not hold a non-zero value, so the gates are drawn again from the joint norms, and every other
        tensor's $ω$ is rescaled to keep its value. The first tensor's gates are written here unless
        it is the one assigned (then parametrize stores what its right_inverse returns)."""
        with torch.no_grad():
            # (the others' units only, their ω's layout: a tensor's shared indices are its free factor's, unchanged)
            values = [value if i == index else self._value(i) for i in range(len(self.copies))]
            new = random_gate(self.unit_norms(values), self.factorizer)
            for i in range(len(self.copies)):
                if i != index:
                    self._omega(i).copy_(values[i] / self.spread(new, values[i], i))
            if index != 0:
                self.gates.copy_(new)
        return new

    def _value(self, index: int) -> Tensor:
        """Tensor ``index``'s value at its units' indices ($s ⊙ ω$: without its shared ones, as its ω)."""
        omega = self._omega(index)
        return self.spread(self.gates, omega, index) * omega

    # -- the maths on the list of values ---------------------------------------------------------------
    def spread(self, per_unit: Tensor, value: Tensor, index: int = 0) -> Tensor:
        """Per-unit scalars laid out to multiply tensor ``index`` entrywise: ``value`` is the tensor itself (θ,
        its gradient), or its $ω$ (or a tensor shaped like it), which lacks the tensor's shared indices where it
        has some (`SHARED`); at those the scalar is 1 (True for a mask): a shared index is no unit's, so a
        mask, a shrinkage or a gate leaves it as it is."""
        shape = [1] * value.dim()
        axes = self.axes[index]
        if isinstance(axes, tuple):  # (units over several axes: the map's flat index is row-major over them)
            for axis in axes:
                shape[axis] = value.shape[axis]
        else:
            shape[axes] = -1
        # (a view where the map is the identity: a gather is a few µs a call, and every forward, hold and
        # trimmed decay of every tensor lays scalars out so)
        if self._plain_maps[index]:
            return per_unit.view(shape)
        if self._is_full(value, index):
            return torch.cat([per_unit, per_unit.new_ones(1)])[getattr(self, f"full_map{index}")].view(shape)
        return per_unit[getattr(self, f"unit_map{index}")].view(shape)

    def _is_full(self, value: Tensor, index: int) -> bool:
        """Whether ``value`` is tensor ``index`` with its shared indices (not its $ω$, which lacks them)."""
        return self._shared[index] and value.shape[self.axes[index]] == self._full_sizes[index]

    def owned_part(self, value: Tensor, index: int) -> Tensor:
        """Tensor ``index`` (``value``: θ, or its gradient) at its units' indices only, the layout of its $ω$:
        ``value`` itself where it has no shared index."""
        if not self._is_full(value, index):
            return value
        return value.index_select(self.axes[index], getattr(self, f"owned_index{index}"))

    def shared_part(self, value: Tensor, index: int) -> Tensor:
        """Tensor ``index`` at its shared indices (`SHARED`: no unit's), a new tensor: what its free factor holds."""
        return value.index_select(self.axes[index], getattr(self, f"shared_index{index}"))

    def assembled(self, gated: Tensor, free: Tensor, index: int) -> Tensor:
        """Tensor ``index`` from its units' part (``gated``, $s ⊙ ω$) and its shared part (``free``), put back in
        its map's order."""
        axis = self.axes[index]
        whole = torch.cat([gated, free], dim=axis)
        order = getattr(self, f"order{index}", None)
        return whole if order is None else whole.index_select(axis, order)

    def has_shared(self, index: int) -> bool:
        """Whether tensor ``index`` has shared indices (a free factor beside its $ω$)."""
        return self._shared[index]

    def units_lead_rows(self) -> bool:
        """Whether every tensor's units lie along its first axis with the identity map (index i is unit i):
        then each tensor reshaped to ``(units, -1)`` has one unit per row."""
        return all(self._plain_maps) and not any(self.axes)

    def _unit_squares(self, value: Tensor, index: int) -> Tensor:
        r"""$\sum$ of squares of tensor ``index``'s entries per unit."""
        axes = self.axes[index]
        lead = axes if isinstance(axes, tuple) else (axes,)
        per_index = value.movedim(lead, tuple(range(len(lead)))).reshape(
            math.prod(value.shape[a] for a in lead), -1).square().sum(dim=1)
        if self._plain_maps[index]:
            return per_index
        if self._is_full(value, index):  # (the shared indices add into one more unit, dropped)
            return per_index.new_zeros(self.units + 1).index_add(0, getattr(self, f"full_map{index}"), per_index)[:-1]
        return per_index.new_zeros(self.units).index_add(0, getattr(self, f"unit_map{index}"), per_index)

    def unit_norms(self, values: Sequence[Tensor]) -> Tensor:
        r"""$‖θ_{·}[c]‖_2$ over all the tensors, for every unit c."""
        return torch.stack([self._unit_squares(v, i) for i, v in enumerate(values)]).sum(dim=0).sqrt()

    def atoms(self, values: Sequence[Tensor]) -> Tensor:
        return self.unit_norms(values)

    def project(self, values: Sequence[Tensor], tol: float = 0.0) -> list[Tensor]:
        keep = (self.unit_norms(values) > tol)
        return [v * self.spread(keep.to(v.dtype), v, i) for i, v in enumerate(values)]

    def keep_mask(self, atoms: Tensor, k: int | None = None) -> Tensor:
        """The ``k`` (default: the budget) largest units, except that each layer of a global budget
        keeps at least its largest one, in place of the smallest unit kept by a layer that keeps
        several: a layer without a unit cuts the network (its output no longer depends on the input),
        which a ranking across layers of different scales could otherwise ask for. With ``equal_parts`` each layer's
        units fall in that many equal runs (a mixture's experts), each keeping the same count: ``k / equal_parts`` for
        one layer; over several, counts the layers share as `equal_in_layers` ranks them."""
        k = self.budget if k is None else k
        if self.equal_parts:  # (a mixture's experts alike: each of a layer's keeps its share)
            return equal_in_layers(atoms, k, self.equal_parts, self.set_units or [atoms.numel()])
        return largest_in_parts(atoms, k, self.set_units or [atoms.numel()])

    @property
    def spans_layers(self) -> bool:
        """Whether the group's units come from several layers (a global budget), whose units are ranked
        relative to their layer (`layer_scales`)."""
        return len(self.set_units) > 1

    def layer_scales(self, norms: Tensor) -> Tensor | None:
        r"""For a global budget (several layers), each unit's layer's mean unit norm (from the joint
        unit ``norms``), per unit; None for one layer. The trimmed ramp and the landing rank units by their norm over it, so that
        layers of different scales (a conv of 9 weights per channel next to one of 288; their
        initialisations differ by the fan-in too) compete on their relative sizes, as Torch-Pruning's
        global pruning does with its mean-normalised importance; ranked on raw norms, the small
        layer lost all but one channel on the digits CNN (benchmarks/RESULTS.md). In penalty terms the
        ramp decays the weighted group lasso $λ\sum_u c_u‖θ_u‖$, $c_u$ the scale of u's layer."""
        if not self.spans_layers:
            return None
        norms = norms.detach()
        means = torch.stack([part.mean() for part in norms.split(self.set_units)])
        means = means.clamp_min(torch.finfo(means.dtype).tiny)
        return means.repeat_interleave(torch.tensor(self.set_units, device=means.device))

    def truncate(self, values: Sequence[Tensor], k: int) -> list[Tensor]:
        keep = self.keep_mask(self.unit_norms(values), k)
        return [v * self.spread(keep.to(v.dtype), v, i) for i, v in enumerate(values)]

    def violation(self, values: Sequence[Tensor], tol: float = 0.0) -> float:
        """Without a budget: the distance to the snap at ``tol``. With one: to the budget's set (all but
        the ``budget`` largest units zero; tiny kept units are inside it)."""
        snapped = self.project(values, tol) if self.budget is None else self.truncate(values, self.budget)
        return float(torch.stack([(v - s).norm() for v, s in zip(values, snapped)]).norm())

    def infeasibility(self, values: Sequence[Tensor]) -> float:
        return 0.0  # a penalty: it promises no set

    def induced_norm(self, values: Sequence[Tensor]) -> Tensor:
        return self.unit_norms(values).sum()

    def dual_norm(self, grads: Sequence[Tensor]) -> Tensor:
        return self.unit_norms(grads).amax()

    def prox(self, values: Sequence[Tensor], step: float) -> list[Tensor]:
        norms = self.unit_norms(values)
        scale = (1 - step * self.strength / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
        return [v * self.spread(scale.to(v.dtype), v, i) for i, v in enumerate(values)]

    def kkt_residual(self, values: Sequence[Tensor], grads: Sequence[Tensor], tol: float = 0.0,
                     quick: bool = False) -> float:
        lam = self.strength
        norms = self.unit_norms(values)
        safe = norms.clamp_min(torch.finfo(norms.dtype).tiny)
        active = self.unit_norms([g + lam * v / self.spread(safe, v, i) for i, (v, g) in enumerate(zip(values, grads))])
        res = torch.where(norms > tol, active, (self.unit_norms(grads) - lam).clamp_min(0))
        return float(res.norm())

    def structure(self, values: Sequence[Tensor], tol: float = 0.0) -> str:
        norms = self.unit_norms([v.detach() for v in values])
        budget = "" if self.budget is None else f", budget {self.budget}"
        layers = ""
        if self.spans_layers:  # a global budget: how the loss shared the units among the layers
            alive = [int((part > tol).sum()) for part in norms.split(self.set_units)]
            layers = "; per layer " + ", ".join(f"{a}/{n}" for a, n in zip(alive, self.set_units))
        return (f"units {int((norms > tol).sum())}/{norms.numel()} (dim={self.dim}, {len(values)} tensors"
                f"{budget}{layers})")

    def structure_key(self, value, tol: float) -> object:
        return tuple((self.unit_norms(list(value)) > tol).tolist())

    def compressed_structure(self) -> str | None:
        return self.structure_name

    def unit_axis(self, ndim: int) -> int | None:
        # (the first tensor's axis that is one axis: a mixture of experts' tensors index units over two, and a
        # global budget may hold them beside dense layers, whose axis this is)
        axis = next((d for d in self.dims if not isinstance(d, tuple)), None)
        return None if axis is None else axis % ndim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, {super().extra_repr()}"


def _is_axis(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@acts_on_factors
def _land_units_when_due(member: "UnitGroupsMember", inputs: tuple[Tensor, ...]) -> None:
    """Forward pre-hook of a budgeted unit group's tensor: the group lands all its tensors at once at
    the end of the ramp, and on the way the units a reading left out (`BudgetStrength.early_landing`);
    landed units are held at 0 before every forward."""
    group = member.group
    # every tensor's dropped units at once, once after each write to the factors (an optimizer step):
    # the shared gates are every tensor's, and a block applied twice in one pass must not see its factors
    # written between the two uses (autograd refused that backward)
    factors = None

    def moved() -> bool:
        nonlocal factors
        factors = group.factors()
        return moved_since_held(group, factors)

    what, early = group.policy.next_landing(group.budget, group.atom_total, moved)
    if what is None:
        return
    if what == "hold":
        with torch.no_grad():
            group.hold(range(len(group.copies)))
    else:
        group.land_all(early)  # (early None: the budget lands)
    held(group, factors if factors is not None else group.factors())


class UnitGroupsMember(GroupMember):
    """The parametrization of one tensor of a [`UnitGroups`][symopt.constraints.unit_groups.UnitGroups]:
    $θ_t = s ⊙ ω_t$ (gates broadcast along the unit axis). The first tensor stores $(s, ω_1)$, the
    others $(ω_t)$ and read ``s`` from it."""

    kind = "group_sparse"

    @property
    def decayed(self) -> tuple[int, ...]:  # type: ignore[override]
        return (0, 1) if self.index == 0 else (0,)

    def atoms(self, value: Tensor) -> Tensor:
        return self.group._unit_squares(value, self.index).sqrt()

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:
        if self.index == 0 and slot == 0:
            return dropped  # the shared gates, one per unit
        return self.group.spread(dropped, factor, self.index).expand_as(factor)

    def unit_axis(self, ndim: int) -> int | None:
        axes = self.group.axes[self.index]
        return None if isinstance(axes, tuple) else axes  # (units over two axes are no slices along one)

    def compressed_structure(self) -> str | None:
        return self.group.structure_name

    def forward(self, *factors: Tensor) -> Tensor:
        if self.index == 0:
            gates, omega, *free = factors
        else:
            (omega, *free), gates = factors, self.group.gates
        gated = self.group.spread(gates, omega, self.index) * omega
        # (a tensor with shared indices: its free factor, undecayed, holds them: `SHARED`)
        return self.group.assembled(gated, free[0], self.index) if free else gated

    def right_inverse(self, value: Tensor):
        group = self.group
        if group._norms is not None and self.index == 0:  # registration: gates from the joint norms
            gates = random_gate(group._norms.to(value.dtype), self.factorizer)
        elif group._norms is not None:
            gates = group.gates.detach()
        else:  # an assignment after registration
            gates = group.regate(self.index, value.detach())
        owned = group.owned_part(value, self.index)
        omega = owned / group.spread(gates, owned, self.index)
        free = (group.shared_part(value, self.index),) if group.has_shared(self.index) else ()
        return (gates.detach().clone(), omega, *free) if self.index == 0 else (omega, *free)

    def balance(self, *factors: Tensor) -> float:
        if self.index != 0:
            return 0.0  # the gates' balance is measured once, on the first tensor, over all of them
        gates = factors[0].detach()
        osq = sum(self.group._unit_squares(self.group._omega(i).detach(), i)
                  for i in range(len(self.group.copies)))
        gsq = gates.square()
        denom = float((gsq + osq).sum())
        return float((gsq - osq).abs().sum()) / denom if denom > 0 else 0.0

    def extra_repr(self) -> str:
        return f"tensor {self.index} of units along dim={self.group.dim}" + (" (holds the gates)" if self.index == 0 else "")
