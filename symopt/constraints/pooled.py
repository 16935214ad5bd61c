r"""One budget over several tensors: ``symopt.sparse(model, ["0.weight", "2.weight"], density=0.1)``.

Each tensor keeps its own factorisation (its own mirror symmetries, e.g. $w = u ⊙ v$), and all of them
share one λ: the decay is $λ \sum_t ‖θ_t‖$ with a single λ, so the atoms of every tensor compete on one
scale and the budget counts them together, as ``torch.nn.utils.prune.global_unstructured`` does with
magnitudes. λ is found by the budget controller (`symopt.constraints.budget`) on the union of the
tensors' atoms: after every tensor has reported its gradient in a backward pass, the scores of all
atoms give one target. At a converged point of a convex loss, that is the point of the regularisation
path of $ℓ + λ \sum_t ‖θ_t‖$ whose support has exactly the budget.

The union of the atoms is the concatenation of each tensor's: its entries (``Sparse``, ``NonNegative``)
or its singular values (``LowRank``: ``symopt.low_rank(model, [names], target_rank=r)``, one λ on
$\sum_t ‖W_t‖_*$, so r counts the ranks of all the matrices together). During a landing budget's ramp
and at its landing, a pool of matrices compares each singular value over its matrix's Frobenius norm
(`Pooled.scales`: raw singular values of layers of different scales starve the smaller one). Every tensor keeps
at least one atom, on the ramp's way and at the landing: rank 1 in every matrix, a non-zero in every tensor of
entries (an empty layer, or rank 0, cuts a network there). An entry budget otherwise compares raw entries, as
``global_unstructured`` does, which empties a layer whose entries are all smaller than the others' (a ReLU
network's layers rescaled by 1e-3 and 1e3, the same function: two of three layers emptied at density 0.01,
before this floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .base import (Constraint, Factorizer, GroupMember, acts_on_factors, held, hold_state_at_next_step, largest_in_parts,
                   moved_since_held)
from .budget import RATE, check_land_on_the_way, check_total_steps
from .strength import BudgetStrength, Strength


class PooledBudget(BudgetStrength):
    """The budget controller of a pool: one target per backward pass, from the union of the members'
    atoms (see the module docstring). ``members`` and ``budget`` are set when the pool is registered."""

    def __init__(self, initial: float | None = None, rate: float = RATE, owner: str = "strength",
                 schedule: tuple[int, float, float] | None = None) -> None:
        super().__init__(initial, rate, owner, schedule=schedule)
        self.members, self.budget, self.atom_total = 0, 0, 0
        self._round: dict[int, tuple[Tensor, Tensor, Callable]] = {}

    def _completed(self, constraint, part) -> list | None:
        """Record a member's part of this backward pass (``(value, grad, top_dual_atoms)``, or None where its
        layer computed its output without forming θ: `Constraint.thin_factors`); every member's parts once the
        last has reported, else None. One step is then one observation, however many members."""
        self._round[constraint.slot] = part
        if len(self._round) < self.members:
            return None
        parts = [self._round[i] for i in sorted(self._round)]
        self._round = {}
        return parts

    def counts_unread_pass(self, constraint) -> bool:
        # (the first tensor alone counts a pass that reads nothing: the others' hooks would only count it too;
        # a pool whose first tensor is not used in a pass, a branch not taken, does not count that pass)
        return constraint.slot == 0

    def _unread_observation(self, constraint):
        quiet = self.quiet()
        if quiet is not None:
            return quiet  # (a pass between readings: the step is counted, whichever tensors reported it)
        parts = self._completed(constraint, None)
        if parts is None:
            return None
        return "unread"  # (θ unread on a reading step: the step is counted, λ not moved)

    def _observation(self, constraint, value, grad):
        parts = self._completed(constraint, (value.detach(), grad.detach(), constraint.top_dual_atoms))
        if parts is None:
            return None
        quiet = self.quiet()
        if quiet is not None:  # before concatenating the tensors
            return quiet
        if any(p is None for p in parts):
            return "unread"
        shapes = [p[0].shape for p in parts]
        sizes = [p[0].numel() for p in parts]
        tops = [p[2] for p in parts]
        group = constraint.group
        # a pool of matrices compares singular values relative to their matrix's scale during the ramp
        # (`Pooled.scales`); the decay of each matrix is then λ times its scale
        scales = group.scales([p[0] for p in parts]) if group.relative and self.trimming() else None

        def pooled_atoms(flat: Tensor, count: int, reading: str) -> Tensor:
            # the controller works on the tensors' concatenation; each tensor's kind gives its own atoms
            # (its count largest: the leading singular values of a matrix), and the pool's are all of them
            atoms = [top(piece.view(shape), count, reading).reshape(-1)
                     for top, piece, shape in zip(tops, flat.split(sizes), shapes)]
            if scales is not None:
                atoms = [a / c for a, c in zip(atoms, scales)]
            return torch.cat(atoms)

        value = torch.cat([p[0].reshape(-1) for p in parts])
        grad = torch.cat([p[1].reshape(-1) for p in parts])
        target, dropped, steps, early = self.target(pooled_atoms, value, grad, self.budget, self.atom_total)
        if scales is not None:  # every atom decays (a rank budget trims nothing), by its matrix's weight
            dropped = torch.cat([torch.full((n,), float(c), dtype=value.dtype, device=value.device)
                                 for n, c in zip(group.atom_counts, scales)])
        elif dropped is not None or early is not None:
            # no tensor is left without an atom on the way either: its largest stays off the fixed subspace and
            # undecayed (an emptied layer cuts the network, and a landed atom does not come back at the landing)
            dropped, early = group.keep_one_in_each(lambda: pooled_atoms(value.detach(), 1, "point"), dropped, early)
        return target, dropped, steps, early


class _Borrowed(Strength):
    """The λ of another policy (a pool's), for a member's inner kind; holds no state of its own."""

    def __init__(self, source: Strength) -> None:
        super().__init__()
        self.__dict__["_source"] = source  # not a submodule: the pool owns the state

    def value(self) -> float:
        return self.__dict__["_source"].value()


class Pooled(Constraint, register=False):
    """A budget of ``k`` atoms shared by several tensors, each factorised by its own ``make()`` kind.

    Register with the verbs: ``symopt.sparse(model, [names], max_nonzero=k or density=f)`` (also
    ``symopt.nonnegative``), ``symopt.low_rank(model, [names], target_rank=r)``. The members' values
    are handled as a list, in the order of the names.

    Args:
        make: builds the per-tensor kind (called once per tensor), e.g. ``lambda: Sparse(1.0)``.
        budget: ``("count", k)`` or ``("density", f)`` over all the tensors' atoms (entries, singular
            values).
        strength: the starting λ (default: from the first gradients).
        adapt_rate: fraction of the way log λ moves toward the budget's target per step.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> handle = symopt.sparse(net, ["0.weight", "2.weight"], max_nonzero=10)
        >>> handle.kind, handle.constraint.budget, [m.qualname for m in handle.members]
        ('sparse', 10, ['0.weight', '2.weight'])
        >>> deep = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
        >>> ranks = symopt.low_rank(deep, ["0.weight", "2.weight"], target_rank=5)   # of 6 + 4
        >>> ranks.kind, ranks.constraint.budget, ranks.constraint.atom_counts
        ('low_rank', 5, [6, 4])
    """

    multi_tensor = True

    def __init__(self, make: Callable[[], Constraint], budget: tuple[str, float], *, strength: float | None = None,
                 adapt_rate: float = RATE, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75), land_on_the_way: bool | None = None) -> None:
        probe = make()
        owner = f"{type(probe).__name__} (pooled)"
        schedule = check_total_steps(total_steps, ramp, owner)
        on_the_way = check_land_on_the_way(land_on_the_way, schedule, probe.trims_decay, owner)
        if schedule is not None and type(probe).land is Constraint.land:
            raise ValueError(f"{owner}: this kind cannot land a budget (no `land`); drop total_steps")
        super().__init__(PooledBudget(strength, adapt_rate, owner=owner, schedule=schedule), budget=budget)
        if probe.budget_spec is not None:
            raise ValueError(f"{type(probe).__name__} (pooled): the pool holds the budget; its members take none")
        if probe.linear or type(probe).truncate is Constraint.truncate:
            raise ValueError(f"{type(probe).__name__}: one budget over several tensors needs a kind with atoms to "
                             "count (Sparse, NonNegative, LowRank)")
        # entries: a tensor's atoms are its entries, in place (the trimmed decay and the snap mask them);
        # otherwise (singular values) each tensor is cut to its share of the count by its own kind
        self.entries = _entries_are_atoms(probe)
        # a pool of matrices weights each matrix's decay by its scale during the ramp (`scales`): through
        # the same per-step mask as a trimmed decay
        self.policy.trims = probe.trims_decay or self.relative
        self.policy.lands_early = on_the_way  # (entries land on the way by default; singular directions do not)
        self.make = make
        self.kind = probe.kind  # reports and certificates show the members' kind
        self.copies: list[nn.Module] = []

    # -- registration (the multi-tensor protocol of attach) ------------------------------------------
    def validate_members(self, tensors: Sequence[Tensor], names: Sequence[str]) -> None:
        if len(tensors) < 2:
            raise ValueError(f"one budget over several tensors needs at least two names, got {list(names)}; "
                             "for one tensor pass its name as a string")
        first = tensors[0]
        for t, name in zip(tensors[1:], names[1:]):
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"a pooled budget needs one dtype and device: '{name}' is {t.dtype} on {t.device}, "
                                 f"'{names[0]}' is {first.dtype} on {first.device}; convert the model first")
        probes = [self.make() for _ in tensors]
        # a kind's default width for its share of the pool (`pooled_width`: a rank budget's 4 × the count)
        how, amount = self.budget_spec
        widths = [probe.pooled_width(tuple(t.shape), int(amount)) if how == "count" else None
                  for probe, t in zip(probes, tensors)]
        probes = [probe if w is None else _chosen_width(probe, w) for probe, w in zip(probes, widths)]
        for probe, t, name in zip(probes, tensors, names):
            probe.validate(t, name)
        # (a kind's atom count is what its factors can hold: a factor width bounds a rank)
        counts = [probe.atom_count(t) for probe, t in zip(probes, tensors)]
        self.resolve_budget(sum(counts), ", ".join(names), "non-zeros" if self.entries else "atoms",
                            holder="the tensors have" if self.entries else "the factor widths allow")
        if self.budget < len(tensors):  # (rank >= 1, and a non-zero, in each)
            raise ValueError(f"{type(probes[0]).__name__} (pooled): a budget of {self.budget} is below the "
                             f"{len(tensors)} tensors, and each keeps at least one atom (an empty layer or rank 0 "
                             f"cuts the network); give at least {len(tensors)}")
        self.policy.budget, self.policy.atom_total = self.budget, self.atom_total
        self.sizes = [t.numel() for t in tensors]
        self.atom_counts = counts
        self.widths = widths
        # where each tensor's atoms start in the pool's concatenation: the landing, the snap and the
        # trimmed decay's mask all slice by it
        self.offsets = [sum(counts[:i]) for i in range(len(counts))]

    def prepare(self, count: int, device: torch.device) -> None:
        self.copies = []
        self.policy.members = count

    def member(self, index: int) -> PooledMember:
        inner = self.make()
        width = getattr(self, "widths", [None] * (index + 1))[index]
        if width is not None:
            inner = _chosen_width(inner, width)
        inner.factorizer = Factorizer(inner.factorizer.seed + 7919 * index)  # independent signs per tensor
        return PooledMember(self, index, inner, self.atom_counts[index])

    def land_all(self, keep: Tensor | None = None) -> None:
        """Land the pool: the ``budget`` largest atoms over all the tensors are kept, every other
        atom's factors go to its mirror's fixed subspace (each tensor's ``inner.land``). With ``keep``
        (on the ramp's way, `BudgetStrength.early_landing`: a bool mask over the pool's atoms): the
        atoms outside it land, and the budget has not landed yet."""
        early = keep is not None
        with torch.no_grad():
            factors = [tuple(getattr(copy, f"original{i}") for i in range(copy.ntensors)) for copy in self.copies]
            members = [copy[0] for copy in self.copies]
            if not early:  # (on the way the reading has ranked the atoms already)
                values = [m.inner.forward(*f) for m, f in zip(members, factors)]
                atoms = [m.inner.atoms(v).reshape(-1) for m, v in zip(members, values)]
                if self.relative:
                    atoms = [a / c for a, c in zip(atoms, self.scales(values))]
                keep = self.keep_mask(torch.cat(atoms))
            for member, f, start, count in zip(members, factors, self.offsets, self.atom_counts):
                mask = keep[start:start + count] & member.landed_keep
                member.inner.land(f, mask)
                member.landed_keep.copy_(mask)
                held(member, f)
                hold_state_at_next_step((member,), member.inner, f, member.landed_keep)
        if not early:
            self.policy.mark_landed()

    def bind(self, copy: nn.Module) -> None:
        self.copies.append(copy)

    # -- the maths on the list of values -------------------------------------------------------------
    def _inner(self) -> Constraint:
        return self.copies[0][0].inner if self.copies else self.make()

    def atoms(self, values: Sequence[Tensor]) -> Tensor:
        inner = self._inner()
        return torch.cat([inner.atoms(v).reshape(-1) for v in values])

    @property
    def relative(self) -> bool:
        """Whether atoms are compared over their tensor's scale (`scales`): a pool of matrices, not of
        entries."""
        return not self.entries

    def scales(self, values: Sequence[Tensor]) -> list[float]:
        r"""Each tensor's scale, its Frobenius norm ($\sum σ_i^2 = ‖W‖_F^2$: no SVD). A pool of matrices
        ranks singular values over it during the ramp and at the landing, i.e. by the fraction of its
        matrix's energy each one carries. Layers differ in scale (fan-ins; and a ReLU network is
        unchanged when one layer is scaled by α and the next by 1/α), so raw singular values say little
        across layers. On the digits MLP at a total rank of 8 (benchmarks/RESULTS.md), raw values cut the
        64-input first layer to rank 1 (0.41 accuracy), values over the RMS singular value too (a
        flat spectrum of 64 against a heavy-tailed one of 256); energy fractions gave ranks 3 / 5 (0.85).
        The ramp's decay is then the weighted sum $λ\sum_t c_t‖W_t‖_*$."""
        return [max(float(v.detach().norm()), torch.finfo(v.dtype).tiny) for v in values]

    def keep_mask(self, atoms: Tensor) -> Tensor:
        """The ``budget`` largest atoms over all the tensors (flat, in the pool's order), each tensor keeping
        at least one (see the module docstring)."""
        return largest_in_parts(atoms, self.budget, self.atom_counts)

    def keep_one_in_each(self, atoms: Callable[[], Tensor], dropped: Tensor | None,
                         early: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """A reading's ``dropped`` (1.0 where the trimmed decay acts) and ``early`` (True where an atom stays
        off its fixed subspace) over the pool's atoms, with each tensor that the reading left without a
        kept atom keeping its largest (``atoms()``, asked only then): as `keep_mask` does at the landing.
        Ranked on raw sizes (as ``global_unstructured`` ranks), a tensor whose entries are all smaller than
        the others' is otherwise emptied on the way, and nothing brings a landed atom back."""
        spans = list(zip(self.offsets, self.atom_counts))
        empty_dropped = [] if dropped is None else [bool((dropped[a:a + n] != 0).all()) for a, n in spans]
        empty_early = [] if early is None else [not bool(early[a:a + n].any()) for a, n in spans]
        if not any(empty_dropped) and not any(empty_early):
            return dropped, early
        sizes = atoms()
        dropped = None if dropped is None else dropped.clone()
        early = None if early is None else early.clone()
        for j, (a, n) in enumerate(spans):
            largest_here = a + int(sizes[a:a + n].argmax())
            if empty_dropped and empty_dropped[j]:
                dropped[largest_here] = 0
            if empty_early and empty_early[j]:
                early[largest_here] = True
        return dropped, early

    def _shares(self, values: Sequence[Tensor]) -> list[int]:
        """How many atoms of the budget each tensor holds at ``values``."""
        keep = self.keep_mask(self.atoms(values))
        return [int(keep[start:start + n].sum()) for start, n in zip(self.offsets, self.atom_counts)]

    def snap(self, values: Sequence[Tensor], tol: float = 0.0) -> list[Tensor]:
        """Atoms ``<= tol`` zeroed, then the ``budget`` largest atoms over all the tensors kept."""
        inner = self._inner()
        snapped = [inner.project(v, tol) for v in values]
        if self.budget is None:
            return snapped
        if not self.entries:
            return [inner.truncate(v, k) for v, k in zip(snapped, self._shares(snapped))]
        keep = self.keep_mask(self.atoms(snapped))
        return [torch.where(keep[start:start + v.numel()].view_as(v), v, torch.zeros_like(v))
                for v, start in zip(snapped, self.offsets)]

    def project(self, values: Sequence[Tensor], tol: float = 0.0) -> list[Tensor]:
        inner = self._inner()
        return [inner.project(v, tol) for v in values]

    def violation(self, values: Sequence[Tensor], tol: float = 0.0) -> float:
        """Distance to the pool's budget set (all but the ``budget`` largest atoms over the tensors zero;
        tiny kept atoms are inside it), or without a budget to the snap at ``tol``."""
        if self.budget is not None and not self.entries:  # each matrix against its share, above its rounding
            inner = self._inner()
            return math.hypot(*[inner.budget_distance(v, k) for v, k in zip(values, self._shares(values))])
        target = self.snap(values, 0.0) if self.budget is not None else self.snap(values, tol)
        return float(torch.stack([(v - s).norm() for v, s in zip(values, target)]).norm())

    def infeasibility(self, values: Sequence[Tensor]) -> float:
        inner = self._inner()
        return float(torch.tensor([inner.infeasibility(v) for v in values]).norm())

    def induced_norm(self, values: Sequence[Tensor]) -> Tensor:
        inner = self._inner()
        return torch.stack([inner.induced_norm(v) for v in values]).sum()

    def dual_norm(self, grads: Sequence[Tensor]) -> Tensor:
        inner = self._inner()
        return torch.stack([inner.dual_norm(g) for g in grads]).amax()

    def prox(self, values: Sequence[Tensor], step: float) -> list[Tensor]:
        inner = self._inner()
        return [inner.prox(v, step) for v in values]

    def kkt_residual(self, values: Sequence[Tensor], grads: Sequence[Tensor], tol: float = 0.0,
                     quick: bool = False) -> float:
        inner = self._inner()
        parts = [inner.kkt_residual(v, g, tol) for v, g in zip(values, grads)]
        return float(torch.tensor(parts, dtype=torch.float64).norm())

    def structure(self, values: Sequence[Tensor], tol: float = 0.0) -> str:
        inner = self._inner()
        each = [inner.alive(v, tol) for v in values]
        budget = "" if self.budget is None else f", budget {self.budget}"
        if not self.entries:
            return (f"{self.kind} atoms {sum(each)} over {len(values)} tensors (per tensor "
                    f"{', '.join(map(str, each))}{budget})")
        total = sum(v.numel() for v in values)
        return (f"density {sum(each) / max(total, 1):.3g} ({sum(each)}/{total}{budget}; per tensor "
                f"{', '.join(map(str, each))})")

    def structure_key(self, value, tol: float) -> object:
        return tuple((self.atoms(list(value)) > tol).tolist())

    def compressed_structure(self) -> str | None:
        return self._inner().compressed_structure()


@acts_on_factors
def _land_pool_when_due(member: "PooledMember", inputs: tuple[Tensor, ...]) -> None:
    """Forward pre-hook of a pool's tensor: the pool lands all its tensors at once at the end of the
    ramp, and on the way the atoms a reading left out (`BudgetStrength.early_landing`); each tensor
    holds its landed atoms at 0 before every forward."""
    group = member.group
    what, early = member.policy.next_landing(group.budget, group.atom_total, lambda: moved_since_held(member, inputs))
    if what == "hold":
        with torch.no_grad():
            member.inner.hold_landed(inputs, member.landed_keep)
        held(member, inputs)
    elif what is not None:
        group.land_all(early)  # (every member, and marks them held; early None: the budget lands)


def _entries_are_atoms(kind: Constraint) -> bool:
    """Whether a kind's atoms are the entries of a tensor (so a pool's atoms are a concatenation)."""
    try:
        return kind.atoms(torch.ones(2, 3)).numel() == 6
    except (NotImplementedError, RuntimeError, ValueError):
        return False


class PooledMember(GroupMember):
    """The parametrization of one tensor of a pool: its own kind's factorisation (``inner``), the
    pool's λ and controller."""

    def __init__(self, group: Pooled, index: int, inner: Constraint, size: int) -> None:
        super().__init__(group, index)
        inner.policy = _Borrowed(group.policy)
        self.inner = inner
        self.factorizer = inner.factorizer
        if group.policy.schedule_of_budget() is not None:
            self.register_buffer("landed_keep", torch.ones(size, dtype=torch.bool))
            self.register_forward_pre_hook(_land_pool_when_due)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.group.kind

    @property
    def decayed(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.inner.decayed

    def unresolved_atoms(self, factors: tuple[Tensor, ...]) -> Tensor | None:
        return self.inner.unresolved_atoms(factors)

    def unresolved_entries(self, factors: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        return self.inner.unresolved_entries(factors)

    def hold_atoms(self, layer: tuple[Tensor, ...], keep: Tensor) -> None:
        self.inner.hold_atoms(layer, keep)

    def atoms(self, value: Tensor) -> Tensor:
        return self.inner.atoms(value)

    def top_dual_atoms(self, point: Tensor, count: int, reading: str = "point") -> Tensor:
        # the pool's readings ask each tensor's own kind: a matrix's leading singular values from its
        # tracked range, not every one from a full SVD (a pool of two 512 × 512 layers at r = 64: four full
        # SVDs a reading, 3.9× the plain step, before)
        return self.inner.top_dual_atoms(point, count, reading)

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:
        start = self.group.offsets[self.index]  # the pool's atoms: the tensors' atoms, concatenated
        if not self.group.entries:  # a matrix's factors decay as one, by its weight (`Pooled.scales`)
            return dropped[start].expand_as(factor)
        return self.inner.dropped_entries(slot, factor, dropped[start:start + factor.numel()])

    def forward(self, *factors: Tensor) -> Tensor:
        return self.inner.forward(*factors)

    def right_inverse(self, value: Tensor):
        return self.inner.right_inverse(value)

    def thin_factors(self, factors, rows=None):
        return self.inner.thin_factors(factors, rows)

    def balance(self, *factors: Tensor) -> float:
        return self.inner.balance(*factors)

    def extra_repr(self) -> str:
        return f"tensor {self.index} of a pooled budget of {self.group.budget}"


def _chosen_width(constraint: Constraint, width: int) -> Constraint:
    """``constraint`` with factors of the default ``width`` a pool chose for it (registration's warning
    says it was chosen)."""
    narrow = constraint.with_width(width)
    narrow.width_chosen = True
    return narrow
