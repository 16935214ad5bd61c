"""Layer 3 — removing dead units from a model's traced graph (used by [`export`][symopt.export]).

A *unit* is an output row of a Linear or an output channel of a Conv. Removing it is exact only if
every place its value flows to agrees: the consumers (the next Linear / Conv) lose the matching input
columns or channels, per-channel modules on the way (BatchNorm, per-channel PReLU) lose the matching
entries, a residual addition removes the unit from every branch or from none, a concatenation shifts
the units after it, and a Flatten turns a channel into a block of consecutive features.

Why ``torch.fx``: the dataflow of an arbitrary ``forward`` (functional activations, ``x + self.block(x)``,
``torch.cat``, ``x.view(x.size(0), -1)``) is only visible in a traced graph; matching patterns inside
``nn.Sequential`` misses all of it. ``torch.fx`` ships with PyTorch, so the analysis needs no optional
dependency (Torch-Pruning's ``DependencyGraph`` would, and it removes channels without folding what a
dead channel still emits). Every op the analysis does not understand *blocks* the units that reach it,
with the op named in the reason: the analysis can keep a unit it could have removed, never the reverse.

A dead unit is not silent: it emits the constant ``act(bias)`` at every position. The analysis carries
that constant through each op (``const`` below) and folds it into every consumer's bias: exact for a
Linear and for a conv whose border is not zero-padded; behind zero padding the border sees 0, not the
constant, so such a unit is removed only when its constant is 0 (otherwise kept, with the reason).

Each unit of a producer is a node of a union-find: a residual addition or a product of two branches
joins unit ``i`` of one operand with unit ``i`` of the other, and a class is removed only when every
producer unit in it is dead and nothing blocked any of them. Compressed exports are for inference:
BatchNorm folds use the running statistics (eval mode).
"""

from __future__ import annotations

import copy
import operator
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import forward_arguments, narrowed, outputs_first, weight_axes

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Modules and functions that act on each number separately and keep the shape: what a dead unit emits
# goes through them as a constant (dropout is the identity at inference, where exports are used).
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
IDENTITY_AT_INFERENCE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus,
    F.softsign, torch.abs, torch.neg, torch.exp, operator.neg,
    # (with constant other arguments only: the tanh form of GELU, x ** 3, that GPT-2's activation computes)
    torch.pow, operator.pow, torch.square, torch.erf, torch.sqrt,
}
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "abs", "neg", "exp", "pow", "square", "erf", "sqrt", "contiguous",
                       "clone", "detach"}
# Spatial ops that keep the channels apart and map a constant channel to the same constant.
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample,
)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, torch.adaptive_avg_pool1d,
}
BINARY = {operator.add: torch.add, torch.add: torch.add, operator.sub: torch.sub, torch.sub: torch.sub,
          operator.mul: torch.mul, torch.mul: torch.mul, operator.iadd: torch.add, operator.imul: torch.mul}
BINARY_METHODS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}


@dataclass
class Flow:
    """Where units sit in a tensor of the traced graph.

    ``units[i]`` is the unit at position ``i`` along ``axis`` (1: the channels of $N × C × …$; -1:
    the features of a Linear's output); each unit covers ``block`` consecutive positions (1, or the
    spatial size after a Flatten; None until a consumer's input size fixes it). ``const[i]`` is what
    unit ``i`` emits, at every position, if it is dead.
    """

    units: list[int]
    const: Tensor
    axis: int
    block: int | None = 1


@dataclass
class Edit:
    """One thing a removed unit changes in a module: its ``role`` is ``"out"`` (a producer's row),
    ``"param"`` (a per-channel module's entry) or ``"in"`` (a consumer's input, whose constant is folded)."""

    role: str
    module: str
    position: int
    unit: int
    block: int = 1
    const: float = 0.0


@dataclass
class Plan:
    """The outcome of the analysis: which units go, which dead units stay and why."""

    edits: list[Edit] = field(default_factory=list)
    removed: set[int] = field(default_factory=set)
    kept: dict[str, list[str]] = field(default_factory=dict)  # producer → reasons its dead units stayed
    # producers the graph never calls: they run inside a module fx records as one call (torch.nn's own
    # modules are leaves of its trace), so nothing here says where their units go
    unseen: set[str] = field(default_factory=set)
    # producers the graph calls in a way no unit can be followed through (twice, or with more than one input or
    # with keyword arguments), with why: none of their units is planned
    unread: dict[str, str] = field(default_factory=dict)


