"""Layer 3 — certificates: what :func:`symopt.finalize` measured and changed, per constraint."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._format import table


@dataclass(frozen=True)
class ConstraintCertificate:
    """One constraint's record.

    ``violation_before`` / ``violation_after``: Euclidean distance of the tensor(s) to the constraint
    set (for the sparsity / rank kinds: to the snap at ``tol``). ``change``: ‖after − before‖;
    ``relative_change``: change / ‖before‖.
    """

    name: str
    kind: str
    strength: float
    violation_before: float
    violation_after: float
    change: float
    relative_change: float
    structure: str


@dataclass(frozen=True)
class Certificate:
    """Per-constraint records; ``ok`` is True when every ``violation_after <= tol``."""

    entries: tuple[ConstraintCertificate, ...]
    tol: float
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.violation_after <= self.tol for e in self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> ConstraintCertificate:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no constraint named {name!r}; have {[e.name for e in self.entries]}")

    def __str__(self) -> str:
        headers = ["name", "kind", "strength", "violation before", "after", "change", "rel. change", "structure"]
        rows = [
            [e.name, e.kind, e.strength, e.violation_before, e.violation_after, e.change, e.relative_change,
             e.structure]
            for e in self.entries
        ]
        return table(headers, rows)
