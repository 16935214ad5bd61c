"""One-line verbs: ``symopt.sparse(module, "weight", strength=...)`` etc.

Each builds the constraint object and calls [`symopt.constrain`][symopt.constrain]; they return its
[`Handle`][symopt.Handle]. Names may be dotted (``"encoder.0.weight"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._layers import EXPERT_PRODUCERS, expert_layout, weight_axes
from .attach import Handle, constrain
import functools

from .constraints import FixedZeros, GroupSparse, LowRank, NMSparse, NonNegative, Sparse, Subspace, Tied
from .constraints.budget import RATE, check_budget, entry_budget
from .constraints.pooled import Pooled
from .constraints.unit_groups import SHARED, UnitGroups

def sparse(module: nn.Module, name: str | Sequence[str], strength: float | None = None, **kwargs) -> Handle:
    r"""Elementwise sparsity: $w = u ⊙ v$, so the decay $(λ/2)(‖u‖^2 + ‖v‖^2)$ is $λ‖w‖_1$.

    The mirror $(u_i, v_i) → (-u_i, -v_i)$ fixes $w_i = 0$; a zero is stable while
    $|∂ℓ/∂w_i| ≤ λ$ (the Lasso's optimality condition). See [`Sparse`][symopt.Sparse].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name, e.g. ``"weight"`` or ``"encoder.0.weight"``; a list of
            names shares one budget over all their entries (``max_nonzero`` / ``density`` counted
            over the concatenation, one λ: ``prune.global_unstructured``'s budget; see
            [`Pooled`][symopt.constraints.pooled.Pooled]).
        strength: λ (> 0), default 1e-3; with a budget, the starting λ.
        **kwargs: ``max_nonzero=k`` or ``density=f`` (a budget: λ adapts until ``k`` entries are
            non-zero), ``total_steps`` and ``ramp`` (the budget lands on a schedule), ``land_on_the_way``
            (False: no entry lands before the end of the ramp; see [`Constraint`][symopt.Constraint]),
            ``adapt_rate``, ``seed``.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option (the message
            names the argument and the fix); nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> w0 = lin.weight.detach().clone()
        >>> handle = symopt.sparse(lin, "weight", strength=1e-3)
        >>> handle.kind, torch.allclose(lin.weight, w0)
        ('sparse', True)
    """
    return _entries(Sparse, "sparse", module, name, strength, kwargs)


def nonnegative(module: nn.Module, name: str | Sequence[str], strength: float | None = None, **kwargs) -> Handle:
    r"""Non-negative sparsity: $θ = \tfrac12 u ⊙ u$, so θ ≥ 0 by construction and the decay $(λ/2)‖u‖^2$
    is $λ \sum θ_i$ (the non-negative Lasso penalty).

    The mirror $u_i → -u_i$ fixes $θ_i = 0$; a zero is stable while $-∂ℓ/∂θ_i ≤ λ$. Negative
    entries are projected to 0 at registration (with a warning). See [`NonNegative`][symopt.NonNegative].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name; a list of names shares one budget (as for
            [`sparse`][symopt.sparse]).
        strength: λ (> 0), default 1e-3; with a budget, the starting λ.
        **kwargs: ``max_nonzero=k`` or ``density=f`` (a budget), ``total_steps``, ``ramp``,
            ``land_on_the_way``, ``adapt_rate``, ``seed``.

    Returns:
        Handle: the registered constraint; build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option; nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.abs_()        # a negative entry would be projected to 0, with a warning
        >>> w0 = lin.weight.detach().clone()
        >>> handle = symopt.nonnegative(lin, "weight", strength=1e-3)
        >>> handle.kind, torch.allclose(lin.weight, w0)
        ('nonnegative', True)
    """
    return _entries(NonNegative, "nonnegative", module, name, strength, kwargs)


def group_sparse(module: nn.Module, name: str | Sequence[str], dim: int | None = None,
                 strength: float | None = None, **kwargs) -> Handle:
    r"""Group sparsity: a scalar gate per group, $w_g = s_g·ω_g$, so the decay is $λ\sum_g‖w_g‖_2$.

    The mirror $(s_g, ω_g) → (-s_g, -ω_g)$ fixes the whole group at $w_g = 0$; a group stays
    zero while $‖∇_{w_g} ℓ‖_2 ≤ λ$. See [`GroupSparse`][symopt.GroupSparse].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name, e.g. ``"weight"`` or ``"encoder.0.weight"``; or a list
            of names whose units are one group each, with one gate per unit across them (a conv's
            ``weight`` and ``bias`` and its BatchNorm's ``weight`` and ``bias``: a dead channel is then
            wholly zero; see [`UnitGroups`][symopt.constraints.unit_groups.UnitGroups]); or a list
            of such lists, one per layer (``[["0.weight"], ["2.weight"]]`` works too): one λ and one
            ``max_groups`` over the units of all the layers, a *global* channel budget: training
            decides how many each layer keeps (Torch-Pruning's ``global_pruning``); with
            ``total_steps`` the units are ranked relative to their layer's mean, and every layer
            keeps at least one.
        dim: the axis whose slices are the groups (default: output units — axis 0, a Linear's rows or
            a conv's channels, and axis 1 for the weight of a transposed ``Conv1D``, GPT-2's, beside its
            bias's axis 0; 1: input features of a Linear). A mixture of experts' fused producer
            (``experts.gate_up_proj`` and its bias, `symopt._layers.expert_layout`) defaults to its experts'
            neurons: a unit over two axes (expert, output), its gate and up rows together.
        strength: λ (> 0), default 1e-3; with a budget, the starting λ.
        **kwargs: ``groups=`` (index lists instead of ``dim``; one tensor only), ``max_groups=g``
            (a budget; over several tensors it counts units across them), ``total_steps``, ``ramp``,
            ``land_on_the_way`` (False: no group lands before the end of the ramp), ``adapt_rate``, ``seed``;
            ``equal_experts=True`` (mixtures of experts' producers only, ``max_groups`` a multiple of the experts):
            every expert of a layer keeps the same number of neurons, ``max_groups / experts`` for one layer, so that
            export's fused tensors narrow to exactly that width (a budget without it lets the loss share the
            neurons unevenly, and the widest expert sets the width); over several layers (one list each) training
            decides each layer's count.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option (the message
            names the argument and the fix); nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> handle = symopt.group_sparse(conv, "weight", dim=0, strength=1e-3)
        >>> handle.constraint.group_norms(conv.weight).shape        # one norm per output channel
        torch.Size([8])
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> whole = symopt.group_sparse(net, ["0.weight", "0.bias", "1.weight", "1.bias"], strength=1e-3)
        >>> whole.constraint.unit_norms(whole.values()).shape      # a channel across the four tensors
        torch.Size([8])
        >>> deep = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3))
        >>> both = symopt.group_sparse(deep, [["0.weight", "0.bias"], ["2.weight", "2.bias"]], max_groups=12)
        >>> both.constraint.budget, both.constraint.set_units    # 12 channels of the two convs' 8 + 16
        (12, [8, 16])
    """
    if not isinstance(name, str) and isinstance(name, Sequence):
        extra = sorted(set(kwargs) - {"seed", "max_groups", "adapt_rate", "total_steps", "ramp", "land_on_the_way",
                                      "equal_experts"})
        if extra:
            raise ValueError(f"group_sparse over several tensors takes dim, strength, seed, max_groups, adapt_rate, "
                             f"equal_experts, total_steps, ramp and land_on_the_way; not {extra} (index groups act on "
                             "one tensor)")
        names, sets = _layer_sets(name)
        kwargs["equal_parts"] = _equal_experts(module, names, kwargs.pop("equal_experts", False))
        maps = None
        if dim is None:  # (each tensor's output units: a transposed Conv1D's weight has them on axis 1)
            axes = [_output_axis(module, n) for n in names]
            experts = [_expert_units(module, n) for n in names]
            if any(e is not None for e in experts):  # (a mixture of experts' neurons: two axes and a map each)
                axes = [a if e is None else e[0] for a, e in zip(axes, experts)]
                maps = [None if e is None else e[1] for e in experts]
            dim = axes if any(axes) else 0
        return constrain(module, names, UnitGroups(dim, strength, sets=sets, unit_maps=maps, **kwargs))
    if isinstance(name, str) and ("equal_experts" in kwargs
                                  or (dim is None and kwargs.get("groups") is None and _expert_units(module, name))):
        # an expert tensor's units are its experts' hidden neurons (two axes, gate and up rows together), which
        # the one-axis GroupSparse cannot say (and the list form says what equal_experts takes)
        return group_sparse(module, [name], dim, strength, **kwargs)
    if dim is None and kwargs.get("groups") is None and isinstance(name, str) and _output_axis(module, name) == 1:
        dim = 1
    return constrain(module, name, GroupSparse(dim, strength, **kwargs))


def _equal_experts(module: nn.Module, names: Sequence[str], asked: object) -> int | None:
    """The number of experts that ``equal_experts=True`` asks to keep equal counts of neurons: ``names`` must be one
    mixture's producer tensors (`symopt._layers.expert_layout`); None where not asked."""
    if not isinstance(asked, bool):
        raise TypeError(f"group_sparse: equal_experts must be True or False, got {asked!r}")
    if not asked:
        return None
    if any(_expert_units(module, n) is None for n in names):
        raise ValueError(f"group_sparse: equal_experts=True takes mixtures of experts' producer tensors only (such as "
                         f"'….experts.gate_up_proj' and its bias; one list per layer for a budget over several), got "
                         f"{list(names)}")
    experts = {expert_layout(module.get_submodule(n.rpartition(".")[0])).experts for n in names}
    if len(experts) != 1:
        raise ValueError(f"group_sparse: equal_experts=True over several layers needs the same number of experts in "
                         f"each, got {sorted(experts)}; register one budget per layer")
    return experts.pop()