class _Units:
    """Union-find over the producers' units, with what blocks each class."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.dead: list[bool] = []
        self.owner: list[str] = []
        self.blocked: dict[int, str] = {}

    def new(self, owner: str, dead: bool) -> int:
        self.parent.append(len(self.parent))
        self.dead.append(dead)
        self.owner.append(owner)
        return len(self.parent) - 1

    def find(self, u: int) -> int:
        while self.parent[u] != u:
            self.parent[u] = self.parent[self.parent[u]]
            u = self.parent[u]
        return u

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.blocked:
                self.blocked.setdefault(ra, self.blocked.pop(rb))

    def block(self, u: int, reason: str) -> None:
        self.blocked.setdefault(self.find(u), reason)


# Blocks whose forward fx cannot trace (data-dependent checks, fast paths) but whose layers' units flow
# through one method that does trace: that method stands in for the block (see `traceable`).
TRACEABLE_PARTS: dict[type, str] = {}
# By convention rather than by class: Hugging Face's BERT-derived layers (BERT, RoBERTa, ELECTRA and some
# forty more model families in transformers 5) run their feed-forward through `feed_forward_chunk(x)`,
# while their forward (attention masks, caches, chunking) does not trace. {module prefix: method}
CONVENTIONAL_PARTS: dict[str, str] = {"transformers.": "feed_forward_chunk"}


#: why a unit that reaches the traced module's output stays (`plan_removal`): export asks for it by name
OUTPUT_REASON = "it is an output of the model"


def register_traceable_part(block_type: type, method: str) -> None:
    """Declare that inside a ``block_type`` module, the units of the layers that ``method`` calls flow only
    through ``method(x)`` (one tensor in, one out), which ``torch.fx`` traces where the block's ``forward``
    does not. Export then removes those layers' dead units by tracing the method alone; units that leave it
    stay, and the model's outputs are compared before and after (no comparison, no rewrite).

    Registered here: ``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer`` (``_ff_block``:
    ``linear2(dropout(activation(linear1(x))))``), whose forward branches on its inputs for its fast path;
    and, by convention, every Hugging Face layer with a ``feed_forward_chunk(x)`` method (BERT's
    ``output(intermediate(x), x)`` and the model families derived from it).

    Raises:
        TypeError: ``block_type`` is not an ``nn.Module`` class, or it has no such method.

    Examples:
        >>> import torch
        >>> from symopt import surgery
        >>> class Gated(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.up, self.down = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)
        ...     def forward(self, x):
        ...         return x if float(x.abs().sum()) == 0 else x + self.mlp(x)  # data-dependent
        ...     def mlp(self, x):
        ...         return self.down(torch.relu(self.up(x)))
        >>> surgery.register_traceable_part(Gated, "mlp")
        >>> view, graph = surgery.traceable(Gated())
        >>> type(view).__name__, [node.target for node in graph.nodes if node.op == "call_module"]
        ('TracedPart', ['up', 'down'])
    """
    if not (isinstance(block_type, type) and issubclass(block_type, nn.Module)):
        raise TypeError(f"register_traceable_part: block_type must be an nn.Module class, got {block_type!r}")
    if not callable(getattr(block_type, method, None)):
        raise TypeError(f"register_traceable_part: {block_type.__name__} has no method {method!r}")
    TRACEABLE_PARTS[block_type] = method


class TracedPart(nn.Module):
    """A stand-in for a block that traces through one of its methods: it shares the block's submodules,
    parameters and attributes (so a rewrite of its layers is a rewrite of the block's), and its
    ``forward`` is that method."""

    def __init__(self, block: nn.Module, method: str):
        super().__init__()
        vars(self).update(vars(block))  # the same _modules / _parameters dicts, not copies
        self._part = getattr(type(block), method)

    def forward(self, x):
        return self._part(self, x)


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every dense projection kept as one call (as fx keeps torch.nn's own layers): a
    layer storing its weight transposed (GPT-2's ``Conv1D``, see ``_layers.weight_axes``) would otherwise
    be traced into its ``addmm``, where no unit can be followed."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return weight_axes(module) is not None or super().is_leaf_module(module, qualified_name)


def trace(module: nn.Module) -> torch.fx.Graph:
    """``module``'s fx graph, every dense projection (``nn.Linear``, a ``Conv1D``) one call; raises what fx
    raises on a forward it cannot trace."""
    return _Tracer().trace(module)


def traceable(module: nn.Module) -> tuple[nn.Module, torch.fx.Graph]:
    """``(view, graph)``: ``module`` and its traced graph where ``torch.fx`` traces it; else the stand-in of
    its registered part (`register_traceable_part`) and that part's graph; else whatever the trace of
    ``module`` raised. Rewrites planned on the view's graph apply to the view (`apply`)."""
    try:
        return module, trace(module)
    except Exception:  # noqa: BLE001 - fx raises many types on a forward it cannot trace
        method = _registered_part(type(module))
        if method is None:
            raise
    part = TracedPart(module, method)
    return part, trace(part)


def _registered_part(block_type: type) -> str | None:
    if block_type in TRACEABLE_PARTS:
        return TRACEABLE_PARTS[block_type]
    return next((method for prefix, method in CONVENTIONAL_PARTS.items()
                 if block_type.__module__.startswith(prefix) and callable(getattr(block_type, method, None))), None)


register_traceable_part(nn.TransformerEncoderLayer, "_ff_block")
register_traceable_part(nn.TransformerDecoderLayer, "_ff_block")


def plan_removal(root: nn.Module, producers: set[str], graph: torch.fx.Graph | None = None) -> Plan:
    """Trace ``root`` (unless its ``graph`` is given) and decide which dead output units of the layers named
    in ``producers`` can go.

    Raises whatever ``torch.fx`` raises on a model it cannot trace.
    """
    graph = trace(root) if graph is None else graph
    modules = dict(root.named_modules())
    calls = defaultdict(int)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] += 1
    units, edits = _Units(), []
    flows: dict[torch.fx.Node, Flow | None] = {}
    shapes: dict[torch.fx.Node, Flow] = {}  # nodes holding x.shape of a flow (only shape[0] is safe)

    def inputs(node) -> list[Flow]:
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        for n in found:
            if n in shapes:
                _block_flow(units, shapes.pop(n), f"its shape is read by {_describe(node)}")
        return [flows[n] for n in found if flows.get(n) is not None]

    def unknown(node) -> None:
        what = f"{type(modules[node.target]).__name__} {node.target}" if node.op == "call_module" else _describe(node)
        for flow in inputs(node):
            _block_flow(units, flow, f"{what} uses it, and symopt does not know how that op treats units")
        flows[node] = None

    unread: dict[str, str] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            flows[node] = None
        elif node.op == "output":
            for flow in inputs(node):
                _block_flow(units, flow, OUTPUT_REASON)
        elif node.op == "call_module":
            module = modules[node.target]
            flow = flows.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
            if calls[node.target] > 1 or len(node.args) != 1 or node.kwargs:
                if node.target in producers:
                    unread[node.target] = (f"the graph calls it {calls[node.target]} times" if calls[node.target] > 1
                                           else "the graph calls it with other arguments than one input")
                unknown(node)
            # (a subclass of nn.Linear too: Falcon's FalconLinear computes x Wᵀ + b in a forward of its own; the
            # rewrite's check of the outputs answers for any that computes otherwise)
            elif isinstance(module, nn.Linear) or isinstance(module, CONVS) and module.groups == 1 or \
                    _transposed(module):
                _consume(node.target, module, flow, units, edits)
                flows[node] = _produce(node.target, module, node.target in producers, units, edits)
            elif isinstance(module, CONVS + (nn.Linear,)):
                unknown(node)
            else:
                flows[node] = _through_module(node, module, flow, units, edits, unknown)
        elif node.op in ("call_function", "call_method"):
            flows[node] = _through_call(node, flows, shapes, units, unknown)
        else:  # pragma: no cover - fx has no other ops
            unknown(node)
    plan = _decide(units, edits)
    plan.unseen = set(producers) - set(calls)
    plan.unread = unread
    return plan


