"""scikit-learn's coordinate-descent Lasso and liblinear L1 logistic regression."""

from __future__ import annotations

import time
import warnings

import torch

from ..problems import Problem
from ..result import NotApplicable, Result


def solve_sklearn(problem: Problem, tol: float = 1e-10, max_iter: int = 10_000) -> Result:
    """Lasso (``alpha = λ``) or L1 logistic regression (``C = 1/(nλ)``) without intercept."""
    try:
        from sklearn.linear_model import Lasso, LogisticRegression
    except ImportError as err:  # pragma: no cover
        raise ImportError("the sklearn baseline needs scikit-learn: pip install 'symopt[baselines]'") from err
    family, lam = problem.meta.get("family"), problem.meta.get("strength")
    if family not in ("lasso", "logistic_l1"):
        raise NotApplicable(f"no scikit-learn solver for {family}")
    data = problem.numpy_data()
    X, y = data["X"], data["y"]
    if family == "lasso":
        model = Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=max_iter)
    elif family == "logistic_l1":
        model = LogisticRegression(l1_ratio=1.0, C=1.0 / (X.shape[0] * lam), fit_intercept=False, solver="liblinear",
                                   tol=tol, max_iter=max_iter)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    seconds = time.perf_counter() - start
    x = torch.as_tensor(model.coef_, dtype=torch.float64).reshape(problem.shape)
    iterations = int(max(model.n_iter_) if hasattr(model.n_iter_, "__len__") else model.n_iter_)
    return Result(x=x, objective=problem.objective(x), violation=0.0, kkt_residual=float("nan"),
                  iterations=iterations, seconds=seconds, status="optimal" if iterations < max_iter else "max_iter",
                  solver=f"sklearn[{type(model).__name__}]")
