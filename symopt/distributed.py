"""Layer 3 — adaptive λ under data parallelism (``DistributedDataParallel``).

Fixed strengths need nothing: DDP averages the factors' gradients, and the decay (as ``penalty`` or
as ``param_groups``) is the same on every rank. An *adaptive* λ (``strength="auto"``, budgets) is
estimated from $∂ℓ/∂θ$ in a backward hook, which sees the rank's *local* gradient before DDP's
all-reduce, so each rank would drift to its own λ and the replicas would diverge.
[`sync_strengths`][symopt.sync_strengths] averages that state across ranks (one all-reduce of a few numbers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .attach import list_constraints


def _adaptive_state(model: nn.Module) -> list[torch.Tensor]:
    state = []
    for handle in list_constraints(model):
        state += handle.constraint.policy.sync_state()  # what the policy needs replicas to agree on
    return state


def sync_strengths(model: nn.Module, group=None) -> None:
    """Average the adaptive-λ state (multiplier estimates, budget controllers) over the ranks of
    ``group``. Call it after ``loss.backward()`` (where λ observed the local gradient) and before
    ``optimizer.step()`` (which reads λ as the factors' weight decay). A no-op when ``torch.distributed`` is not
    initialised or the group has one rank, so the same script runs on one process.

    Both estimates are linear in what they observe (a moving average of dual norms; log λ moved a
    fixed fraction toward a target), so averaging the state each step equals observing the ranks'
    average: every replica keeps the same λ. It is not the λ of a single process on the full batch
    (the dual norm of an average gradient is not the average of dual norms) — a different, equally
    valid estimate.

    Args:
        model: the (DDP-wrapped or plain) module holding the constraints; every rank calls it with
            the same constraints in the same order.
        group: the process group (default: the world).

    Returns:
        None: the adaptive state is averaged in place; constraints without it are untouched.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> _ = symopt.sparse(lin, "weight", max_nonzero=3)
        >>> lin(torch.randn(8, 4)).square().mean().backward()
        >>> symopt.sync_strengths(lin)    # single process: nothing to do
        >>> symopt.list_constraints(lin)[0].strength > 0
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sync_strengths: expected an nn.Module, got {type(model).__name__}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return
    state = _adaptive_state(model)
    if not state:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in state])
    unknown = torch.isinf(flat) & (flat < 0)  # a budget λ not yet known (log λ = −inf) on this rank
    known = torch.where(unknown, torch.zeros_like(flat), flat)
    counts = (~unknown).to(torch.float64)
    packed = torch.stack([known, counts])
    backend_device = state[0].device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    packed = packed.to(backend_device)
    dist.all_reduce(packed, group=group)
    total, seen = packed.to(flat.device)
    averaged = torch.where(seen > 0, total / seen.clamp(min=1), torch.full_like(total, -torch.inf))
    offset = 0
    with torch.no_grad():
        for t in state:
            n = t.numel()
            t.copy_(averaged[offset:offset + n].reshape(t.shape).to(t.dtype))
            offset += n
    for handle in list_constraints(model):
        handle.constraint.policy.reload_state()  # (a policy's host copies of the state are stale now)
        handle.constraint.policy.publish()  # the averaged λ into the optimizer groups that follow it
