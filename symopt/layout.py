"""Layer 3 — the layout of a compressed Hugging Face model, against the one its config builds.

After [`export`][symopt.export] (``mode="compressed"``) a model's layers no longer have the shapes its
``config`` describes (fewer heads, narrower or factorised layers), and ``cls.from_pretrained`` refuses its
weights (a size mismatch). Two remedies, in this order:

* [`config_describing`][symopt.layout.config_describing]: the config with a few fields changed (the head
  counts export lowered), kept only where it then builds *exactly* this model — the same parameter and
  buffer names and shapes, the same module types, the same scalar attributes (``head_dim``,
  ``num_key_value_groups``, ...). The model's own ``save_pretrained`` / ``from_pretrained`` then round-trip
  it with no symopt at load time. This holds when every layer kept the same number of heads.
* [`record`][symopt.layout.record] / [`rebuild`][symopt.layout.rebuild]: where no config can say it (a
  global budget leaves 3 heads in one layer and 1 in the next), the modules that differ from what the
  config builds, as JSON — each rewritten module's type and constructor arguments, the new shapes of a
  model's own module's narrowed tensors (Swin's relative-position table, a column per head), and changed scalar
  attributes — so that [`symopt.from_pretrained`][symopt.from_pretrained] builds the same layers before it
  loads the weights.

Only the modules symopt's rewrites produce are recorded (``RECORDABLE``, and ``OPTIONAL_RECORDABLE`` for
optional libraries' layers such as GPT-2's ``Conv1D``); a model holding another rewritten module is refused
by name before anything is written.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable

import torch
from torch import nn

from ._attention import ON_REBUILD
from .verbs import HEAD_COUNT_NAMES, KV_HEAD_COUNT_NAMES, int_attribute

SCALARS = (bool, int, float, str, type(None))
# The names configs give a feed-forward block's hidden width (Llama / BERT, OPT, GPT-2, T5).
FFN_WIDTH_NAMES = ("intermediate_size", "ffn_dim", "n_inner", "d_ff")
# A mixture of experts' hidden width per expert, by the names configs give it (Qwen2-MoE's ``moe_intermediate_size``
# beside the dense layers' ``intermediate_size``; Mixtral's experts read ``intermediate_size``).
EXPERT_WIDTH_NAMES = ("moe_intermediate_size", "expert_ffn_hidden_size", "intermediate_size")
# Bookkeeping a Hugging Face model keeps about where it was loaded from, not about its layers.
IGNORED_ATTRIBUTES = {"training", "name_or_path"}
# The prefix of the attributes export sets on a model's own modules (`symopt._attention.ALIBI_HEADS`): recorded even
# where the model the config builds has no such attribute, and acted on when rebuilt (`rebuild`, by
# `symopt._attention.ON_REBUILD`).
SYMOPT_ATTRIBUTE = "symopt_"


def _conv_arguments(conv: nn.Module) -> dict:
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=list(conv.kernel_size),
                stride=list(conv.stride), padding=conv.padding if isinstance(conv.padding, str) else list(conv.padding),
                dilation=list(conv.dilation), groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode)


def _norm_arguments(norm: nn.Module) -> dict:
    return dict(num_features=norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                track_running_stats=norm.track_running_stats)


# How each module type a rewrite produces is described (its constructor's arguments, JSON-ready) and rebuilt
# from that description; nn.Sequential's children are described in turn (a factorised layer is two).
RECORDABLE: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {
    "Linear": (nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features,
                                         bias=m.bias is not None)),
    "Conv1d": (nn.Conv1d, _conv_arguments),
    "Conv2d": (nn.Conv2d, _conv_arguments),
    "Conv3d": (nn.Conv3d, _conv_arguments),
    "Embedding": (nn.Embedding, lambda m: dict(num_embeddings=m.num_embeddings, embedding_dim=m.embedding_dim,
                                               padding_idx=m.padding_idx)),
    "BatchNorm1d": (nn.BatchNorm1d, _norm_arguments),
    "BatchNorm2d": (nn.BatchNorm2d, _norm_arguments),
    "BatchNorm3d": (nn.BatchNorm3d, _norm_arguments),
    "PReLU": (nn.PReLU, lambda m: dict(num_parameters=m.num_parameters)),
    "Identity": (nn.Identity, lambda m: {}),
}


# Layer types of optional libraries, recorded by their constructors' arguments as RECORDABLE's are; each is
# imported the first time a layout meets a module of its name (symopt imports without those libraries).
OPTIONAL_RECORDABLE: dict[str, tuple[str, Callable[[nn.Module], dict]]] = {
    # Hugging Face's transposed linear layer (GPT-2's family): x W + b, W of shape (nx, nf)
    "Conv1D": ("transformers.pytorch_utils", lambda m: dict(nf=m.nf, nx=m.nx)),
}


def _recordable(type_name: str) -> tuple[type, Callable[[nn.Module], dict]] | None:
    """RECORDABLE's entry for ``type_name``, an optional library's imported (and kept) on first use."""
    if type_name not in RECORDABLE and type_name in OPTIONAL_RECORDABLE:
        module_name, describe = OPTIONAL_RECORDABLE[type_name]
        try:
            cls = getattr(importlib.import_module(module_name), type_name)
        except (ImportError, AttributeError):
            return None
        RECORDABLE[type_name] = (cls, describe)
    return RECORDABLE.get(type_name)


def built_from_config(model: nn.Module, config=None) -> nn.Module | None:
    """``type(model)(config)`` on the meta device (no memory, no initialisation cost), with ``model.config``
    by default; None where the class cannot be built that way."""
    config = model.config if config is None else config
    try:
        with torch.device("meta"):
            return type(model)(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - any class that cannot be built from its config has no layout to compare
        return None


def _scalar_attributes(module: nn.Module) -> dict:
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and key not in IGNORED_ATTRIBUTES and isinstance(value, SCALARS)}


def _own_shapes(module: nn.Module) -> dict:
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {name: tuple(tensor.shape) for name, tensor in own}


def differences(model: nn.Module, reference: nn.Module) -> tuple[list[str], dict[str, dict], dict[str, dict]]:
    """Where ``model`` differs from ``reference`` (the model its config builds): the outermost modules of
    another type or other own parameter / buffer shapes (or present in one only); for the others, the scalar
    attributes whose values differ (``{module name: {attribute: model's value}}``); and the modules of a type
    symopt does not rebuild (not `RECORDABLE`: a model's own, such as Swin's relative-position bias) whose own
    parameters and buffers are the reference's but for their shapes, which export narrowed (``{module name:
    {tensor: shape}}``)."""
    theirs = dict(reference.named_modules())
    ours = dict(model.named_modules())
    replaced, attributes, reshaped = [], {}, {}

    def inside(name: str) -> bool:
        return any(name.startswith(f"{r}.") for r in replaced if r) or "" in replaced

    for name, module in ours.items():
        if inside(name):
            continue
        other = theirs.get(name)
        if other is None or type(other) is not type(module):
            replaced.append(name)
            continue
        shapes, reference_shapes = _own_shapes(module), _own_shapes(other)
        if shapes != reference_shapes:
            if shapes.keys() != reference_shapes.keys() or _rebuilds(module):
                replaced.append(name)
                continue
            reshaped[name] = {tensor: list(shape) for tensor, shape in shapes.items()
                              if shape != reference_shapes[tensor]}
        reference_values = _scalar_attributes(other)
        # (an attribute the config's model lacks counts only where symopt set it: `SYMOPT_ATTRIBUTE`)
        changed = {k: v for k, v in _scalar_attributes(module).items()
                   if reference_values.get(k, v) != v or (k.startswith(SYMOPT_ATTRIBUTE) and k not in reference_values)}
        if changed:
            attributes[name] = changed
    for name in theirs:  # a module the config builds that the model no longer has, under an unchanged parent
        if name not in ours and not inside(name):
            replaced.append(name.rpartition(".")[0])
    replaced = sorted(set(replaced))
    return replaced, attributes, {name: shapes for name, shapes in reshaped.items() if not inside(name)}


def _rebuilds(module: nn.Module) -> bool:
    """Whether a layout rebuilds ``module`` whole from its type and arguments (`RECORDABLE`, a Sequential) rather
    than giving the config's own module other tensor shapes."""
    return type(module) is nn.Sequential or _recordable(type(module).__name__) is not None


def config_describing(model: nn.Module, updates: dict):
    """A copy of ``model.config`` with ``updates`` (field → value) applied, where it builds exactly ``model``;
    else None. ``"heads"`` / ``"kv_heads"`` / ``"ffn_width"`` go to the config's own names for them
    (``num_attention_heads`` / ``n_head``, ``num_key_value_heads`` / ..., ``intermediate_size`` / ``ffn_dim``
    / ...; ``"expert_width"`` to ``moe_intermediate_size`` / ...), ``head_dim`` also where the config has none (a
    class may read an optional one), other fields only where the config has them."""
    config = getattr(model, "config", None)
    if config is None or not updates:
        return None
    candidate = copy.deepcopy(config)
    for field, value in updates.items():
        names = {"heads": HEAD_COUNT_NAMES, "kv_heads": KV_HEAD_COUNT_NAMES, "ffn_width": FFN_WIDTH_NAMES,
                 "expert_width": EXPERT_WIDTH_NAMES}.get(field, (field,))
        name = int_attribute(candidate, names)
        if name is None:
            if field in ("heads", "ffn_width", "expert_width"):
                return None  # the config holds no such count: it cannot describe the new one
            if field == "head_dim" and not _settable(candidate, field, value):
                # (a class that reads an optional head_dim from its config, else hidden / heads: Phi-3. Where the
                # class does not read it, the model built below differs and the candidate is dropped)
                return None
            continue
        if not _settable(candidate, name, value):
            return None
    reference = built_from_config(model, candidate)
    if reference is None or differences(model, reference) != ([], {}, {}):
        return None
    return candidate


def _settable(config, name: str, value) -> bool:
    """Set ``config.name = value``; False where the config cannot hold it: a read-only property (Falcon's
    ``head_dim`` is ``hidden_size // num_attention_heads``) that does not already say ``value``."""
    try:
        setattr(config, name, value)
    except (AttributeError, TypeError):
        return getattr(config, name, None) == value
    return True


def _describe(module: nn.Module, where: str) -> dict:
    type_name = type(module).__name__
    if type(module) is nn.Sequential:
        return {"type": "Sequential", "children": [_describe(child, f"{where}.{i}") for i, child in enumerate(module)]}
    entry = _recordable(type_name)
    if entry is None or type(module) is not entry[0]:
        known = sorted(set(RECORDABLE) | set(OPTIONAL_RECORDABLE)) + ["Sequential"]
        raise ValueError(f"save_pretrained: '{where}' is a {type_name} whose shape differs from what the model's config "
                         f"builds, and symopt records only {known}; save this model with torch.save(model, path) "
                         "instead")
    return {"type": type_name, "arguments": entry[1](module)}


def _build(description: dict) -> nn.Module:
    if description["type"] == "Sequential":
        return nn.Sequential(*(_build(child) for child in description["children"]))
    entry = _recordable(description["type"])
    if entry is None:
        raise ValueError(f"from_pretrained: the saved layout holds a layer of type {description['type']}, which this "
                         "environment cannot build (is its library installed?)")
    cls = entry[0]
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in description["arguments"].items()}
    return cls(**arguments)


