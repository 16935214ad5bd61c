"""Layer 3 — Hugging Face round trips: [`save_pretrained`][symopt.save_pretrained] and
[`from_pretrained`][symopt.from_pretrained] for a ``transformers`` model with symopt constraints.

A constrained weight is stored as its factors (``…parametrizations.weight.original0``), which
``transformers``' ``from_pretrained`` does not know: it would re-initialise the weight and say so only
in a load report. symopt therefore keeps both views in one directory:

* the model's own ``save_pretrained`` output, written from a plain copy that holds every constrained
  weight's current value — any ``from_pretrained`` (symopt's or not) loads the values exactly;
* ``symopt_state.safetensors``: the constrained model's own ``state_dict`` (factors, λ and the
  policies' buffers), which [`from_pretrained`][symopt.from_pretrained] loads after re-registering the
  constraints, so training resumes bit-exactly;
* ``symopt_layout.json``, only for a compressed export whose layers its config does not describe (a
  global head budget left different head counts per layer, an FFN lost neurons, a layer was factorised):
  those layers' types and sizes ([`symopt.layout`][symopt.layout.record]), from which
  [`from_pretrained`][symopt.from_pretrained] builds the same model before loading its weights. (Where
  one config does describe it, [`export`][symopt.export] already rewrote the config, and the model's own
  ``from_pretrained`` loads it.)

``transformers`` is optional; these functions only call methods of the model and its class.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable

import torch
from torch import nn

from . import layout
from .attach import list_constraints, remove
from .constraints.strength import OPTIONAL_STATE

STATE_FILE = "symopt_state.safetensors"
LAYOUT_FILE = "symopt_layout.json"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **kwargs) -> None:
    """Save a constrained Hugging Face model so that its values and its constraints survive.

    Writes ``model``'s ``save_pretrained`` output from a plain copy (constrained weights at their
    current values, not snapped: mid-training checkpoints stay what they are) and the constrained
    ``state_dict`` in ``symopt_state.safetensors``. ``model`` is not changed.

    Args:
        model: a model with ``save_pretrained`` (a ``transformers.PreTrainedModel``).
        directory: where to write (created if needed).
        **kwargs: passed to ``save_pretrained`` (e.g. ``safe_serialization``).

    Returns:
        None; the directory holds the model's own files and ``symopt_state.safetensors``.

    Raises:
        TypeError: ``model`` has no ``save_pretrained``.
        ValueError: a layer whose shape the config does not describe is of a type symopt does not record
            (named); nothing is written.

    Examples:
        [`from_pretrained`][symopt.from_pretrained] shows the round trip (with a stand-in model class;
        ``tests/test_hub.py`` runs it with BERT). A plain module has no ``save_pretrained``:

        >>> import torch, symopt
        >>> try:
        ...     symopt.save_pretrained(torch.nn.Linear(2, 2), "unused")
        ... except TypeError as error:
        ...     print(str(error).split(";")[0])
        save_pretrained: Linear has no save_pretrained (a transformers model is expected)
    """
    if not hasattr(type(model), "save_pretrained"):
        raise TypeError(f"save_pretrained: {type(model).__name__} has no save_pretrained (a transformers model "
                        "is expected); for a plain module use torch.save(model.state_dict(), path)")
    from safetensors.torch import save_file

    plain = copy.deepcopy(model) if list_constraints(model) else model  # (an export needs no copy)
    for handle in list_constraints(plain):
        for member in handle.members:
            remove(member.module, member.tensor)  # the current value, as a plain parameter
    record = layout.record(plain)  # (raises before anything is written)
    state = {key: value.detach().to("cpu").clone().contiguous() for key, value in model.state_dict().items()}
    os.makedirs(directory, exist_ok=True)
    if record is not None and "save_original_format" in inspect.signature(type(plain).save_pretrained).parameters:
        # (transformers 5 renames some weights to their hub names on save and back on load, e.g. GPT-NeoX's
        # lm_head as embed_out; a recorded layout is loaded by symopt.from_pretrained alone, under the model's
        # own names)
        kwargs.setdefault("save_original_format", False)
    type(plain).save_pretrained(plain, directory, **kwargs)
    save_file(state, os.path.join(directory, STATE_FILE), metadata={"format": "pt", "writer": "symopt"})
    layout_path = os.path.join(directory, LAYOUT_FILE)
    if record is not None:
        with open(layout_path, "w") as file:
            json.dump(record, file, indent=1)
    elif os.path.exists(layout_path):  # an earlier save's, into the same directory
        os.remove(layout_path)


def from_pretrained(cls, directory: str | os.PathLike, constrain: Callable[[nn.Module], object] | None = None,
                    **kwargs) -> nn.Module:
    """Load what [`save_pretrained`][symopt.save_pretrained] wrote: the values, and with ``constrain``
    the constraints and their factors.

    Args:
        cls: the model class (``BertForSequenceClassification``, ``AutoModel``, ...).
        directory: the saved directory.
        constrain: a function that registers the same constraints on the loaded model, as they were
            registered before saving (``lambda m: symopt.low_rank(m, "…", max_rank=4)``). Without it
            the model comes back plain, holding the constrained values.
        **kwargs: passed to ``cls.from_pretrained`` (a transformers class asked for the saved dtype where they name
            none: transformers 4's default is float32). A directory with a recorded layout (a compressed
            export) is built from its config instead, which takes only ``dtype`` (or ``torch_dtype``).

    Returns:
        The model; with ``constrain``, its factors and λ are the saved ones (bit-exact resume).

    Raises:
        ValueError: ``constrain`` registered constraints that do not match the saved ones (missing
            or unexpected keys, named in the message); the saved directory has no symopt state but
            ``constrain`` was given; a recorded layout with other keyword arguments than ``dtype``, or
            whose weights do not fit the layers it records.

    Examples:
        A stand-in for a ``transformers`` model (any class with ``save_pretrained`` / ``from_pretrained``
        and a ``config``):

        >>> import os, tempfile, torch, symopt
        >>> class Tiny(torch.nn.Module):
        ...     config = {}
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(4, 4)
        ...     def save_pretrained(self, directory):
        ...         torch.save(self.state_dict(), os.path.join(directory, "weights.pt"))
        ...     @classmethod
        ...     def from_pretrained(cls, directory):
        ...         model = cls()
        ...         model.load_state_dict(torch.load(os.path.join(directory, "weights.pt")))
        ...         return model
        >>> register = lambda m: symopt.low_rank(m, "lin.weight", strength=1e-3)
        >>> model = Tiny()
        >>> _ = register(model)
        >>> directory = tempfile.mkdtemp()
        >>> symopt.save_pretrained(model, directory)
        >>> back = symopt.from_pretrained(Tiny, directory, constrain=register)
        >>> torch.equal(back.lin.weight, model.lin.weight), len(symopt.list_constraints(back))
        (True, 1)
        >>> plain = symopt.from_pretrained(Tiny, directory)       # anyone's from_pretrained: the values
        >>> torch.equal(plain.lin.weight, model.lin.weight)
        True
    """
    layout_path = os.path.join(directory, LAYOUT_FILE)
    if os.path.exists(layout_path):
        with open(layout_path) as file:
            model = _from_layout(cls, directory, json.load(file), **kwargs)
    else:
        model = cls.from_pretrained(directory, **_saved_dtype(cls, kwargs))
    if constrain is None:
        return model
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise ValueError(f"from_pretrained: {directory} has no {STATE_FILE} (it was not written by "
                         "symopt.save_pretrained); load it without constrain=, then register the constraints")
    from safetensors.torch import load_file

    constrain(model)
    state = load_file(path)
    own = model.state_dict()
    # (a budget saved on its ramp holds its last reading's dropped atoms, which a freshly registered one has not yet)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(key for key in set(state) - set(own) if key.rpartition(".")[2] not in OPTIONAL_STATE)
    if missing or unexpected:
        raise ValueError(f"from_pretrained: the constraints registered by constrain= do not match the saved ones: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}; register the same constraints, "
                         "on the same names, as before saving")
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return model


def _saved_dtype(cls, kwargs: dict) -> dict:
    """``kwargs`` for a transformers class's own ``from_pretrained``, asking for the saved dtype where the caller
    named none: transformers 4 loads float32 by default (5 the saved dtype), and a resume with ``constrain=`` copies the
    saved factors into the model's parameters, which would round a float64 save to float32 without a word."""
    if "dtype" in kwargs or "torch_dtype" in kwargs or not getattr(cls, "__module__", "").startswith("transformers"):
        return kwargs
    import transformers

    return kwargs if int(transformers.__version__.split(".")[0]) >= 5 else {**kwargs, "torch_dtype": "auto"}


