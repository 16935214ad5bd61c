"""Layer 3 — [`export`][symopt.export]: a trained constrained model → plain PyTorch modules, dense or physically
compressed, and [`footprint`][symopt.footprint] to measure what that bought (stored numbers, bytes, forward time).

The constraints guarantee *structure* (zeros, low rank, dead channels); only a different architecture
turns structure into fewer multiply-adds. ``mode="compressed"`` rewrites, on a copy:

* low rank $W = AB$ (rank r) — Linear → ``Linear(n, r) ∘ Linear(r, m)``; ConvNd → ConvNd with r
  output channels (same kernel, stride, padding) ∘ 1×1 ConvNd; Embedding → ``Embedding(N, r)`` ∘
  ``Linear(r, d)``. Only when ``r (m + n) < m n`` (otherwise the factors cost more than W).
* dead output units / channels (group sparsity with ``dim=0``) — removed through the model's
  ``torch.fx`` graph ([`symopt.surgery`][symopt.surgery]): every consumer loses the matching inputs, through
  activations, pooling, Flatten (a channel is a block of features), BatchNorm and per-channel PReLU
  (their entries go too), residual additions (a unit goes from every branch or none), concatenations
  and functional forwards. A dead unit still emits a constant ``act(bias)``; it is folded into each
  consumer's bias (exact for a Linear and an unpadded conv; behind zero padding only a constant 0 can
  go). The outputs are compared before and after on ``example_input`` (or an input built from the first
  layer) and the rewrite is undone if they moved. Where nothing traces around a feed-forward block's first
  layer, its dead units leave through the layer that reads them, found by name (``FEED_FORWARD_PAIRS``: OPT's
  and BART's ``fc1`` / ``fc2``), and only where the outputs are compared and do not move.
* dead attention heads ([`symopt.attention_heads`][symopt.attention_heads]) — a
  [`HeadPrunedAttention`][symopt._attention.HeadPrunedAttention] in place of the
  ``nn.MultiheadAttention``, with the removed heads' constant outputs folded into the output bias.
* a tie — one parameter: each later copy *is* the anchor's parameter, or for a transposed tie
  (decoder = encoderᵀ) a plain ``torch.nn.utils.parametrize`` view of it ([`Transposed`][symopt.export.Transposed]).
* N:M sparsity (2:4) on a Linear — the semi-structured layout GPUs accelerate
  (``torch.sparse.to_sparse_semi_structured``) for a CUDA float16 / bfloat16 weight; elsewhere dense,
  holding the exact pattern (and said so in the warning).
* elementwise sparsity on a Linear — a CSR weight ([`SparseLinear`][symopt.SparseLinear]) where a timed forward on
  this device says CSR is the faster (on 2 CPU cores it won below ~15% density, see docs/embedding.md),
  or below a fixed ``csr_max_density``.

Anything else stays dense and is listed in one [`ExportWarning`][symopt.ExportWarning], with the reason: group
sparsity along other axes, units that reach an op the analysis does not know (LayerNorm, slicing,
attention, a model output, a read of their shape), grouped convolutions, sparse convs, a model fx
cannot trace with no module around the layer that it can (where the model does not trace, the nearest
enclosing block that does is rewritten on its own; units leaving it stay).

A Hugging Face model's ``config`` is rewritten where one config describes the compressed layers (every
head-pruned block kept the same head counts, every narrowed FFN the same width; checked by building the
model from it on the meta device,
[`symopt.layout`][symopt.layout.config_describing]); otherwise its ``save_pretrained`` refuses, and
[`symopt.save_pretrained`][symopt.save_pretrained] records the layers the config does not describe.
"""

from __future__ import annotations

import copy
import numbers
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._attention import (CONFIG_HEADS, HeadPrunedAttention, keep_alibi_rows, keep_position_bias_rows,
                         set_own_config_counts, takes_alibi, takes_per_head_bias, takes_position_bias)
from ._layers import FEED_FORWARD_PAIRS  # noqa: F401 - (the table export reads: symopt.export.FEED_FORWARD_PAIRS)
from ._layers import LAYER_TYPES, ExpertLayout, expert_layout, feed_forward_partner, narrowed, output_axis, outputs_first
from .attach import guard_save_pretrained, list_constraints
from . import layout, surgery
from .constraints.base import density_count
from .finalize import finalize
from .verbs import (HEAD_COUNT_NAMES, KV_HEAD_COUNT_NAMES, MAYBE_INNER_WIDTH_NAMES, int_attribute, latent_head_widths,
                    sharded_unit_maps)

MODES = ("dense", "compressed")
SPARSE_FORMATS = ("auto", "csr", "dense")

class ExportWarning(UserWarning):
    """A constrained tensor stayed dense in ``mode="compressed"`` (the message says why).

    E.g. a low-rank factorisation that would store more numbers than the dense weight, a sparse
    weight where CSR measured slower than dense, or a dead unit whose consumer cannot fold it.

    Examples:
        >>> import torch, symopt, warnings
        >>> lin = torch.nn.Linear(4, 4)
        >>> _ = symopt.low_rank(lin, "weight", strength=1e-3)      # full rank: factors would be larger
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = symopt.export(lin, mode="compressed")
        >>> caught[0].category is symopt.ExportWarning
        True
    """