def _describe(node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target!r} (graph node {node.name})"


def _consume(name: str, module: nn.Module, flow: Flow | None, units: _Units, edits: list) -> None:
    if flow is None:
        return
    if weight_axes(module) is not None:  # (an nn.Linear, or a Conv1D storing its weight transposed)
        in_features = module.weight.shape[weight_axes(module)[1]]
        count = len(flow.units)
        block = flow.block if flow.block is not None else in_features // max(count, 1)
        if flow.axis != -1 or count * block != in_features:
            return _block_flow(units, flow, f"Linear {name} does not take its units as blocks of features")
    else:
        block = 1
        if flow.axis != 1 or flow.block != 1 or len(flow.units) != module.in_channels:
            return _block_flow(units, flow, f"{type(module).__name__} {name} does not take its units as channels")
    zero_padded = isinstance(module, CONVS) and module.padding_mode == "zeros" and (
        module.padding == "same" if isinstance(module.padding, str) else any(module.padding))
    for i, (u, c) in enumerate(zip(flow.units, flow.const.tolist())):
        if zero_padded and c != 0:
            units.block(u, f"the zero-padded {type(module).__name__} {name} would see 0 at the border "
                           f"instead of the constant {c:.3g} a dead unit emits")
        edits.append(Edit("in", name, i, u, block, c))