def _from_layout(cls, directory: str | os.PathLike, record: dict, **kwargs) -> nn.Module:
    """The model a compressed export saved: built from its config, given the recorded layers, its weights
    loaded (tied weights tied again), in eval mode as ``from_pretrained`` returns it."""
    unsupported = sorted(set(kwargs) - {"dtype", "torch_dtype"})
    if unsupported:
        raise ValueError(f"from_pretrained: {directory} holds a compressed layout ({LAYOUT_FILE}), built from its "
                         f"config without cls.from_pretrained, which takes only dtype=; got {unsupported}")
    asked = kwargs.get("dtype", kwargs.get("torch_dtype"))
    dtype = getattr(torch, asked, None) if isinstance(asked, str) and asked != "auto" else asked
    if asked is not None and asked != "auto" and not isinstance(dtype, torch.dtype):
        raise ValueError(f"from_pretrained: dtype must be a torch dtype, its name or 'auto', got "
                         f"{asked!r}")
    config_class = getattr(cls, "config_class", None)
    if config_class is None:  # an Auto class
        from transformers import AutoConfig as config_class
    config = config_class.from_pretrained(directory)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    layout.rebuild(model, record)
    weights = _saved_weights(directory)
    floating = [t.dtype for t in weights.values() if t.is_floating_point()]
    if floating:
        model.to(floating[0])  # (non-persistent buffers too, as a model saved in that dtype had them)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # a tied copy is saved once and was replaced above
    state = model.state_dict()
    loaded = {state[key].data_ptr() for key in weights if key in state}
    untied = [key for key in missing if state[key].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(f"from_pretrained: the weights in {directory} do not fit the layout it records: "
                         f"missing {untied[:5]}, unexpected {unexpected[:5]}; save the model again with "
                         "symopt.save_pretrained")
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    return model.eval()


def _saved_weights(directory: str | os.PathLike) -> dict:
    """The tensors ``save_pretrained`` wrote: one safetensors file, shards listed in its index, or a
    ``pytorch_model.bin``."""
    from safetensors.torch import load_file

    single, index = os.path.join(directory, "model.safetensors"), os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        with open(index) as file:
            shards = sorted(set(json.load(file)["weight_map"].values()))
        return {key: value for shard in shards for key, value in load_file(os.path.join(directory, shard)).items()}
    binary = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(binary):
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise ValueError(f"from_pretrained: {directory} has no model.safetensors (or index, or pytorch_model.bin)")