class SparseLinear(nn.Module):
    r"""$y = x W^\top + b$ with ``W`` stored as a CSR tensor (inference; built by [`export`][symopt.export]).

    Stores ``nnz`` values plus ``nnz + out + 1`` indices instead of $\mathrm{out} × \mathrm{in}$ numbers. On a
    2-core CPU the sparse product was the faster below about 15% density and slower at 20%
    (``benchmarks/RESULTS.md``), hence [`export`][symopt.export] times both layouts before choosing.

    Args:
        weight: the ``(out, in)`` weight; converted to CSR (zeros are not stored).
        bias: the ``(out,)`` bias, or None.

    Examples:
        >>> import torch, symopt
        >>> W = torch.tensor([[0.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
        >>> layer = symopt.SparseLinear(W, torch.zeros(3))
        >>> layer(torch.tensor([[1.0, 1.0]])).tolist()
        [[2.0, 0.0, 1.0]]
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with warnings.catch_warnings():  # "sparse CSR support is in beta" is not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).transpose(0, 1)
        out = self.weight @ flat if self.bias is None else torch.addmm(self.bias.unsqueeze(1), self.weight, flat)
        return out.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # A CSR buffer cannot be copied into in place when the sparsity pattern differs: replace it.
        key = prefix + "weight"
        if key not in state_dict:
            return super()._load_from_state_dict(state_dict, prefix, *args)
        incoming = state_dict[key]
        own = self._buffers.pop("weight")
        try:
            super()._load_from_state_dict({k: v for k, v in state_dict.items() if k != key}, prefix, *args)
        finally:
            self._buffers["weight"] = own
        self.weight = incoming.to(own.device).to_sparse_csr()

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={nnz} ({nnz / max(1, self.weight.shape[0] * self.weight.shape[1]):.1%}), "
                f"bias={self.bias is not None}")


# -- the public functions ----------------------------------------------------------------------
def export(model: nn.Module, mode: str = "dense", *, tol: float = 1e-6, force: bool = False,
           sparse_format: str = "auto", csr_max_density: float | None = None, example_input=None) -> nn.Module:
    """A copy of ``model`` with every constraint snapped exactly and removed; ``model`` is untouched.

    ``mode="dense"``: the same architecture with plain parameters holding the exact constrained
    values ([`symopt.finalize`][symopt.finalize] on a copy), so its ``state_dict`` loads into an unconstrained
    instance of the original class. ``mode="compressed"``: additionally rewrites layers so the
    structure saves parameters and time (see the module docstring for what is rewritten and what is
    not; what stays dense is listed in one [`ExportWarning`][symopt.ExportWarning]). Outputs agree with the dense
    export to rounding.

    Args:
        model: the trained, constrained model; it is deep-copied, never changed.
        mode: ``"dense"`` or ``"compressed"``.
        tol: snap tolerance, as in [`symopt.finalize`][symopt.finalize] (also decides which singular values count
            toward the rank of a factorised layer).
        force: snap even where a linear or budgeted constraint is farther than ``tol``.
        sparse_format: for elementwise-sparse Linear weights: ``"auto"`` (CSR where it is faster),
            ``"csr"`` (always) or ``"dense"`` (never).
        csr_max_density: how ``"auto"`` decides. None (default): it times a forward of both layouts
            on this device (a batch of 64) and keeps the faster. A number in [0, 1]: CSR when the
            non-zeros are at most ``max(1, round(csr_max_density · numel))``, the rounding a
            ``density=`` budget uses, so a budget that landed at that density gets CSR.
        example_input: a tensor or a tuple of positional inputs on which ``mode="compressed"`` checks
            that removing units left the outputs unchanged (eval mode). Default: an input built from the
            first layer (a Linear's width; a conv's channels at sizes 8, 16, 28, 32, 64, 224; token ids
            for a model whose ``get_input_embeddings()`` is an Embedding); when none fits, the
            ``ExportWarning`` says the check did not run.

    Returns:
        The exported module (in the same train / eval mode as ``model``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: bad arguments, or (from finalize) a constraint that does not hold yet or a
            tensor holding NaN / Inf; ``model`` is untouched either way.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> _ = symopt.low_rank(net, "0.weight", strength=1e-3, max_rank=2)
        >>> small = symopt.export(net, mode="compressed")
        >>> [tuple(m.weight.shape) for m in small[0]]      # 8×8 → (2×8, 8×2)
        [(2, 8), (8, 2)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export: expected an nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"export: mode must be one of {MODES}, got {mode!r}")
    if sparse_format not in SPARSE_FORMATS:
        raise ValueError(f"export: sparse_format must be one of {SPARSE_FORMATS}, got {sparse_format!r}")
    if csr_max_density is not None and (isinstance(csr_max_density, bool) or not isinstance(
            csr_max_density, numbers.Real) or not 0 <= csr_max_density <= 1):
        raise ValueError(f"export: csr_max_density must be None or a number in [0, 1], got {csr_max_density!r}")
    if example_input is not None and not isinstance(example_input, (Tensor, tuple)):
        raise TypeError(f"export: example_input must be a tensor or a tuple of inputs, got {type(example_input).__name__}")
    names = {id(m): name for name, m in model.named_modules()}
    plan = [(names[id(member.module)], member.tensor, handle.constraint)
            for handle in list_constraints(model) for member in handle.members]
    exported = copy.deepcopy(model)
    finalize(exported, tol=tol, force=force)  # raises, on the copy only, when a constraint does not hold
    if mode == "dense":
        return exported
    # Each constraint says which structure it has (compressed_structure); a structure without a
    # rewrite, or none (the linear kinds promise values, not a smaller layer), stays dense.
    holder = nn.Module()  # so that a constraint on the root module itself can replace the root
    holder.root = exported
    kept_dense = []
    options = {"tol": tol, "sparse_format": sparse_format, "csr_max_density": csr_max_density,
               "example_input": example_input, "head_counts": [], "unit_widths": [],
               "expert_widths": []}
    with torch.no_grad():
        for structure, rewrite in REWRITES.items():  # in registration order: units first
            targets = [(_qual("root", module_name), tensor, constraint) for module_name, tensor, constraint in plan
                       if constraint.compressed_structure() == structure]
            if targets:
                kept_dense += rewrite(holder, targets, options)
    _describe_in_config(holder.root, options["head_counts"], options["unit_widths"], options["expert_widths"])
    if kept_dense:
        notes = "; ".join(note.removeprefix("root.") for note in kept_dense)
        warnings.warn(f"export(mode='compressed') kept these dense: {notes}", ExportWarning, stacklevel=2)
    return holder.root


@dataclass(frozen=True)
class Footprint:
    """What a model stores and how fast it runs on one input (see [`footprint`][symopt.footprint]).

    Attributes:
        stored: numbers stored: parameter and floating buffer entries, non-zeros for sparse tensors.
        bytes: storage in bytes, including sparse indices.
        forward_seconds: median forward time (no grad).

    Examples:
        >>> import torch, symopt
        >>> fp = symopt.footprint(torch.nn.Linear(4, 3, bias=False).double(), torch.randn(2, 4).double(), repeats=2)
        >>> fp.stored, fp.bytes
        (12, 96)
    """

    stored: int  # numbers stored: parameter and floating buffer entries, non-zeros for sparse tensors
    bytes: int  # storage including sparse indices
    forward_seconds: float  # median forward time


def footprint(model: nn.Module, example_input: Tensor | tuple, repeats: int = 20, warmup: int = 3) -> Footprint:
    """Numbers stored, bytes, and median forward time (no grad) of ``model`` on ``example_input``.

    Use it to compare a model with its [`export`][symopt.export] (``mode="compressed"``): the ratio of
    ``stored`` is the compression, the ratio of ``forward_seconds`` the speed-up on this device.

    Args:
        model: any module (CSR buffers counted by their non-zeros and indices).
        example_input: a tensor, or a tuple of positional inputs.
        repeats: timed forward passes (≥ 1); the median is reported.
        warmup: untimed passes first.

    Returns:
        Footprint: ``stored``, ``bytes``, ``forward_seconds``.

    Raises:
        ValueError: ``repeats`` is not an int ≥ 1.

    Examples:
        >>> import torch, symopt
        >>> symopt.footprint(torch.nn.Linear(4, 3), torch.randn(2, 4), repeats=2).stored
        15
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"footprint: repeats must be an int >= 1, got {repeats!r}")
    stored = size = 0
    for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
        if t.layout == torch.sparse_csr:
            values = t.values()
            stored += values.numel()
            size += values.numel() * values.element_size() + sum(
                i.numel() * i.element_size() for i in (t.crow_indices(), t.col_indices()))
        else:
            stored += t.numel()
            size += t.numel() * t.element_size()
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    device = next(iter(model.parameters()), torch.empty(0)).device
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            seconds = _seconds(model, args, device)
            if i >= warmup:
                times.append(seconds)
    return Footprint(stored, size, statistics.median(times))


def _seconds(module: nn.Module, args: tuple, device: torch.device) -> float:
    """Wall time of one forward, the device's queue drained before and after (CUDA runs async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    module(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# -- rewriting ---------------------------------------------------------------------------------
def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _get(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name) if name else root


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(_get(root, parent_name), leaf, new)


def _clone_conv(conv: nn.Module, in_channels: int, out_channels: int, kernel_size, bias: bool, **overrides):
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=1,
                  padding_mode=conv.padding_mode)
    kwargs.update(overrides)
    return type(conv)(in_channels, out_channels, kernel_size, bias=bias, device=conv.weight.device,
                      dtype=conv.weight.dtype, **kwargs)


def _label(where: str, tensor: str, constraint) -> str:
    return f"{_qual(where, tensor).removeprefix('root.')} ({getattr(constraint, 'kind', type(constraint).__name__)})"


