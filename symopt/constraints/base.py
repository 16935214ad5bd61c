r"""The contract every constraint kind fulfils, and the helpers they share.

A constraint kind is a `torch.nn.Module` usable as a ``torch.nn.utils.parametrize``
parametrization: ``right_inverse(value)`` splits a tensor into *factors*, ``forward(*factors)``
rebuilds the tensor from them. The factorisation is chosen so that the loss gains a mirror
symmetry whose fixed subspace is the constraint set, and a weight decay $(λ/2)‖\mathrm{factor}‖^2$ on the
``decayed`` factors induces a norm penalty ``λ·induced_norm(value)`` (Ziyin, ICML 2024).

Registration, discovery and state_dict hooks live in `symopt.attach`; this layer is maths only.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
import functools
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _addindent

from .auto import watch_gradient
from .budget import RATE, check_land_on_the_way, check_total_steps
from .strength import Auto, BudgetStrength, Fixed, Landing, Strength, strength_policy

# Fallback scale for the non-zero factor of an all-zero tensor: with u = 1, v = 0 the factored
# gradient on w = u·v has the same scale as on the unfactored tensor.
_UNIT_SCALE = 1.0
# Random imbalance |u|/|v| = exp(±_IMBALANCE): a sign-balanced start (u = ±v) is conserved by
# gradient flow and forbids sign changes, which gives wrong solutions (THEORY.md §4).
_IMBALANCE = 0.5


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision used for factorisations (SVD, QR): at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class Factorizer:
    """Deterministic source of the random signs / imbalances used by ``right_inverse``.

    Stores a seed and a call counter (not a ``torch.Generator``) so constraints deepcopy and pickle;
    numbers are drawn on the CPU so a factorisation is the same on every device.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.calls = 0

    def generator(self) -> torch.Generator:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        return gen

    def signs_and_jitter(self, shape: torch.Size, like: Tensor) -> tuple[Tensor, Tensor]:
        """Random ±1 signs and log-uniform factors in ``[e^-0.5, e^0.5]``, shaped like ``shape``."""
        gen = self.generator()
        signs = torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8) * 2 - 1
        jitter = torch.empty(tuple(shape), dtype=torch.float64).uniform_(
            -_IMBALANCE, _IMBALANCE, generator=gen
        ).exp()
        return (
            signs.to(device=like.device, dtype=like.dtype),
            jitter.to(device=like.device, dtype=like.dtype),
        )


def zero_scale(magnitudes: Tensor) -> Tensor:
    """Scale given to the live factor of a zero entry: typical magnitude of the others, or 1."""
    nonzero = magnitudes[magnitudes > 0]
    if nonzero.numel() == 0:
        return magnitudes.new_tensor(_UNIT_SCALE)
    return nonzero.square().mean().sqrt()


def random_gate(magnitudes: Tensor, factorizer: Factorizer) -> Tensor:
    r"""Gate ``g`` for non-negative magnitudes ``m``: random sign, $|g| = \mathrm{sqrt}(m)·\mathrm{jitter}$.

    The other factor is ``value / g``. Where $m = 0$ the gate takes the typical scale instead,
    so the other factor is 0 but still receives gradient.
    """
    roots = magnitudes.sqrt()
    signs, jitter = factorizer.signs_and_jitter(magnitudes.shape, magnitudes)
    return signs * torch.where(magnitudes > 0, roots, zero_scale(roots)) * jitter


def split_product(value: Tensor, factorizer: Factorizer) -> tuple[Tensor, Tensor]:
    r"""Hadamard split $\mathrm{value} = u ⊙ v$ with independent (not sign-balanced) factors.

    Zero entries get $u ≠ 0, v = 0$: the point is on the mirror plane but ``v`` has a non-zero
    gradient $g·u$, so the entry can leave zero if the loss asks for it.
    """
    gate = random_gate(value.abs(), factorizer)
    return gate, value / gate


@dataclass(frozen=True)
class Face:
    r"""The face of the induced norm on which a point lies, in smooth coordinates.

    On the set of tensors with the same structure as the point (the same support and signs, the
    same alive groups, the same rank), the induced norm is smooth near the point, so
    $\mathrm{loss}(θ) + λ‖θ‖$ restricted to that set is a smooth problem in few variables: a quasi-Newton
    method solves it to rounding, where the factored descent converges only linearly (its zeros arrive
    geometrically). [`solve`][symopt.solve] uses it to finish; the KKT residual of the full problem
    then certifies the result.

    Attributes:
        start: the point's coordinates on the face (tensors, each free to move).
        embed: coordinates → θ (a tensor of the constrained shape).
        norm: coordinates → the induced norm of ``embed(*coordinates)``, smooth near ``start``.
        crossed: coordinates → bool mask (θ's shape) of the atoms that left the face through
            zero, where ``norm`` stops being the induced norm (Sparse: an entry whose sign
            flipped). The polish sets them to 0 and solves again on the smaller face. None: the
            kind's face norm stays exact (a group or a singular value shrinks to 0, it cannot flip).
        mask: where the face is a set of θ's entries: the boolean mask (θ's shape) whose entries
            ``embed`` fills from its one coordinate tensor, in ``θ[mask]``'s order (the others 0).
            The polish then asks the loss for its curvature on those entries instead of
            differentiating twice. None for other faces (a low-rank face's factors).
        variational_norm: coordinates → a smooth upper bound of ``norm`` that equals it at ``start``
            and whose minimum over the coordinates embedding the same θ is ``norm`` (a variational
            form: a low-rank face's ½Σ(‖a_i‖² + ‖b_i‖²), `LowRank.face`), cheaper to evaluate and
            differentiate. The face's first-order solve (L-BFGS, many evaluations) minimises it in
            place of ``norm``: the face problem's minimum is the same. Newton on the face keeps
            ``norm``. None: ``norm`` serves both.
    """

    start: tuple[Tensor, ...]
    embed: Callable[..., Tensor]
    norm: Callable[..., Tensor]
    crossed: Callable[..., Tensor] | None = None
    mask: Tensor | None = None
    variational_norm: Callable[..., Tensor] | None = None


def largest(sizes: Tensor, k: int) -> Tensor:
    """Bool mask (flat) of the ``k`` largest of ``sizes``: the atoms a budget of ``k`` keeps."""
    flat = sizes.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, min(k, flat.numel())).indices] = True
    return keep


def largest_in_parts(sizes: Tensor, k: int, parts: Sequence[int], floor: int = 1) -> Tensor:
    """Bool mask of the ``k`` largest ``sizes`` (flat, the concatenation of ``parts`` of those lengths),
    except that every part keeps at least ``floor`` (0 or 1) of its own: a part left without one takes
    its largest in place of the smallest kept entry of a part that keeps several. A global budget over
    a network's layers uses it: a layer with no channel or rank 0 cuts the network, which a ranking
    across layers of different scales can otherwise ask for. ``k`` must be at least ``len(parts)``."""
    keep = largest(sizes, k)
    if floor == 0 or len(parts) < 2:
        return keep
    flat = sizes.reshape(-1)
    starts = [sum(parts[:j]) for j in range(len(parts))]
    for start, size in zip(starts, parts):
        if size == 0 or keep[start:start + size].any():
            continue
        giving = torch.cat([torch.full((n,), bool(keep[a:a + n].sum() > 1), device=keep.device)
                            for a, n in zip(starts, parts)])
        candidates = torch.where(keep & giving, flat, torch.full_like(flat, float("inf")))
        keep[int(candidates.argmin())] = False
        keep[start + int(flat[start:start + size].argmax())] = True
    return keep


