"""Layer 4 — problem families (torch objective + cvxpy twin) and seeded generators."""

from .base import Problem
from .families import equality_ls, group_lasso, lasso, logistic_l1, matrix_completion
from .generators import make_equality_ls, make_group_lasso, make_lasso, make_logistic_l1, make_matrix_completion

__all__ = [
    "Problem", "lasso", "group_lasso", "logistic_l1", "equality_ls", "matrix_completion", "make_lasso",
    "make_group_lasso", "make_logistic_l1", "make_equality_ls", "make_matrix_completion",
]