def _expert_units(module: nn.Module, name: str) -> tuple[tuple[int, int], Tensor] | None:
    """For a mixture of experts' producer tensor (``experts.gate_up_proj``, its bias: `symopt._layers.expert_layout`),
    its unit axes and unit map (unit ``e · width + j``: neuron j of expert e); None for any other tensor."""
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return None  # (constrain names the missing parameter)
    found = expert_layout(owner)
    if found is None or leaf not in found.producers:
        return None
    return found.unit_axes(leaf), found.unit_map(leaf)


def _output_axis(module: nn.Module, name: str) -> int:
    """The axis of a tensor's output units: 1 for the weight of a layer that stores it as (inputs, outputs)
    (GPT-2's ``Conv1D``), else 0 (a Linear's or Conv's weight, a bias, a norm's entries)."""
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return 0  # (constrain names the missing parameter)
    return 1 if leaf == "weight" and weight_axes(owner) == (1, 0) else 0


def _layer_sets(name: Sequence) -> tuple[list[str], list[int] | None]:
    """``[names]`` (one layer's tensors) or ``[[names], [names], ...]`` (several layers, one budget):
    the flat list of names and, for the second form, the layer index of each."""
    nested = [not isinstance(n, str) and isinstance(n, Sequence) for n in name]
    if not any(nested):
        return list(name), None
    if not all(nested) or any(not layer or not all(isinstance(n, str) for n in layer) for layer in name):
        raise ValueError(f"group_sparse: give a list of names (one layer's weight, bias and norm entries) or a "
                         f"list of such lists, one per layer, for one budget over the layers; got {list(name)!r}")
    return [n for layer in name for n in layer], [j for j, layer in enumerate(name) for _ in layer]


def low_rank(module: nn.Module, name: str | Sequence[str], strength: float | None = None, max_rank: int | str | None = "auto",
             **kwargs) -> Handle:
    r"""Low rank: $W = U V^\top$, so the decay $(λ/2)(‖U‖^2_F + ‖V‖^2_F)$ is $λ‖W‖_*$.

    $‖W‖_* ≤ ‖U‖_F‖V‖_F ≤ (‖U‖^2_F + ‖V‖^2_F)/2$ with equality at the balanced SVD factors; the
    mirrors $U → UQ, V → VQ$ ($Q = I - 2nn^\top$) each fix one removed singular direction. See
    [`LowRank`][symopt.LowRank].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name, e.g. ``"weight"`` or ``"encoder.0.weight"``; or a list
            of names with ``target_rank=r``: one λ on the sum of their nuclear norms, r counting the
            ranks of all the matrices together (a *global* rank budget: the loss decides each layer's
            rank, at least 1; see [`Pooled`][symopt.constraints.pooled.Pooled]).
        strength: λ (> 0), default 1e-3; with a budget, the starting λ.
        max_rank: the factor width ``r``, a hard bound on the rank (``None``: ``min(m, n)``). A value
            of larger rank is truncated to its best rank-``r`` approximation, with a warning. The
            default, ``"auto"``, is ``None``, except with ``target_rank=k``: width 4k where that is
            narrow (see [`LowRank`][symopt.LowRank]: as accurate, and cheaper to train), for each matrix
            of a list of names too (k the total).
        **kwargs: ``target_rank=r`` (a budget), ``layout="batch"`` (one factorisation per leading
            index), ``total_steps`` and ``ramp`` (the budget lands on a schedule: at its end, never on
            the way, so ``land_on_the_way`` may only be False), ``adapt_rate``, ``seed``.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option (the message
            names the argument and the fix); nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(6, 4)
        >>> U, V = symopt.low_rank(lin, "weight", strength=1e-3).members[0].factors
        >>> U.shape, V.shape, torch.allclose(U @ V.T, lin.weight, atol=1e-6)
        (torch.Size([4, 4]), torch.Size([6, 4]), True)
    """
    if not isinstance(name, str) and isinstance(name, Sequence):
        return constrain(module, list(name), _pooled_ranks(strength, max_rank, **kwargs))
    return constrain(module, name, LowRank(strength, max_rank, **kwargs))


def _pooled_ranks(strength, max_rank, *, target_rank=None, adapt_rate: float = RATE, seed: int = 0,
                  total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75),
                  land_on_the_way: bool | None = None, **other) -> Pooled:
    """One rank budget over the matrices of a list of names (``symopt.constraints.pooled``)."""
    if other:
        raise ValueError(f"low_rank over several tensors takes strength, max_rank, target_rank, adapt_rate, seed, "
                         f"total_steps, ramp and land_on_the_way; not {sorted(other)} (layout='batch' sets one rank "
                         "per matrix)")
    if target_rank is None:
        raise ValueError("low_rank: a list of names shares one rank budget — give target_rank= (the total rank); "
                         "for one λ on several matrices call symopt.low_rank on each name")
    check_budget(target_rank, "target_rank", "low_rank over several tensors")
    LowRank(1.0, max_rank, seed=seed)  # max_rank and seed checked now (target_rank may exceed one matrix's)
    return Pooled(functools.partial(LowRank, 1.0, max_rank, seed=seed), ("count", target_rank), strength=strength,
                  adapt_rate=adapt_rate, total_steps=total_steps, ramp=ramp, land_on_the_way=land_on_the_way)


def subspace(module: nn.Module, name: str, A, strength: float | str = "auto", *,
             dim: int | tuple[int, ...] | None = None, **kwargs) -> Handle:
    r"""Linear constraint $A·\operatorname{vec}(θ) = 0$ by the exact penalty $λ‖O^\top θ‖_1$.

    $θ = (I - OO^\top)w + O(a ⊙ b)$ with ``O`` an orthonormal basis of rowspace(A); the mirrors
    $(a_i, b_i) → (-a_i, -b_i)$ fix $O^\top θ = 0$. Exact once $λ > ‖O^\top ∇ℓ(θ^*)‖_∞$, the Lagrange
    multipliers at the constrained optimum. See [`Subspace`][symopt.Subspace].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name, e.g. ``"weight"`` or ``"encoder.0.weight"``.
        A: ``(k, numel)`` matrix (tensor or array) of ``k`` linear constraints on the flattened
            parameter; dependent rows are fine. With ``dim``: ``(k, slice size)``, applied to each slice.
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ a running multiplier estimate.
        dim: an axis or tuple of axes: ``A`` constrains every slice over them (``dim=1``: each row of
            a Linear weight; ``dim=(1, 2, 3)``: each Conv filter), with a basis of the slice's size
            instead of a dense ``I ⊗ A``. ``None`` (default): ``A`` acts on the whole parameter.
        **kwargs: ``margin`` (of ``"auto"``, > 1), ``seed``, ``total_steps`` (the set lands exactly at
            ``ramp[1]·total_steps``, default 75%) and ``ramp``.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option (the message
            names the argument and the fix); nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> handle = symopt.subspace(lin, "weight", torch.tensor([[1.0, 1.0]]), strength=1.0)
        >>> handle.constraint.basis.T.abs()    # the one constrained direction, ±(1, 1)/√2
        tensor([[0.7071, 0.7071]])
        >>> rows = torch.nn.Linear(4, 3)         # every row of the weight sums to zero
        >>> symopt.subspace(rows, "weight", torch.ones(1, 4), strength=1.0, dim=1).constraint
        Subspace(codim=1, dim=(1,), strength=1)
    """
    return constrain(module, name, Subspace(A, strength, dim=dim, **kwargs))