def _transposed(module: nn.Module) -> bool:
    """A dense projection storing its weight as (inputs, outputs): GPT-2's ``Conv1D``."""
    return weight_axes(module) == (1, 0)


def _produce(name: str, module: nn.Module, constrained: bool, units: _Units, edits: list) -> Flow:
    W = outputs_first(module).detach()
    rows = W.reshape(W.shape[0], -1)
    dead = (rows == 0).all(dim=1).tolist() if constrained else [False] * rows.shape[0]
    ids = [units.new(name, d) for d in dead]
    for i, u in enumerate(ids):
        edits.append(Edit("out", name, i, u))
    bias = module.bias.detach() if module.bias is not None else torch.zeros(rows.shape[0], dtype=W.dtype)
    return Flow(ids, bias.clone().cpu(), -1 if weight_axes(module) is not None else 1)


def _block_flow(units: _Units, flow: Flow | None, reason: str) -> None:
    """Every unit of ``flow`` (if any) is kept, for ``reason``."""
    if flow is not None:
        for u in flow.units:
            units.block(u, reason)


def _through_module(node, module, flow, units, edits, unknown) -> Flow | None:
    if flow is None:
        return None
    name = node.target
    kind = type(module).__name__
    if isinstance(module, IDENTITY_AT_INFERENCE):
        return flow
    if isinstance(module, ELEMENTWISE_MODULES) or isinstance(module, nn.PReLU) and module.num_parameters == 1:
        with torch.no_grad():
            return Flow(flow.units, module(flow.const.to(_param_dtype(module, flow)).reshape(1, -1)).reshape(-1)
                        .to(flow.const.dtype), flow.axis, flow.block)
    if isinstance(module, nn.PReLU) or isinstance(module, NORMS):
        width = module.num_parameters if isinstance(module, nn.PReLU) else module.num_features
        channel_axis_ok = flow.axis == 1 or isinstance(module, (nn.BatchNorm1d, nn.PReLU)) and flow.axis == -1
        if width != len(flow.units) or flow.block != 1 or not channel_axis_ok:
            _block_flow(units, flow, f"{kind} {name} does not act on its units one per channel")
            return None
        if isinstance(module, NORMS) and module.running_mean is None:
            _block_flow(units, flow, f"{kind} {name} has no running statistics (a dead channel's output "
                                     "depends on the batch)")
            return None
        for i, u in enumerate(flow.units):
            edits.append(Edit("param", name, i, u))
        with torch.no_grad():
            if isinstance(module, nn.PReLU):
                a = module.weight.detach().cpu().to(flow.const.dtype)
                const = torch.where(flow.const >= 0, flow.const, a * flow.const)
            else:
                mean, var = (t.detach().cpu().to(flow.const.dtype) for t in (module.running_mean, module.running_var))
                const = (flow.const - mean) / torch.sqrt(var + module.eps)
                if module.affine:
                    const = const * module.weight.detach().cpu().to(const.dtype) + module.bias.detach().cpu().to(const.dtype)
        return Flow(flow.units, const, flow.axis, flow.block)
    if isinstance(module, POOL_MODULES + AVG_POOLS):
        if flow.axis != 1 or flow.block != 1 or getattr(module, "return_indices", False):
            _block_flow(units, flow, f"{kind} {name} does not keep its units apart as channels")
            return None
        if isinstance(module, AVG_POOLS):
            padded = any(_tuple(module.padding)) and module.count_include_pad
            if module.divisor_override is not None or padded:
                for u, c in zip(flow.units, flow.const.tolist()):
                    if c != 0:
                        units.block(u, f"{kind} {name} (padding counted, or a divisor override) does not "
                                       "keep a constant channel constant")
        return flow
    if isinstance(module, nn.Flatten):
        return _flatten(flow, module.start_dim, module.end_dim, units, f"Flatten {name}")
    unknown(node)
    return None


