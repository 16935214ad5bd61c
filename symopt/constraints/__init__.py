"""Layer 1 — constraint kinds: which symmetry each builds, its penalty, its projection."""

from .anchor import Anchor
from .base import Constraint
from .fixed_zeros import FixedZeros
from .group import GroupSparse
from .lowrank import LowRank
from .sparse import Sparse
from .subspace import Subspace
from .tied import Tied, TiedAnchor, TiedMember

__all__ = ["Anchor", "Constraint", "Sparse", "GroupSparse", "LowRank", "Subspace", "FixedZeros", "Tied", "TiedAnchor", "TiedMember"]