def fixed_zeros(module: nn.Module, name: str, mask, strength: float | str = "auto", **kwargs) -> Handle:
    r"""$θ[\mathrm{mask}] = 0$ by the exact penalty $λ‖θ[\mathrm{mask}]‖_1$ (no dense basis).

    The masked entries are $a ⊙ b$; the mirrors $(a_i, b_i) → (-a_i, -b_i)$ fix them at zero.
    Exact once $λ > ‖∇ℓ(θ^*)[\mathrm{mask}]‖_∞$. See [`FixedZeros`][symopt.FixedZeros].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name, e.g. ``"weight"`` or ``"encoder.0.weight"``.
        mask: bool tensor of the parameter's shape; True marks an entry that must be 0.
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ a running multiplier estimate.
        **kwargs: ``margin`` (of ``"auto"``, > 1), ``seed``, ``total_steps`` (the set lands exactly at
            ``ramp[1]·total_steps``, default 75%) and ``ramp``.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        ValueError: no such parameter, one already constrained, or an invalid option (the message
            names the argument and the fix); nothing is changed.
        TypeError: a non-floating parameter, or an option of the wrong type.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(2, 2)
        >>> handle = symopt.fixed_zeros(lin, "weight", torch.eye(2, dtype=torch.bool))
        >>> handle.kind, handle.strength                      # "auto" starts at 0 until it has seen a gradient
        ('fixed_zeros', 0.0)
    """
    return constrain(module, name, FixedZeros(mask, strength, **kwargs))


def n_m_sparse(module: nn.Module, name: str, n: int = 2, m: int = 4, *, total_steps: int | None = None,
               **kwargs) -> Handle:
    r"""N:M semi-structured sparsity: at most ``n`` non-zeros in every ``m`` consecutive entries of a row.

    $w = u ⊙ v$ as for [`sparse`][symopt.sparse] (decay = $λ‖w‖_1$); a budget of ``n/m`` of the entries
    moves λ, and at the end of the ramp the ``n`` largest of every group are kept and the others put on
    the mirror's fixed point. See [`NMSparse`][symopt.NMSparse].

    Args:
        module: the module that owns the parameter (or an ancestor, with a dotted ``name``).
        name: the parameter's (dotted) name; its last axis must be a multiple of ``m``.
        n: non-zeros kept in every group (default 2).
        m: the group size, consecutive entries of a row (default 4: 2:4 is the pattern GPUs accelerate).
        total_steps: the optimizer steps until training ends, so the pattern lands exactly by then.
        **kwargs: ``strength`` (the starting λ), ``ramp``, ``adapt_rate``, ``seed``.

    Returns:
        Handle: the registered constraint (build the optimizer afterwards).

    Raises:
        ValueError: a last axis that ``m`` does not divide, $n ≥ m$, a bad option; nothing is changed.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(8, 4)
        >>> handle = symopt.n_m_sparse(lin, "weight", 2, 4, total_steps=100)
        >>> handle.constraint.budget, handle.kind
        (16, 'n_m_sparse')
    """
    return constrain(module, name, NMSparse(n, m, total_steps=total_steps, **kwargs))


PROJECTION_NAMES = (("q_proj", "k_proj", "v_proj", "out_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"),
                    ("q", "k", "v", "o"), ("query", "key", "value", "out"), ("q_lin", "k_lin", "v_lin", "out_lin"),
                    ("q_proj", "k_proj", "v_proj", "dense"),  # (Phi-1 / Phi-2)
                    ("query", "key", "value", "dense"),  # (ALBERT)
                    # the BERT family's attention keeps q, k, v in one child and the output in another
                    # (BERT, RoBERTa, ELECTRA: self / output.dense; ViT before transformers 5: attention / output.dense)
                    ("self.query", "self.key", "self.value", "output.dense"),
                    ("self.query_proj", "self.key_proj", "self.value_proj", "output.dense"),  # (DeBERTa-v2, -v3)
                    ("attention.query", "attention.key", "attention.value", "output.dense"))
# layers beside q, k and v, in the module holding q, whose outputs hold a block of rows per head: DeBERTa-v2's
# projections of its relative-position embeddings (where its config does not share q's and k's for them). A unit
# takes its rows too, and export narrows them with q.
PER_HEAD_OUTPUT_NAMES = ("pos_key_proj", "pos_query_proj")
# Multi-head latent attention (DeepSeek-V2 / -V3): q (from the input, or from a low-rank `q_a_proj` / `q_b_proj`
# pair) per head, k and v expanded per head from one shared latent by `kv_b_proj`, then `o_proj`. A unit is a head:
# its q rows, its rows of `kv_b_proj` (its k without position, then its v) and its columns of `o_proj`; the latent's
# layers (`kv_a_proj_with_mqa`, `q_a_proj`, their norms) are every head's and stay. The per-head widths come from
# the block's LATENT_WIDTH_NAMES.
LATENT_PROJECTION_NAMES = (("q_proj", "kv_b_proj", "o_proj"), ("q_b_proj", "kv_b_proj", "o_proj"))
LATENT_WIDTH_NAMES = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
# one projection whose outputs hold q, k and v, then the output projection, and how the fused outputs are
# packed: "thirds" (all heads' q, then k, then v: GPT-2's family) or "per head" (head h's q, k, v side by side:
# GPT-NeoX / Pythia). A fused pair is read as the caller's packing= says, else as this table names it, else as
# "thirds".
FUSED_PROJECTION_NAMES = {("c_attn", "c_proj"): "thirds", ("query_key_value", "dense"): "per head",
                          ("qkv_proj", "o_proj"): "thirds", ("Wqkv", "out_proj"): "thirds",
                          ("qkv_proj", "out_proj"): "thirds"}
# block classes whose fused pair has another table entry's names but packs otherwise: GPTBigCode (StarCoder's family)
# names its layers as GPT-2 does (c_attn, c_proj) and, with every head's own k and v, reads head h's q, k, v side by
# side (as a class this is only a default: packing= overrides it); in its multi-query form (one k/v head, its
# kv_heads attribute) q comes first, then k, then v, which both packings read alike
FUSED_PACKING_BY_CLASS = {"GPTBigCodeAttention": "per head", "CodeGenAttention": "per shard"}
# Blocks whose fused q|k|v outputs are split into model-parallel shards before the heads (the "per shard" packing):
# CodeGen reshapes `qkv_proj`'s outputs into 4 shards (its forward's `mp_num`), each its local heads' q, then v,
# then k, and numbers the heads shard by shard. Removing a head from one shard only would leave shards of
# different widths, so a unit is one local head of every shard (as many heads as shards) and export keeps the
# shards alike.
SHARDS_BY_CLASS = {"CodeGenAttention": 4}
# fused pairs whose k and v may be narrower than q (grouped-query attention: Phi-3's q, then k, then v)
FUSED_GROUPED_QUERY_NAMES = {("qkv_proj", "o_proj")}
FUSED_PACKINGS = ("thirds", "per head")
# the width of all heads together, where a block keeps it (BERT's self-attention reshapes by it, GPT-2's
# splits its fused projection's outputs by it)
INNER_WIDTH_NAMES = ("all_head_size", "split_size", "inner_dim")
# widths a block may reshape by although the names often mean the model's width: DistilBERT's `dim` before
# transformers 5 (its forward's head width is dim // n_heads, and its own prune_heads lowers dim with n_heads),
# StableLM's `hidden_size` before 5 (its attention's output is reshaped to it). Export lowers those equal to q's
# width only after a rewrite that failed without them, and checks that rewrite too.
MAYBE_INNER_WIDTH_NAMES = ("dim", "hidden_size", "embed_dim")
HEAD_COUNT_NAMES = ("num_heads", "n_heads", "num_attention_heads", "n_head")
# where a block that keeps no head count keeps its head width, and reshapes by it (Llama: head_dim; GPT-NeoX:
# head_size)
HEAD_WIDTH_NAMES = ("head_dim", "head_size")
# where a block keeps how many query heads read each k/v head (Hugging Face's Llama family: it repeats k and v that
# many times; export lowers it where query heads leave a multi-query block)
KV_GROUP_NAMES = ("num_key_value_groups",)
# where a block with grouped-query attention keeps its k/v head count (export lowers it with the other;
# GPTBigCode's kv_heads)
KV_HEAD_COUNT_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "kv_heads")