def _shrink_units(holder: nn.Module, targets: list, options: dict) -> list[str]:
    """Remove the dead output units of every target layer at once, through the model's traced graph
    (``symopt.surgery``), then check on an input that the outputs did not move. A mixture of experts' neurons
    (`symopt._layers.expert_layout`) leave their fused expert tensors first (`_shrink_experts`)."""
    in_experts = [t[1] in getattr(expert_layout(_get(holder, t[0])), "producers", ()) for t in targets]
    experts = [t for t, inside in zip(targets, in_experts) if inside]
    notes = _shrink_experts(holder, experts, options) if experts else []
    targets = [t for t, inside in zip(targets, in_experts) if not inside]
    if not targets:
        return notes
    producers = {}
    # A group spanning a layer's weight and its bias / norm entries (UnitGroups) removes those entries
    # along with the weight's units: they need no rewrite of their own.
    with_weight = {id(c) for where, tensor, c in targets
                   if tensor == "weight" and output_axis(_get(holder, where)) is not None}
    for where, tensor, constraint in targets:
        layer, label = _get(holder, where), _label(where, tensor, constraint)
        if id(constraint) in with_weight and not (tensor == "weight" and output_axis(layer) is not None):
            continue
        if tensor != "weight" or output_axis(layer) is None:
            notes.append(f"{label}: only Linear / Conv weights are shrunk")
        elif constraint.unit_axis(layer.weight.dim()) != output_axis(layer):
            notes.append(f"{label}: only output units (dim={output_axis(layer)}) are removed")
        elif isinstance(layer, LAYER_TYPES) and not isinstance(layer, nn.Linear) and layer.groups != 1:
            notes.append(f"{label}: grouped convolutions are not rewritten")
        else:
            producers[where.removeprefix("root").removeprefix(".")] = label
    if not producers:
        return notes
    before = copy.deepcopy(holder.root)

    def out_widths() -> dict[str, int]:
        layers = {name: _get(holder, _qual("root", name)) for name in producers}
        return {name: layer.weight.shape[output_axis(layer)] for name, layer in layers.items()}

    widths_before = out_widths()
    scopes, untraced = _traceable_scopes(holder.root, set(producers))
    # Producers with no traced scope, or whose scope is a block that only holds them (DeBERTa-v2's `intermediate`:
    # every dead unit kept as an output of that scope), leave through their feed-forward pair where one is named
    escaped = {_qual(scope, name) for scope, _, plan in scopes if scope for name, reasons in plan.kept.items()
               if set(reasons) == {surgery.OUTPUT_REASON}}
    pairs = _feed_forward_pairs(holder.root, set(untraced) | escaped)
    paired = {name for members in pairs.values() for name in members}
    for name, reason in untraced.items():
        if name not in paired:
            notes.append(f"{producers[name]}: {reason}")
    removed = False
    for scope, view, plan in scopes:
        for name, reason in plan.unread.items():
            notes.append(f"{producers[_qual(scope, name)]}: its dead units are kept: {reason}, and no unit can be "
                         "followed through such a call")
        for name, reasons in plan.kept.items():
            if _qual(scope, name) in paired:
                continue
            counts = {r: reasons.count(r) for r in reasons}
            why = "; ".join(f"{n} because {r}" for r, n in counts.items())
            notes.append(f"{producers[_qual(scope, name)]}: {len(reasons)} dead unit(s) kept: {why}")
        if plan.removed:
            surgery.apply(view, plan)  # (a registered part's stand-in shares its block's layers)
            removed = True
    for consumer, members in pairs.items():
        went, biased = _narrow_feed_forward(holder.root, consumer, members)
        removed = removed or went
        if biased:
            notes += [f"{producers[name]}: {biased} dead unit(s) kept: their bias entries are not 0, and what the "
                      f"activation makes of them reaches '{consumer}' (put the bias in the group: group_sparse over "
                      "the weight and its bias)" for name in members]
    if not removed:
        return notes
    producers = {name: label for name, label in producers.items() if name not in untraced or name in paired}
    checked, problem = surgery.verify(before, holder.root, options["example_input"])
    if problem is not None:
        holder.root = before  # never hand back a model whose outputs moved
        return notes + [f"{label}: units kept, {problem}" for label in producers.values()]
    if not checked and (pairs or any(scope or view is not holder.root for scope, view, _ in scopes)):
        # a block's own forward stood in for the model's graph: without a comparison nothing shows that
        # the model calls the block that way, so the rewrite is not handed back unchecked
        holder.root = before
        return notes + [f"{label}: units kept: the model does not trace and its outputs could not be compared "
                        "(pass example_input=)" for label in producers.values()]
    if not checked:
        notes.append("dead units were removed but the outputs were not compared (no input of a size the "
                     "model accepts could be built: pass example_input=)")
    widths = out_widths()
    _lower_width_attributes(holder.root, widths_before, widths)
    options["unit_widths"] += list(widths.values())  # (what a Hugging Face config would have to say)
    return notes


# The width of a mixture of experts' narrowed tensors is a multiple of this many neurons (or stays whole): grouped
# matrix products (torch's grouped_mm, transformers' default experts kernel) need each row of a weight to span a
# multiple of 16 bytes, 8 entries in bfloat16 (in float32 four; 8 keeps a model cast after export working).
EXPERT_WIDTH_MULTIPLE = 8


def _shrink_experts(holder: nn.Module, targets: list, options: dict) -> list[str]:
    """Remove dead neurons from a mixture of experts' fused tensors: every expert keeps as many neurons as the expert
    that keeps most (the tensors hold one width for all), rounded up to a multiple of `EXPERT_WIDTH_MULTIPLE`: its
    live ones and, to fill up, its first dead ones (whose gate, up and bias entries are 0, so they add nothing where
    the activation maps 0 to 0: export's check of the outputs undoes the rewrite where it does not). Returns notes
    on what stayed."""
    notes, widths, narrowings = [], [], []
    for where in dict.fromkeys(where for where, _, _ in targets):
        module = _get(holder, where)
        found = expert_layout(module)
        label = where.removeprefix("root.")
        kept, biased = _live_experts(module, found)
        if biased:
            notes.append(f"{label}: {biased} dead expert neuron(s) kept: their bias entries are not 0 (put "
                         f"'{found.producer}_bias' in the group)")
        widths.append(found.width if kept is None else kept.shape[1])
        if kept is not None:
            narrowings.append((module, found, label, kept))
    if narrowings:
        before = copy.deepcopy(holder.root)  # (copied only where a rewrite will be checked against it)
        for module, found, _, kept in narrowings:
            _narrow_experts(module, found, kept)
        checked, problem = surgery.verify(before, holder.root, options["example_input"])
        if problem is not None or not checked:
            holder.root = before  # never hand back a model whose outputs moved, or that no input showed unmoved
            why = problem if problem is not None else "its outputs could not be compared (pass example_input=)"
            return notes + [f"{label}: expert neurons kept, {why}" for _, _, label, _ in narrowings]
    options["expert_widths"] += widths  # (what a Hugging Face config would have to say)
    return notes