def equal_in_parts(sizes: Tensor, k: int, parts: int) -> Tensor:
    """Bool mask of ``k`` of ``sizes`` (flat, ``parts`` equal runs) with each run keeping its largest ``k // parts``;
    the ``k % parts`` left over go to the runs whose next largest is largest. A mixture's experts under one budget
    keep equal counts so (``group_sparse(..., equal_experts=True)``): their fused tensors hold one width for all.

    Examples:
        >>> equal_in_parts(torch.tensor([9., 8, 7, 1, 2, 3]), 3, 2).tolist()   # 1 each, and run 0's 8 beats run 1's 2
        [True, True, False, False, False, True]
    """
    rows = sizes.reshape(parts, -1)
    base, extra = divmod(k, parts)
    order = rows.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    keep = rank < base
    if extra and base < rows.shape[1]:
        following = rows.gather(1, order[:, base:base + 1]).reshape(-1)
        winners = following.topk(extra).indices
        keep[winners] |= rank[winners] == base
    return keep.reshape(-1)


def equal_in_layers(sizes: Tensor, k: int, parts: int, layers: Sequence[int]) -> Tensor:
    """Bool mask of about ``k`` of ``sizes`` (flat: ``layers`` runs of those lengths, each of ``parts`` equal runs, a
    layer's experts) where every part of a layer keeps the same count. A layer's *slot* r is the r-th largest entry
    of each of its parts, scored by their mean; the ``k // parts`` best slots over all the layers (each layer one at
    least: `largest_in_parts`) say how many each layer's parts keep, and each part keeps its largest that many
    (`equal_in_parts`; one layer: ``k`` exactly). A count between multiples of ``parts`` keeps the multiple below it.

    Examples:
        >>> first = torch.tensor([9., 1, 8, 1])            # 2 parts of 2: slot means 8.5, 1
        >>> second = torch.tensor([5., 4, 5, 4])           # slot means 5, 4
        >>> equal_in_layers(torch.cat([first, second]), 6, 2, [4, 4]).tolist()
        [True, False, True, False, True, True, True, True]
    """
    if len(layers) == 1:
        return equal_in_parts(sizes, k, parts)
    pieces = sizes.reshape(-1).split(list(layers))
    slots = [piece.view(parts, -1).sort(dim=1, descending=True).values.mean(dim=0) for piece in pieces]
    chosen = largest_in_parts(torch.cat(slots), max(k // parts, len(pieces)), [s.numel() for s in slots])
    counts = [int(c.sum()) for c in chosen.split([s.numel() for s in slots])]
    return torch.cat([equal_in_parts(piece, parts * count, parts) for piece, count in zip(pieces, counts)])


def entering(excess: Tensor, alive: int) -> Tensor:
    """Which zero atoms a face admits, given ``excess`` (per atom: how far its optimality
    condition fails, ≤ 0 where it holds or the atom is alive): the worst violators, at most a quarter
    of the ``alive`` count and at least one (more means the structure itself is not found yet)."""
    flat = excess.reshape(-1)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if flat.numel() == 0 or float(flat.max()) <= 0:  # (the usual case at a certified point: none violates)
        return chosen.view_as(excess)
    top = torch.topk(flat, min(max(1, alive // 4), flat.numel()))
    chosen[top.indices[top.values > 0]] = True
    return chosen.view_as(excess)


@dataclass(frozen=True)
class Example:
    """A small instance of a kind, for the conformance suite (``tests/test_conformance.py``).

    Attributes:
        make: builds a fresh constraint object (one per registration).
        shapes: the shape of each tensor it constrains (several for a kind with ``multi_tensor``).
        draw: turns a standard normal tensor into a value the factors represent exactly (e.g.
            ``abs`` for a kind whose values are non-negative); None for any value.
    """

    make: Callable[[], "Constraint"]
    shapes: tuple[tuple[int, ...], ...]
    draw: Callable[[Tensor], Tensor] | None = None  # maps a standard normal draw into the kind's domain


# Every kind, by its ``kind`` name, filled by the class statement of each kind's own file (see
# ``Constraint.__init_subclass__``). Layers above ask it instead of listing kinds.
KINDS: dict[str, type["Constraint"]] = {}


class Constraint(nn.Module):
    r"""Base class of the constraint kinds (a parametrization for ``torch.nn.utils.parametrize``).

    A kind writes the constrained tensor θ as a function of factors whose loss has a mirror
    symmetry $R = I - 2nn^\top$ with fixed subspace the constraint; the decay ``(λ/2)‖decayed
    factors‖²`` then induces the kind's norm penalty. The contract has two halves, each kind
    implementing what it has (see [`PenaltyHalf`][symopt.constraints.base.PenaltyHalf] and
    [`FeasibleHalf`][symopt.constraints.base.FeasibleHalf]):

    * **factors** — ``forward(*factors)``, ``right_inverse(value)``, ``decayed`` (indices of the
      decayed factors), ``balance(*factors)``, ``validate(tensor, name)``;
    * **penalty half** — ``induced_norm``, ``dual_norm``, ``prox``, ``kkt_residual``, ``face``;
    * **feasible half** — ``project`` (onto the set, or the structure at ``tol`` for penalty kinds),
      ``infeasibility`` (distance to the promised set: 0 where nothing is promised), and, for the
      exact-penalty kinds (``linear``), the threshold: λ above ``dual_norm`` of the loss gradient
      holds the set exactly.

    Capabilities that layers above ask instead of switching on the kind: ``multi_tensor`` (the
    constraint acts on several tensors at once, a tie), ``atom_ids`` (the atoms working sets
    grow), ``working_width`` / ``with_width`` (narrow factors for the solver), ``fixed_rank`` (a
    rank bound a Riemannian baseline can take), ``structure_key`` (what "the same structure" means),
    ``compressed_structure`` (which export rewrite realises it), ``objective_term`` (what the
    penalised objective adds).

    λ belongs to a [`Strength`][symopt.constraints.strength.Strength] policy (``self.policy``):
    fixed, ``"auto"``, budget, or scheduled; ``strength`` reads it.

    Args:
        strength: λ (> 0); ``"auto"`` for the linear kinds; a ``Strength`` policy; None for the
            kind's default.
        seed: seed of the factor initialisation (random signs and imbalance: never balanced).
        margin: ``"auto"`` keeps $λ = \mathrm{margin} ×$ the multiplier estimate (> 1).
        budget: ``("count", k)`` or ``("density", f)``: the atom budget, for the kinds that take one.
        adapt_rate: fraction of the way log λ moves toward the budget's target per step.
        total_steps: the steps until training ends (backward passes; optimizer steps under
            `symopt.bind`). The budget then arrives on a schedule and lands: no decay before
            ``ramp[0]·total_steps``, the cubic schedule of gradual pruning down to the budget until
            ``ramp[1]·total_steps``, where the dropped atoms are put on their mirror's fixed subspace
            and held there (exactly 0 whatever the optimizer); see ``BudgetStrength``.
        ramp: ``(start, end)`` of that schedule as fractions of ``total_steps`` (default (0.1, 0.75)).
        land_on_the_way: whether the ramp also lands, at each reading, the atoms ranked beyond 1.5 × the
            scheduled count (`BudgetStrength.lands_early`). None: the kind's default, True where its
            atoms own their factors' entries (sparsity, groups, channels, heads), False for rank
            budgets. False keeps every atom until the end of the ramp: an atom still forming from a
            small start is then not cut on the way.

    Examples:
        >>> import torch, symopt
        >>> c = symopt.Sparse(strength=0.5)
        >>> w = torch.tensor([3.0, -4.0])
        >>> float(c.induced_norm(w)), float(c.dual_norm(w)), c.linear
        (7.0, 4.0, False)
    """

    kind: ClassVar[str] = "constraint"
    linear: ClassVar[bool] = False  # the set is a linear subspace held exactly above the multipliers
    decayed: ClassVar[tuple[int, ...]] = ()
    multi_tensor: ClassVar[bool] = False  # acts on a list of tensors (their values stacked)
    quick_kkt: ClassVar[bool] = False  # whether kkt_residual(quick=True) can differ from the exact residual
    slot: ClassVar[int] = 0  # which running multiplier estimate this parametrization feeds (a tie: its copy)

    def __init_subclass__(cls, register: bool = True, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if register and "kind" in cls.__dict__ and "example" in cls.__dict__:
            KINDS.setdefault(cls.kind, cls)
        own = cls.__dict__.get("right_inverse")
        if own is not None and not getattr(own, "_checks_assignment", False):
            # Every assignment (module.weight = value, a plain checkpoint's load) goes through
            # right_inverse: check the value first, whichever kind, so a wrong one changes nothing.
            @functools.wraps(own)
            def right_inverse(self, value, _own=own):
                self.check_assignment(value)
                return _own(self, value)

            right_inverse._checks_assignment = True
            cls.right_inverse = right_inverse

    def check_assignment(self, value) -> None:
        """Refuse a value this registered constraint cannot take (before anything changes): not a
        tensor, another shape, dtype or device than the registered tensor, or NaN / Inf."""
        where = f"'{self.attached_to}'" if self.attached_to else type(self).__name__
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: assign a tensor, got {type(value).__name__}")
        shape, like = getattr(self, "registered_shape", None), getattr(self, "assign_like", None)
        if shape is not None and like is not None:
            dtype, device = like.dtype, like.device
            if tuple(value.shape) != shape:
                raise ValueError(f"{where} is constrained with shape {shape}; the assigned tensor has shape "
                                 f"{tuple(value.shape)}. A constrained tensor keeps its shape: finalize it first "
                                 "to change the layer")
            if value.dtype != dtype or value.device != device:
                raise ValueError(f"{where} is {dtype} on {device}; the assigned tensor is {value.dtype} on "
                                 f"{value.device}: convert it with .to(dtype={dtype}, device='{device}')")
        if value.device.type != "meta" and value.numel() and not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"{where}: the assigned tensor holds NaN or Inf; a factorisation would spread them")

    def __init__(self, strength: float | str | Strength | None, *, seed: int = 0, margin: float = 1.5,
                 budget: tuple[str, float] | None = None, adapt_rate: float = RATE, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75), land_on_the_way: bool | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        schedule = check_total_steps(total_steps, ramp, owner)
        on_the_way = check_land_on_the_way(land_on_the_way, schedule if budget is not None else None,
                                           self.trims_decay, owner)
        lands_set = schedule is not None and budget is None and self.linear
        if schedule is not None:
            if budget is None and not self.linear:
                raise ValueError(f"{owner}: total_steps schedules a budget; give one (max_nonzero=, density=, "
                                 "max_groups=, target_rank=), or use strength=symopt.Scheduled(...) for λ")
            if isinstance(strength, Strength):
                raise ValueError(f"{owner}: total_steps builds the policy of the budget (or of the landing); "
                                 "do not pass a Strength too")
            if not lands_set and type(self).land is Constraint.land:
                raise ValueError(f"{owner}: this kind cannot land a budget (no `land`); drop total_steps")
        self.policy = strength_policy(strength, linear=self.linear, budget=budget is not None, margin=margin,
                                      rate=adapt_rate, owner=owner, schedule=None if lands_set else schedule)
        if lands_set:  # an exact-penalty set that lands at the end of the ramp (strength.Landing)
            self.policy = Landing(self.policy, schedule)
        elif schedule is not None:
            # kinds whose atoms own their factors' entries trim the decay and land atoms on the way
            self.policy.trims = self.trims_decay
            self.policy.lands_early = on_the_way
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{owner}: seed must be an int, got {type(seed).__name__}")
        self.factorizer = Factorizer(int(seed))
        self.attached_to: str | None = None  # qualified name once registered (one tensor per object)
        # budget: ("count", k) or ("density", f); the count k is fixed by validate() once the shape is known
        self.budget_spec = budget
        self.budget: int | None = int(budget[1]) if budget is not None and budget[0] == "count" else None
        self.register_forward_hook(watch_gradient)
        if lands_set and not self.multi_tensor:  # a tie's later copies get this hook (Tied.member)
            self.register_forward_pre_hook(land_set_when_due)
        elif schedule is not None and not lands_set:
            self.register_forward_pre_hook(_land_when_due)
        self._register_load_state_dict_pre_hook(_rename_policy_keys)

    @classmethod
    def example(cls) -> Example:  # pragma: no cover - each registered kind defines its own
        """A small instance for the conformance suite."""
        raise NotImplementedError

    # -- λ ----------------------------------------------------------------------------------------
    @property
    def owner(self) -> "Constraint":
        """The object that holds this parametrization's λ and identity (a tie's copies: their group)."""
        return self

    @property
    def watching(self) -> bool:
        """Whether λ follows the gradients (``"auto"``, budgets, schedules)."""
        return self.policy.watching

    @property
    def auto(self) -> bool:
        r"""Whether λ is $\mathrm{margin} ×$ a multiplier estimate (``strength="auto"``)."""
        return isinstance(self.policy, Auto)

    @property
    def adaptive(self) -> bool:
        """Whether λ is adapted to a budget."""
        return isinstance(self.policy, BudgetStrength)

    @property
    def margin(self) -> float | None:
        return getattr(self.policy, "margin", None)

    @property
    def strength(self) -> float:
        r"""λ: the given number; with ``strength="auto"`` $\mathrm{margin} ×$ the multiplier estimate; with a
        budget the controller's λ (0 until the first backward pass if no starting strength was given)."""
        return self.policy.value()

    @strength.setter
    def strength(self, value: float) -> None:
        """Fix λ: stops ``"auto"`` and budget adaptation (a budget still decides the final snap)."""
        self.policy = self.policy.handover(Fixed(value, type(self).__name__))

    def multiplier(self) -> float | None:
        """The running multiplier estimate (``strength="auto"`` only)."""
        return self.policy.multiplier()

    def thin_factors(self, factors: Sequence[Tensor], rows: int | None = None) -> tuple[Tensor, Tensor] | None:
        r"""``(L, R)`` with θ's matrix view (θ.reshape(θ.shape[0], -1)) equal to $L R^\top$, taken from the
        ``factors`` as they are, where their inner width r is small enough that two thin products cost
        less than forming θ and applying it (`LowRank`'s factors), for ``rows`` rows of input (a batch's
        rows, or positions of a convolution's output; None: however many); None (the default) where not. A layer then
        computes its output through the two factors and never forms θ (`attach`: an ``nn.Linear`` as
        $x R L^\top$, a convolution as a convolution with r output channels, kernel $R^\top$, then a 1 × 1
        one with L). The tensors are the factors themselves, so a landing that changes them in place (a
        forward pre-hook marked `acts_on_factors`) may run in between."""
        return None

    def observe(self, grad: Tensor, value: Tensor | None = None) -> None:
        """Called with $∂ℓ/∂θ$ on each backward pass by the gradient hook: hands it to the strength
        policy (a multiplier estimate, a budget controller, a schedule's step count)."""
        if value is not None:
            self.policy.observe(self, value, grad)

    # -- budgets --------------------------------------------------------------------------------
    def resolve_budget(self, atoms: int, name: str, unit: str, holder: str = "the tensor has") -> None:
        """Fix the budget's atom count for a tensor with ``atoms`` atoms (called by ``validate``); ``holder``
        says what bounds them in the error (``"the tensor has"``, or e.g. the factors' width)."""
        if self.budget_spec is None:
            return
        how, amount = self.budget_spec
        owner = type(self).__name__
        k = density_count(amount, atoms) if how == "density" else int(amount)
        if k >= atoms:
            raise ValueError(
                f"{owner} on '{name}': a budget of {k} {unit} does not bind — {holder} only {atoms}; "
                f"give fewer than {atoms}, or no budget"
            )
        self.budget = k
        self.atom_total = atoms
        if self.policy.schedule_of_budget() is not None:
            # Which atoms the landing kept (all until it happens): a buffer, so a resumed run holds them too.
            self.register_buffer("landed_keep", torch.ones(atoms, dtype=torch.bool))

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:  # pragma: no cover - budget kinds
        """Put the factors of every atom outside ``keep`` (a bool mask over ``atoms``) on the fixed
        subspace of its mirror symmetry, in place: those atoms are then exactly 0 and stay 0 under any
        gradient method. Kinds with budgets define it (a budget with ``total_steps`` needs it)."""
        raise NotImplementedError

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Tensor, size: Tensor) -> None:
        r"""Put the atoms in ``which`` (a bool mask over ``atoms``) at ``size`` (per atom, ≥ 0), in place,
        along the direction in which the loss gradient ``grad`` (of θ's shape) falls fastest off
        zero, with balanced factors (the factorisation that attains the induced norm).

        At the mirror's fixed point the factors' gradient is 0 whatever $∂ℓ/∂θ$ says (for
        $θ_i = u_i v_i$ it is $(g_i v_i, g_i u_i)$), and near it an atom that should grow does so
        only at the rate $\mathrm{lr}(|g_i| - λ)$ per step, from wherever the decay left it. This
        is the step the factors cannot take: one proximal step's direction from θ = 0, with the
        size chosen by the caller ([`symopt.regrow`][symopt.regrow]). Kinds that can regrow an
        atom define it."""
        raise NotImplementedError

    def hold_landed(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        """After the landing, before every forward: put the dropped atoms' factors back on the fixed
        subspace. Gradients never move them off it, but an optimizer's momentum (SGD's buffer, Adam's
        averages, built before the landing) would, for a while. Also asked of tensors shaped like the
        factors (the optimizer's state, once after each landing: `hold_state_at_next_step`), so it only
        zeroes. Default: ``land`` again (a kind whose ``land`` does more, as low rank's rotation, overrides it)."""
        self.land(factors, keep)

    def held_mask(self, keep: Tensor, like: Tensor) -> Tensor:
        """``keep`` (bool) as 1.0 / 0.0 in ``like``'s shape and dtype, for `hold_landed` to multiply a
        factor by (`from_landing_mask`). ``factor.mul_(mask)`` costs a twentieth of
        ``factor.masked_fill_(~keep, 0)`` (a 512 × 512 float32 factor: 17 against 330 µs on this CPU;
        forming the float mask is most of the rest)."""
        return self.from_landing_mask(keep, "mask", (like.dtype, like.device),
                                      lambda: keep.view_as(like).to(like.dtype))

    def from_landing_mask(self, keep: Tensor, name: object, like: object, make: Callable[[], object]):
        """``make()``, something derived from the landing mask ``keep`` (``name`` says what; or from another
        mask asked on every step: a reading's dropped atoms, `decay_mask`), formed once and kept while
        ``keep`` is unchanged (the same tensor, the same version counter) and ``like`` (what else it depends
        on: a dtype, a device) is equal: a landing mask is held before every forward, and deriving it anew
        each time cost that forward (a float mask; on a GPU, a count read to the host is a synchronisation)."""
        cache = self.__dict__.setdefault("_from_landing_mask", {})
        cached = cache.get(name)
        if cached is None or cached[0] is not keep or cached[1] != keep._version or cached[2] != like:
            cached = cache[name] = (keep, keep._version, like, make())
        return cached[3]

    # How often symopt.regrow decides about this kind's atoms by default (optimizer steps).
    regrowth_every: int = 10

    @property
    def can_regrow(self) -> bool:
        """Whether [`symopt.regrow`][symopt.regrow] can serve this constraint: its kind seeds an atom off
        zero (``seed_atoms``) and holds one on it (``hold_atoms``)."""
        kind = type(self)
        return kind.seed_atoms is not Constraint.seed_atoms and (
            kind.hold_atoms is not Constraint.hold_atoms or kind.land is not Constraint.land)

    def atom_sizes(self, factors: tuple[Tensor, ...], value: Tensor, held: Tensor | None = None) -> Tensor:
        r"""The atoms' sizes as [`regrow`][symopt.regrow] sees them, one per slot of its ``held`` mask
        (0 for a held slot). Default ``atoms(value)``: each atom has its own entries of the factors
        (an entry of $u ⊙ v$, a group's gate), its slot. ``held``: the slots held at zero (None: none)."""
        return self.atoms(value).reshape(-1)

    def largest_atom(self, factors: tuple[Tensor, ...], sizes: Tensor) -> float:
        """The largest atom of the value the factors make (``sizes`` from `atom_sizes`): the scale of
        [`regrow`][symopt.regrow]'s "near zero" and of its seeds. Default ``sizes.max()``."""
        return float(sizes.max())

    def isolate_small_atoms(self, factors: tuple[Tensor, ...], held: Tensor, sizes: Tensor, small: float):
        r"""``(near, move)``: the slots that hold the atoms of size ≤ ``small`` (``sizes`` from
        `atom_sizes`), after moving the factors, in place, so that those atoms have slots of their own,
        which a snap can put on the mirror's fixed point exactly: along the parametrisation's symmetry
        (θ and the penalty unchanged), and for a kind that cannot reach such slots by the symmetry
        alone, also removing the small atoms' part of θ first (what the snap removes anyway).
        ``move`` is None when nothing moved (the default: the atoms are slots already), else
        ``move(layer, squared)``, which moves a tuple of factor-shaped tensors (gradients, an
        optimizer's state) the same way, in place: ``squared`` for a second-moment estimate (Adam's
        ``exp_avg_sq``), moved so that it stays non-negative."""
        return sizes <= small, None

    def atom_pulls(self, factors: tuple[Tensor, ...], grad: Tensor, near: Tensor) -> Tensor:
        r"""The pull of the loss gradient ``grad`` (θ's shape) on each slot of ``atom_sizes``, compared
        with λ: a slot in ``near`` (near zero or held there) is snapped below λ and seeded above it.
        Default ``dual_atoms(grad)``: each atom's pull is its own. A kind whose atoms share their pull
        (singular directions: the slots near zero share the gradient's part orthogonal to the live
        ones) ranks it over the ``near`` slots; other slots' values are not read."""
        return self.dual_atoms(grad).reshape(-1)

    def unresolved_atoms(self, factors: tuple[Tensor, ...]) -> Tensor | None:
        """Which atoms to keep, as a bool mask for `hold_atoms`: False where the atom's value is below the
        factors' dtype's smallest normal number (subnormal or 0), which `symopt.decay.flush_unresolved`
        puts on the mirror's fixed point. None (the default): the kind does not say, nothing is flushed."""
        return None

    def unresolved_entries(self, factors: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        """Which entries of each factor to keep, one bool mask shaped like each factor: False where every term of
        θ the entry enters is below the factors' dtype's smallest normal number, which
        `symopt.decay.flush_unresolved` sets to 0 (with its gradient and first moments). For kinds whose
        factors' entries shrink one by one where the loss no longer pulls them (a low-rank factor's row for an
        input or output unit that carries no gradient), not atom by atom. None (the default): the kind does
        not say, or its atoms (`unresolved_atoms`) cover it."""
        return None

    def hold_atoms(self, layer: tuple[Tensor, ...], keep: Tensor) -> None:
        """Put the slots outside ``keep`` on the mirror's fixed point in a tuple of factor-shaped tensors
        (the factors, their gradients, an optimizer's state), in place. Default: ``land``."""
        self.land(layer, keep)

    def atoms(self, value: Tensor) -> Tensor:  # pragma: no cover - budget kinds override
        """Sizes of the terms of the induced norm (|entries|, group norms, σ) as a 1-d tensor."""
        raise NotImplementedError

    def dual_atoms(self, grad: Tensor) -> Tensor:
        r"""The pull of a loss gradient on each atom at zero, compared with λ: an atom at zero wants to
        leave it when its dual atom exceeds λ (``dual_norm`` is their maximum). The size of the atoms
        of $-g$ (the direction of steepest descent), as λ sees them: ``atoms(-grad)`` unless the
        atoms are weighted (a weighted group's is $‖g_g‖_2 / c_g$). For a symmetric norm the sign
        does not matter; for the orthant's (`NonNegative`) it does: $(-g_i)^+$."""
        return self.atoms(_negated(grad))

    def top_dual_atoms(self, point: Tensor, count: int, reading: str = "point") -> Tensor:
        r"""A 1-d tensor holding at least the ``count`` largest atoms of a point-like tensor as λ sees
        them (``dual_atoms(-point)``: a point θ, or the proximal score $θ/t - ∇ℓ$ of a budget), in any
        order; by default all of them (the caller selects). A budget asks this of every backward
        pass and needs only the k + 1 largest, so a kind whose atoms are costly to compute (singular
        values) computes the leading ones alone. ``reading`` names which of a budget's two matrices
        ``point`` is (``"point"``: θ; ``"score"``: the proximal score), so that a kind that tracks a
        subspace from one reading to the next (`LowRank`) keeps one for each."""
        return self.dual_atoms(_negated(point)).reshape(-1)

    def truncate(self, value: Tensor, k: int) -> Tensor:  # pragma: no cover - budget kinds override
        """``value`` with all but its ``k`` largest atoms set to zero."""
        raise NotImplementedError

    def atom_count(self, value: Tensor) -> int:
        """How many atoms a tensor like ``value`` has (a budget's largest possible count)."""
        return self.atoms(value.detach()).numel()

    def alive(self, value: Tensor, tol: float = 0.0) -> int:
        """How many atoms of ``value`` are above ``tol`` (and above the value's rounding, where a kind
        knows it): the count a budget is measured against."""
        return int((self.atoms(value.detach()) > tol).sum())

    def budget_distance(self, value: Tensor, k: int) -> float:
        """How far ``value`` is from having at most ``k`` atoms (what ``finalize`` compares with its
        ``tol``). A kind whose value carries rounding that is not structure (a float32 product
        $UV^\top$ has trailing singular values of order σ_max·eps) discounts it."""
        return float((value - self.truncate(value, k)).norm())

    #: whether each atom is a Hadamard pair ``θ_i = u_i v_i`` (asked by ``symopt.noise_collapse``)
    hadamard_atoms: ClassVar[bool] = False

    def keep_mask(self, atoms: Tensor) -> Tensor:
        """Which atoms a landing keeps (bool, flat over ``atoms``): the ``budget`` largest. A kind whose
        budget has a shape (N:M sparsity: the N largest of every M) overrides it."""
        return largest(atoms, self.budget)

    def snap(self, value: Tensor, tol: float = 0.0) -> Tensor:
        """``project(value, tol)``, then, with a budget, only its ``budget`` largest atoms kept."""
        out = self.project(value, tol)
        return out if self.budget is None else self.truncate(out, self.budget)

    @property
    def binding(self) -> bool:
        """Whether the constraint promises a set that ``finalize`` must reach (a linear set, or a
        budget), rather than a penalty whose structure is whatever training found."""
        return self.linear or self.budget is not None

    # -- the contract ---------------------------------------------------------------------------
    def validate(self, tensor: Tensor, name: str) -> None:
        """Raise ``ValueError``/``TypeError`` if this constraint cannot act on ``tensor``."""

    def penalty(self, *factors: Tensor) -> Tensor:
        r"""Decay on the factors, $(λ/2)·\sum_{\text{decayed}} ‖\mathrm{factor}‖^2$; at balanced factors it equals
        ``λ·induced_norm(forward(*factors))``. During the ramp of a trimmed budget only the entries of
        `decay_mask` count: the trimmed norm (`symopt.constraints.strength.BudgetStrength`)."""
        total = 0.0
        for i in self.decayed:
            square = factors[i].square()
            mask = self.decay_mask(i, factors[i])
            total = total + (square.sum() if mask is None else (square * mask).sum())
        return 0.5 * self.strength * total

    #: whether a landing budget of this kind may decay only the factors of the atoms it is dropping,
    #: during its ramp (it defines `dropped_entries`); the trimmed norm then spares the atoms it keeps
    trims_decay: ClassVar[bool] = False

    def dropped_entries(self, slot: int, factor: Tensor, dropped: Tensor) -> Tensor:  # pragma: no cover - trimming kinds
        """``dropped`` (1.0 for an atom the decay acts on, 0.0 for one it spares, over the budget's
        atoms in ``atoms`` order) laid out over decayed factor number ``slot`` (the tensor ``factor``):
        a tensor of ``factor``'s shape, a view where it can be (it is read on every step). Kinds with
        ``trims_decay`` define it."""
        raise NotImplementedError

    def decay_mask(self, slot: int, factor: Tensor) -> Tensor | None:
        """Which entries of decayed factor ``slot`` the decay acts on now: None for all of them (always,
        except while a budget trims its decay), else 1.0 / 0.0 in ``factor``'s shape and dtype (all 0
        before the first reading of the ramp has said which atoms are dropped)."""
        policy = self.policy
        return self.trimmed_decay_mask(slot, factor, policy.dropped_atoms()) if policy.trimming() else None

    def trimmed_decay_mask(self, slot: int, factor: Tensor, dropped: Tensor | None) -> Tensor:
        """`decay_mask` while the budget trims its decay, given its policy's ``dropped_atoms()`` (None
        before the first reading of the ramp: all 0). The optimizer's step pre-hook asks the policy once
        per step and lays each factor's mask out here (`symopt.decay.decay_dropped_atoms`)."""
        if dropped is None:
            return torch.zeros_like(factor)
        # (asked on every step, changed only by a reading: laid out once per reading and factor; a unit
        # group's layout is a gather, and on a dispatch-bound step each operator costs ~10 µs)
        return self.from_landing_mask(dropped, ("decay", slot), (factor.shape, factor.dtype, factor.device),
                                      lambda: self.dropped_entries(slot, factor, dropped.to(device=factor.device,
                                                                                              dtype=factor.dtype)))

    def pullback(self, factors: tuple[Tensor, ...] | list[Tensor], grad: Tensor) -> tuple[Tensor, ...]:
        r"""The factors' gradients of $\langle \mathrm{grad}, \mathrm{forward}(\mathrm{factors})\rangle$: the
        vector-Jacobian product of ``forward``, i.e. $∂\mathrm{loss}/∂\mathrm{factors}$ given
        $\mathrm{grad} = ∂\mathrm{loss}/∂θ$. The solver's lean descent (`symopt.solver.flat`) asks it;
        this default differentiates ``forward`` by autograd, and a kind whose product has a short
        closed form (``u ⊙ v``, ``U Vᵀ``) overrides it to skip the graph."""
        with torch.enable_grad():
            leaves = [f.detach().requires_grad_() for f in factors]
            grads = torch.autograd.grad(self.forward(*leaves), leaves, grad, allow_unused=True)
        return tuple(torch.zeros_like(f) if g is None else g for f, g in zip(factors, grads))

    def violation(self, value: Tensor, tol: float = 0.0) -> float:
        """With a budget: the Euclidean distance from ``value`` to the budget's set (all but the
        ``budget`` largest atoms zero; tiny kept atoms are inside the set, so they do not count).
        Without: the distance to its snap (atoms ``<= tol`` zeroed)."""
        if self.budget is not None:
            return float((value - self.truncate(value, self.budget)).norm())
        return float((value - self.snap(value, tol)).norm())

    def infeasibility(self, value: Tensor) -> float:
        """Distance from ``value`` to the set the constraint promises: the linear set of an exact
        penalty, a hard set built into the factors (0 when every factorised value is in it); 0 for a
        pure penalty, which promises no set."""
        return float((value - self.project(value)).norm()) if self.linear else 0.0

    def objective_term(self, value: Tensor) -> Tensor:
        """What the penalised objective adds to the loss: ``λ·induced_norm`` for penalty kinds; 0 for
        the linear kinds, whose problem is the loss on the set."""
        return value.new_zeros(()) if self.linear else self.strength * self.induced_norm(value)

    def prox(self, value: Tensor, step: float) -> Tensor:
        """``argmin_x ½‖x − value‖² + step·λ·induced_norm(x)``; the projection for linear kinds."""
        return self.project(value)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        r"""Distance of $-\mathrm{grad}$ (gradient of the smooth loss at ``value``) to ``λ·∂induced_norm``
        for the penalty kinds; for linear kinds, the norm of the gradient projected onto the
        constraint set (0 at the constrained optimum). 0 certifies optimality on convex losses.
        ``quick=True`` allows a cheaper estimate that may fall short of the exact residual (kinds
        with ``quick_kkt``: LowRank estimates the top singular values of a large normal part); only
        the exact residual certifies."""
        return float(self.project(grad).norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def snapped_kkt(self, value: Tensor, tol: float, gradient_at: Callable[[Tensor], Tensor],
                    quick: bool = False) -> tuple[Tensor, float]:
        """``(point, residual)``: ``value`` snapped at ``tol`` (`project`) and the KKT residual there
        (`kkt_residual`, the loss gradient from ``gradient_at(point)``). A kind whose snap and residual
        share a decomposition (`LowRank`: one SVD for both) computes it once."""
        point = self.project(value, tol)
        return point, self.kkt_residual(point, gradient_at(point), tol, quick=quick)

    def best_snapped_kkt(self, value: Tensor, tols: list[float], gradient_at: Callable[[Tensor], Tensor],
                         quick: bool = False) -> tuple[Tensor, float]:
        """``(point, residual)``: among the snaps of ``value`` at the increasing tolerances ``tols``
        (`snapped_kkt` at each), the one with the smallest KKT residual. A tolerance that zeroes no
        atom beyond the one before it gives the same point and is skipped. A kind whose snaps are
        truncations of one decomposition (`LowRank`) computes it once for all of them."""
        sizes = None
        if not self.linear:
            try:
                sizes = self.atoms(value)
            except NotImplementedError:  # a kind without atoms: every tolerance is tried
                sizes = None
        best, alive = None, None
        for tol in tols:
            if sizes is not None:
                count = int((sizes > tol).sum())
                if count == alive:
                    continue
                alive = count
            point, residual = self.snapped_kkt(value, tol, gradient_at, quick=quick)
            if best is None or residual < best[1]:
                best = (point, residual)
        return best

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face | None:
        r"""The [`Face`][symopt.constraints.base.Face] of the induced norm at ``value``, its atoms
        ``<= tol`` counted as zero; None where the kind has none to offer. A linear kind's face is its
        constraint set, where the penalty is 0: coordinates θ, embedded by the projection. With the
        loss gradient ``grad`` at ``value``, a kind may widen the face by the zero atoms whose
        optimality condition fails (Sparse: $|g_i| > λ$), which the descent had not yet let in."""
        if not self.linear:
            return None
        return Face(start=(value,), embed=self.project, norm=lambda z: z.new_zeros(()))

    def entry_signs(self) -> str | None:
        r"""``"any"`` where the penalty is $λ\sum_i |θ_i|$ over θ's entries (the ℓ1 norm), ``"nonnegative"``
        where it is that norm over $θ ≥ 0$, None for every other kind (the default). The face polish
        solves these kinds' quadratic models directly (`symopt.proximal_newton`)."""
        return None

    def finishes_by_prox(self, value: Tensor) -> bool:
        r"""Whether a point of this kind that the face polish leaves above the target is finished by
        accelerated proximal-gradient steps (``prox``; `symopt.optimality.proximal_finish`). For
        kinds whose face takes no joining atom: there a missing atom grows only as fast as the
        factored descent grows it, and putting it on a face with a tiny value makes the face
        ill-conditioned; the prox sets atoms on and off exactly. False (the default) for kinds whose
        face admits atoms (Sparse, GroupSparse: their polishes let violators join) and for linear kinds."""
        return False

    def induced_norm(self, value: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dual_norm(self, grad: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dual_norm_exceeds(self, grad: Tensor, level: float) -> bool:
        r"""Whether $\mathrm{dual\_norm}(\mathrm{grad}) > \mathrm{level}$, exactly. A kind whose dual norm is costly
        (a nuclear norm's is a full SVD) settles it from a cheap lower bound where that already
        exceeds ``level``. `symopt.solve` asks it before any descent (is θ = 0 optimal at λ?).

        Examples:
            >>> import torch, symopt
            >>> symopt.Sparse(0.5).dual_norm_exceeds(torch.tensor([0.2, -0.7]), 0.5)
            True
        """
        return float(self.dual_norm(grad)) > level

    def balance(self, *factors: Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def structure(self, value: Tensor, tol: float = 0.0) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- capabilities the layers above ask ------------------------------------------------------
    def structure_key(self, value: Tensor, tol: float) -> object:
        """A hashable key of ``value``'s structure at ``tol``: equal keys mean the same structure
        (support, alive groups, rank). None for linear kinds, whose set is fixed."""
        if self.linear:
            return None
        return tuple((self.atoms(value) > tol).reshape(-1).tolist())

    def atom_ids(self, numel: int, device=None) -> Tensor | None:
        """The atom (coordinate, or index group) of each of θ's ``numel`` flattened coordinates, for
        working sets (which solve on a few atoms' columns of a design); None where the atoms are not
        subsets of coordinates (singular values, slices of a reshaped tensor) or λ is not fixed."""
        return None

    def working_width(self, shape: tuple[int, ...]) -> tuple[int | None, int]:
        """``(starting factor width, full width)`` for `symopt.solve`: None keeps full-width factors."""
        return None, 0

    def with_width(self, width: int | None) -> "Constraint":  # pragma: no cover - kinds with a width
        raise NotImplementedError(f"{type(self).__name__} has no factor width")

    def factor_shapes_hint(self, saved: list[torch.Size], current: list[torch.Size]) -> str | None:
        """Which registration option makes this constraint's factors (shapes ``current``) fit a
        checkpoint's (``saved``), for the error of a ``load_state_dict`` that does not fit; None where
        the kind cannot say (torch's size-mismatch error stands alone)."""
        return None

    def pooled_width(self, shape: tuple[int, ...], count: int) -> int | None:
        """The factor width this kind's member of a pool of ``count`` atoms gets on a tensor of ``shape``
        by default (a member may hold up to all of them); None: as constructed."""
        return None

    def fixed_rank(self, shape: tuple[int, ...]) -> int | None:
        """The rank bound ``r`` of a matrix-shaped θ, where the kind has one (a fixed-rank manifold a
        Riemannian baseline can optimise on); None otherwise."""
        return None

    def compressed_structure(self) -> str | None:
        """The structure a compressed export realises for this constraint: ``"units"`` (whole rows /
        channels removed), ``"factors"`` (a layer split into two thinner ones), ``"entries"`` (a
        sparse layout), or None (values only: the layer stays dense)."""
        return None

    def unit_axis(self, ndim: int) -> int | None:
        """For a ``"units"`` structure: the axis of an ``ndim``-d tensor whose slices are the units (a
        layer's output channels are axis 0); None when the units are not slices along one axis."""
        return None

    def matrix(self, value: Tensor) -> Tensor:
        """For a ``"factors"`` structure: the matrix (or batch of matrices) whose rank is constrained."""
        return value.reshape(value.shape[0], -1)

    def __repr__(self) -> str:
        # The strength policy is described in extra_repr (λ and how it moves); listing it again as a
        # child module would only repeat that. Other children (a tie's group) are shown as usual.
        children = [f"({name}): " + _addindent(repr(module), 2) for name, module in self._modules.items()
                    if name != "policy" and module is not None]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        body = "\n  ".join(([self.extra_repr()] if self.extra_repr() else []) + children)
        return f"{type(self).__name__}(\n  {body}\n)"

    def extra_repr(self) -> str:
        return self.policy.describe() if self.budget is None or not self.adaptive else \
            f"budget={self.budget}, {self.policy.describe()}"


class GroupMember(Constraint, register=False):
    """The parametrization of one tensor of a multi-tensor group (a tie's copy, a pool's tensor): its
    λ, strength policy, random stream and identity are the group's (``owner``); ``slot`` is its index,
    which a policy with one state per tensor (a tie's multiplier estimates) uses."""

    def __init__(self, group: Constraint, index: int) -> None:
        nn.Module.__init__(self)  # the state is the group's; nothing of Constraint.__init__ applies
        self.group = group
        self.index = index
        self.factorizer = group.factorizer
        self.attached_to: str | None = None
        self.budget, self.budget_spec = None, None
        self.register_forward_hook(watch_gradient)

    @property
    def owner(self) -> Constraint:
        return self.group

    @property
    def policy(self):
        return self.group.policy

    @property
    def slot(self) -> int:
        return self.index

    @property
    def strength(self) -> float:  # always the group's: one λ for the whole group
        return self.group.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.group.strength = value


def acts_on_factors(hook: Callable) -> Callable:
    """Mark a constraint's forward pre-hook that changes the factors in place, returns nothing and may
    run twice in one forward with the same effect (a landing, then holding the landed atoms at 0):
    `attach`'s layer forward that never forms θ (`Constraint.thin_factors`) runs such hooks on the
    factors itself. A constraint with any other pre-hook forms θ, so that the hook sees the
    forward it expects."""
    hook.acts_on_factors = True
    return hook


def moved_since_held(module: nn.Module, factors: Sequence[Tensor]) -> bool:
    """Whether anything wrote to ``factors`` since `held` marked them (their version counters moved: an
    optimizer step, a load). A landing holds its dropped atoms at 0 once after each such write, not on
    every forward: a layer applied twice in one forward pass (a recurrent cell, a block shared across
    depth) would otherwise write to factors the pass has already used, and autograd refuses that."""
    return tuple(t._version for t in factors) != module.__dict__.get("_held_versions")


def chain_original(chain: nn.Module, slot: int) -> Tensor:
    """Factor ``slot`` of a ``torch.nn.utils.parametrize`` ParametrizationList of several tensors (its
    ``original<slot>``), read from its parameter dict: hooks that run before every forward ask for factors
    (a unit group's landing hook, all of the group's), and through ``nn.Module.__getattr__`` a CNN group's
    five cost 12 µs against 3 (measured). A factor parametrize stored as a buffer is read by name."""
    name = f"original{slot}"
    factor = chain._parameters.get(name)
    return factor if factor is not None else getattr(chain, name)


def held(module: nn.Module, factors: Sequence[Tensor]) -> None:
    """Mark ``factors`` as just held by ``module``'s landing (see `moved_since_held`)."""
    module.__dict__["_held_versions"] = tuple(t._version for t in factors)


def hold_state_at_next_step(owners: Sequence[nn.Module], holder: "Constraint | None", factors: Sequence[Tensor],
                            keep: Tensor | None) -> None:
    """Ask the next optimizer step to put the atoms a landing has just dropped on the fixed point in the
    optimizer's state of ``factors`` too (`symopt.decay.hold_landed_state`, a step pre-hook, reads it from
    the factors' ``owners``): ``holder.hold_landed(layer, keep)`` on each state tensor shaped like the
    factors, or, with ``keep`` None (a set that lands: its decayed factors go to 0 whole), zero.

    Why: a landed atom's factors and gradient are exactly 0, and a momentum built before the landing
    then decays geometrically. In float arithmetic it never reaches 0: Adam's ``lerp`` stops at a few
    units of the smallest subnormal (0.9 · 4 rounds back to 4), and on a CPU every operation on a
    subnormal is slow. The digits MLP's step after its landing was 2.6 times the dense step against 1.6
    with the state held (benchmarks/RESULTS.md). With zero factors, gradient and first moments (and any
    second moment), these optimizers' updates are exactly 0, so the first moments stay 0 and the atom
    stays put (as `symopt.regrow`'s held zeros do)."""
    record = (tuple(owners), holder, tuple(factors), keep)
    for owner in owners:
        owner.__dict__["_state_due"] = record


@acts_on_factors
def _land_when_due(module: "Constraint", inputs: tuple[Tensor, ...]) -> None:
    """Forward pre-hook of a budget with ``total_steps``: at the end of its ramp, keep the ``budget``
    largest atoms and land the others (``Constraint.land``) before this forward uses the factors; on
    the ramp's way, land those a reading left out (`BudgetStrength.early_landing`). Landed atoms are
    held at 0 from then on."""
    policy = module.policy
    what, early = policy.next_landing(module.budget, module.atom_total, lambda: moved_since_held(module, inputs))
    if what is None:
        return
    with torch.no_grad():
        if what == "hold":
            module.hold_landed(inputs, module.landed_keep)
        else:
            keep = module.keep_mask(module.atoms(module.forward(*inputs))) if what == "land" else early.view(-1)
            keep = keep & module.landed_keep
            module.land(inputs, keep)
            module.landed_keep.copy_(keep)
            hold_state_at_next_step((module,), module, inputs, module.landed_keep)
    held(module, inputs)
    if what == "land":
        policy.mark_landed()


@acts_on_factors
def land_set_when_due(module: "Constraint", inputs: tuple[Tensor, ...]) -> None:
    """Forward pre-hook of an exact-penalty kind with ``total_steps`` (and of each later copy of a tie):
    at the landing step its decayed factors (the mirror pairs: their fixed subspace is where both are
    0, which is the set) go to 0, and they are held there before every later forward (momentum would
    move them off for a while)."""
    policy = module.policy
    if not policy.has_landed():
        if not policy.landing_due():
            return
        policy.mark_landed()
        hold_state_at_next_step((module,), None, [inputs[i] for i in module.decayed], None)
    elif not moved_since_held(module, inputs):
        return
    with torch.no_grad():
        for i in module.decayed:
            inputs[i].zero_()
    held(module, inputs)


def _rename_policy_keys(state_dict, prefix, *_args) -> None:
    """Checkpoints written before λ moved into ``policy`` keep loading (``estimate.*``,
    ``controller.*`` → ``policy.estimate.*``, ``policy.controller.*``)."""
    for old in [k for k in state_dict if k.startswith(prefix + "estimate.") or k.startswith(prefix + "controller.")]:
        state_dict[prefix + "policy." + old[len(prefix):]] = state_dict.pop(old)


def density_count(density: float, atoms: int) -> int:
    r"""The number of atoms a density stands for: $\max(1, \mathrm{round}(\mathrm{density} · \mathrm{atoms}))$. The one rounding
    rule of a ``density=`` budget and of export's density cut-off, so the two never disagree."""
    return max(1, round(density * atoms))


@runtime_checkable
class PenaltyHalf(Protocol):
    r"""What a kind with an induced norm penalty provides: the decay $(λ/2)‖\text{decayed factors}‖^2$
    equals ``λ·induced_norm(θ)`` at balanced factors; ``dual_norm`` measures the gradient in the
    dual norm (the multiplier at a zero); ``prox`` is the norm's proximal map; ``kkt_residual`` the
    distance of $-∇ℓ$ to $λ∂‖θ‖$."""

    def induced_norm(self, value: Tensor) -> Tensor: ...
    def dual_norm(self, grad: Tensor) -> Tensor: ...
    def prox(self, value: Tensor, step: float) -> Tensor: ...
    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float: ...


@runtime_checkable
class FeasibleHalf(Protocol):
    """What a kind with a set to land on provides: ``project`` onto it, ``infeasibility`` (the
    distance to it), ``violation`` (the distance to the snapped structure)."""

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor: ...
    def infeasibility(self, value: Tensor) -> float: ...
    def violation(self, value: Tensor, tol: float = 0.0) -> float: ...

def hadamard_balance(u: Tensor, v: Tensor) -> float:
    r"""$\sum |u_i^2 - v_i^2| / \sum (u_i^2 + v_i^2)$ in [0, 1]: 0 at the balanced factorisation that the
    decay converges to (where the penalty equals the induced norm)."""
    usq, vsq = u.detach().square(), v.detach().square()
    denom = float((usq + vsq).sum())
    return float((usq - vsq).abs().sum()) / denom if denom > 0 else 0.0


def require_floating(tensor: Tensor, name: str, what: str = "parameter") -> None:
    if not torch.is_floating_point(tensor):
        raise TypeError(
            f"{what} '{name}' has dtype {tensor.dtype}; symopt constrains floating-point tensors: "
            f"convert it with .float() or .double() first"
        )


def _negated(value):
    """−value, for one tensor or for the list a constraint over several tensors takes (channel groups)."""
    return [-v for v in value] if isinstance(value, (list, tuple)) else -value
