"""Layer 0 — the linear layers of a model, in order, and which consecutive pairs share units.

Used by [`symopt.diagnose`][symopt.diagnose] and [`symopt.conserved`][symopt.conserved]. A *unit* of a Linear / Conv layer is an
output row / channel; it is shared with the next layer in module order whose input size equals this
layer's output size (its input column / channel). The module right after a layer in an
``nn.Sequential`` is recorded as the activation between them (``None`` when the layers are adjacent:
then the pair also has the rotation symmetry $W_2W_1 = (W_2G^{-1})(GW_1)$).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_FORWARD_ARGUMENTS: dict[type, tuple[str, ...]] = {}  # (a module class's forward's argument names)


def forward_arguments(module: nn.Module) -> tuple[str, ...]:
    """The names of ``module``'s forward's arguments, in order (none where it has no signature to read); read once
    per class (a signature costs tens of µs, and a forward pre-hook may ask before every forward), except for an
    instance whose own ``forward`` replaces its class's."""
    import inspect

    cls = type(module)
    if "forward" not in module.__dict__ and cls in _FORWARD_ARGUMENTS:
        return _FORWARD_ARGUMENTS[cls]
    try:
        names = tuple(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        names = ()
    if "forward" not in module.__dict__:
        _FORWARD_ARGUMENTS[cls] = names
    return names


@dataclass(frozen=True)
class Pair:
    r"""Consecutive layers $\mathrm{first} → \mathrm{second}$ sharing ``first``'s output units."""

    first: str
    second: str
    activation: nn.Module | None  # the module between them in an nn.Sequential (None: adjacent / unknown)
    adjacent: bool  # no module between them in an nn.Sequential: a purely linear composition


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def weight_axes(layer: nn.Module) -> tuple[int, int] | None:
    """``(output axis, input axis)`` of a dense projection's 2-d weight: ``(0, 1)`` for ``nn.Linear``
    ($x W^\top + b$); ``(1, 0)`` for a layer that stores its weight as ``(inputs, outputs)`` and says so in
    ``nx`` / ``nf`` ($x W + b$: the ``Conv1D`` of Hugging Face's GPT-2 family); None for anything else.

    Examples:
        >>> import torch
        >>> weight_axes(torch.nn.Linear(3, 5)), weight_axes(torch.nn.Conv1d(3, 5, 1))
        ((0, 1), None)
    """
    if isinstance(layer, nn.Linear):
        return 0, 1
    # (read from _parameters where it is a plain parameter: torch.fx's tracer answers a module's getattr of a
    # parameter with a proxy, and asks this while tracing)
    weight = layer._parameters.get("weight") if "weight" in layer._parameters else getattr(layer, "weight", None)
    if isinstance(weight, Tensor) and weight.ndim == 2 and getattr(layer, "nf", None) == weight.shape[1] \
            and getattr(layer, "nx", None) == weight.shape[0]:
        return 1, 0
    return None


def output_axis(layer: nn.Module) -> int | None:
    """The weight axis of a layer's output units: 0 for a Linear / Conv, 1 for a layer storing its weight
    transposed (GPT-2's ``Conv1D``, see `weight_axes`); None for a layer whose units export does not remove."""
    if isinstance(layer, LAYER_TYPES):
        return 0
    axes = weight_axes(layer)
    return axes[0] if axes is not None else None


def outputs_first(layer: nn.Module) -> Tensor:
    """A layer's weight with its output units first: a transposed dense layer's as a view ``(outputs,
    inputs)``, any other's as it is."""
    return layer.weight.t() if weight_axes(layer) == (1, 0) else layer.weight


def narrowed(layer: nn.Module, outputs: Tensor | None = None, inputs: Tensor | None = None) -> nn.Module:
    """A copy of a dense projection ([`weight_axes`][symopt._layers.weight_axes] not None) that keeps only
    the ``outputs`` (indices of its outputs, bias included) and ``inputs`` given (None: all); its width
    attributes (``out_features`` / ``in_features``, or ``nf`` / ``nx``) follow."""
    out_axis, in_axis = weight_axes(layer)
    weight = layer.weight.detach()
    if outputs is not None:
        weight = weight.index_select(out_axis, outputs)
    if inputs is not None:
        weight = weight.index_select(in_axis, inputs)
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and outputs is not None:
        bias = bias[outputs]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                        dtype=weight.dtype)
    else:  # (its own class, attributes and hooks: a copy with the weight and widths replaced)
        new = copy.deepcopy(layer)
        new.nx, new.nf = weight.shape
    with torch.no_grad():
        new.weight = nn.Parameter(weight.clone(), requires_grad=layer.weight.requires_grad)
        if bias is not None:
            new.bias = nn.Parameter(bias.clone(), requires_grad=layer.bias.requires_grad)
    return new.train(layer.training)


