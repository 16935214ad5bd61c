"""Layer 3 — [`report`][symopt.report]: where each constraint stands during training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._format import table
from .attach import list_constraints


@dataclass(frozen=True)
class ReportRow:
    r"""One constraint's line in a [`Report`][symopt.Report].

    Attributes:
        name: the dotted name(s) of the constrained tensor(s).
        kind: the constraint kind.
        strength: the current λ.
        violation: distance to the constraint set (sparsity / rank kinds: to the snap at ``tol``).
        structure: density / groups / rank / codimension, as text.
        balance: factor imbalance in [0, 1]; 0 at the balanced factorisation, where the decay
            equals the induced penalty (e.g. $|u_i| = |v_i|$, $U^\top U = V^\top V$).
        penalty: the current decay $(λ/2)\sum ‖\mathrm{factor}‖^2$.
        multiplier: the running Lagrange-multiplier estimate behind ``strength="auto"`` (None
            otherwise).
    """

    name: str
    kind: str
    strength: float
    violation: float
    structure: str
    balance: float
    penalty: float
    multiplier: float | None = None


class Report(list):
    """A list of `ReportRow` (one per constraint) that prints as a table.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> _ = symopt.sparse(lin, "weight", strength=1e-3)
        >>> str(symopt.report(lin)).splitlines()[0].split()[:3]
        ['name', 'kind', 'strength']
    """

    def __str__(self) -> str:
        headers = ["name", "kind", "strength", "multiplier est.", "violation", "structure", "balance", "penalty"]
        return table(headers, [[r.name, r.kind, r.strength, "-" if r.multiplier is None else r.multiplier,
                                r.violation, r.structure, r.balance, r.penalty] for r in self])


@torch.no_grad()
def report(model: nn.Module, tol: float = 1e-6) -> Report:
    r"""Per constraint: name, kind, strength, violation, density / rank, factor balance, penalty.

    Changes nothing and needs no loss: it reads the current tensors and factors. For optimality
    (the KKT residual, the multipliers) use [`symopt.certify`][symopt.certify].

    Args:
        model: the module holding the constraints.
        tol: entries, groups or singular values $≤ \mathrm{tol}$ count as zero for the structure and
            the violation of the sparsity / rank kinds.

    Returns:
        Report: one `ReportRow` per constraint; ``print`` shows a table. A tensor holding
            NaN / Inf gives a NaN violation and structure "non-finite" instead of an error.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> _ = symopt.low_rank(lin, "weight", strength=1e-3)
        >>> [row.kind for row in symopt.report(lin)]
        ['low_rank']
    """
    rows = Report()
    for handle in list_constraints(model):
        values = [v.detach() for v in handle.values()]
        # members with decayed factors only: a tie's anchor stores its value as is
        balances = [m.parametrization.balance(*m.factors) for m in handle.members if m.parametrization.decayed]
        rows.append(ReportRow(
            name=handle.name, kind=handle.kind, strength=handle.strength, violation=handle.violation(values, tol),
            structure=handle.structure(values, tol), balance=sum(balances) / len(balances),
            penalty=float(handle.penalty()), multiplier=handle.constraint.multiplier(),
        ))
    return rows
