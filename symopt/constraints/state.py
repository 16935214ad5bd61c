"""The state modules of the strength policies: float64 buffers that a model's cast does not round, and
host copies of them that a GPU step can read without a synchronisation.

A policy's buffers are counts and logarithms (the steps so far, log λ, a moving average of dual
norms): a model cast to bfloat16 (``model.bfloat16()``, ``model.half()``) used to cast them too, and a
bfloat16 step count stops at 256 (256 + 1 rounds back to 256), so a budget with ``total_steps`` never
reached its landing and a schedule stood still. They stay float64 on whatever device the model moves to.
"""

from __future__ import annotations

import torch
from torch import nn


class Float64State(nn.Module):
    """A module whose own float64 buffers keep their dtype (and exact values) through a cast of the model.

    Examples:
        >>> import torch
        >>> state = Float64State()
        >>> state.register_buffer("step", torch.tensor(300.0, dtype=torch.float64))
        >>> _ = state.bfloat16()
        >>> state.step.dtype, float(state.step)      # bfloat16 would hold 300 as 300, 301 as 300
        (torch.float64, 300.0)
    """

    def _apply(self, fn, recurse=True):
        exact = {name: buffer.detach().clone() for name, buffer in self._buffers.items()
                 if buffer is not None and buffer.dtype == torch.float64}
        out = super()._apply(fn, recurse)
        for name, before in exact.items():
            after = self._buffers[name]
            if after is not None and after.dtype != torch.float64:  # cast: back to the exact values, moved
                self._buffers[name] = before.to(after.device)
        return out


class HostCopies(Float64State):
    """A `Float64State` whose policy reads its 0-d buffers through host copies: on a GPU each read of a
    buffer itself is a synchronisation (the CPU waits for every queued kernel before it launches more),
    and a policy asks its step count or λ on every training step, which otherwise needs nothing from
    the device. `host` reads the copies (the missing ones from the buffers, in one transfer); `write`
    sets a buffer and its copy together (exactly: the buffers are float64); `reload_state` forgets the
    copies, here and in the children that keep any, after anything that writes the buffers without
    `write`: a move or cast, a load (both call it), `symopt.sync_strengths`' all-reduce, DDP's
    broadcast of rank 0's buffers (which leaves no trace on them: a budget reloads at each reading
    under ``torch.distributed``).

    Examples:
        >>> import torch
        >>> state = HostCopies()
        >>> state.register_buffer("step", torch.zeros((), dtype=torch.float64))
        >>> state.write("step", state.host("step") + 1)
        >>> state.host("step"), float(state.step)
        (1.0, 1.0)
    """

    def host(self, *names: str):
        """The named buffers' values (a float, or a list for several names), from the host copies."""
        copies = self.__dict__.setdefault("_host_copies", {})  # (a module pickled before the copies: none)
        try:  # (asked several times a step by each policy: the copies are there but after a move or load)
            return copies[names[0]] if len(names) == 1 else [copies[name] for name in names]
        except KeyError:
            pass
        missing = [name for name in names if name not in copies]
        if missing:
            values = torch.stack([self._buffers[name].to(torch.float64) for name in missing]).tolist()
            copies.update(zip(missing, values))
        return copies[names[0]] if len(names) == 1 else [copies[name] for name in names]

    def write(self, name: str, value: float) -> None:
        """Set buffer ``name`` to ``value``, and its host copy with it."""
        self._buffers[name].fill_(value)
        self.__dict__.setdefault("_host_copies", {})[name] = float(value)

    def reload_state(self) -> None:
        """Forget the host copies (here and in the children): the next reads take the buffers."""
        self.__dict__["_host_copies"] = {}
        for child in self.children():
            getattr(child, "reload_state", lambda: None)()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.reload_state()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.reload_state()