def _param_dtype(module, flow):
    params = list(module.parameters())
    return params[0].dtype if params else flow.const.dtype


def _tuple(value):
    return value if isinstance(value, tuple) else (value,)


def _flatten(flow: Flow, start: int, end: int, units: _Units, what: str) -> Flow | None:
    if flow.axis == 1 and flow.block == 1 and start == 1 and end == -1:
        return Flow(flow.units, flow.const, -1, None)  # channel c becomes features [c·s, (c+1)·s)
    _block_flow(units, flow, f"{what} does not turn its units into blocks of consecutive features")
    return None


def _through_call(node, flows, shapes, units, unknown) -> Flow | None:
    target, args, kwargs = node.target, node.args, node.kwargs
    first = args[0] if args else None
    flow = flows.get(first) if isinstance(first, torch.fx.Node) else None
    method = node.op == "call_method"
    # x.size(0), x.shape[0]: the batch size does not depend on the units
    if method and target == "size" and flow is not None:
        if len(args) == 2 and args[1] == 0 and not kwargs:
            return None
        return unknown(node)
    if not method and target is getattr and flow is not None and args[1] == "shape":
        shapes[node] = flow
        return None
    if not method and target is operator.getitem and first in shapes:
        if args[1] == 0:
            return None
        return unknown(node)
    if flow is None and all(flows.get(a) is None for a in _nodes(args, kwargs)) and not any(
            a in shapes for a in _nodes(args, kwargs)):
        return None  # nothing with units flows through this call
    elementwise = (method and target in ELEMENTWISE_METHODS) or (not method and target in ELEMENTWISE_FUNCTIONS)
    if elementwise and flow is not None and all(flows.get(a) is None for a in _nodes(args[1:], kwargs)):
        extra = {k: v for k, v in kwargs.items() if k != "inplace"}
        with torch.no_grad():
            fn = getattr(torch.Tensor, target) if method else target
            const = fn(flow.const, *args[1:], **extra) if not _has_nodes(args[1:], extra) else None
        if const is None:
            return unknown(node)
        return Flow(flow.units, const.reshape(-1), flow.axis, flow.block)
    if not method and target in DROPOUT_FUNCTIONS and flow is not None:
        return flow
    binary = BINARY_METHODS.get(target) if method else BINARY.get(target)
    if binary is not None and len(args) == 2 and not kwargs:
        return _binary(node, binary, args, flows, units, unknown)
    if not method and target is operator.truediv and flow is not None and isinstance(args[1], (int, float)):
        return Flow(flow.units, flow.const / args[1], flow.axis, flow.block)
    if (not method and target is torch.flatten) or (method and target == "flatten"):
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        if flow is None:
            return unknown(node)
        return _flatten(flow, start, end, units, _describe(node))
    if method and target in ("view", "reshape") and flow is not None:
        sizes = args[1:] if len(args) != 2 or not isinstance(args[1], (tuple, list)) else tuple(args[1])
        if len(sizes) == 2 and sizes[1] == -1 and not kwargs:  # x.view(x.size(0), -1)
            return _flatten(flow, 1, -1, units, _describe(node))
        return unknown(node)
    if not method and target is torch.cat:
        return _cat(node, flows, units, unknown)
    if not method and target in POOL_FUNCTIONS and flow is not None and not _has_nodes(args[1:], kwargs):
        if flow.axis != 1 or flow.block != 1 or kwargs.get("return_indices"):
            return unknown(node)
        return flow
    return unknown(node)


