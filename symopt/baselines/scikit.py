"""scikit-learn's coordinate-descent Lasso and liblinear L1 logistic regression; skglm's Lasso,
sparse logistic regression and group lasso (working-set coordinate descent with Anderson
acceleration: the fastest specialised CPU solvers for these families)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ..optimality import gradient_scale, kkt_at_snap
from ..problems import Problem
from ..result import NotApplicable, Result


def solve_sklearn(problem: Problem, tol: float = 1e-10, max_iter: int = 10_000) -> Result:
    r"""scikit-learn's coordinate descent: ``Lasso(alpha = λ)`` (``ElasticNet`` for ``l1_ratio < 1``,
    with the problem's ``fit_intercept``, ``positive`` and sample weights), ``MultiTaskLasso``, or
    ``LogisticRegression`` with an L1 penalty and $C = 1/(nλ)$ (liblinear; saga, with the weights
    scaled to sum to ``n``, when the problem has an unpenalised intercept, weights or
    ``l1_ratio < 1``: liblinear penalises its intercept); for the group lasso, skglm's
    ``GroupLasso(groups, alpha = λ)`` (same ``1/(2n)`` scaling).

    The scalings match the problems: sklearn's Lasso minimises $1/(2n)‖Xw - y‖^2 + α‖w‖_1$, and
    $C·\sum \log-\mathrm{loss} + ‖w‖_1$ has the minimiser of $\text{mean log-loss} + λ‖w‖_1$ when $C = 1/(nλ)$.

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
        from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression, MultiTaskLasso
    except ImportError as err:  # pragma: no cover
        raise ImportError("the sklearn baseline needs scikit-learn: pip install 'symopt[baselines]'") from err
    problem.require_strength("sklearn")
    meta = problem.meta
    family, lam = meta.get("family"), meta.get("strength")
    if family not in ("lasso", "logistic_l1", "group_lasso", "multitask_lasso"):
        raise NotApplicable(f"no scikit-learn solver for {family}")
    intercept, ratio = bool(meta.get("fit_intercept")), meta.get("l1_ratio", 1.0)
    if family == "lasso":  # sklearn rescales sample_weight to sum to n: the same weighted mean as ours
        common = dict(alpha=lam, fit_intercept=intercept, positive=bool(meta.get("positive")), tol=tol,
                      max_iter=max_iter)
        model = Lasso(**common) if ratio == 1 else ElasticNet(l1_ratio=ratio, **common)
    elif family == "multitask_lasso":
        if meta.get("sample_weight"):
            raise NotApplicable("scikit-learn's MultiTaskLasso takes no sample_weight")
        model = MultiTaskLasso(alpha=lam, fit_intercept=intercept, tol=tol, max_iter=max_iter)
    elif family == "group_lasso":  # scikit-learn has none: skglm's, the same estimator as solve_skglm's
        return solve_skglm(problem, tol=tol, max_iter=max_iter)
    elif not (intercept or meta.get("sample_weight") or ratio < 1):
        n = problem.data["X"].shape[0]
        # liblinear visits coordinates in a random order: unseeded, the same fit took 0.01 s or 2.7 s
        # (10000 iterations at tol 1e-10) from run to run
        model = LogisticRegression(l1_ratio=1.0, C=1.0 / (n * lam), fit_intercept=False, solver="liblinear",
                                   tol=tol, max_iter=max_iter, random_state=0)
    else:  # liblinear penalises its intercept: saga's is free. C·Σ s_i ℓ_i, s summing to n (see _fit)
        n = problem.data["X"].shape[0]
        model = LogisticRegression(l1_ratio=ratio, C=1.0 / (n * lam), fit_intercept=intercept, solver="saga",
                                   tol=tol, max_iter=max_iter, random_state=0)
    return _fit(problem, model)


def solve_skglm(problem: Problem, tol: float = 1e-10, max_iter: int = 10_000) -> Result:
    """skglm's working-set coordinate descent: ``Lasso(alpha = λ)``, ``SparseLogisticRegression(alpha = λ)``
    or ``GroupLasso(groups, alpha = λ, weights)``, with the problem's ``fit_intercept``.

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
    unsupported = [what for what, on in (("sample_weight", problem.meta.get("sample_weight")),
                                         ("l1_ratio < 1", problem.meta.get("l1_ratio", 1.0) < 1),
                                         ("positive", problem.meta.get("positive"))) if on]
    if unsupported:
        raise NotApplicable(f"the skglm baseline here does not pass {', '.join(unsupported)}")
    intercept = bool(problem.meta.get("fit_intercept"))
    if family == "lasso":
        model = Lasso(alpha=lam, fit_intercept=intercept, tol=tol, max_iter=max_iter)
    elif family == "logistic_l1":
        model = SparseLogisticRegression(alpha=lam, fit_intercept=intercept, tol=tol, max_iter=max_iter)
    elif family == "group_lasso":
        weights = problem.meta.get("group_weights")  # None: all 1, skglm's default
        model = GroupLasso(groups=problem.meta["groups"], alpha=lam, fit_intercept=intercept, tol=tol,
                           max_iter=max_iter, weights=None if weights is None else np.asarray(weights))
    else:
        raise NotApplicable(f"no skglm solver for {family}")
    return _fit(problem, model)


def _fit(problem: Problem, model) -> Result:
    data = problem.numpy_data()
    X, y = data["X"], data["y"]
    fit = {"sample_weight": data["weights"] * X.shape[0]} if "weights" in data else {}  # summing to n
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y, **fit)
    seconds = time.perf_counter() - start
    coef = torch.as_tensor(model.coef_, dtype=torch.float64)
    x = (coef.T if len(problem.shape) == 2 else coef).reshape(problem.shape)  # multi-task coef_ is (T, d)
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
