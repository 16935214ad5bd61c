"""Layer 4 — problem families (torch objective + cvxpy twin) and seeded generators."""

from .base import BoundLoss, Problem
from .families import (equality_ls, group_lasso, lasso, logistic_l1, low_rank_regression, matrix_completion, multitask_lasso,
                       tied_least_squares)
from .generators import (make_equality_ls, make_fixed_zeros_ls, make_group_lasso, make_lasso, make_logistic_l1,
                         make_low_rank_regression, make_matrix_completion, make_tied_least_squares)

__all__ = [
    "Problem", "BoundLoss", "lasso", "group_lasso", "logistic_l1", "equality_ls", "matrix_completion", "make_lasso",
    "make_group_lasso", "make_logistic_l1", "make_equality_ls", "make_matrix_completion", "tied_least_squares",
    "make_fixed_zeros_ls", "make_tied_least_squares", "low_rank_regression", "make_low_rank_regression",
    "multitask_lasso",
]