def _nodes(args, kwargs) -> list:
    found = []
    torch.fx.node.map_arg((tuple(args), dict(kwargs)), lambda n: found.append(n) or n)
    return found


def _has_nodes(args, kwargs) -> bool:
    return bool(_nodes(args, kwargs))


def _binary(node, op, args, flows, units, unknown) -> Flow | None:
    a, b = args
    fa = flows.get(a) if isinstance(a, torch.fx.Node) else None
    fb = flows.get(b) if isinstance(b, torch.fx.Node) else None
    if fa is not None and fb is not None:
        if len(fa.units) != len(fb.units) or fa.axis != fb.axis or fa.block != fb.block:
            return unknown(node)
        for ua, ub in zip(fa.units, fb.units):
            units.union(ua, ub)  # a residual group: the unit goes from every branch or from none
        return Flow(fa.units, op(fa.const, fb.const), fa.axis, fa.block)
    flow, other = (fa, b) if fa is not None else (fb, a)
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        const = op(flow.const, other) if flow is fa else op(torch.full_like(flow.const, other), flow.const)
        return Flow(flow.units, const, flow.axis, flow.block)
    return unknown(node)  # a tensor without units (an input, a parameter): the sum is not constant


def _cat(node, flows, units, unknown) -> Flow | None:
    items = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    parts = [flows.get(t) if isinstance(t, torch.fx.Node) else None for t in (items or ())]
    if not parts or any(p is None for p in parts):
        return unknown(node)
    axis, block = parts[0].axis, parts[0].block
    if dim != axis or any(p.axis != axis or p.block != block for p in parts):
        return unknown(node)
    return Flow([u for p in parts for u in p.units], torch.cat([p.const for p in parts]), axis, block)


def _decide(units: _Units, edits: list[Edit]) -> Plan:
    # a class goes when every producer unit in it is dead and nothing blocked it
    classes = defaultdict(list)
    for u in range(len(units.parent)):
        classes[units.find(u)].append(u)
    removable = {r for r, members in classes.items() if all(units.dead[u] for u in members) and r not in units.blocked}
    # every layer keeps at least one unit (a zero-width layer is not a layer): keep its first unit's class
    outputs = defaultdict(list)
    for e in edits:
        if e.role == "out":
            outputs[e.module].append(e.unit)
    changed = True
    while changed:  # keeping a class can keep units of other layers: repeat until nothing changes
        changed = False
        for name, members in outputs.items():
            if all(units.find(u) in removable for u in members):
                root = units.find(members[0])
                removable.discard(root)
                units.blocked[root] = f"{name} would keep no unit at all"
                changed = True
    plan = Plan(edits=[e for e in edits if units.find(e.unit) in removable])
    plan.removed = {u for u in range(len(units.parent)) if units.find(u) in removable}
    for u in range(len(units.parent)):
        root = units.find(u)
        if units.dead[u] and root not in removable:
            alive = not all(units.dead[v] for v in classes[root])  # a block on a live unit is moot
            reason = "a unit joined to it by a residual addition is alive" if alive else units.blocked[root]
            plan.kept.setdefault(units.owner[u], []).append(reason)
    return plan


def apply(root: nn.Module, plan: Plan) -> None:
    """Rebuild every module the plan touches (``root`` is changed in place)."""
    by_module = defaultdict(lambda: defaultdict(list))
    for e in plan.edits:
        by_module[e.module][e.role].append(e)
    with torch.no_grad():
        for name, roles in by_module.items():
            module = root.get_submodule(name)
            new = _rebuilt(module, roles)
            parent_name, _, leaf = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)


def _keep(size: int, removed: list[int], device) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().squeeze(1).to(device)


