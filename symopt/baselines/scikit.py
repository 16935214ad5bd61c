"""scikit-learn's coordinate-descent Lasso and liblinear L1 logistic regression; skglm's Lasso,
sparse logistic regression and group lasso (working-set coordinate descent with Anderson
acceleration: the fastest specialised CPU solvers for these families)."""

from __future__ import annotations

import time
import warnings

import torch

from ..optimality import gradient_scale, kkt_at_snap
from ..problems import Problem
from ..result import NotApplicable, Result


def solve_sklearn(problem: Problem, tol: float = 1e-10, max_iter: int = 10_000) -> Result:
    """scikit-learn's coordinate descent: ``Lasso(alpha = λ)``, or ``LogisticRegression`` with an L1
    penalty and ``C = 1/(nλ)`` (liblinear), both without intercept; for the group lasso, skglm's
    ``GroupLasso(groups, alpha = λ)`` (same ``1/(2n)`` scaling).

    The scalings match the problems: sklearn's Lasso minimises ``1/(2n)‖Xw − y‖² + α‖w‖₁``, and
    ``C·Σ log-loss + ‖w‖₁`` has the minimiser of ``mean log-loss + λ‖w‖₁`` when ``C = 1/(nλ)``.

    Args:
        problem: a lasso, logistic-L1 or group-lasso [`Problem`][symopt.Problem] with a fixed λ.
        tol: the solver's tolerance (tight by default, to compare at 1e-6).
        max_iter: the solver's iteration limit.

    Returns:
        Result: ``kkt_residual`` measured at the answer, ``solver`` names the estimator.

    Raises:
        ImportError: scikit-learn (or skglm, for the group lasso) is not installed.
        NotApplicable: another family, or a budget problem.

    Examples:
        >>> import symopt
        >>> from symopt.baselines import solve_sklearn
        >>> from symopt.problems import make_lasso
        >>> problem = make_lasso(n=40, d=20, nonzeros=3)
        >>> abs(solve_sklearn(problem).objective - symopt.solve(problem).objective) < 1e-9
        True
    """
    try:
        from sklearn.linear_model import Lasso, LogisticRegression
    except ImportError as err:  # pragma: no cover
        raise ImportError("the sklearn baseline needs scikit-learn: pip install 'symopt[baselines]'") from err
    problem.require_strength("sklearn")
    family, lam = problem.meta.get("family"), problem.meta.get("strength")
    if family not in ("lasso", "logistic_l1", "group_lasso"):
        raise NotApplicable(f"no scikit-learn solver for {family}")
    if family == "lasso":
        model = Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=max_iter)
    elif family == "group_lasso":  # scikit-learn has none: skglm's, the same estimator as solve_skglm's
        return solve_skglm(problem, tol=tol, max_iter=max_iter)
    elif family == "logistic_l1":
        n = problem.data["X"].shape[0]
        # liblinear visits coordinates in a random order: unseeded, the same fit took 0.01 s or 2.7 s
        # (10000 iterations at tol 1e-10) from run to run
        model = LogisticRegression(l1_ratio=1.0, C=1.0 / (n * lam), fit_intercept=False, solver="liblinear",
                                   tol=tol, max_iter=max_iter, random_state=0)
    return _fit(problem, model)


def solve_skglm(problem: Problem, tol: float = 1e-10, max_iter: int = 10_000) -> Result:
    """skglm's working-set coordinate descent: ``Lasso(alpha = λ)``, ``SparseLogisticRegression(alpha = λ)``
    or ``GroupLasso(groups, alpha = λ)``, without intercept.

    The fastest CPU baseline for these families (see the benchmarks); the scalings are the
    problems' own (``1/(2n)`` least squares, mean log-loss), so ``alpha`` is λ.

    Args:
        problem: a lasso, logistic-L1 or group-lasso [`Problem`][symopt.Problem] with a fixed λ.
        tol: the solver's tolerance.
        max_iter: the solver's iteration limit.

    Returns:
        Result: ``kkt_residual`` measured at the answer, ``solver`` names the estimator.

    Raises:
        ImportError: skglm is not installed (``pip install 'symopt[baselines]'``).
        NotApplicable: another family, or a budget problem.

    Examples:
        >>> import symopt
        >>> from symopt.baselines import solve_skglm
        >>> from symopt.problems import make_group_lasso
        >>> problem = make_group_lasso(n=60, d=40, group_size=4, active_groups=2)
        >>> abs(solve_skglm(problem).objective - symopt.solve(problem).objective) < 1e-9
        True
    """
    try:
        from skglm import GroupLasso, Lasso, SparseLogisticRegression
    except ImportError as err:  # pragma: no cover
        raise ImportError("the skglm baseline needs skglm: pip install 'symopt[baselines]'") from err
    problem.require_strength("skglm")
    family, lam = problem.meta.get("family"), problem.meta.get("strength")
    if family == "lasso":
        model = Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=max_iter)
    elif family == "logistic_l1":
        model = SparseLogisticRegression(alpha=lam, fit_intercept=False, tol=tol, max_iter=max_iter)
    elif family == "group_lasso":
        model = GroupLasso(groups=problem.meta["groups"], alpha=lam, fit_intercept=False, tol=tol, max_iter=max_iter)
    else:
        raise NotApplicable(f"no skglm solver for {family}")
    return _fit(problem, model)


def _fit(problem: Problem, model) -> Result:
    data = problem.numpy_data()
    X, y = data["X"], data["y"]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    seconds = time.perf_counter() - start
    x = torch.as_tensor(model.coef_, dtype=torch.float64).reshape(problem.shape)
    iterations = int(max(model.n_iter_) if hasattr(model.n_iter_, "__len__") else model.n_iter_)
    # Status from the KKT residual at the answer: iteration counts are not comparable across these
    # libraries (skglm reports its iteration budget).
    c = problem.constraint().to(dtype=torch.float64)
    data_t = problem.data_on("cpu", torch.float64)
    loss = lambda w: problem.loss(w, **data_t)  # noqa: E731
    _, kkt = kkt_at_snap(loss, c, x, 1e-8)
    status = "optimal" if kkt <= 1e-6 * gradient_scale(loss, problem.shape, "cpu", torch.float64) else "inaccurate"
    return Result.from_point(problem, x, solver=f"{type(model).__module__.split('.')[0]}[{type(model).__name__}]",
                             status=status, seconds=seconds, kkt_residual=kkt, iterations=iterations)
