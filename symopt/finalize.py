"""Layer 3 — [`finalize`][symopt.finalize]: snap every constrained tensor exactly onto its set and remove the
parametrizations, leaving plain parameters and a [`Certificate`][symopt.Certificate]."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from .attach import list_constraints, remove
from .certify import Certificate, ConstraintCertificate, certify


def _loss(model: nn.Module, loss_fn: Callable, batch) -> float:
    with torch.no_grad():
        return float(loss_fn(model) if batch is None else loss_fn(model, batch))


def landed(model: nn.Module) -> bool:
    r"""Whether every constraint of ``model`` that lands at a known step has landed.

    A budget with ``total_steps`` (``max_nonzero`` / ``density``, ``max_groups``, ``max_heads``,
    ``target_rank``) lands at the end of its ramp, and a tie, subspace or fixed zeros with ``total_steps`` at
    its landing step: from then on the dropped atoms (or the set's complement) are held at exactly 0, so the
    structure is final. That is the moment to export and fine-tune the smaller model with plain weights
    (``symopt.export(model, mode="compressed")`` and a fresh optimizer), as Torch-Pruning fine-tunes its pruned
    model; constraints without a schedule (a fixed or ``"auto"`` λ) do not land and are not asked.

    Args:
        model: the module holding the constraints.

    Returns:
        bool: True once all of them have landed (a global budget counts once, for all its tensors).

    Raises:
        ValueError: no constraint of ``model`` lands at a known step (none at all, or none with
            ``total_steps``): the answer would stay False for ever.
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(8, 4)
        >>> _ = symopt.sparse(lin, "weight", max_nonzero=8, total_steps=4, ramp=(0.0, 0.5))
        >>> optimizer = torch.optim.SGD(symopt.param_groups(lin, lr=0.1), lr=0.1)
        >>> before = symopt.landed(lin)
        >>> for _ in range(4):
        ...     optimizer.zero_grad()
        ...     lin(torch.ones(2, 8)).square().sum().backward()
        ...     optimizer.step()
        >>> before, symopt.landed(lin), int(lin.weight.count_nonzero())
        (False, True, 8)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"symopt.landed: model must be an nn.Module, got {type(model).__name__}")
    policies = {id(h.constraint.policy): h.constraint.policy for h in list_constraints(model)}
    landing = [policy for policy in policies.values() if policy.lands()]
    if not landing:
        raise ValueError("symopt.landed: no constraint of the model lands at a known step, so it would never "
                         "say True; give a budget total_steps= (e.g. symopt.sparse(model, name, density=0.1, "
                         "total_steps=N)), or a tie / subspace total_steps=")
    return all(policy.has_landed() for policy in landing)


def finalize(model: nn.Module, tol: float = 1e-6, force: bool = False, loss_fn: Callable | None = None,
             batch=None) -> Certificate:
    r"""Snap each constrained tensor onto its constraint set and remove symopt's parametrizations.

    Linear constraints (Subspace, FixedZeros, Tied) are projected orthogonally. Sparsity / rank kinds
    zero the entries, groups or singular values whose magnitude is ``<= tol``; with a budget
    (``max_nonzero``, ``density``, ``max_groups``, ``target_rank``) they also keep only the budget's
    largest atoms, so the budget holds exactly. finalize first measures every constraint
    ([`symopt.certify`][symopt.certify]) and refuses (``ValueError``, nothing changed) when a linear or budgeted
    tensor is farther than ``tol`` from its set, since snapping would then change the trained model
    noticeably — raise ``strength`` or train longer, or pass ``force=True``. It always refuses a tensor
    holding NaN or Inf. Afterwards each tensor is a plain ``nn.Parameter`` again.

    The snap is the Euclidean projection onto the set: $(I - OO^\top)θ$ for a subspace, the mean of
    the copies for a tie, the truncated SVD for a rank, zeroing for the sparsity kinds.

    Args:
        model: the module holding the constraints; changed in place.
        tol: snap tolerance and refusal threshold (absolute, in the parameter's units).
        force: snap even when the distance exceeds ``tol``.
        loss_fn: optional ``loss_fn(model)`` / ``loss_fn(model, batch)``; with it the certificate
            reports the loss before and after the snap (``cert.loss_change``).
        batch: passed to ``loss_fn`` when given.

    Returns:
        Certificate: per constraint, the violation before and after, and the change made.

    Raises:
        ValueError: a linear or budgeted tensor farther than ``tol`` from its set (without
            ``force``), a tensor holding NaN / Inf (even with ``force``), or a bad ``tol``; the
            model is unchanged.
        TypeError: ``loss_fn`` is not callable, or ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 2)
        >>> _ = symopt.sparse(lin, "weight", strength=1e-3)
        >>> cert = symopt.finalize(lin, tol=1e-6)
        >>> cert.ok, symopt.list_constraints(lin)
        (True, [])
    """
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"finalize: tol must be a finite number >= 0, got {tol!r}")
    if not isinstance(force, bool):
        raise TypeError(f"finalize: force must be True or False, got {force!r} ({type(force).__name__})")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"finalize: loss_fn must be callable as loss_fn(model[, batch]), got {type(loss_fn).__name__}")
    broken = [f"'{h.name}' ({h.kind})" for h in list_constraints(model)
              if not all(bool(torch.isfinite(v).all()) for v in h.values())]
    if broken:  # snapping would turn NaN into 0 or keep it: a silently wrong model either way
        raise ValueError(
            "finalize refused, nothing changed — NaN or Inf in " + ", ".join(broken)
            + ": training diverged. Roll back to a finite state (symopt.Guard does this each step) or reload "
            "a checkpoint; force=True does not override this."
        )
    measured = certify(model, tol=tol)
    refused = []
    for entry in measured:
        bounded = entry.budget is not None or entry.linear
        if bounded and entry.violation_before > tol and not force:
            why = f"keeping its {entry.budget} largest atoms moves it" if entry.budget is not None else "distance"
            refused.append(f"'{entry.name}' ({entry.kind}, {entry.structure}): {why} {entry.violation_before:.3g} "
                           f"> tol {tol:g}")
    if refused:
        raise ValueError(
            "finalize refused, nothing changed — the constraint does not hold yet: " + "; ".join(refused)
            + ". Raise the strength or train longer, raise tol, or pass force=True to snap anyway."
        )
    loss_before = _loss(model, loss_fn, batch) if loss_fn is not None else None
    entries = []
    with torch.no_grad():
        for handle, entry in zip(list_constraints(model), measured):  # same order: certify lists list_constraints(model)
            before = [v.detach().clone() for v in handle.values()]
            violation = entry.violation_before
            snapped = handle.snap(before, tol)
            structure = handle.structure(snapped, tol)
            for member, new in zip(handle.members, snapped):
                remove(member.module, member.tensor)
                getattr(member.module, member.tensor).copy_(new)
            after = handle.violation(snapped, tol)
            change = math.sqrt(sum(float((n - b).square().sum()) for n, b in zip(snapped, before)))
            norm = math.sqrt(sum(float(b.square().sum()) for b in before))
            entries.append(ConstraintCertificate(
                name=handle.name, kind=handle.kind, strength=handle.strength, violation_before=violation,
                violation_after=after, change=change, relative_change=change / norm if norm > 0 else 0.0,
                structure=structure, relative_violation=entry.relative_violation,
                budget=handle.constraint.budget, linear=handle.constraint.linear,
            ))
    extra = {}
    if loss_fn is not None:
        extra = {"loss_before": loss_before, "loss_after": _loss(model, loss_fn, batch)}
    return Certificate(tuple(entries), tol, extra)