def _live_experts(module: nn.Module, found: ExpertLayout) -> tuple[Tensor | None, int]:
    """``(kept, biased)``: per expert of ``module`` (laid out as ``found`` says), the neurons its narrowed tensors keep,
    ``(experts, width)``, in order: its live ones, then its first dead ones up to the largest count of live neurons of
    any expert (one at least), rounded up to a multiple of `EXPERT_WIDTH_MULTIPLE` (None where that is every neuron);
    and how many neurons had dead weight rows but a bias entry not 0 (kept: live)."""
    producer = getattr(module, found.producer).detach()
    rows = producer.transpose(1, 2) if found.transposed else producer  # (experts, outputs, inputs)
    zero_rows = (rows == 0).all(dim=2)
    bias = getattr(module, f"{found.producer}_bias").detach() if found.bias else None
    with_bias = zero_rows & (bias == 0) if bias is not None else zero_rows

    def per_neuron(flags: Tensor) -> Tensor:  # (experts, outputs) → (experts, width): all of a neuron's rows
        if not found.gated:
            return flags
        return flags[:, 0::2] & flags[:, 1::2] if found.interleaved else flags[:, :found.width] & flags[:, found.width:]

    dead, rows_dead = per_neuron(with_bias), per_neuron(zero_rows)
    biased = int((rows_dead & ~dead).sum())
    live = max(int((~dead).sum(dim=1).max()), 1)
    width = min(found.width, -(-live // EXPERT_WIDTH_MULTIPLE) * EXPERT_WIDTH_MULTIPLE)
    if width == found.width:
        return None, biased
    rank = torch.where(dead, found.width, 0) + torch.arange(found.width)
    return rank.argsort(dim=1)[:, :width].sort(dim=1).values, biased


def _narrow_experts(module: nn.Module, found: ExpertLayout, kept: Tensor) -> None:
    """Narrow ``module``'s expert tensors (laid out as ``found`` says) to the neurons ``kept`` of each expert
    (`_live_experts`): the producer's rows, their bias entries and ``down_proj``'s inputs, and the module's record of
    its width."""
    out_axis, in_axis = (2, 1) if found.transposed else (1, 2)
    producer_rows = torch.stack([found.kept_rows(k) for k in kept])  # (experts, outputs kept)

    def gathered(tensor: Tensor, index: Tensor, axis: int) -> Tensor:
        shape = list(tensor.shape)
        shape[axis] = index.shape[1]
        view = [index.shape[0]] + [1] * (tensor.dim() - 1)
        view[axis] = index.shape[1]
        return tensor.gather(axis, index.view(view).expand(shape))

    new = {found.producer: gathered(getattr(module, found.producer).detach(), producer_rows, out_axis),
           found.consumer: gathered(getattr(module, found.consumer).detach(), kept, in_axis)}
    if found.bias:
        new[f"{found.producer}_bias"] = gathered(getattr(module, f"{found.producer}_bias").detach(), producer_rows, 1)
    for name, value in new.items():
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    for attribute in ("intermediate_dim", "expert_dim", *layout.FFN_WIDTH_NAMES):
        if getattr(module, attribute, None) == found.width:
            setattr(module, attribute, kept.shape[1])


def _feed_forward_pairs(root: nn.Module, untraced) -> dict[str, list[str]]:
    """``{consumer: its producers}`` for the ``untraced`` producers (`_traceable_scopes`) that
    `symopt._layers.FEED_FORWARD_PAIRS` pairs with a dense layer reading exactly their outputs."""
    pairs: dict[str, list[str]] = {}
    for name in sorted(untraced):
        partner = feed_forward_partner(root, name)
        if partner is not None:
            pairs.setdefault(partner, []).append(name)
    return pairs


def _narrow_feed_forward(root: nn.Module, consumer: str, producers: list[str]) -> tuple[bool, int]:
    """Remove the hidden units dead in every one of ``producers`` (weight rows and bias entries 0) from them and from
    ``consumer``'s inputs (see `FEED_FORWARD_PAIRS`). Returns whether any went (one unit stays at least), and how
    many units had dead weight rows but a bias entry that is not 0 (kept: their constant is the activation's)."""
    layers = [_get(root, name) for name in producers]
    dead = rows_dead = None
    for layer in layers:
        rows = (outputs_first(layer).detach() == 0).all(dim=1)
        here = rows & (layer.bias.detach() == 0) if layer.bias is not None else rows
        dead = here if dead is None else dead & here
        rows_dead = rows if rows_dead is None else rows_dead & rows
    biased = int((rows_dead & ~dead).sum())
    if bool(dead.all()):
        dead[0] = False
    if not bool(dead.any()):
        return False, biased
    kept = (~dead).nonzero().reshape(-1)
    for name, layer in zip(producers, layers):
        _set(root, name, narrowed(layer, outputs=kept))
    _set(root, consumer, narrowed(_get(root, consumer), inputs=kept))
    return True, biased


def _lower_width_attributes(root: nn.Module, before: dict[str, int], after: dict[str, int]) -> None:
    """A block that records its hidden width (a Hugging Face MLP's ``intermediate_size``) says the new one
    when every narrowed layer in it has the same new width, as a head export lowers ``num_heads``."""
    by_block: dict[str, set] = {}
    for name, width in after.items():
        by_block.setdefault(name.rpartition(".")[0], set()).add((before[name], width))
    for block_name, changes in by_block.items():
        if len(changes) != 1:
            continue
        (old, new), = changes
        if old == new:
            continue
        block = _get(root, block_name)
        for attribute in layout.FFN_WIDTH_NAMES:
            if getattr(block, attribute, None) == old:
                setattr(block, attribute, new)


def _traceable_scopes(root: nn.Module, producers: set[str]) -> tuple[list[tuple[str, nn.Module, surgery.Plan]], dict[str, str]]:
    """The removal plans for ``producers`` (module names under ``root``): one over the whole model where
    ``torch.fx`` traces it. A producer it does not trace, or whose calls its graph does not show (it runs
    inside a module fx records as one call, as it does torch.nn's own layers), is planned over its
    outermost enclosing module whose graph calls it: a module that traces (a Hugging Face model's forward
    does not, its MLP blocks do) or whose registered part does (`surgery.register_traceable_part`: an
    ``nn.TransformerEncoderLayer``'s or a BERT layer's feed-forward). Producers with one scope are planned
    together; units that leave a scope count as reaching an output, so they stay. Returns ``[(scope, the
    module the plan applies to, plan)]`` (scope ``""`` is the root) and ``{producer: why it has no plan}``."""
    plans, pending, root_error = [], set(producers), None
    try:
        view, graph = surgery.traceable(root)
        plan = surgery.plan_removal(view, producers, graph)
        plans, pending = [("", view, plan)], plan.unseen
    except Exception as error:  # noqa: BLE001 - fx raises many types on a forward it cannot trace
        root_error = f"{type(error).__name__}: {error}"
    if not pending:
        return plans, {}
    traced: dict[str, tuple[nn.Module, torch.fx.Graph, set[str]] | None] = {}

    def traced_scope(scope: str):
        """(view, graph, the modules its graph calls) of the module at ``scope``; None where it does not trace."""
        if scope not in traced:
            try:
                view, graph = surgery.traceable(root.get_submodule(scope))
                traced[scope] = view, graph, {n.target for n in graph.nodes if n.op == "call_module"}
            except Exception:  # noqa: BLE001
                traced[scope] = None
        return traced[scope]

    def calls(scope: str, name: str) -> bool:
        found = traced_scope(scope)
        return found is not None and name.removeprefix(f"{scope}.") in found[2]

    chosen: dict[str, str] = {}  # producer → its scope
    untraced: dict[str, str] = {}
    for name in sorted(pending):
        # the outermost enclosing scope whose graph calls the layer: a scope that only holds it (a Hugging Face
        # BERT layer's `intermediate`) would send its units out as outputs, where the next one up (the layer's
        # registered feed-forward part) shows their consumer
        ancestors = [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)]
        scope = next((s for s in reversed(ancestors) if calls(s, name)), "")
        if scope:
            chosen[name] = scope
        elif root_error is not None:
            untraced[name] = (f"torch.fx cannot trace {type(root).__name__} ({root_error}) nor a module around this "
                              "layer, so the consumers of its units are unknown")
        else:
            untraced[name] = (f"it runs inside a module that torch.fx records as one call in {type(root).__name__}'s "
                              "graph, and no module around it traces, so the consumers of its units are unknown")
    for scope in sorted(set(chosen.values())):
        view, graph, _ = traced[scope]
        members = {name.removeprefix(f"{scope}.") for name, s in chosen.items() if s == scope}
        try:
            plan = surgery.plan_removal(view, members, graph)
        except Exception as error:  # noqa: BLE001
            untraced.update({_qual(scope, n): f"torch.fx cannot trace {scope} ({type(error).__name__}: {error})"
                             for n in members})
            continue
        plans.append((scope, view, plan))
    return plans, untraced


def _rank(matrix: Tensor, tol: float) -> tuple[int, Tensor, Tensor, Tensor]:
    U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)
    floor = max(tol, float(S[0]) * max(matrix.shape) * torch.finfo(S.dtype).eps if S.numel() else 0.0)
    return int((S > floor).sum()), U, S, Vh


def _factorise(root: nn.Module, module_name: str, tensor: str, constraint, tol: float) -> list[str]:
    layer = _get(root, module_name)
    where = _qual(module_name, tensor)
    supported = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    if tensor != "weight" or not isinstance(layer, supported) or constraint.matrix(layer.weight).dim() != 2:
        return [f"{where} (low_rank): only Linear / Conv / Embedding weights in the flatten layout are factorised"]
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and layer.groups != 1:
        return [f"{where} (low_rank): grouped convolutions are not rewritten"]
    if isinstance(layer, nn.Embedding) and (layer.max_norm is not None or layer.sparse):
        return [f"{where} (low_rank): an Embedding with max_norm / sparse gradients is not rewritten"]
    W = layer.weight
    matrix = W.reshape(W.shape[0], -1)
    m, n = matrix.shape
    r, U, S, Vh = _rank(matrix, tol)
    if r * (m + n) >= m * n:
        return [f"{where} (low_rank): rank {r} of a {m}×{n} matrix — factors would not be smaller"]
    root_s = S[:r].sqrt()
    left, right = U[:, :r] * root_s, root_s.unsqueeze(1) * Vh[:r]  # W = left @ right
    kw = dict(device=W.device, dtype=W.dtype)
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(n, r, bias=False, **kw), nn.Linear(r, m, bias=layer.bias is not None, **kw)
        first.weight.copy_(right)
        second.weight.copy_(left)
    elif isinstance(layer, nn.Embedding):
        first = nn.Embedding(layer.num_embeddings, r, padding_idx=layer.padding_idx, **kw)
        second = nn.Linear(r, n, bias=False, **kw)
        first.weight.copy_(left)
        second.weight.copy_(right.T)
    else:
        first = _clone_conv(layer, layer.in_channels, r, layer.kernel_size, bias=False)
        second = _clone_conv(layer, r, m, 1, bias=layer.bias is not None, stride=1, padding=0, dilation=1,
                             padding_mode="zeros")
        first.weight.copy_(right.reshape(r, *W.shape[1:]))
        second.weight.copy_(left.reshape(m, r, *([1] * (W.dim() - 2))))
    if getattr(layer, "bias", None) is not None:
        second.bias.copy_(layer.bias)
    new = nn.Sequential(first, second).train(layer.training)
    _set(root, module_name, new)
    return []