def in_size(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def out_size(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def incoming(module: nn.Module) -> Tensor:
    """Per unit: its incoming weights and bias as one row, ``(units, fan_in [+1])``."""
    W = module.weight.detach().reshape(out_size(module), -1)
    bias = getattr(module, "bias", None)
    return W if bias is None else torch.cat([W, bias.detach().reshape(-1, 1)], dim=1)


def outgoing(module: nn.Module) -> Tensor:
    """Per input unit of ``module``: its outgoing weights, ``(units, fan_out)``."""
    W = module.weight.detach()
    return W.transpose(0, 1).reshape(in_size(module), -1)


def pairs(model: nn.Module) -> list[Pair]:
    found = layers(model)
    following: dict[int, tuple[nn.Module | None, bool]] = {}
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            children = list(parent.children())
            for i, child in enumerate(children[:-1]):
                nxt = children[i + 1]
                following[id(child)] = (None, True) if isinstance(nxt, LAYER_TYPES) else (nxt, False)
    out = []
    for (name1, m1), (name2, m2) in zip(found, found[1:]):
        if out_size(m1) == in_size(m2):
            activation, adjacent = following.get(id(m1), (None, False))
            out.append(Pair(name1, name2, activation, adjacent))
    return out


# A feed-forward block's layers by their names: the layer (or, gated, the two layers) whose outputs are its hidden
# units, and the layer that reads them after an activation (OPT's and BART's fc1 / fc2, GPT-J's fc_in / fc_out, T5's
# wi / wo, Llama's gate_proj and up_proj / down_proj, ...). `symopt.feed_forward_units` lists a model's by it; where
# torch.fx traces no module around a producer (OPT's and BART's layers inline their feed-forward in a forward fx
# cannot trace), `symopt.export` removes its dead units through this pair: the producers lose them, the consumer
# its inputs, and export's check of the model's outputs (which must run) keeps the rewrite only where nothing
# moved (an activation that maps 0 to 0, the units' biases 0).
FEED_FORWARD_PAIRS = {"fc1": "fc2", "fc_in": "fc_out", "c_fc": "c_proj", "dense_h_to_4h": "dense_4h_to_h",
                      "wi": "wo", "wi_0": "wo", "wi_1": "wo", "gate_proj": "down_proj", "up_proj": "down_proj",
                      "w1": "w2", "w3": "w2", "linear1": "linear2", "lin1": "lin2",
                      # (dotted: relative to the module holding both; the BERT family's layer, DeBERTa-v2's)
                      "intermediate.dense": "output.dense"}


def feed_forward_partner(root: nn.Module, name: str) -> str | None:
    """The name of the dense layer that `FEED_FORWARD_PAIRS` pairs with the dense layer ``name`` of ``root`` and that
    reads exactly its outputs (as many inputs as it has outputs); None where there is none."""
    key = next((k for k in FEED_FORWARD_PAIRS if name == k or name.endswith(f".{k}")), None)
    if key is None:
        return None
    partner = name[: len(name) - len(key)] + FEED_FORWARD_PAIRS[key]
    try:
        producer, consumer = root.get_submodule(name), root.get_submodule(partner)
    except AttributeError:
        return None
    if weight_axes(producer) is None or weight_axes(consumer) is None:
        return None
    return partner if outputs_first(consumer).shape[1] == outputs_first(producer).shape[0] else None


@dataclass(frozen=True)
class ExpertLayout:
    r"""How a mixture-of-experts block stores its experts' feed-forwards as 3-d tensors, one slice per expert
    (transformers 5's ``MixtralExperts``, ``Qwen3MoeExperts``, ``GptOssExperts``, ...): expert e computes
    $\mathrm{down}_e(σ(\mathrm{gate}_e x) ⊙ \mathrm{up}_e x)$, or $\mathrm{down}_e(σ(\mathrm{up}_e x))$ without a gate.
    A *unit* is one hidden neuron of one expert: its gate and up rows (and bias entries) in the producer, its
    column of ``down_proj``; unit ``e · width + j`` is neuron j of expert e.

    Examples:
        >>> import torch
        >>> class Experts(torch.nn.Module):        # the layout of transformers 5's MixtralExperts
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 2 * 6, 8))   # (experts, 2·width, hidden)
        ...         self.down_proj = torch.nn.Parameter(torch.zeros(4, 8, 6))          # (experts, hidden, width)
        >>> found = expert_layout(Experts())
        >>> found.experts, found.width, found.producers, found.unit_axes("gate_up_proj")
        (4, 6, ('gate_up_proj',), (0, 1))
        >>> found.unit_map("gate_up_proj")[:8].tolist()     # expert 0's gate rows, then its up rows
        [0, 1, 2, 3, 4, 5, 0, 1]
    """

    producer: str  # "gate_up_proj" (gated) or "up_proj"
    consumer: str  # "down_proj"
    experts: int
    width: int  # hidden neurons per expert
    transposed: bool  # weights stored (experts, inputs, outputs): x @ W[e]
    gated: bool
    interleaved: bool  # gate and up rows alternate (gate 2j, up 2j+1) rather than all gates, then all ups
    bias: bool  # a bias per expert beside each weight: ``<producer>_bias``, ``down_proj_bias``

    @property
    def producers(self) -> tuple[str, ...]:
        """The tensors whose entries make the units (the producer's weight, then its bias)."""
        return (self.producer, f"{self.producer}_bias") if self.bias else (self.producer,)

    def unit_axes(self, tensor: str) -> tuple[int, int]:
        """The axes of ``tensor`` (one of `producers`) that index its units: the expert axis and its output axis."""
        return (0, 2) if self.transposed and tensor == self.producer else (0, 1)

    def unit_map(self, tensor: str) -> Tensor:
        """The unit of each index of ``tensor``'s two unit axes, flattened expert-major: its gate and up entries of
        neuron j of expert e are both unit ``e · width + j``."""
        rows = torch.arange((2 if self.gated else 1) * self.width)
        neuron = rows // 2 if self.gated and self.interleaved else rows % self.width
        return (torch.arange(self.experts)[:, None] * self.width + neuron).reshape(-1)

    def kept_rows(self, kept: Tensor) -> Tensor:
        """The producer's output indices (of one expert) that hold the neurons ``kept`` (indices, in order)."""
        if not self.gated:
            return kept
        if self.interleaved:
            return torch.stack([2 * kept, 2 * kept + 1], dim=1).reshape(-1)
        return torch.cat([kept, kept + self.width])


#: the names a mixture's fused producer tensor goes by: gated (gate and up rows together), then plain
EXPERT_PRODUCERS = ("gate_up_proj", "up_proj")


def expert_layout(module: nn.Module) -> ExpertLayout | None:
    """The `ExpertLayout` of ``module`` where it stores a mixture of experts' feed-forwards as 3-d tensors
    (``gate_up_proj`` or ``up_proj``, and ``down_proj``); None for anything else. The layout is read from the
    attributes transformers' ``use_experts_implementation`` sets (``is_transposed``, ``is_concatenated``,
    ``has_gate``, ``has_bias``), else from the shapes where only one reading fits them: then the gate rows come first,
    then the up rows (transformers 4's Llama-4 and Qwen3-VL-MoE), and a module with biases is not read (transformers
    4's GPT-OSS alternates its gate and up rows, and nothing on it says so)."""
    down = getattr(module, "down_proj", None)
    gated = isinstance(getattr(module, EXPERT_PRODUCERS[0], None), Tensor)
    producer = EXPERT_PRODUCERS[0] if gated else EXPERT_PRODUCERS[1]
    up = getattr(module, producer, None)
    if not isinstance(down, Tensor) or not isinstance(up, Tensor) or down.dim() != 3 or up.dim() != 3:
        return None
    if getattr(module, "has_gate", gated) != gated:
        return None
    experts = up.shape[0]
    factor = 2 if gated else 1
    # untransposed: producer (E, factor·width, hidden), down (E, hidden, width); transposed: the last two axes swapped
    fits = {flag: (up.shape[1:] == (down.shape[2] * factor, down.shape[1])) if not flag else
            (up.shape[1:] == (down.shape[2], down.shape[1] * factor)) for flag in (False, True)}
    transposed = getattr(module, "is_transposed", None)
    if transposed is None and any(isinstance(getattr(module, f"{n}_bias", None), Tensor) for n in (producer, "down_proj")):
        return None  # (biases and no attributes: transformers 4's GPT-OSS, whose gate and up rows alternate unsaid)
    if transposed is None:
        if fits[False] == fits[True]:
            return None  # (no shape fits, or both do: a square block whose storage cannot be told)
        transposed = fits[True]
    if down.shape[0] != experts or not fits[bool(transposed)]:
        return None
    width = down.shape[1] if transposed else down.shape[2]
    bias = bool(getattr(module, "has_bias", False))
    if bias and not all(isinstance(getattr(module, n, None), Tensor) for n in (f"{producer}_bias", "down_proj_bias")):
        return None
    return ExpertLayout(producer, "down_proj", experts, width, bool(transposed), gated,
                        not getattr(module, "is_concatenated", True), bias)
