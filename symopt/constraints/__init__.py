"""Layer 1 — constraint kinds: which symmetry each builds, its penalty, its feasible set.

One file per kind; each registers itself in ``KINDS`` by its class statement (a ``kind`` name and an
``example``), which is how the layers above and the conformance suite find every kind. λ belongs
to a strength policy (`symopt.constraints.strength`).
"""

import sys
import types
import warnings

from .anchor import Anchor
from .base import KINDS, Constraint, Example, FeasibleHalf, PenaltyHalf
from .fixed_zeros import FixedZeros
from .group import GroupSparse
from .lowrank import LowRank
from .n_m_sparse import NMSparse
from .nonnegative import NonNegative
from .sparse import Sparse
from .strength import Auto, BudgetStrength, Fixed, Scheduled, Strength
from .subspace import Subspace
from .tied import Tied, TiedAnchor, TiedMember

__all__ = ["Anchor", "Auto", "BudgetStrength", "Constraint", "Example", "FeasibleHalf", "Fixed", "FixedZeros",
           "GroupSparse", "KINDS", "LowRank", "NMSparse", "NonNegative", "PenaltyHalf", "Scheduled", "Sparse", "Strength",
           "Subspace", "Tied", "TiedAnchor", "TiedMember"]


class _Package(types.ModuleType):
    """``symopt.constraints`` is this sub-package; it was once also the discovery function. Calling it
    still works, with a ``DeprecationWarning`` naming its successor `symopt.list_constraints`."""

    def __call__(self, model):
        warnings.warn("symopt.constraints(model) is deprecated: use symopt.list_constraints(model) "
                      "(symopt.constraints is the sub-package of constraint kinds)", DeprecationWarning, stacklevel=2)
        # Looked up at call time, not imported: this layer never imports a higher one.
        return sys.modules["symopt"].list_constraints(model)


sys.modules[__name__].__class__ = _Package
