"""Layer 4 — independent solvers to check DCS against. Optional imports: each baseline raises
``ImportError`` with the install hint when its package is missing, and says when it does not apply."""

from .cvxpy import solve_cvxpy
from .proximal import solve_proximal
from .sklearn import solve_sklearn

__all__ = ["solve_cvxpy", "solve_proximal", "solve_sklearn"]


class NotApplicable(ValueError):
    """The baseline has no method for this problem family."""