def _sparsify(root: nn.Module, module_name: str, tensor: str, sparse_format: str,
              max_density: float | None) -> list[str]:
    layer = _get(root, module_name)
    where = _qual(module_name, tensor).removeprefix("root.")
    if sparse_format == "dense":
        return []
    if tensor != "weight" or type(layer) is not nn.Linear:
        return [f"{where} (sparse): only Linear weights get a CSR layout"]
    nonzeros, numel = int((layer.weight != 0).sum()), layer.weight.numel()
    if sparse_format == "auto" and max_density is not None and nonzeros > density_count(max_density, numel):
        return [f"{where} (sparse): density {nonzeros / numel:.1%} > csr_max_density {max_density:.0%}, where "
                "CSR is slower than dense"]
    sparse = SparseLinear(layer.weight, layer.bias).train(layer.training)
    if sparse_format == "auto" and max_density is None:
        dense_s, csr_s = _time_layouts(layer, sparse)
        if csr_s >= dense_s:
            return [f"{where} (sparse): at density {nonzeros / numel:.1%} CSR measured {csr_s / dense_s:.2f}× "
                    "the dense layer's time here"]
    _set(root, module_name, sparse)
    return []


def _time_layouts(dense: nn.Linear, sparse: SparseLinear, batch: int = 64, repeats: int = 7) -> tuple[float, float]:
    r"""Median seconds of a forward of each layout on a $\mathrm{batch} × \mathrm{in}$ input, interleaved so that the
    machine's load hits both alike (what ``sparse_format="auto"`` decides by)."""
    x = torch.randn(batch, dense.in_features, dtype=dense.weight.dtype, device=dense.weight.device)
    times = ([], [])
    with torch.no_grad():
        for i in range(repeats + 2):
            for layer, record in zip((dense, sparse), times):
                seconds = _seconds(layer, (x,), x.device)
                if i >= 2:  # the first two are warm-up
                    record.append(seconds)
    return statistics.median(times[0]), statistics.median(times[1])


class Transposed(nn.Module):
    r"""A plain ``torch.nn.utils.parametrize`` view $W = A^\top$ (no symopt inside): how a compressed export
    shares one matrix between a layer and another that holds its transpose (a tied decoder)."""

    def forward(self, matrix: Tensor) -> Tensor:
        return matrix.transpose(0, 1)

    def right_inverse(self, value: Tensor) -> Tensor:
        return value.transpose(0, 1)


def _by_constraint(targets: list) -> list[list]:
    """The targets of a multi-tensor constraint grouped together, in registration order (a tie's
    anchor first, an attention group's first tensor first)."""
    groups: dict[int, list] = {}
    for target in targets:
        groups.setdefault(id(target[2]), []).append(target)
    return list(groups.values())


def _share(holder: nn.Module, targets: list, options: dict) -> list[str]:
    """Tied copies become one parameter: a later copy *is* the anchor's parameter (or a transposed
    view of it), so the export stores it once and an update of one is an update of all."""
    notes = []
    for members in _by_constraint(targets):
        (anchor_where, anchor_tensor, constraint) = members[0]
        try:
            shared = getattr(_get(holder, anchor_where), anchor_tensor)
        except AttributeError:  # an earlier rewrite replaced the anchor's layer (factorised it)
            notes.append(f"{_label(anchor_where, anchor_tensor, constraint)}: the tie stays as equal copies, "
                         "because another rewrite replaced the anchor's layer")
            continue
        for index, (where, tensor, _) in enumerate(members[1:], start=1):
            flipped = bool(constraint.transposed and constraint.transposed[index])
            module = _get(holder, where) if _has(holder, where) else None
            current = getattr(module, tensor, None) if module is not None else None
            expected = shared.shape[::-1] if flipped else shared.shape
            if not isinstance(current, Tensor) or tuple(current.shape) != tuple(expected):
                notes.append(f"{_label(where, tensor, constraint)}: kept as its own copy, because another "
                             "rewrite changed its layer or its shape")
                continue
            if flipped:
                parametrize.register_parametrization(module, tensor, Transposed(), unsafe=True)
                module.parametrizations[tensor].original = shared
            else:
                setattr(module, tensor, shared)
    return notes


def _has(root: nn.Module, name: str) -> bool:
    try:
        _get(root, name)
    except AttributeError:
        return False
    return True


def _semi_structured(holder: nn.Module, targets: list, options: dict) -> list[str]:
    """N:M weights in the layout GPUs accelerate (``torch.sparse.to_sparse_semi_structured``): 2:4, on
    CUDA, in float16 / bfloat16. Elsewhere the weight stays dense, holding the exact pattern."""
    notes = []
    for where, tensor, constraint in targets:
        layer, label = _get(holder, where), _label(where, tensor, constraint)
        weight = getattr(layer, tensor)
        if tensor != "weight" or type(layer) is not nn.Linear:
            notes.append(f"{label}: only a Linear's weight gets the semi-structured layout; kept dense")
            continue
        if (constraint.n, constraint.m) != (2, 4) or weight.device.type != "cuda" or \
                weight.dtype not in (torch.float16, torch.bfloat16):
            notes.append(f"{label}: the semi-structured layout needs a 2:4 weight on CUDA in float16 / bfloat16 "
                         f"(this one is {constraint.n}:{constraint.m}, {weight.dtype} on {weight.device.type}); "
                         "kept dense with the exact pattern")
            continue
        try:
            packed = torch.sparse.to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError) as error:  # shape limits of the CUTLASS / cuSPARSELt kernels
            notes.append(f"{label}: to_sparse_semi_structured refused it ({error}); kept dense")
            continue
        layer.weight = nn.Parameter(packed, requires_grad=False)
    return notes


def _prune_heads(holder: nn.Module, targets: list, options: dict) -> list[str]:
    """Attention heads whose value rows or output columns are all zero leave their
    ``nn.MultiheadAttention``, replaced by a [`HeadPrunedAttention`][symopt._attention.HeadPrunedAttention]
    (same call signature). A head whose value rows are zero still writes the constant ``W_o,h b_v,h``
    (softmax weights sum to 1): it is folded into the output bias. The new module is checked against the
    old one on random inputs, weights included, before it goes in."""
    notes = []
    for members in _by_constraint(targets):
        constraint = members[0][2]
        blocks = constraint.attention_blocks or [None]
        # the first tensor of each block (an nn.MultiheadAttention's in-projection), in block order: a
        # global budget spans several blocks, its tensors registered block after block
        layer_of = constraint.sets or [0] * len(members)
        firsts = [next(where for (where, _, _), j in zip(members, layer_of) if j == index)
                  for index in range(len(blocks))]
        for info, where in zip(blocks, firsts):
            if info is not None:
                notes += _prune_block_heads(holder, info, options)
            else:
                notes += _prune_mha_heads(holder, where, constraint)
    return notes