def int_attribute(holder, names: Sequence[str]) -> str | None:
    """The first of ``names`` that ``holder`` (a block, a config) holds as an int; None if none."""
    return next((name for name in names if isinstance(getattr(holder, name, None), int)), None)


def attention_heads(model: nn.Module, name: str | Sequence[str] = "", strength: float | None = None, *, seed: int = 0,
                    projections: Sequence[str] | None = None, heads: int | None = None,
                    packing: str | None = None, kv_heads: int | None = None, max_heads: int | None = None,
                    total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75),
                    land_on_the_way: bool | None = None) -> Handle:
    r"""Group sparsity over attention heads: one gate per head, shared by its query, key and value
    rows (weights and biases) and its columns of the output projection.

    The decay is $λ \sum_h ‖(W_q,h, W_k,h, W_v,h, b_h, W_o,h)‖_2$, so whole heads go to zero, and
    [`symopt.export`][symopt.export] (``mode="compressed"``) removes them. Works on an
    ``nn.MultiheadAttention`` and on a hand-written block with four ``nn.Linear`` projections (q, k, v,
    out) and either an int attribute holding its head count (``num_heads``, ``n_heads``, ...), which export
    lowers after removing heads, or an int ``head_dim`` it reshapes by (Hugging Face's Llama, Mistral,
    Qwen2 blocks: the count follows from the width, and export has nothing to lower). With grouped-query
    attention (k and v narrower than q: each k/v head read by a group of query heads) a unit is one k/v
    head with its query heads, so that every query head keeps its keys and every k/v head the same number
    of query heads: ``max_heads`` then counts those units (k/v heads), and export also lowers a
    ``num_key_value_heads`` / ``num_kv_heads`` / ``n_kv_heads`` attribute. Under multi-query attention (one k/v
    head: Gemma-2B's separate layers, or fused after q: Falcon-7B's ``query_key_value``, StarCoder's ``c_attn``) that
    unit would be the whole block, so a unit is a query head, k and v stay whole (in a fused layer their outputs
    are no unit's: `SHARED`, not gated, not decayed), and export lowers ``num_key_value_groups`` with the head
    count. The projections may sit in
    children of the block: the BERT family's attention (BERT, RoBERTa, ELECTRA) keeps q, k, v in
    ``self`` with the head count and ``all_head_size``, which export lowers too, and the output in
    ``output.dense``; naming ``"bert.encoder.layer.0.attention"`` finds them, as it finds DistilBERT's
    ``q_lin`` … ``out_lin``. GPT-2's family keeps q, k and v as the thirds of one projection's outputs
    (``c_attn``, a transposed ``Conv1D``) before ``c_proj``: a unit is then a head's three slices of those
    outputs and its inputs of ``c_proj``, and export narrows both layers and lowers ``num_heads`` and
    ``split_size``; GPT-NeoX (Pythia) packs head h's q, k and v side by side in ``query_key_value`` before
    ``dense`` and reshapes by its ``head_size``. DeepSeek's multi-head latent attention (``q_proj`` or ``q_b_proj``,
    ``kv_b_proj``, ``o_proj``) loses whole heads, its shared latent's layers staying. CodeGen splits ``qkv_proj``'s
    outputs into model-parallel shards and numbers its heads shard by shard: a unit is one local head of every
    shard (``max_heads`` counts those), so that export keeps the shards alike.
    See [`UnitGroups`][symopt.constraints.unit_groups.UnitGroups].

    Args:
        model: the attention module or a model that contains it.
        name: the dotted name of the attention module in ``model`` ("" for ``model`` itself); or a
            list of names, for one budget over the heads of all those blocks (``max_heads`` counts
            them together; training decides each block's share, at least one head each).
        strength: λ (> 0), default 1e-3; with a budget, the starting λ.
        seed: seed of the gates' signs.
        max_heads: a budget: λ adapts until exactly this many heads are non-zero; with
            ``total_steps`` they land on a schedule (as ``max_groups`` of
            [`UnitGroups`][symopt.constraints.unit_groups.UnitGroups]) and export removes the others.
        total_steps: the optimizer steps until training ends (the budget's schedule and landing).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        land_on_the_way: False keeps every head until the end of the ramp (default: heads ranked beyond
            1.5 × the scheduled count land at each reading; see [`Constraint`][symopt.Constraint]).
        projections: for a hand-written block, the names of its q, k, v and output Linear layers,
            dotted where they sit in children (default: the first of ``q_proj/k_proj/v_proj/out_proj``,
            ``…/o_proj``, ``…/dense`` (Phi-1, Phi-2), ``q/k/v/o``, ``query/key/value/out``, ``…/dense`` (ALBERT),
            ``q_lin/…/out_lin``,
            ``self.query/self.key/self.value/output.dense``, ``self.query_proj/…/output.dense`` (DeBERTa-v2, with
            its ``pos_key_proj`` / ``pos_query_proj`` where present) that it has, else ``c_attn/c_proj`` or
            ``query_key_value/dense``); or two names, a fused q|k|v projection and the output projection,
            each an ``nn.Linear`` or a transposed ``Conv1D``: its outputs are read as q, k, v in thirds (as
            GPT-2's), except for ``("query_key_value", "dense")``, read per head (as GPT-NeoX's), or as
            ``packing`` says.
        heads: for a hand-written block, its head count (default: its ``num_heads`` / ``n_heads`` /
            ``num_attention_heads`` / ``n_head`` attribute, else q's width over its ``head_dim``; read
            from the block, else from the child holding q).
        packing: how a fused q|k|v projection's outputs hold the heads, for a block whose layer names do not
            say it: ``"thirds"`` (all heads' q, then all k, then all v, each ``inner`` wide: GPT-2's
            ``c_attn``) or ``"per head"`` (head h's q, k and v side by side, ``3 · head_dim`` outputs a head:
            GPT-NeoX's and BLOOM's ``query_key_value``). Default: read from the names as above, else
            ``"thirds"``. Only for a fused projection: a block with separate q, k, v layers refuses it. Under
            grouped-query attention ``"per head"`` reads each k/v head's query heads, then its k, then its v
            (InternLM2's ``wqkv``).
        kv_heads: the k/v head count under grouped-query attention (each k/v head read by ``heads / kv_heads``
            query heads), for a fused q|k|v projection whose k and v are narrower than q under names symopt does
            not know (default: the block's ``num_key_value_heads`` / ``num_kv_heads`` / ``n_kv_heads``, else
            what Phi-3's ``qkv_proj`` leaves for k and v, else as many as the query heads). With separate q, k, v
            layers it is read from k's width, and a ``kv_heads`` given must agree with it.

    Returns:
        Handle: the registered constraint (build the optimizer afterwards).

    Raises:
        TypeError: ``name`` is neither an ``nn.MultiheadAttention`` nor a block with four Linear
            projections or a fused q|k|v projection and an output projection (the message lists the blocks
            [`attention_blocks`][symopt.attention_blocks] finds), or not a string or a list of them.
        ValueError: a ``name`` the model has no module of (the message lists the blocks there are); a
            ``packing`` other than ``"thirds"`` / ``"per head"``, or given for a block without a fused projection; a head count that does not divide the projections (or k / v widths that are not a whole
            number of heads dividing q's; a fused projection not 3 × the output projection's inputs, nor q's width
            and twice ``kv_heads`` heads), a ``heads`` that disagrees with the block's ``head_dim``, a ``kv_heads``
            that is not a positive int dividing the heads or disagrees with k's width, a tensor already
            constrained, a bad strength, a ``max_heads`` not below the heads there are, ``total_steps``
            (or a ``ramp``) without its budget; nothing is changed.

    Examples:
        >>> import torch, symopt
        >>> attn = torch.nn.MultiheadAttention(16, 4)
        >>> handle = symopt.attention_heads(attn, strength=1e-3)
        >>> handle.constraint.unit_norms(handle.values()).shape   # one norm per head
        torch.Size([4])
    """
    # (the budget's checks in the caller's words: the head group below would name its own max_groups)
    check_budget(max_heads, "max_heads", "attention_heads")
    if packing is not None and packing not in FUSED_PACKINGS:
        raise ValueError(f"attention_heads: packing={packing!r} is not a fused projection's packing; give 'thirds' "
                         "(all heads' q, then k, then v: GPT-2's c_attn) or 'per head' (head h's q, k, v side by "
                         "side: GPT-NeoX's query_key_value)")
    if kv_heads is not None and (isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads < 1):
        raise ValueError(f"attention_heads: kv_heads={kv_heads!r} must be a positive int, the k/v head count of "
                         "grouped-query attention")
    if max_heads is None and total_steps is not None:
        raise ValueError("attention_heads: total_steps schedules a head budget; give max_heads= too, or drop "
                         "total_steps")
    if not isinstance(name, str) and isinstance(name, Sequence):
        if not name or not all(isinstance(n, str) for n in name):
            raise ValueError(f"attention_heads: give one block's name, or a list of block names for one budget "
                             f"over them; got {name!r}")
        if projections is not None and not all(isinstance(p, str) for p in projections):
            raise ValueError("attention_heads: projections names the q, k, v and output layers of every block")
    elif not isinstance(name, str):
        raise TypeError(f"attention_heads: name must be a block's dotted name or a list of them, got "
                        f"{type(name).__name__}")
    wanted = [name] if isinstance(name, str) else list(name)
    missing = [n for n in wanted if isinstance(n, str) and not _has_submodule(model, n)]
    if missing:
        raise ValueError(f"attention_heads: {type(model).__name__} has no module {missing[0]!r}; "
                         f"{_blocks_found(model)}")
    try:
        blocks = [_head_tensors(model, n, projections, heads, packing, kv_heads) for n in wanted]
    except TypeError as error:
        if projections is not None:
            raise
        found = _blocks_found(model)
        found = found if found.startswith("symopt.") else f"{found[0].upper()}{found[1:]}"
        raise TypeError(f"{error}. {found}") from None
    names = [n for block in blocks for n in block[0]]
    dims = [d for block in blocks for d in block[1]]
    maps = [m for block in blocks for m in block[2]]
    total_heads = sum(int(block[2][0].max()) + 1 for block in blocks)  # (a block's first tensor: every head)
    if max_heads is not None and max_heads >= total_heads:
        where = ("the block" if name == "" else repr(name) if isinstance(name, str)
                 else "blocks " + ", ".join(repr(n) for n in name))
        raise ValueError(f"attention_heads: max_heads={max_heads} keeps every head ({total_heads} in {where}), so "
                         f"the budget does not bind; give fewer than {total_heads}, or no budget")
    if max_heads is not None and len(blocks) > 1 and max_heads < len(blocks):
        # (checked here in the caller's words: the head group below would name its own max_groups)
        raise ValueError(f"attention_heads: max_heads={max_heads} is below the {len(blocks)} blocks of the global "
                         f"budget, and every block keeps at least one head; give max_heads >= {len(blocks)}")
    sets = [j for j, block in enumerate(blocks) for _ in block[0]] if len(blocks) > 1 else None
    group = UnitGroups(dims, strength, seed=seed, unit_maps=maps, structure_name="heads", max_groups=max_heads,
                       total_steps=total_steps, ramp=ramp, sets=sets, land_on_the_way=land_on_the_way)
    # what export needs to rewrite a hand-written block (the constraint carries it: export asks, never
    # guesses); None for an nn.MultiheadAttention, which export rewrites from its own attributes
    group.attention_blocks = [block[3] for block in blocks]
    return constrain(model, names, group)


