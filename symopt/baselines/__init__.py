"""Layer 4 — independent solvers to check DCS against. Optional imports: each baseline raises
``ImportError`` naming the extra when its package is missing (never at ``import symopt``), and
:class:`~symopt.result.NotApplicable` when it has no method for a problem."""

from ..result import NotApplicable
from .cvxpy import solve_cvxpy
from .geoopt import solve_geoopt
from .proximal import solve_proximal
from .sklearn import solve_sklearn

__all__ = ["NotApplicable", "solve_cvxpy", "solve_geoopt", "solve_proximal", "solve_sklearn"]