def _prune_mha_heads(holder: nn.Module, where: str, constraint) -> list[str]:
    """The dead heads of the ``nn.MultiheadAttention`` at ``where`` (see `_prune_heads`)."""
    mha = _get(holder, where)
    label = _label(where, "heads", constraint)
    if not isinstance(mha, nn.MultiheadAttention):
        return [f"{label}: heads are removed from nn.MultiheadAttention only"]
    if mha.bias_k is not None or mha.add_zero_attn:
        return [f"{label}: add_bias_kv / add_zero_attn attend to extra keys; heads kept"]
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    v_w = mha.in_proj_weight[2 * E:] if mha._qkv_same_embed_dim else mha.v_proj_weight
    v_b = mha.in_proj_bias[2 * E:] if mha.in_proj_bias is not None else None
    W_o = mha.out_proj.weight
    out_dead, dead = _dead_heads(W_o, v_w, H)
    if bool(dead.all()):
        dead[0] = False  # a layer keeps one head
    if not bool(dead.any()):
        return []
    out_bias = _folded_out_bias(W_o, mha.out_proj.bias, v_b, dead & ~out_dead, d)
    keep = (~dead).nonzero().reshape(-1).tolist()
    new = HeadPrunedAttention(mha, keep, out_bias if (mha.out_proj.bias is not None or bool(out_bias.any())) else None)
    problem = _compare_attention(mha, new)
    if problem is not None:
        return [f"{label}: heads kept, {problem}"]
    _set(holder, where, new.train(mha.training))
    return []


def _dead_heads(W_o: Tensor, v_weight: Tensor | None, heads: int) -> tuple[Tensor, Tensor]:
    """``(heads that write nothing (zero output columns), those or heads that write only a constant (zero value
    rows))``; with ``v_weight`` None (value rows that no head owns alone: multi-query attention's) the first twice."""
    out_dead = W_o.reshape(W_o.shape[0], heads, -1).abs().amax(dim=(0, 2)) == 0
    if v_weight is None:
        return out_dead, out_dead.clone()
    value_dead = v_weight.reshape(heads, -1).abs().amax(dim=1) == 0
    return out_dead, out_dead | value_dead


def _folded_out_bias(W_o: Tensor, out_bias: Tensor | None, v_bias: Tensor | None, constant_heads: Tensor,
                     head_dim: int) -> Tensor:
    """The output bias with the constant $W_o,h · b_v,h$ of every unit in ``constant_heads`` added: a
    head whose value rows are zero attends over the constant rows $b_{v,h}$, and softmax weights sum to 1.
    A unit is one k/v head (``head_dim`` value rows) and the query heads that read it: each writes that
    constant through its own ``head_dim`` columns of $W_o$ (one head each without grouped-query attention)."""
    bias = out_bias.detach().clone() if out_bias is not None else W_o.new_zeros(W_o.shape[0])
    if v_bias is not None:
        out_width = W_o.shape[1] // constant_heads.numel()  # (a unit's columns of W_o)
        for h in constant_heads.nonzero().reshape(-1).tolist():
            columns = W_o[:, h * out_width:(h + 1) * out_width].reshape(W_o.shape[0], -1, head_dim).sum(1)
            bias += columns @ v_bias[h * head_dim:(h + 1) * head_dim]
    return bias


def _prune_block_heads(holder: nn.Module, info: dict, options: dict) -> list[str]:
    """Heads of a hand-written attention block (``info``: its name, projections, head count, its units (k/v heads
    with their query heads under grouped-query attention, else heads) and the attributes holding the counts): its
    q / k / v layers (or its fused q|k|v layer) lose the outputs of dead units, its output layer the inputs, and
    its count attributes go down (a block that reshapes by its ``head_dim`` has none to lower); the model's
    outputs are compared before and after (``example_input`` or a probe) and the rewrite undone if they moved.
    Each projection is an ``nn.Linear`` or a layer storing its weight transposed (GPT-2's ``Conv1D``)."""
    block_name = info["block"]
    label = f"{block_name or 'the model'} (heads)"
    count_attribute, kv_attribute = info["count_attribute"], info.get("kv_count_attribute")
    if count_attribute is None and info.get("width_attribute") is None:
        return [f"{label}: heads kept: the block keeps its head count in no attribute symopt can lower "
                "(num_heads, n_heads, num_attention_heads, n_head) and reshapes by no head_dim"]
    block = _get(holder, _qual("root", block_name))
    counts = _get(block, info.get("count_holder", ""))  # (BERT: the child holding q, k, v keeps the counts)
    if info.get("latent"):
        return _prune_latent_heads(holder, info, options, block, label)
    layers = [_get(block, n) for n in info["projections"]]
    o = layers[-1]
    W_o = outputs_first(o)
    inner = W_o.shape[1]
    units = info.get("units", info["heads"])
    per_unit = info["heads"] // units  # (query heads a unit holds: 1 without grouped-query attention)
    packing = info.get("fused")  # (q, k, v as one layer's outputs: "thirds", or "per head" side by side)
    shared_kv = bool(info.get("shared_kv"))  # (multi-query attention: a unit is a query head, k and v stay whole)
    if packing == "per shard":
        return _prune_sharded_heads(holder, info, options, block, counts, layers, inner, units)
    if packing:
        W_qkv, b_qkv = outputs_first(layers[0]), layers[0].bias
        kv_total = (W_qkv.shape[0] - inner) // 2  # (k's and v's outputs: narrower than q under grouped-query attention)
        kv_width = kv_total if shared_kv else kv_total // units
        if packing == "thirds":
            v_rows = torch.arange(inner + kv_total, W_qkv.shape[0])
        else:  # (each unit's outputs side by side: its query heads', then its k's, then its v's, the last kv_width)
            unit_rows = W_qkv.shape[0] // units
            v_rows = (torch.arange(units)[:, None] * unit_rows + unit_rows - kv_width + torch.arange(kv_width)).reshape(-1)
        v_rows = v_rows.to(W_qkv.device)
        v_weight, v_bias = W_qkv[v_rows], b_qkv[v_rows] if b_qkv is not None else None
    else:
        v_weight, v_bias = outputs_first(layers[2]), layers[2].bias
        kv_width = v_weight.shape[0] // units
    q_width = inner // units  # (a unit's outputs of q and inputs of o; kv_width: its outputs of k and v)
    # (multi-query: the one value head is every head's, so only a head writing nothing leaves)
    out_dead, dead = _dead_heads(W_o, None if shared_kv else v_weight, units)
    if bool(dead.all()):
        dead[0] = False
    head_dim = q_width // per_unit
    kept_units = int((~dead).sum())
    # what a Hugging Face config would have to say for this block (see layout.config_describing)
    kept_kv = 1 if shared_kv else kept_units
    options["head_counts"].append({"heads": kept_units * per_unit, "kv_heads": kept_kv, "head_dim": head_dim})
    if not bool(dead.any()):
        return []
    keep = (~dead).nonzero().reshape(-1)

    def rows_of(width: int) -> Tensor:
        return (keep[:, None] * width + torch.arange(width, device=keep.device)).reshape(-1)

    q_rows, kv_rows = rows_of(q_width), rows_of(kv_width)
    out_bias = _folded_out_bias(W_o, o.bias, v_bias, dead & ~out_dead, kv_width)
    has_bias = o.bias is not None or bool(out_bias.any())
    if has_bias and o.bias is None and not isinstance(o, nn.Linear):
        return [f"{label}: heads kept: dead value rows write a constant that '{info['projections'][-1]}' has no bias "
                "to hold"]
    before = copy.deepcopy(holder.root)
    if packing and shared_kv:  # (the one k/v head's outputs after q's, every kept head's: kept whole)
        rewritten = [torch.cat([q_rows, torch.arange(inner, W_qkv.shape[0], device=q_rows.device)])]
    elif packing == "thirds":
        rewritten = [torch.cat([q_rows, kv_rows + inner, kv_rows + inner + kv_total])]
    elif packing:
        rewritten = [rows_of(q_width + 2 * kv_width)]
    else:
        rewritten = [q_rows] if shared_kv else [q_rows, kv_rows, kv_rows]
    for layer_name, layer, rows in zip(info["projections"][:-1], layers[:-1], rewritten):
        _set(block, layer_name, narrowed(layer, outputs=rows))
    for path in info.get("per_head_outputs", ()):  # (DeBERTa-v2's relative-position projections: rows as q's)
        _set(block, path, narrowed(_get(block, path), outputs=q_rows))
    if not packing:  # (OLMo-2: an RMS norm over all heads' q, and one over k)
        q_parent = info["projections"][0].rpartition(".")[0]
        _narrow_whole_width_norms(block, q_parent, info["projections"][:2], [q_rows, None if shared_kv else kv_rows],
                                  [inner, kv_width * units])
    new_o = narrowed(o, inputs=q_rows)
    if has_bias and new_o.bias is None:  # (an nn.Linear: dead value rows' constant needs the bias it had not)
        new_o.bias = nn.Parameter(out_bias.detach().clone())
    elif has_bias:
        new_o.bias.copy_(out_bias)
    _set(block, info["projections"][-1], new_o)
    if count_attribute is not None:
        setattr(counts, count_attribute, int(keep.numel()) * per_unit)
    if kv_attribute is not None:
        setattr(counts, kv_attribute, kept_kv)
    if info.get("groups_attribute") is not None:  # (multi-query: every kept query head reads the one k/v head)
        setattr(counts, info["groups_attribute"], int(keep.numel()))
    if info.get("inner_width_attribute") is not None:
        setattr(counts, info["inner_width_attribute"], int(q_rows.numel()))
    kept_heads = (keep[:, None] * per_unit + torch.arange(per_unit, device=keep.device)).reshape(-1).tolist()
    own_table = _keep_table_columns(block, info["heads"], kept_heads)
    if not own_table and block_name:
        # (BEiT in transformers 5: the layer holding the block reads its own table and hands the block the bias as
        # its attention mask)
        parent_name, _, leaf = block_name.rpartition(".")
        own_table = _keep_table_columns(_get(holder, _qual("root", parent_name)), info["heads"], kept_heads, skip=leaf)
    if takes_alibi(block):  # (BLOOM: the model's ALiBi tensor holds a row per original head)
        keep_alibi_rows(block, kept_heads, info["heads"])
    if takes_position_bias(block) or (not own_table and takes_per_head_bias(block)
                                      and _has_shared_table(holder.root, info["heads"])):
        # (T5: a position bias of a row per head, handed from block to block; BEiT's shared table: the bias every
        # layer is handed, which the block takes its kept heads' rows of)
        keep_position_bias_rows(block, kept_heads, info["heads"])
    retry = lambda: _own_config_counts(block, int(keep.numel()) * per_unit, kept_kv)  # noqa: E731 - (Phi-3: see there)
    read = f"'{count_attribute}'" if count_attribute is not None else "its head_dim"
    return _verified_heads(holder, before, options, label, int(dead.sum()) * per_unit, retry=retry,
                           widths=(counts, inner, int(q_rows.numel()), info.get("inner_width_attribute")),
                           hint=f" (does the block read its head count from {read}?)")