def attention_blocks(model: nn.Module) -> list[str]:
    """The dotted names of the attention blocks in ``model`` whose heads [`attention_heads`][symopt.attention_heads]
    reads with its defaults (an ``nn.MultiheadAttention``, or a block whose projections it finds by their names), in
    module order; a block inside one already found is not listed. A block it refuses (its layer names unknown,
    widths that do not make whole heads) is left out: call ``attention_heads`` on it to read why. Give the list to
    ``attention_heads`` for one head budget over the whole model.

    Args:
        model: the model to search (its own name is ``""``, listed where the model itself is an attention block).

    Returns:
        list[str]: the blocks' dotted names, in the order ``model.named_modules()`` visits them.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        >>> model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        >>> symopt.attention_blocks(model)
        ['layers.0.self_attn', 'layers.1.self_attn']
        >>> handle = symopt.attention_heads(model, symopt.attention_blocks(model), max_heads=3, total_steps=100)
        >>> handle.constraint.units                 # 4 heads in each of the two blocks, one budget of 3
        8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attention_blocks: model must be an nn.Module, got {type(model).__name__}")
    found: list[str] = []
    for name, _ in model.named_modules():  # (depth first: a found block's modules come right after it)
        if found and (found[-1] == "" or name.startswith(f"{found[-1]}.")):
            continue
        try:
            _head_tensors(model, name, None, None)
        except (TypeError, ValueError, AttributeError):
            continue
        found.append(name)
    return found


def feed_forward_units(model: nn.Module) -> list[list[str]]:
    """The hidden units of every feed-forward block in ``model``, as [`group_sparse`][symopt.group_sparse] takes them
    for one budget over all of them: per block, the weights (and biases) whose outputs are its hidden units, found
    by their names and the layer that reads them (`symopt._layers.FEED_FORWARD_PAIRS`: ``fc1`` / ``fc2``,
    ``gate_proj`` and ``up_proj`` / ``down_proj``, ``c_fc`` / ``c_proj``, ``intermediate.dense`` / ``output.dense``,
    ...). A unit is a hidden neuron: its rows of those layers (a gated block's gate and up rows together), whose
    export removes the reading layer's inputs too. A mixture of experts' fused expert tensors (transformers 5's
    ``experts.gate_up_proj``, `symopt._layers.expert_layout`) are one block per layer, its experts' producer and
    bias: a unit is one neuron of one expert. Layers a constraint holds already, or whose reader does not
    take exactly their outputs, are left out.

    Args:
        model: the model to search.

    Returns:
        list[list[str]]: per block, in module order, its producers' weight names then bias names (``group_sparse``'s
            list of lists: one global budget, each block keeping one neuron at least).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 24), 3,
        ...                                       enable_nested_tensor=False)
        >>> units = symopt.feed_forward_units(encoder)
        >>> units[0], len(units)
        (['layers.0.linear1.weight', 'layers.0.linear1.bias'], 3)
        >>> handle = symopt.group_sparse(encoder, units, max_groups=30, total_steps=100)
        >>> handle.constraint.units                 # 24 neurons in each of the three blocks, one budget of 30
        72
    """
    from torch.nn.utils import parametrize

    from ._layers import feed_forward_partner

    if not isinstance(model, nn.Module):
        raise TypeError(f"feed_forward_units: model must be an nn.Module, got {type(model).__name__}")
    blocks: dict[str, list[str]] = {}  # (a dense block by its reading layer: its producers' module names)
    experts: set[str] = set()  # (a mixture's experts, by the module holding them: its producer tensors' names)
    for name, module in model.named_modules():
        # (a constrained producer is not read: reading it would compute its parametrization)
        held = any(parametrize.is_parametrized(module, t) for t in EXPERT_PRODUCERS)
        found = expert_layout(module) if name and not held else None
        if found is not None and not any(parametrize.is_parametrized(module, t) for t in found.producers):
            blocks[name] = [f"{name}.{t}" for t in found.producers]
            experts.add(name)
            continue
        if not name or weight_axes(module) is None or parametrize.is_parametrized(module):
            continue
        partner = feed_forward_partner(model, name)
        if partner is not None and not parametrize.is_parametrized(model.get_submodule(partner), "weight"):
            blocks.setdefault(partner, []).append(name)
    units = []
    for block, producers in blocks.items():
        if block in experts:
            units.append(producers)
            continue
        weights = [f"{name}.weight" for name in producers]
        biases = [f"{name}.bias" for name in producers if model.get_submodule(name).bias is not None]
        units.append(weights + biases)
    return units


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _blocks_found(model: nn.Module) -> str:
    """The fix a wrong block name needs: the blocks `attention_blocks` finds in ``model`` (at most ten named)."""
    found = attention_blocks(model)
    if not found:
        return ("symopt.attention_blocks(model) finds no attention block it reads by its layer names here: give "
                "the block's name with projections=")
    listed = ", ".join(repr(n) for n in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return f"the attention blocks symopt reads here (symopt.attention_blocks(model)): {listed}"


def _head_tensors(model: nn.Module, name: str, projections, heads, packing=None, kv_heads=None):
    """One attention block's tensors of a head group: ``(names, dims, unit maps, block info)``, the
    info None for an ``nn.MultiheadAttention``."""
    import torch

    block = model.get_submodule(name) if name else model
    prefix = f"{name}." if name else ""
    names, dims, maps = [], [], []
    if isinstance(block, nn.MultiheadAttention):
        if packing is not None:
            raise ValueError(f"attention_heads: packing={packing!r} describes a fused q|k|v layer of a hand-written "
                             f"block; '{name or type(model).__name__}' is an nn.MultiheadAttention, whose packing "
                             "is known: drop packing")
        E, H = block.embed_dim, block.num_heads
        d = E // H
        if kv_heads is not None and kv_heads != H:
            raise ValueError(f"attention_heads: kv_heads={kv_heads}, but '{name or type(model).__name__}' is an "
                             f"nn.MultiheadAttention, whose k and v have all {H} heads: drop kv_heads")
        packed = (torch.arange(3 * E) % E) // d  # the q, k and v rows of head h are all unit h
        per_head = torch.arange(E) // d
        if block._qkv_same_embed_dim:
            names, dims, maps = [prefix + "in_proj_weight"], [0], [packed]
        else:
            for which in ("q", "k", "v"):
                names.append(f"{prefix}{which}_proj_weight")
                dims.append(0)
                maps.append(per_head)
        if block.in_proj_bias is not None:
            names.append(prefix + "in_proj_bias")
            dims.append(0)
            maps.append(packed)
        names.append(prefix + "out_proj.weight")
        dims.append(1)
        maps.append(per_head)
        return names, dims, maps, None

    def projection(path: str, linear_only: bool = True):
        try:
            layer = block.get_submodule(path) if isinstance(path, str) and path else None
        except AttributeError:
            return None
        if layer is None or (linear_only and not isinstance(layer, nn.Linear)):
            return None
        return layer if weight_axes(layer) is not None else None

    def found_in(table, linear_only: bool):
        given = [tuple(projections)] if projections is not None else [
            p for p in table if all(projection(n, linear_only) is not None for n in p)]
        return given[0] if given and all(projection(n, linear_only) is not None for n in given[0]) else None

    if projections is not None and len(projections) == 2:
        return _fused_head_tensors(block, name, prefix, tuple(projections), heads, packing, kv_heads)
    latent = found_in(LATENT_PROJECTION_NAMES, True) if projections is None else None
    if latent is not None and all(isinstance(getattr(block, a, None), int) for a in LATENT_WIDTH_NAMES):
        if packing is not None or kv_heads is not None:
            raise ValueError(f"attention_heads: '{name}' is multi-head latent attention (k and v from one latent, "
                             "expanded per head by its kv_b_proj): drop packing= and kv_heads=")
        return _latent_head_tensors(block, name, prefix, latent, [projection(n) for n in latent], heads)
    if projections is None and found_in(PROJECTION_NAMES, True) is None:
        fused = found_in(FUSED_PROJECTION_NAMES, False)
        if fused is not None:
            return _fused_head_tensors(block, name, prefix, fused, heads, packing, kv_heads)
    found = found_in(PROJECTION_NAMES, True)
    if found is None or len(found) != 4:
        raise TypeError(f"attention_heads: '{name or type(model).__name__}' is a {type(block).__name__}, neither an "
                        "nn.MultiheadAttention nor a block with four nn.Linear projections (or one fused q|k|v "
                        "projection and an output: GPT-2's c_attn, c_proj); pass projections=('q', 'k', 'v', 'out') "
                        "with its layer names (dotted inside the block: BERT's attention takes ('self.query', "
                        "'self.key', 'self.value', 'output.dense')), or projections=('qkv', 'out') for a fused one")
    if packing is not None:
        where = name or type(model).__name__
        raise ValueError(f"attention_heads: packing={packing!r} describes a fused q|k|v layer; '{where}' has separate "
                         f"ones ({', '.join(found)}): drop packing")
    q, k, v, o = (projection(n) for n in found)
    inner = q.out_features
    count, holder, count_holder, attr, width_attr = _head_count(block, name, found[0].rpartition(".")[0], inner, heads)
    kv_width = k.out_features
    if inner % count or v.out_features != kv_width or o.in_features != inner or kv_width > inner or \
            inner % kv_width or kv_width % (inner // count):
        raise ValueError(f"attention_heads: {count} heads need q outputs and the output layer's inputs of one width "
                         f"divisible by {count}, and k, v outputs of that width or (grouped-query attention) of a "
                         f"whole number of those heads dividing it; got {q.out_features}, {k.out_features}, "
                         f"{v.out_features}, {o.in_features}")
    if kv_heads is not None and kv_heads * (inner // count) != kv_width:
        raise ValueError(f"attention_heads: kv_heads={kv_heads}, but '{found[1]}' of '{name}' has {kv_width} outputs: "
                         f"{kv_width // (inner // count)} k/v heads of {inner // count}; drop kv_heads (separate "
                         "layers say it) or give that count")
    # Multi-query attention (one k/v head read by every query head: Gemma-2B): a unit per k/v head would be the whole
    # block, so a unit is a query head instead, its q rows and output columns; k and v, which every head reads, stay
    # whole (no unit's).
    shared_kv = count > 1 and kv_width == inner // count
    kv_heads, q_map, kv_map = _unit_maps(inner, inner if shared_kv else kv_width, count)

    def add_outputs(path: str, layer: nn.Linear, unit_map) -> None:  # (a layer's output rows, its bias's too)
        for tensor in ("weight", "bias") if layer.bias is not None else ("weight",):
            names.append(f"{prefix}{path}.{tensor}")
            dims.append(0)
            maps.append(unit_map)

    for layer, layer_name, unit_map in zip((q, k, v)[:1 if shared_kv else 3], found[:3], (q_map, kv_map, kv_map)):
        add_outputs(layer_name, layer, unit_map)
    q_parent = found[0].rpartition(".")[0]
    per_head = [path for path in (f"{q_parent}.{n}" if q_parent else n for n in PER_HEAD_OUTPUT_NAMES)
                if (layer := projection(path)) is not None and layer.out_features == inner]
    if per_head and kv_heads < count:
        raise ValueError(f"attention_heads: '{name}' has per-head layers {per_head} beside grouped-query attention's "
                         "narrower k and v, a layout symopt does not read")
    for path in per_head:  # (DeBERTa-v2's relative-position projections: a row block per head, as q)
        add_outputs(path, projection(path), q_map)
    names.append(f"{prefix}{found[3]}.weight")
    dims.append(1)
    maps.append(q_map)
    kv_attr = int_attribute(holder, KV_HEAD_COUNT_NAMES)
    return names, dims, maps, {"block": name, "projections": tuple(found), "heads": count, "count_attribute": attr,
                               "per_head_outputs": per_head, "shared_kv": shared_kv,
                               "groups_attribute": int_attribute(holder, KV_GROUP_NAMES) if shared_kv else None,
                               "units": kv_heads, "kv_count_attribute": kv_attr if kv_heads < count else None,
                               "width_attribute": width_attr,
                               "count_holder": count_holder,
                               "inner_width_attribute": _inner_width_attribute(holder, inner)}


def _unit_maps(inner: int, kv_width: int, heads: int):
    """``(units, q map, k/v map)`` of a block whose q outputs (and output-layer inputs) are ``inner`` wide, in
    ``heads`` heads, and whose k and v outputs are ``kv_width`` wide each: which unit each output belongs to.

    Under grouped-query attention (k, v narrower than q: several query heads read one k/v head) a unit is a k/v
    head with the query heads that share it, so that a removed unit leaves no query head without its keys and
    every k/v head keeps the same number of query heads (the block's repeat of k, v stays valid); without it,
    a unit is a head."""
    import torch

    units = kv_width // (inner // heads)
    return units, torch.arange(inner) // (inner // units), torch.arange(kv_width) // (kv_width // units)


def _fused_head_tensors(block: nn.Module, name: str, prefix: str, found, heads, packing=None, kv_heads=None):
    """The head group's tensors of a block whose q, k and v are one projection's outputs (GPT-2's ``c_attn``, an
    ``nn.Linear`` or a transposed ``Conv1D``; Phi-3's ``qkv_proj``, whose k and v are narrower under grouped-query
    attention) before an output projection, packed as ``packing`` says (default: as `FUSED_PROJECTION_NAMES` names
    the pair, else in thirds). Under grouped-query attention (``kv_heads`` k/v heads, or a pair named for it, or a
    block keeping its k/v head count) "per head" packs each k/v head's query heads, then its k, then its v
    (InternLM2's ``wqkv``; one query head a group is GPT-NeoX's q, k, v side by side)."""
    import torch

    try:
        layers = [block.get_submodule(n) for n in found]
    except (AttributeError, TypeError):
        layers = []
    if len(layers) != 2 or any(weight_axes(layer) is None for layer in layers):
        raise TypeError(f"attention_heads: projections={found!r} of '{name}' must name a fused q|k|v projection and "
                        "an output projection, each an nn.Linear or a Conv1D (GPT-2's c_attn, c_proj)")
    qkv, out = layers
    qkv_axis, out_axis = weight_axes(qkv)[0], weight_axes(out)[1]
    inner = out.weight.shape[out_axis]
    if packing is None:
        packing = FUSED_PACKING_BY_CLASS.get(type(block).__name__) or FUSED_PROJECTION_NAMES.get(tuple(found), "thirds")
    outputs = qkv.weight.shape[qkv_axis]
    count, holder, _, attr, width_attr = _head_count(block, name, "", inner, heads)
    if inner % count:
        raise ValueError(f"attention_heads: {count} heads do not divide the {inner} inputs of '{found[1]}' in '{name}'")
    kv_total = _fused_kv_width(holder, name, found, outputs, inner, count, kv_heads)
    # Multi-query attention (one k/v head, every query head's: Falcon-7B's query_key_value, StarCoder's c_attn): a
    # unit per k/v head would be the whole block, so a unit is a query head and the k and v outputs are shared
    # (SHARED: no unit's, kept whole). With one k/v head both packings are q's outputs, then k's, then v's.
    shared_kv = count > 1 and kv_total == inner // count
    if packing == "per shard":
        return _sharded_head_tensors(block, name, prefix, found, qkv, qkv_axis, out_axis, inner, count, attr,
                                     width_attr, holder)
    units, per_unit, kv_per_unit = _unit_maps(inner, inner if shared_kv else kv_total, count)
    if shared_kv:
        packing = "thirds"
        kv_per_unit = torch.full((kv_total,), SHARED)
    # the q, k and v outputs of unit u are all unit u (per head: each unit's outputs side by side, its query heads'
    # then its k's and v's)
    packed = (torch.cat([per_unit, kv_per_unit, kv_per_unit]) if packing == "thirds"
              else torch.arange(outputs) // (outputs // units))
    names, dims, maps = _fused_members(prefix, found, qkv, qkv_axis, out_axis, packed, per_unit)
    kv_attr = int_attribute(holder, KV_HEAD_COUNT_NAMES)
    return names, dims, maps, {"block": name, "projections": tuple(found), "fused": packing, "heads": count,
                               "count_attribute": attr, "units": units, "shared_kv": shared_kv,
                               "groups_attribute": int_attribute(holder, KV_GROUP_NAMES) if shared_kv else None,
                               "kv_count_attribute": kv_attr if units < count else None,
                               "width_attribute": width_attr,
                               "count_holder": "", "inner_width_attribute": _inner_width_attribute(holder, inner)}


def latent_head_widths(block: nn.Module) -> tuple[int, int, int]:
    """``(q, kv_b, o)``: a multi-head latent attention block's rows of q, rows of ``kv_b_proj`` and columns of
    ``o_proj`` per head (see `LATENT_PROJECTION_NAMES`)."""
    nope, rope, value = (getattr(block, a) for a in LATENT_WIDTH_NAMES)
    return nope + rope, nope + value, value


def _latent_head_tensors(block: nn.Module, name: str, prefix: str, found, layers: list, heads):
    """The head group's tensors of a multi-head latent attention block (`LATENT_PROJECTION_NAMES`)."""
    import torch

    q, kv_b, o = layers
    widths = latent_head_widths(block)
    count, holder, _, attr, width_attr = _head_count(block, name, "", o.in_features, heads)
    sizes = (q.out_features, kv_b.out_features, o.in_features)
    if any(size != count * width for size, width in zip(sizes, widths)):
        raise ValueError(f"attention_heads: {count} heads of latent attention need {found[0]}, {found[1]} and "
                         f"{found[2]} widths of {count} × {widths}; got {sizes}")
    names = [f"{prefix}{found[0]}.weight", f"{prefix}{found[1]}.weight", f"{prefix}{found[2]}.weight"]
    dims, maps = [0, 0, 1], [torch.arange(size) // width for size, width in zip(sizes, widths)]
    if q.bias is not None:  # (kv_b_proj and q_b_proj have none in DeepSeek's blocks; a q_proj might)
        names.insert(1, f"{prefix}{found[0]}.bias")
        dims.insert(1, 0)
        maps.insert(1, maps[0])
    return names, dims, maps, {"block": name, "projections": tuple(found), "latent": True, "heads": count,
                               "count_attribute": attr, "units": count, "kv_count_attribute": None,
                               "width_attribute": width_attr, "count_holder": "",
                               "inner_width_attribute": None}


def _fused_members(prefix: str, found, qkv: nn.Module, qkv_axis: int, out_axis: int, fused_map, out_map):
    """``(names, dims, unit maps)`` of a fused block's head group: the fused layer's weight (and bias) along its outputs
    by ``fused_map``, the output layer's weight along its inputs by ``out_map``."""
    names, dims, maps = [f"{prefix}{found[0]}.weight"], [qkv_axis], [fused_map]
    if qkv.bias is not None:
        names.append(f"{prefix}{found[0]}.bias")
        dims.append(0)
        maps.append(fused_map)
    return names + [f"{prefix}{found[1]}.weight"], dims + [out_axis], maps + [out_map]


def sharded_unit_maps(inner: int, heads: int, shards: int):
    """``(units, fused map, output map)`` of the "per shard" packing (`SHARDS_BY_CLASS`): the fused layer's ``3 ·
    inner`` outputs are ``shards`` blocks, each its local heads' q, then v, then k (``inner / shards`` wide each);
    head ``s · heads / shards + j`` is local head ``j`` of shard ``s``, and unit ``j`` is local head ``j`` of every
    shard.

    Examples:
        >>> units, fused, out = sharded_unit_maps(8, 4, 2)     # 2 shards of 2 heads of width 2
        >>> units, fused.tolist(), out.tolist()
        (2, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1])
    """
    import torch

    head_dim, local_heads = inner // heads, heads // shards
    local = torch.arange(3 * inner) % (inner // shards)  # (the offset inside a shard's q, v or k part)
    return local_heads, local // head_dim, (torch.arange(inner) // head_dim) % local_heads


def _sharded_head_tensors(block, name, prefix, found, qkv, qkv_axis, out_axis, inner, count, attr, width_attr,
                          holder):
    """The head group's tensors of a block packed "per shard" (CodeGen: see `SHARDS_BY_CLASS`)."""
    # (transformers 5's CodeGen keeps its shard count in mp_num; before, its forward hard-coded it)
    own = getattr(block, "mp_num", None)
    shards = own if isinstance(own, int) and not isinstance(own, bool) and own > 0 else SHARDS_BY_CLASS[type(block).__name__]
    outputs = qkv.weight.shape[qkv_axis]
    if outputs != 3 * inner or count % shards or inner % count:
        raise ValueError(f"attention_heads: '{name}' splits '{found[0]}' into {shards} shards of its heads' q, v and "
                         f"k, which needs 3 × the {inner} inputs of '{found[1]}' and heads divisible by {shards}; got "
                         f"{outputs} outputs and {count} heads")
    units, fused_map, out_map = sharded_unit_maps(inner, count, shards)
    names, dims, maps = _fused_members(prefix, found, qkv, qkv_axis, out_axis, fused_map, out_map)
    return names, dims, maps, {"block": name, "projections": tuple(found), "fused": "per shard", "shards": shards,
                               "heads": count, "count_attribute": attr, "units": units, "kv_count_attribute": None,
                               "width_attribute": width_attr, "count_holder": "",
                               "inner_width_attribute": _inner_width_attribute(holder, inner)}


def _fused_kv_width(holder: nn.Module, name: str, found, outputs: int, inner: int, count: int, kv_heads) -> int:
    """The width of k's (and v's) outputs in a fused q|k|v projection of ``outputs`` outputs whose q is ``inner``
    wide in ``count`` heads: ``kv_heads`` heads where the caller gives it, else the block's own k/v head count
    (`KV_HEAD_COUNT_NAMES`), else (a pair named for grouped-query attention, `FUSED_GROUPED_QUERY_NAMES`) what the
    outputs leave, else q's width. Why not always what the outputs leave: 2 × the inner width is also a
    cross-attention's k and v alone (GPT-2's ``c_attn`` with ``add_cross_attention``), which has no head budget
    here; the width is read from the outputs only where the names or a count say the block is grouped."""
    head_dim = inner // count
    own = int_attribute(holder, KV_HEAD_COUNT_NAMES)
    told = kv_heads if kv_heads is not None else getattr(holder, own) if own is not None else None
    if told is not None:
        where = f"kv_heads={told}" if kv_heads is not None else f"its {own}={told}"
        if count % told:
            raise ValueError(f"attention_heads: {where} does not divide the {count} query heads of '{name}' (each k/v "
                             "head is read by the same number of query heads); give kv_heads= dividing them")
        if outputs != inner + 2 * told * head_dim:
            raise ValueError(f"attention_heads: '{found[0]}' of '{name}' has {outputs} outputs, but {where} of "
                             f"{head_dim} gives q, k, v {inner} + 2 × {told * head_dim} = "
                             f"{inner + 2 * told * head_dim}; give the kv_heads= the layer was built with")
        return told * head_dim
    grouped = tuple(found) in FUSED_GROUPED_QUERY_NAMES
    kv_total = (outputs - inner) // 2 if grouped else inner
    if outputs != inner + 2 * kv_total or not 0 < kv_total <= inner or inner % kv_total or kv_total % head_dim:
        raise ValueError(f"attention_heads: the fused projection '{found[0]}' of '{name}' has {outputs} outputs, not "
                         f"3 × the {inner} inputs of '{found[1]}' (q, k and v of one width each"
                         + (", or k and v a whole number of its heads dividing it" if grouped else "")
                         + "); for grouped-query attention (narrower k and v) give kv_heads=, the k/v head count; a "
                         "cross-attention block (k, v only) has no head budget here")
    return kv_total


def _head_count(block: nn.Module, name: str, q_parent: str, inner: int, heads):
    """A block's head count: ``(count, the module holding it, that module's path in the block, the attribute
    holding it or None, the width attribute it follows from where no count attribute holds it, or None)``. The counts live on the block, or (BERT)
    on the child that holds q, k and v."""
    count_holder = next((path for path in dict.fromkeys(("", q_parent))
                         if int_attribute(block.get_submodule(path), HEAD_COUNT_NAMES + HEAD_WIDTH_NAMES) is not None),
                        "")
    holder = block.get_submodule(count_holder)
    attr = int_attribute(holder, HEAD_COUNT_NAMES)
    # (Hugging Face's attention modules keep no head count: they reshape by their int head_dim and let the
    # count follow from the width, so that count is the q width over head_dim, and export lowers nothing)
    width_attr = int_attribute(holder, HEAD_WIDTH_NAMES)
    head_dim = getattr(holder, width_attr) if width_attr is not None else None
    from_head_dim = (isinstance(head_dim, int) and not isinstance(head_dim, bool) and head_dim > 0
                     and inner % head_dim == 0)
    count = (heads if heads is not None else getattr(holder, attr) if attr is not None
             else inner // head_dim if from_head_dim else None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"attention_heads: give heads= (the head count of '{name}'), or keep it in one of its "
                         f"attributes {HEAD_COUNT_NAMES} (or its head width in head_dim)")
    if attr is None and from_head_dim and count != inner // head_dim:
        raise ValueError(f"attention_heads: heads={count} disagrees with '{name}'s {width_attr}={head_dim} "
                         f"({inner // head_dim} heads of q's {inner} outputs); give heads={inner // head_dim} or leave "
                         "heads= out")
    return count, holder, count_holder, attr, width_attr if attr is None and from_head_dim else None


def _inner_width_attribute(holder: nn.Module, inner: int) -> str | None:
    """The attribute holding all heads' width that export lowers (an attribute of such a name that is not
    q's width is not that one)."""
    attribute = int_attribute(holder, INNER_WIDTH_NAMES)
    return attribute if attribute is not None and getattr(holder, attribute) == inner else None


def tie(model: nn.Module, names: Sequence[str], strength: float | str = "auto", **kwargs) -> Handle:
    r"""$θ_1 = … = θ_k$ for the dotted ``names`` in ``model``, by the exact penalty $λ\sum_{j≥2}‖θ_j - θ_1‖_1$.

    The first name is the anchor, stored as is; every later copy is $θ_j = θ_1 + u_j ⊙ v_j$, and the
    mirrors $(u_j, v_j) → -(u_j, v_j)$ fix $θ_j = θ_1$. Exact once
    $λ > \max_{j≥2} ‖∇_{θ_j}ℓ(θ^*)‖_∞$. See [`Tied`][symopt.Tied].

    Args:
        model: the module that owns every tied parameter (or a common ancestor).
        names: two or more dotted parameter names, of one dtype and device, each of the anchor's
            shape or (2-d) of its transpose: ``["enc.weight", "dec.weight"]`` with shapes 16×64 and
            64×16 ties the decoder to the encoder's transpose.
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ a running multiplier estimate.
        **kwargs: ``margin`` (of ``"auto"``, > 1), ``seed``, ``transpose`` (True: tie square
            matrices as transposes; False: refuse transposed shapes), ``total_steps`` (the tie lands
            exactly at ``ramp[1]·total_steps``, default 75%: see [`Tied`][symopt.Tied]) and ``ramp``.

    Returns:
        Handle: the registered constraint. ``module.<name>`` keeps its value; its parameter is
            replaced by the factors, so build the optimizer afterwards.

    Raises:
        TypeError: ``names`` is a single string.
        ValueError: fewer than two names, a name repeated, shapes that match in no orientation,
            tensors that differ in dtype or device, or one already constrained; nothing is changed.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        >>> symopt.tie(net, ["0.bias", "1.bias"], strength=1.0).name
        '0.bias, 1.bias'
    """
    if isinstance(names, str):
        raise TypeError("tie: pass a list of at least two parameter names, e.g. ['enc.weight', 'dec.weight']")
    return constrain(model, list(names), Tied(strength, **kwargs))



def _entries(kind, verb: str, module: nn.Module, name, strength, kwargs: dict) -> Handle:
    """An entry kind on one name, or one budget pooled over a list of names."""
    if isinstance(name, str):
        return constrain(module, name, kind(strength, **kwargs))
    return constrain(module, name, _pooled(kind, verb, strength, **kwargs))


def _pooled(kind, verb: str, strength, *, max_nonzero=None, density=None, adapt_rate: float = RATE,
            seed: int = 0, total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75),
            land_on_the_way: bool | None = None) -> Pooled:
    """One budget over the tensors of a list of names (``symopt.constraints.pooled``)."""
    budget = entry_budget(max_nonzero, density, kind.__name__)
    if budget is None:
        raise ValueError(f"{verb}: a list of names shares one budget — give max_nonzero= or density=; for one λ "
                         f"on several tensors call symopt.{verb} on each name")
    kind(1.0, seed=seed)  # the seed checked now
    return Pooled(functools.partial(kind, 1.0, seed=seed), budget, strength=strength, adapt_rate=adapt_rate,
                  total_steps=total_steps, ramp=ramp, land_on_the_way=land_on_the_way)