def _rebuilt(module: nn.Module, roles: dict) -> nn.Module:
    if isinstance(module, (nn.PReLU,) + NORMS):
        keep = _keep(module.num_parameters if isinstance(module, nn.PReLU) else module.num_features,
                     [e.position for e in roles["param"]], module.weight.device if module.weight is not None else None)
        new = copy.deepcopy(module)
        if isinstance(module, nn.PReLU):
            new.num_parameters = keep.numel()
            new.weight = nn.Parameter(module.weight[keep].clone(), requires_grad=module.weight.requires_grad)
        else:
            new.num_features = keep.numel()
            for key in ("weight", "bias"):
                if getattr(module, key) is not None:
                    setattr(new, key, nn.Parameter(getattr(module, key)[keep].clone()))
            for key in ("running_mean", "running_var"):
                setattr(new, key, getattr(module, key)[keep].clone())
        return new
    W = outputs_first(module)  # (a transposed Conv1D's weight as (outputs, inputs): a view)
    linear = weight_axes(module) is not None
    out_units = W.shape[0]
    in_width = W.shape[1]
    keep_out = _keep(out_units, [e.position for e in roles["out"]], W.device)
    removed_cols, fold = [], torch.zeros(out_units, dtype=W.dtype, device=W.device)
    for e in roles["in"]:
        cols = list(range(e.position * e.block, (e.position + 1) * e.block))
        removed_cols += cols
        if e.const != 0:  # the constant the dead unit kept emitting, now part of the bias
            contribution = W[:, cols].sum(dim=1) if linear else W[:, e.position].reshape(out_units, -1).sum(dim=1)
            fold += contribution * e.const
    keep_in = _keep(in_width, removed_cols, W.device)
    bias = None
    if module.bias is not None or bool(fold.any()):
        bias = (module.bias if module.bias is not None else torch.zeros_like(fold)) + fold
        bias = bias[keep_out]
    if _transposed(module):  # (its own class kept, with the outputs and inputs it keeps)
        new = narrowed(module, outputs=keep_out, inputs=keep_in)
        if bias is not None and new.bias is None:
            new.bias = nn.Parameter(bias.detach().clone())
        elif bias is not None:
            new.bias.copy_(bias)
        return new
    weight = W[keep_out][:, keep_in]
    kw = dict(device=W.device, dtype=W.dtype)
    if linear:
        new = nn.Linear(keep_in.numel(), keep_out.numel(), bias=bias is not None, **kw)
    else:
        new = type(module)(keep_in.numel(), keep_out.numel(), module.kernel_size, stride=module.stride,
                           padding=module.padding, dilation=module.dilation, groups=1, bias=bias is not None,
                           padding_mode=module.padding_mode, **kw)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new.train(module.training)



# -- checking the result -----------------------------------------------------------------------
PROBE_SIDES = {1: (64, 128, 256, 28, 32), 2: (8, 16, 28, 32, 64, 224), 3: (8, 16, 32)}


def probe_inputs(model: nn.Module) -> list[tuple]:
    """Candidate inputs for a model with one input, built from the layer that reads it first: a
    Linear's width, an Embedding's vocabulary, a conv's channels at a few common spatial sizes (for a
    model fx cannot trace, the first such layer registered: a guess the caller's run accepts or not). A
    Hugging Face-style model (``get_input_embeddings()`` is an ``nn.Embedding``) reads token ids: two
    sequences of 7 (fewer where its config allows fewer positions); its forward is not traced."""
    ids = _token_id_probe(model)
    if ids is not None:
        return [ids]
    try:
        graph = trace(model)
    except Exception:  # noqa: BLE001 - untraceable: guess the first layer registered (verify tries it)
        layer = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding) + CONVS)), None)
    else:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            return []
        modules = dict(model.named_modules())
        first = next((n for n in graph.nodes if n.op == "call_module" and placeholders[0] in n.args[:1]), None)
        layer = modules[first.target] if first is not None else None
    if layer is None:
        return []
    params = list(layer.parameters())
    if not params:
        return []
    kw = dict(dtype=params[0].dtype, device=params[0].device)
    g = torch.Generator(device=params[0].device).manual_seed(0)
    if isinstance(layer, nn.Linear):
        return [(torch.randn(3, layer.in_features, generator=g, **kw),)]
    if isinstance(layer, nn.Embedding):
        return [(torch.randint(0, layer.num_embeddings, (2, 7), generator=g, device=params[0].device),)]
    if isinstance(layer, CONVS):
        dims = layer.weight.dim() - 2
        return [(torch.randn(2, layer.in_channels, *([side] * dims), generator=g, **kw),) for side in PROBE_SIDES[dims]]
    return []


