"""Layer 3 — :func:`finalize`: snap every constrained tensor exactly onto its set and remove the
parametrizations, leaving plain parameters and a :class:`~symopt.certify.Certificate`."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize

from .attach import constraints
from .certify import Certificate, ConstraintCertificate


@torch.no_grad()
def finalize(model: nn.Module, tol: float = 1e-6, force: bool = False) -> Certificate:
    """Snap each constrained tensor onto its constraint set and remove symopt's parametrizations.

    Linear constraints (Subspace, FixedZeros, Tied) are projected orthogonally; finalize refuses
    (``ValueError``, nothing changed) when a tensor is farther than ``tol`` from its set, since the
    projection would then change the trained model noticeably — raise ``strength`` or train longer,
    or pass ``force=True``. Sparsity / rank kinds zero the entries, groups or singular values whose
    magnitude is ``<= tol``. Afterwards each tensor is a plain ``nn.Parameter`` again.

    Returns:
        Certificate with, per constraint, the violation before and after, and the change made.

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=1e-3)
        >>> cert = symopt.finalize(lin, tol=1e-6)
        >>> cert.ok, symopt.constraints(lin)
        (True, [])
    """
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"finalize: tol must be a finite number >= 0, got {tol!r}")
    plan = []
    refused = []
    for handle in constraints(model):
        values = [v.detach() for v in handle.values()]
        violation = handle.violation(values, tol)
        snapped = handle.snap(values, tol)
        if handle.constraint.linear and violation > tol and not force:
            refused.append(f"'{handle.name}' ({handle.kind}): distance {violation:.3g} > tol {tol:g}")
        plan.append((handle, values, violation, snapped))
    if refused:
        raise ValueError(
            "finalize refused, nothing changed — the constraint does not hold yet: " + "; ".join(refused)
            + ". Raise the strength or train longer, or pass force=True to project anyway."
        )
    entries = []
    for handle, before, violation, snapped in plan:
        for member, new in zip(handle.members, snapped):
            # parametrize decides Parameter vs buffer from requires_grad of the value, so the
            # removal must see grad mode on (finalize itself runs under no_grad).
            with torch.enable_grad():
                parametrize.remove_parametrizations(member.module, member.tensor, leave_parametrized=True)
            getattr(member.module, member.tensor).copy_(new)
        after = handle.violation(snapped, tol)
        change = math.sqrt(sum(float((n - b).square().sum()) for n, b in zip(snapped, before)))
        norm = math.sqrt(sum(float(b.square().sum()) for b in before))
        entries.append(ConstraintCertificate(
            name=handle.name, kind=handle.kind, strength=handle.strength, violation_before=violation,
            violation_after=after, change=change, relative_change=change / norm if norm > 0 else 0.0,
            structure=handle.structure(snapped, tol),
        ))
    return Certificate(tuple(entries), tol)