# RMS norms an attention block applies to q's (k's) whole output, all heads together, before splitting it into heads:
# OLMo-2's q_norm and k_norm, beside the projection they follow. A dead head's outputs are 0, so removing them leaves
# the sum of squares as it was but divides it by fewer entries: export scales the kept outputs by √(kept / all)
# and the norm's weight by the inverse, which gives the same normalised values (the norm's ε included).
WHOLE_WIDTH_NORM_NAMES = {"q": ("q_norm",), "k": ("k_norm",)}


def _narrow_whole_width_norms(block: nn.Module, parent: str, projections, rows: list, widths: list[int]) -> None:
    """For q and k (``projections[:2]``, narrowed already to ``rows``; None: kept whole), a `WHOLE_WIDTH_NORM_NAMES`
    RMS norm beside them in ``parent`` over their whole former ``widths`` keeps its kept rows, rescaled with the
    projection's (see there)."""
    for which, path, kept, width in zip(("q", "k"), projections, rows, widths):
        if kept is None or len(kept) == width:
            continue
        for name in WHOLE_WIDTH_NORM_NAMES[which]:
            where = f"{parent}.{name}" if parent else name
            norm = _get(block, where) if _has(block, where) else None
            weight = getattr(norm, "weight", None)
            if (norm is None or not type(norm).__name__.endswith("RMSNorm") or not isinstance(weight, Tensor)
                    or tuple(weight.shape) != (width,) or getattr(norm, "bias", None) is not None):
                continue
            scale = (len(kept) / width) ** 0.5
            projection = _get(block, path)
            with torch.no_grad():
                projection.weight.mul_(scale)
                if projection.bias is not None:
                    projection.bias.mul_(scale)
            norm.weight = nn.Parameter(weight.detach()[kept.to(weight.device)] / scale, requires_grad=weight.requires_grad)


# Parameters of an attention block that hold a column per head on their last axis: Swin's and BEiT's learned
# relative-position bias, a table of (relative positions, heads) read into a bias per head. Export keeps the kept
# heads' columns (a head's bias only weighs its own values, so a dead head's column goes with it).
PER_HEAD_TABLE_NAMES = ("relative_position_bias_table",)


def _has_shared_table(root: nn.Module, heads: int) -> bool:
    """Whether ``root`` holds a `PER_HEAD_TABLE_NAMES` table of ``heads`` columns that no attention block narrowed:
    one every layer reads (BEiT's ``use_shared_relative_position_bias``)."""
    return any(name.rpartition(".")[2] in PER_HEAD_TABLE_NAMES and table.dim() >= 1 and table.shape[-1] == heads
               for name, table in root.named_parameters())


def _keep_table_columns(module: nn.Module, heads: int, kept_heads: list[int], skip: str | None = None) -> bool:
    """Each `PER_HEAD_TABLE_NAMES` parameter in ``module`` (outside its child ``skip``) whose last axis has ``heads``
    entries keeps the columns ``kept_heads`` (a new parameter, as trainable as the old); whether there was one."""
    found = False
    for path, table in list(module.named_parameters()):
        owner_path, _, leaf = path.rpartition(".")
        if skip is not None and (path == skip or path.startswith(f"{skip}.")):
            continue
        if leaf in PER_HEAD_TABLE_NAMES and table.dim() >= 1 and table.shape[-1] == heads:
            columns = torch.tensor(kept_heads, device=table.device)
            kept = nn.Parameter(table.detach().index_select(-1, columns).clone(), requires_grad=table.requires_grad)
            setattr(module.get_submodule(owner_path), leaf, kept)
            found = True
    return found


def _prune_latent_heads(holder: nn.Module, info: dict, options: dict, block: nn.Module, label: str) -> list[str]:
    """`_prune_block_heads` for multi-head latent attention (`symopt.verbs.LATENT_PROJECTION_NAMES`): a head is dead
    where its columns of the output layer are all 0; q and ``kv_b_proj`` lose its rows, the output layer its columns,
    the latent's layers stay."""
    q, kv_b, o = (_get(block, n) for n in info["projections"])
    widths = latent_head_widths(block)
    heads = info["heads"]
    W_o = outputs_first(o)
    dead = W_o.reshape(W_o.shape[0], heads, -1).abs().amax(dim=(0, 2)) == 0
    if bool(dead.all()):
        dead[0] = False
    kept = (~dead).nonzero().reshape(-1)
    options["head_counts"].append({"heads": int(kept.numel()), "kv_heads": int(kept.numel())})
    if not bool(dead.any()):
        return []

    def rows_of(width: int) -> Tensor:
        return (kept[:, None] * width + torch.arange(width, device=kept.device)).reshape(-1)

    before = copy.deepcopy(holder.root)
    _set(block, info["projections"][0], narrowed(q, outputs=rows_of(widths[0])))
    _set(block, info["projections"][1], narrowed(kv_b, outputs=rows_of(widths[1])))
    _set(block, info["projections"][2], narrowed(o, inputs=rows_of(widths[2])))
    if info["count_attribute"] is not None:
        setattr(block, info["count_attribute"], int(kept.numel()))
    return _verified_heads(holder, before, options, label, int(dead.sum()))