def record(model: nn.Module) -> dict | None:
    """The JSON-ready layout of ``model`` against the model its config builds (``{"modules": {name:
    description}, "attributes": {name: {attribute: value}}, "shapes": {name: {tensor: shape}}}``); None when they
    already agree (or the class cannot be built from its config, where there is nothing to compare).

    Raises:
        ValueError: a differing module of a type symopt does not record (named, with the alternative).

    Examples:
        A stand-in for a Hugging Face class (built from its ``config``), narrowed as an export narrows it:

        >>> import torch
        >>> from symopt import layout
        >>> class Net(torch.nn.Module):
        ...     def __init__(self, config):
        ...         super().__init__()
        ...         self.config = config
        ...         self.hidden = torch.nn.Linear(4, config["width"])
        ...         self.out = torch.nn.Linear(config["width"], 2)
        >>> small = Net({"width": 8})
        >>> small.hidden, small.out = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        >>> saved = layout.record(small)
        >>> sorted(saved["modules"]), saved["modules"]["out"]["arguments"]
        (['hidden', 'out'], {'in_features': 3, 'out_features': 2, 'bias': True})
        >>> again = Net({"width": 8})                    # what the config builds
        >>> layout.rebuild(again, saved)
        >>> again.load_state_dict(small.state_dict())
        <All keys matched successfully>
        >>> layout.record(Net({"width": 8})) is None      # nothing to record
        True
    """
    if getattr(model, "config", None) is None:
        return None
    reference = built_from_config(model)
    if reference is None:
        return None
    replaced, attributes, reshaped = differences(model, reference)
    if not replaced and not attributes and not reshaped:
        return None
    if "" in replaced:
        raise ValueError("save_pretrained: the model itself differs from what its config builds; save it with "
                         "torch.save(model, path)")
    modules = {name: _describe(model.get_submodule(name), name) for name in replaced}
    return {"modules": modules, "attributes": attributes, "shapes": reshaped}


