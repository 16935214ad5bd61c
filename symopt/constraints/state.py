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
    """A `Float64State` that keeps host copies of some of its 0-d buffers (a GPU synchronises at each read
    of the buffers themselves): `reload_state` forgets them, and it runs after a move or cast (``.to``,
    ``.double``) and after a load, which write the buffers without the module's own setters."""

    def reload_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.reload_state()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.reload_state()