def _verified_heads(holder: nn.Module, before: nn.Module, options: dict, label: str, removed: int,
                    retry: Callable[[], bool] | None = None, widths: tuple | None = None, hint: str = "") -> list[str]:
    """Export's check of a head rewrite of ``holder.root`` (``before``: the model before it), undone where the outputs
    moved; the notes it leaves (``hint`` after the reason a rewrite was undone). Where the check fails, first
    ``retry()`` (a further change to the rewrite; True where it made one) and then, with ``widths = (the module
    holding the counts, q's former width, its new width, an attribute not to touch)``, lowering that module's
    `MAYBE_INNER_WIDTH_NAMES` attributes that said the former width, each checked again."""
    checked, problem = surgery.verify(before, holder.root, options["example_input"])
    if problem is not None and retry is not None and retry():
        checked, problem = surgery.verify(before, holder.root, options["example_input"])
    if problem is not None and widths is not None:
        counts, inner, width, skip = widths
        maybe_width = [n for n in MAYBE_INNER_WIDTH_NAMES if n != skip and int_attribute(counts, (n,)) is not None
                       and getattr(counts, n) == inner]
        if maybe_width:  # (DistilBERT before transformers 5; transformers 5's CodeGen sizes its shards by embed_dim)
            for attribute in maybe_width:
                setattr(counts, attribute, width)
            checked, problem = surgery.verify(before, holder.root, options["example_input"])
    if problem is not None:
        holder.root = before
        return [f"{label}: heads kept, {problem}{hint}"]
    if not checked:
        return [f"{label}: {removed} heads removed but the outputs were not compared (pass example_input=)"]
    return []


def _prune_sharded_heads(holder: nn.Module, info: dict, options: dict, block: nn.Module, counts: nn.Module,
                         layers: list, inner: int, units: int) -> list[str]:
    """`_prune_block_heads` for the "per shard" packing (CodeGen, `symopt.verbs.SHARDS_BY_CLASS`): a unit is one local
    head of every shard, dead where its output columns are all 0 (the landing zeroes every row and column of a unit);
    the fused layer keeps each shard's kept rows in place, the output layer the kept heads' columns."""
    label = f"{info['block'] or 'the model'} (heads)"
    heads, shards = info["heads"], info["shards"]
    _, fused_map, out_map = sharded_unit_maps(inner, heads, shards)
    qkv, o = layers
    W_o = outputs_first(o)
    out_map = out_map.to(W_o.device)
    dead = torch.stack([W_o[:, out_map == u].abs().amax() == 0 for u in range(units)])
    if bool(dead.all()):
        dead[0] = False
    options["head_counts"].append({"heads": int((~dead).sum()) * shards, "kv_heads": int((~dead).sum()) * shards,
                                   "head_dim": inner // heads})
    if not bool(dead.any()):
        return []
    kept = (~dead).nonzero().reshape(-1)
    rows = torch.isin(fused_map.to(kept.device), kept).nonzero().reshape(-1)
    columns = torch.isin(out_map, kept.to(out_map.device)).nonzero().reshape(-1)
    before = copy.deepcopy(holder.root)
    _set(block, info["projections"][0], narrowed(qkv, outputs=rows))
    _set(block, info["projections"][1], narrowed(o, inputs=columns))
    setattr(counts, info["count_attribute"], int(kept.numel()) * shards)
    return _verified_heads(holder, before, options, label, int(dead.sum()) * shards,
                           widths=(counts, inner, int(columns.numel()), None))


def _own_config_counts(block: nn.Module, heads: int, kv_heads: int) -> bool:
    """Give ``block`` a copy of the ``config`` it holds with its own head counts (``heads``, and ``kv_heads`` where
    the config has a k/v count), and record them in its ``symopt_config_heads`` attribute
    (`symopt._attention.set_own_config_counts`); False where it holds no config with a head count. For a block
    whose forward reads its counts from the model's shared config (Phi-3 splits its ``qkv_proj`` outputs at
    ``config.num_attention_heads × head_dim``), where each block may keep its own count."""
    config = getattr(block, "config", None)
    head_name = int_attribute(config, HEAD_COUNT_NAMES) if config is not None else None
    if head_name is None:
        return False
    counts = {head_name: heads}
    kv_name = int_attribute(config, KV_HEAD_COUNT_NAMES)
    if kv_name is not None:
        counts[kv_name] = kv_heads
    set_own_config_counts(block, counts)
    return True


def _describe_in_config(root: nn.Module, head_counts: list[dict], unit_widths: list[int],
                        expert_widths: list[int] = ()) -> None:
    """Where every head-pruned block kept the same counts, every narrowed layer the same width (every mixture of
    experts the same width per expert), and a Hugging
    Face-style ``config`` saying so (head counts; an FFN width such as ``intermediate_size``) builds exactly
    the exported model, that config replaces the model's, so its own ``save_pretrained`` / ``from_pretrained``
    round-trip it. Otherwise the config stays, and the model's ``save_pretrained`` refuses while its layers
    differ from the config's ([`symopt.save_pretrained`][symopt.save_pretrained] records them)."""
    if getattr(root, "config", None) is None:
        return
    updates = {}
    if head_counts and all(counts == head_counts[0] for counts in head_counts):
        updates.update(head_counts[0])
    if unit_widths and len(set(unit_widths)) == 1:
        updates["ffn_width"] = unit_widths[0]
    if expert_widths and len(set(expert_widths)) == 1:
        updates["expert_width"] = expert_widths[0]
    # Blocks given a config of their own (`_own_config_counts`) hold, where every block kept the same counts,
    # what the shared config would say: they are tried against it without their own, and share it if it holds
    own = [m for m in root.modules() if getattr(m, CONFIG_HEADS, None) is not None and hasattr(m, "config")]
    kept_aside = [(m, m.config, m.__dict__.pop(CONFIG_HEADS)) for m in own]
    config = layout.config_describing(root, updates) if updates else None
    if config is not None:
        root.config = config
        for module, _, _ in kept_aside:
            module.config = config
    else:
        for module, own_config, counts in kept_aside:
            setattr(module, CONFIG_HEADS, counts)
            module.config = own_config
    guard_save_pretrained(root, layout.unrecorded_layers)


def _compare_attention(old: nn.MultiheadAttention, new: nn.Module) -> str | None:
    """None when ``new`` returns what ``old`` does (eval mode, outputs and averaged / per-head weights)."""
    kw = dict(dtype=old.out_proj.weight.dtype, device=old.out_proj.weight.device)
    g = torch.Generator(device=kw["device"]).manual_seed(0)
    shape = (2, 5, old.embed_dim) if old.batch_first else (5, 2, old.embed_dim)
    q = torch.randn(*shape, generator=g, **kw)
    k = torch.randn(*shape[:-1], old.kdim, generator=g, **kw)
    v = torch.randn(*shape[:-1], old.vdim, generator=g, **kw)
    a, b = copy.deepcopy(old).eval(), copy.deepcopy(new).eval()
    with torch.no_grad():
        for average in (True, False):
            want, got = a(q, k, v, average_attn_weights=average), b(q, k, v, average_attn_weights=average)
            scale = 1.0 + float(want[0].abs().max())
            for x, y in zip(want, got):
                gap = float((x - y).abs().max())
                if not gap <= torch.finfo(x.dtype).eps ** 0.5 * scale:
                    return f"the pruned attention differs by {gap:.3g}"
    return None


# The rewrites of a compressed export, keyed by the structure a constraint reports
# (`Constraint.compressed_structure`), run in this order: removing units first, so that factorising a
# consumer then sees fewer columns. Each takes (holder, targets, options): ``holder.root`` is the model
# (a rewrite may replace it), targets the ``(module name, tensor name, constraint)`` of that structure
# (module names start at ``"root"``); it returns notes on what it had to keep dense. A rewrite sees all
# its targets at once because removing units is a property of the whole graph (residual groups).
Rewrite = Callable[[nn.Module, list, dict], list]
REWRITES: dict[str, Rewrite] = {}


def register_rewrite(structure: str, rewrite: Rewrite) -> None:
    """Make ``export(mode="compressed")`` realise ``structure`` with ``rewrite`` (see ``REWRITES``)."""
    if not isinstance(structure, str) or not callable(rewrite):
        raise TypeError("register_rewrite: give a structure name (str) and a callable rewrite")
    REWRITES[structure] = rewrite


register_rewrite("units", _shrink_units)
register_rewrite("shared", _share)
register_rewrite("semi_structured", _semi_structured)
register_rewrite("heads", _prune_heads)
register_rewrite("factors", lambda root, targets, options: [
    note for where, tensor, c in targets for note in _factorise(root, where, tensor, c, options["tol"])])
register_rewrite("entries", lambda root, targets, options: [
    note for where, tensor, c in targets
    for note in _sparsify(root, where, tensor, options["sparse_format"], options["csr_max_density"])])