def rebuild(model: nn.Module, layout: dict) -> None:
    """Give ``model`` (built from its config) the layers and attributes ``layout`` records, in place; the new
    layers are on the device and in the dtype of the ones they replace, their values unset (load them next)."""
    for name, description in layout["modules"].items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, leaf, None)
        new = _build(description)
        sample = next(iter(old.parameters()), None) if isinstance(old, nn.Module) else None
        if sample is not None:
            new = new.to(device=sample.device, dtype=sample.dtype)
        setattr(parent, leaf, new.train(model.training))
    for name, shapes in layout.get("shapes", {}).items():  # (a layout written before shapes were recorded has none)
        module = model.get_submodule(name)
        for tensor, shape in shapes.items():
            old = getattr(module, tensor)
            empty = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
            if tensor in module._parameters:
                setattr(module, tensor, nn.Parameter(empty, requires_grad=old.requires_grad))
            else:
                module._buffers[tensor] = empty
    for name, values in layout["attributes"].items():
        module = model.get_submodule(name)
        for key, value in values.items():
            setattr(module, key, value)
            if key in ON_REBUILD:  # (the hooks or own config an export's attribute stands for)
                ON_REBUILD[key](module, value)


def unrecorded_layers(model: nn.Module) -> str | None:
    """Why the model's own ``save_pretrained`` would lose a compressed export (None where it would not): it
    writes layers whose shapes the config does not describe; ``from_pretrained`` then refuses them, and with
    ``ignore_mismatched_sizes=True`` re-initialises them at random. [`export`][symopt.export] makes the
    model's ``save_pretrained`` refuse with this (``attach.guard_save_pretrained``)."""
    if record(model) is None:
        return None
    return ("this compressed export has layers its config does not describe (different head counts or widths per "
            "layer, factorised layers), which from_pretrained would refuse or re-initialise. Use "
            "symopt.save_pretrained(model, directory) and symopt.from_pretrained(cls, directory), which record and "
            "rebuild those layers.")