def _token_id_probe(model: nn.Module) -> tuple | None:
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        layer = embeddings() if callable(embeddings) else None
    except Exception:  # noqa: BLE001 - a model that has no input embeddings to give
        layer = None
    if not isinstance(layer, nn.Embedding):
        return None
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    length = min(7, positions) if isinstance(positions, int) and positions > 0 else 7
    g = torch.Generator(device=layer.weight.device).manual_seed(0)
    ids = torch.randint(0, layer.num_embeddings, (2, length), generator=g, device=layer.weight.device)
    if getattr(config, "is_encoder_decoder", False) is True and forward_arguments(model)[:3] == (
            "input_ids", "attention_mask", "decoder_input_ids"):
        # (an encoder-decoder such as T5 needs the decoder's ids too; BART's would shift input_ids itself)
        return ids, None, ids[:, : max(1, length - 2)]
    return (ids,)


def _tensor_leaves(output, where: str = "") -> list[tuple[str, Tensor]]:
    """The tensors in a model's output with where each sits (``""`` for a tensor returned alone): a tensor,
    or those inside a mapping (a Hugging Face ``ModelOutput``: its fields in order), a tuple or a list. Other
    objects are not compared: a key/value cache holds one tensor per k/v head, which removing heads changes
    by design, and the outputs computed from it are compared."""
    if isinstance(output, Tensor):
        return [(where, output)]
    if isinstance(output, Mapping):
        return [leaf for key, value in output.items() for leaf in _tensor_leaves(value, f"{where}[{key!r}]")]
    if isinstance(output, (tuple, list)):
        return [leaf for i, value in enumerate(output) for leaf in _tensor_leaves(value, f"{where}[{i}]")]
    return []


def verify(before: nn.Module, after: nn.Module, example_input=None) -> tuple[bool, str | None]:
    """``(checked, problem)``: whether ``after`` was run against ``before`` (eval mode) on
    ``example_input`` or on the first probe input ``before`` accepts, and what went wrong (None when the
    outputs agree to √eps of their scale: a tensor, or each tensor of a mapping, tuple or list the model returns,
    `_tensor_leaves`). Neither model is changed.

    Examples:
        >>> import torch
        >>> class Two(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        ...     def forward(self, x):
        ...         return {"logits": self.a(x), "extra": (self.b(x), "not a tensor")}
        >>> before = Two()
        >>> after = copy.deepcopy(before)
        >>> with torch.no_grad():
        ...     _ = after.b.bias.add_(1.0)
        >>> verify(before, before, torch.ones(1, 3)), verify(before, after, torch.ones(1, 3))[1][:36]
        ((True, None), "its outputs['extra'][0] moved by 1 a")
    """
    candidates = [example_input if isinstance(example_input, tuple) else (example_input,)] \
        if example_input is not None else probe_inputs(before)
    reference, model = copy.deepcopy(before).eval(), copy.deepcopy(after).eval()
    for args in candidates:
        with torch.no_grad():
            try:
                expected = reference(*args)
            except Exception:  # noqa: BLE001 - a probe of the wrong size: try the next one
                continue
            try:
                got = model(*args)
            except Exception as error:  # noqa: BLE001
                return True, f"the rewritten model failed on an input the original accepts ({type(error).__name__}: {error})"
        wanted, gotten = _tensor_leaves(expected), _tensor_leaves(got)

        def layout(leaves):  # (where each tensor sits, its shape and dtype)
            return [(where, t.shape, t.dtype) for where, t in leaves]

        if not wanted or layout(wanted) != layout(gotten):
            return True, "the rewritten model's output differs in type or shape"
        for (where, want), (_, have) in zip(wanted, gotten):
            scale = 1.0 + float(want.abs().max()) if want.numel() else 1.0
            gap = float((want - have).abs().max()) if want.numel() else 0.0
            if not gap <= torch.finfo(want.dtype).eps ** 0.5 * scale if want.is_floating_point() else gap == 0:
                return True, f"its outputs{where} moved by {gap:.3g} after removing units"
        return True, None
    if example_input is not None:
        return True, "the original model does not accept example_input"
    return False, None  # nothing to run it on: the rewrite is exact by construction, unchecked
