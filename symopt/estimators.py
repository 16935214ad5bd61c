r"""scikit-learn estimators solved by DCS: ``Lasso``, ``ElasticNet``, ``SparseLogisticRegression``,
``GroupLasso``, ``MultiTaskLasso``, ``LassoCV`` and ``NuclearNormImputer`` (matrix completion).

They take scikit-learn's arguments and defaults (``alpha``, ``l1_ratio``, ``fit_intercept=True``,
``positive``), set ``coef_`` / ``intercept_`` / ``n_iter_`` as scikit-learn's do, pass its
``check_estimator`` and work inside ``Pipeline`` and ``GridSearchCV``. Each fit also keeps the
solver's [`Result`][symopt.Result] as ``result_`` (status, KKT residual, history), so
``symopt.certify(model.result_)`` certifies the fit with a duality gap.

The objectives are scikit-learn's: $1/(2n)‖y - Xw - b‖^2 + α(ρ‖w‖_1 + (1 - ρ)/2 ‖w‖^2)$ for the
regressions (sample weights rescaled as scikit-learn does), the mean log-loss $+ α‖w‖_1$ for the
classifier (scikit-learn's ``LogisticRegression(C = 1/(nα))``; its intercept is not penalised here,
unlike liblinear's). Needs scikit-learn ≥ 1.6 (``pip install 'symopt[sklearn]'``).

Examples:
    >>> from sklearn.datasets import load_diabetes
    >>> from symopt.estimators import Lasso
    >>> X, y = load_diabetes(return_X_y=True)
    >>> model = Lasso(alpha=0.5).fit(X, y)
    >>> model.result_.status, int((model.coef_ != 0).sum()), round(model.score(X, y), 3)
    ('optimal', 4, 0.455)
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, MultiOutputMixin, RegressorMixin, TransformerMixin
    from sklearn.model_selection import check_cv
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError("symopt.estimators needs scikit-learn >= 1.6: pip install 'symopt[sklearn]'") from err

from .paths import path as _path
from .problems import group_lasso, lasso, logistic_l1, matrix_completion, multitask_lasso
from .constraints.nonnegative import orthant_kkt_residuals
from .constraints.sparse import l1_kkt_residuals
from .problems.glm import normalised_weights
from .l1_model import FaceFactor, quadratic_gradient, solve_l1_quadratic
from .solver import solve

__all__ = ["Lasso", "ElasticNet", "SparseLogisticRegression", "GroupLasso", "MultiTaskLasso", "LassoCV",
           "NuclearNormImputer"]


def _check_params(estimator) -> None:
    """scikit-learn checks parameters at fit, not in ``__init__``: named ValueErrors, before any work."""
    alpha = estimator.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{type(estimator).__name__}: alpha={alpha!r} must be a positive finite number "
                         "(alpha = 0 is least squares: use sklearn.linear_model.LinearRegression)")
    _check_solve_options(estimator)


def _check_solve_options(estimator) -> None:
    """``tol`` and ``max_iter``, which every estimator hands to [`symopt.solve`][symopt.solve]."""
    tol = estimator.tol
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol > 0:
        raise ValueError(f"{type(estimator).__name__}: tol={tol!r} must be a positive number")
    if isinstance(estimator.max_iter, bool) or not isinstance(estimator.max_iter, numbers.Integral) \
            or estimator.max_iter < 1:
        raise ValueError(f"{type(estimator).__name__}: max_iter={estimator.max_iter!r} must be an int >= 1")


def _solve(estimator, problem):
    result = solve(problem, tol=estimator.tol, max_iter=estimator.max_iter)
    if result.status not in ("optimal", "stalled"):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"{type(estimator).__name__}: DCS ended with status {result.status!r}: {result.message}",
                      ConvergenceWarning, stacklevel=3)
    estimator.result_ = result
    estimator.n_iter_ = result.iterations
    return result


def _intercept(result, fit_intercept: bool):
    if not fit_intercept:
        return 0.0
    value = result.intercept
    return value.numpy() if isinstance(value, torch.Tensor) else float(value)


class _LinearPredictor:
    """``X @ coef_ + intercept_`` on dense or CSR input: the regressors' shared prediction."""

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class _LinearRegression(_LinearPredictor, RegressorMixin, BaseEstimator):
    """The shared fit of the L1 regressions (Lasso, ElasticNet)."""

    def fit(self, X, y, sample_weight=None):
        """Fit by DCS; ``sample_weight`` as scikit-learn's (rescaled, so only ratios matter).

        Returns:
            self.
        """
        _check_params(self)
        if not isinstance(self.l1_ratio, numbers.Real) or not 0 < self.l1_ratio <= 1:
            raise ValueError(f"{type(self).__name__}: l1_ratio={self.l1_ratio!r} must be in (0, 1]")
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, y_numeric=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        problem = lasso(X, y, float(self.alpha), fit_intercept=bool(self.fit_intercept), sample_weight=sample_weight,
                        l1_ratio=float(self.l1_ratio), positive=bool(self.positive))
        result = _solve(self, problem)
        self.coef_ = result.x.numpy().copy()
        self.intercept_ = _intercept(result, self.fit_intercept)
        return self


class Lasso(_LinearRegression):
    r"""$1/(2n)‖y - Xw - b‖^2 + α‖w‖_1$ by DCS ($w = u ⊙ v$ with weight decay α): scikit-learn's
    ``Lasso`` with the same arguments and attributes.

    Args:
        alpha: α > 0.
        fit_intercept: an unpenalised intercept (scikit-learn's default, True).
        positive: $w ≥ 0$.
        tol: relative KKT tolerance of [`symopt.solve`][symopt.solve] (not scikit-learn's duality-gap
            tolerance: DCS stops on the optimality conditions).
        max_iter: outer iterations of the solve.

    Attributes:
        coef_, intercept_, n_iter_: as scikit-learn's.
        result_: the [`Result`][symopt.Result] of the solve.

    Examples:
        >>> import numpy as np
        >>> from symopt.estimators import Lasso
        >>> X = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
        >>> model = Lasso(alpha=0.5).fit(X, 10 + X @ [2.0, 0.3])
        >>> np.round(model.coef_, 6).tolist(), round(model.intercept_, 6)
        ([1.5, 0.0], 10.0)
    """

    l1_ratio = 1.0

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True, positive: bool = False,
                 tol: float = 1e-6, max_iter: int = 500):
        self.alpha, self.fit_intercept, self.positive, self.tol, self.max_iter = \
            alpha, fit_intercept, positive, tol, max_iter


class ElasticNet(_LinearRegression):
    r"""$1/(2n)‖y - Xw - b‖^2 + α(ρ‖w‖_1 + (1 - ρ)/2 ‖w‖^2)$, ρ = ``l1_ratio``, by DCS:
    scikit-learn's ``ElasticNet``.

    Args:
        alpha: α > 0.
        l1_ratio: ρ in (0, 1].
        fit_intercept: an unpenalised intercept.
        positive: $w ≥ 0$.
        tol: relative KKT tolerance.
        max_iter: outer iterations.

    Examples:
        >>> from sklearn.datasets import load_diabetes
        >>> from symopt.estimators import ElasticNet
        >>> X, y = load_diabetes(return_X_y=True)
        >>> int((ElasticNet(alpha=0.01, l1_ratio=0.9).fit(X, y).coef_ != 0).sum())
        10
    """

    def __init__(self, alpha: float = 1.0, *, l1_ratio: float = 0.5, fit_intercept: bool = True,
                 positive: bool = False, tol: float = 1e-6, max_iter: int = 500):
        self.alpha, self.l1_ratio, self.fit_intercept, self.positive, self.tol, self.max_iter = \
            alpha, l1_ratio, fit_intercept, positive, tol, max_iter


class SparseLogisticRegression(ClassifierMixin, BaseEstimator):
    r"""Binary logistic regression with $α‖w‖_1$ (elastic net with ``l1_ratio < 1``), mean log-loss,
    unpenalised intercept: scikit-learn's ``LogisticRegression(l1_ratio=1, C=1/(nα))`` with a free
    intercept (skglm's ``SparseLogisticRegression(alpha=α)``).

    Args:
        alpha: α > 0.
        l1_ratio: ρ in (0, 1].
        fit_intercept: an unpenalised intercept.
        tol: relative KKT tolerance.
        max_iter: outer iterations.

    Attributes:
        classes_: the two labels (the second is the positive class).
        coef_: ``(1, d)``; intercept_: ``(1,)``; n_iter_, result_.

    Examples:
        >>> from sklearn.datasets import load_breast_cancer
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> from symopt.estimators import SparseLogisticRegression
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> model = make_pipeline(StandardScaler(), SparseLogisticRegression(alpha=0.02)).fit(X, y)
        >>> int((model[-1].coef_ != 0).sum()), round(model.score(X, y), 3)
        (7, 0.972)
    """

    def __init__(self, alpha: float = 1.0, *, l1_ratio: float = 1.0, fit_intercept: bool = True,
                 tol: float = 1e-6, max_iter: int = 500):
        self.alpha, self.l1_ratio, self.fit_intercept, self.tol, self.max_iter = \
            alpha, l1_ratio, fit_intercept, tol, max_iter

    def fit(self, X, y, sample_weight=None):
        _check_params(self)
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"Only binary classification is supported by SparseLogisticRegression: y has "
                             f"{len(self.classes_)} class(es) {self.classes_.tolist()[:5]}; wrap it in "
                             "sklearn.multiclass.OneVsRestClassifier")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        labels = (y == self.classes_[1]).astype(np.float64)
        result = _solve(self, logistic_l1(X, labels, float(self.alpha), fit_intercept=bool(self.fit_intercept),
                                          sample_weight=sample_weight, l1_ratio=float(self.l1_ratio)))
        self.coef_ = result.x.numpy().reshape(1, -1).copy()
        self.intercept_ = np.array([_intercept(result, self.fit_intercept)])
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X):
        scores = self.decision_function(X)  # checks that the model is fitted first
        return self.classes_[(scores > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_class = False
        return tags


class GroupLasso(_LinearPredictor, RegressorMixin, BaseEstimator):
    r"""$1/(2n)‖y - Xw - b‖^2 + α \sum_g c_g ‖w_g‖_2$ by DCS (one gate per group): skglm's ``GroupLasso``.

    Args:
        groups: an int (consecutive groups of that size) or a list of index lists covering every column.
        alpha: α > 0.
        weights: one weight $c_g > 0$ per group (default all 1), as skglm's ``weights``.
        fit_intercept: an unpenalised intercept.
        tol: relative KKT tolerance.
        max_iter: outer iterations.

    Examples:
        >>> import numpy as np
        >>> from symopt.estimators import GroupLasso
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 12))
        >>> y = X[:, :3] @ [1.0, -2.0, 1.5] + 0.1 * rng.normal(size=100)
        >>> coef = GroupLasso(groups=3, alpha=0.1).fit(X, y).coef_
        >>> (np.abs(coef).reshape(4, 3).sum(1) > 0).tolist()        # only the first group is used
        [True, False, False, False]
    """

    def __init__(self, groups=1, alpha: float = 1.0, *, weights=None, fit_intercept: bool = True, tol: float = 1e-6,
                 max_iter: int = 500):
        self.groups, self.alpha, self.weights, self.fit_intercept, self.tol, self.max_iter = \
            groups, alpha, weights, fit_intercept, tol, max_iter

    def fit(self, X, y, sample_weight=None):
        _check_params(self)
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, y_numeric=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        groups = self.groups
        if isinstance(groups, numbers.Integral) and X.shape[1] % groups:
            raise ValueError(f"GroupLasso: groups={groups} does not divide the {X.shape[1]} features; pass a list "
                             "of index lists")
        result = _solve(self, group_lasso(X, y, groups, float(self.alpha), fit_intercept=bool(self.fit_intercept),
                                          sample_weight=sample_weight, group_weights=self.weights))
        self.coef_ = result.x.numpy().copy()
        self.intercept_ = _intercept(result, self.fit_intercept)
        return self


class MultiTaskLasso(MultiOutputMixin, RegressorMixin, BaseEstimator):
    r"""$1/(2n)‖Y - XW - b‖^2_F + α \sum_j ‖W_j‖_2$ (a feature is used by every task or none) by DCS:
    scikit-learn's ``MultiTaskLasso``; ``coef_`` is ``(T, d)`` as there.

    Args:
        alpha: α > 0.
        fit_intercept: one unpenalised intercept per task.
        tol: relative KKT tolerance.
        max_iter: outer iterations.

    Examples:
        >>> import numpy as np
        >>> from symopt.estimators import MultiTaskLasso
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(80, 6))
        >>> Y = X[:, :2] @ rng.normal(size=(2, 3))
        >>> (np.abs(MultiTaskLasso(alpha=0.1).fit(X, Y).coef_).sum(0) > 0).tolist()
        [True, True, False, False, False, False]
    """

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True, tol: float = 1e-6, max_iter: int = 500):
        self.alpha, self.fit_intercept, self.tol, self.max_iter = alpha, fit_intercept, tol, max_iter

    def fit(self, X, y):
        _check_params(self)
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, y_numeric=True, multi_output=True)
        if y.ndim != 2:
            raise ValueError(f"MultiTaskLasso: y must be (n_samples, n_tasks), got shape {y.shape}; for one task "
                             "use Lasso")
        result = _solve(self, multitask_lasso(X, y, float(self.alpha), fit_intercept=bool(self.fit_intercept)))
        self.coef_ = result.x.numpy().T.copy()
        self.intercept_ = _intercept(result, self.fit_intercept) if self.fit_intercept else np.zeros(y.shape[1])
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return X @ self.coef_.T + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags


class LassoCV(_LinearPredictor, RegressorMixin, BaseEstimator):
    r"""The Lasso with α chosen by cross-validation along a warm-started path ([`symopt.path`][symopt.path],
    mean squared error on the held-out fold), then refitted on all the data: scikit-learn's ``LassoCV``.
    On a dense design of up to 1024 coordinates over all folds, the folds' paths are one path of the
    ℓ1-regularised quadratic of their block-diagonal Gram matrix, each block a fold's own Lasso
    (`_stacked_fold_paths`): the same answers, each certified, without a pass over the rows per step;
    otherwise (or for a fold not certified there) each fold has its own `symopt.path`. The refit at the
    chosen α starts from the folds' mean solution on the coordinates most folds keep, moved to the whole
    data's optimum in its Gram space (dense ``X``), and `symopt.solve` certifies it.

    Args:
        alphas: an int: the size of the grid (from ``alpha_max`` of the whole data down to
            $\mathrm{eps} · \mathrm{alpha}_{\max}$, log-spaced); or the grid itself (scikit-learn ≥ 1.7's meaning).
        eps: ratio of the smallest α to the largest.
        cv: folds (an int, a splitter, or an iterable of splits), as scikit-learn's ``check_cv``.
        fit_intercept: an unpenalised intercept.
        positive: $w ≥ 0$.
        tol: relative KKT tolerance of every solve.
        max_iter: outer iterations of every solve.

    Attributes:
        alpha_: the chosen α; alphas_: the grid (decreasing); mse_path_: ``(n_alphas, n_folds)``;
        coef_, intercept_, result_: the refit.

    Examples:
        >>> from sklearn.datasets import load_diabetes
        >>> from symopt.estimators import LassoCV
        >>> X, y = load_diabetes(return_X_y=True)
        >>> model = LassoCV(alphas=6, cv=3).fit(X, y)
        >>> model.mse_path_.shape, bool(0 < model.alpha_ < model.alphas_[0])
        ((6, 3), True)
    """

    def __init__(self, *, alphas=100, eps: float = 1e-3, cv=5, fit_intercept: bool = True, positive: bool = False,
                 tol: float = 1e-6, max_iter: int = 500):
        self.alphas, self.eps, self.cv, self.fit_intercept, self.positive, self.tol, self.max_iter = \
            alphas, eps, cv, fit_intercept, positive, tol, max_iter

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, y_numeric=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        splitter = check_cv(self.cv)
        if X.shape[0] < 2 or X.shape[0] < splitter.get_n_splits(X, y):
            raise ValueError(f"LassoCV: n_samples={X.shape[0]} is too few for {splitter.get_n_splits(X, y)}-fold "
                             "cross-validation")
        _check_solve_options(self)
        options = dict(fit_intercept=bool(self.fit_intercept), positive=bool(self.positive))
        whole = lasso(X, y, 1.0, sample_weight=sample_weight, **options)
        if isinstance(self.alphas, numbers.Integral) and not isinstance(self.alphas, bool):
            if self.alphas < 1 or not 0 < self.eps < 1:
                raise ValueError(f"LassoCV: alphas={self.alphas!r} must be >= 1 and eps={self.eps!r} in (0, 1)")
            top = whole.strength_max()
            if not top > 0:
                raise ValueError("LassoCV: Xᵀ(y − ȳ) = 0: every α gives w = 0")
            grid = top * np.geomspace(1.0, self.eps, self.alphas)
        else:
            grid = np.sort(np.asarray(self.alphas, dtype=np.float64))[::-1]
            if grid.ndim != 1 or not len(grid) or not (np.isfinite(grid) & (grid > 0)).all():
                raise ValueError(f"LassoCV: alphas must be an int or positive finite numbers, got {self.alphas!r}")
        folds = list(splitter.split(X, y))
        if sample_weight is not None:
            for k, (train, test) in enumerate(folds):
                for part, rows in (("training", train), ("held-out", test)):
                    if not sample_weight[rows].sum() > 0:
                        raise ValueError(f"LassoCV: the {part} rows of fold {k} all have sample_weight 0, so that "
                                         "fold has no data; give them weight or use other folds (cv=)")
        stacked = _stacked_fold_paths(X, y, sample_weight, folds, grid, tol=self.tol, **options)
        errors = np.empty((len(grid), len(folds)))
        paths = []  # each fold's coefficients along the grid, (alphas, d)
        for k, (train, test) in enumerate(folds):
            if stacked is not None and bool(stacked[1][k]):
                fold_coefs = stacked[0][:, k]
            else:
                weights = None if sample_weight is None else sample_weight[train]
                fold = _path(lasso(X[train], y[train], 1.0, sample_weight=weights, **options), grid, tol=self.tol,
                             max_iter=self.max_iter)
                fold_coefs = fold.coefs  # (alphas, d)
            errors[:, k] = _held_out_errors(X, y, sample_weight, train, test, fold_coefs, self.fit_intercept)
            paths.append(torch.as_tensor(fold_coefs, dtype=torch.float64))
        self.alphas_, self.mse_path_ = grid, errors
        best = int(np.argmin(errors.mean(axis=1)))
        self.alpha_ = float(grid[best])
        # The refit starts from the folds' mean solution at α on the coordinates that more than half the
        # folds keep, moved to the whole data's optimum in its Gram space, so that `solve` only
        # certifies it (1 ms). Those coordinates are mostly on the optimum's face, whose other
        # coordinates join together; each coordinate that must leave is a step of its own: from the
        # plain mean (92 non-zeros where the optimum has 44, make_regression 100×200) the Gram solve
        # took 24 ms, from the majority's 4 ms, from 0 7-12 ms (digits 4.1 / 1.6 / 5-8 ms); proximal
        # Newton from the plain mean in `solve` took 15-19 ms. Where that start does not end optimal,
        # the one-point path from 0 as before.
        at_best = torch.stack([fold[best] for fold in paths])
        start = at_best.mean(0) * (2 * (at_best != 0).sum(0) > len(paths))
        start = _gram_refit(X, y, sample_weight, self.alpha_, start, tol=self.tol, **options)
        result = solve(whole.at_strength(self.alpha_), start=start, tol=self.tol, max_iter=self.max_iter)
        if result.status != "optimal":
            result = _path(whole, [self.alpha_], tol=self.tol, max_iter=self.max_iter)[0]
        self.result_, self.n_iter_ = result, result.iterations
        self.coef_ = result.x.numpy().copy()
        self.intercept_ = _intercept(result, self.fit_intercept)
        return self


def _shares(n: int, weights) -> torch.Tensor:
    """The rows' weights normalised to sum 1 (1/n each without weights), as a float64 tensor: the data
    terms' own normalisation (`normalised_weights`)."""
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return normalised_weights(weights, n, torch.float64)


# LassoCV's own arithmetic (centring, held-out errors) is in torch, not NumPy: a NumPy product wakes
# OpenBLAS's thread pool, whose threads then spin for a while against torch's OpenMP threads on the
# same cores (measured on 2 cores: LassoCV on digits 0.32 s with OpenBLAS at one thread, 0.57-0.66 s
# without; the Cholesky factorisations after each fold's NumPy products took 0.5 ms where 0.03 ms do).
def _rows(X, index) -> torch.Tensor:
    """The dense ``X[index]`` as a float64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(X[index]))


def _held_out_errors(X, y, sample_weight, train, test, coefs, fit_intercept: bool) -> np.ndarray:
    r"""The (weighted) mean squared error on the rows ``test`` of each of ``coefs`` (``(alphas, d)``), with
    the least-squares intercept of each on the rows ``train``, $b = ȳ - x̄^\top w$ (their weighted means).
    A CSR ``X`` is multiplied by SciPy's sparse products (no BLAS, nothing densified)."""
    coefs = torch.as_tensor(coefs, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    sparse = hasattr(X, "toarray")
    intercepts = 0.0
    if fit_intercept:
        share = _shares(len(train), None if sample_weight is None else sample_weight[train])
        means = torch.from_numpy(np.asarray(X[train].T @ share.numpy()).reshape(-1)) if sparse \
            else share @ _rows(X, train)
        intercepts = share @ y[train] - coefs @ means
    predictions = torch.from_numpy(np.asarray(X[test] @ coefs.numpy().T)) if sparse else _rows(X, test) @ coefs.T
    squares = (y[test][:, None] - (predictions + intercepts)).square()
    if sample_weight is None:
        return squares.mean(0).numpy()
    weights = torch.as_tensor(sample_weight[test], dtype=torch.float64)
    return (weights @ squares / weights.sum()).numpy()


# Folds solved together while their block-diagonal Gram matrix stays this small (K·d rows and columns).
_STACKED_LIMIT = 1024


def _stacked_fold_paths(X, y, sample_weight, folds, grid, *, fit_intercept: bool, positive: bool,
                        tol: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    r"""Every fold's Lasso path at once in the space of their Gram matrices: ``(coefs, certified)``, with
    ``coefs`` of shape ``(alphas, folds, d)`` and ``certified[k]`` whether every point of fold k met the
    path's rule (else that fold takes `symopt.path`); None where it does not apply (a sparse ``X``,
    which cannot be centred without densifying it, or more than ``_STACKED_LIMIT`` coordinates in all).

    With fold $f$'s training rows centred by their weighted means (the intercept profiled out) and $s$
    their normalised weights, its data term $\tfrac12 \sum_i s_i (y_i - x_i^\top w)^2$ is
    $\tfrac12 w^\top H_f w - c_f^\top w + \mathrm{const}$, $H_f = X_f^\top \mathrm{diag}(s) X_f$,
    $c_f = X_f^\top \mathrm{diag}(s) y_f$. The folds share the grid of α and nothing else, so with
    $H = \mathrm{diag}(H_1, …, H_K)$ and $c = (c_1, …, c_K)$ the ℓ1-regularised quadratic
    $\tfrac12 w^\top H w - c^\top w + α‖w‖_1$ is the sum of the folds' Lassos, and its optimum is each
    block's own: `solve_l1_quadratic` solves it by its active set, warm-started from the previous α,
    with gradients $Hw - c$ of $O((Kd)^2)$ and no pass over the rows. Each fold's point is certified
    by the rule of a path's points: its block's KKT residual at most ``tol`` $· ‖c_f‖$ (‖∇loss(0)‖).

    Why: `symopt.path` pays each point's machinery (its problem and constraint, proximal Newton's
    models, the records) per α and fold: about 2 ms a point on digits' 64 columns, where scikit-learn's
    coordinate descent takes 0.2 ms. One active set for all folds takes the joins of every fold in
    the same steps (digits, 30 α × 5 folds: 56–84 ms against 96–129 ms fold by fold; diabetes 18 ms
    against 43–61 ms)."""
    K, d = len(folds), X.shape[1]
    if not isinstance(X, np.ndarray) or K * d > _STACKED_LIMIT:
        return None
    values = torch.as_tensor(y, dtype=torch.float64)
    blocks, targets = zip(*(_gram_terms(X, values, sample_weight, train, fit_intercept) for train, _ in folds))
    H, c = torch.block_diag(*blocks), torch.cat(targets)
    scales = c.view(K, d).norm(dim=1).clamp_min(1e-300)
    model_tol = 1e-3 * tol * float(scales.min())  # (a thousandth of the target, as a path's points)
    w = torch.zeros(K * d, dtype=torch.float64)
    coefs = torch.empty(len(grid), K, d, dtype=torch.float64)
    certified = torch.ones(K, dtype=torch.bool)
    # (each α starts on the face the previous one ended on, with its factor, and from the gradient there)
    factor = FaceFactor()
    grad = -c
    for index, alpha in enumerate(np.asarray(grid, dtype=np.float64).tolist()):
        w = solve_l1_quadratic(H, grad, w, alpha, positive, model_tol, face_factor=factor)
        grad = factor.gradient if factor.gradient is not None else quadratic_gradient(H, -c, w)
        residual = (orthant_kkt_residuals if positive else l1_kkt_residuals)(w, grad, alpha)
        certified &= residual.view(K, d).norm(dim=1) <= tol * scales
        coefs[index] = w.view(K, d)
    return coefs, certified


def _gram_terms(X: np.ndarray, values: torch.Tensor, sample_weight, rows, fit_intercept: bool):
    r"""``(H, c)`` of the least-squares data term on ``rows`` (None: all) of a dense ``X``: with the rows centred by
    their weighted means (the intercept profiled out) and $s$ their normalised weights,
    $H = X^\top \mathrm{diag}(s) X$ and $c = X^\top \mathrm{diag}(s) y$, so that the data term is
    $\tfrac12 w^\top H w - c^\top w + \mathrm{const}$."""
    if rows is None:  # (every row: no copy to gather them)
        Xr, yr = torch.from_numpy(np.ascontiguousarray(X)), values
    else:
        Xr, yr = _rows(X, rows), values[rows]
    if sample_weight is None:  # (equal shares: a mean and a division, no weighted copy of the rows)
        if fit_intercept:
            Xr, yr = Xr - Xr.mean(0), yr - yr.mean()
        return (Xr.mT @ Xr) / len(yr), (Xr.mT @ yr) / len(yr)
    share = _shares(len(yr), sample_weight if rows is None else sample_weight[rows])
    if fit_intercept:
        Xr, yr = Xr - share @ Xr, yr - share @ yr
    weighted = Xr * share[:, None]
    return weighted.mT @ Xr, weighted.mT @ yr


def _gram_refit(X, y, sample_weight, alpha: float, start: torch.Tensor, *, fit_intercept: bool, positive: bool,
                tol: float) -> torch.Tensor:
    """The whole data's Lasso at ``alpha`` in the space of its Gram matrix (`_gram_terms`) from ``start``
    (the folds' mean solution on the coordinates most folds keep), by `solve_l1_quadratic`; ``start``
    itself where ``X`` is sparse or wide (more than ``_STACKED_LIMIT`` columns). The model's tolerance
    is a thousandth of the relative ``tol`` (as a path's points); the caller's `solve` certifies the
    point."""
    if not isinstance(X, np.ndarray) or X.shape[1] > _STACKED_LIMIT:
        return start
    values = torch.as_tensor(y, dtype=torch.float64)
    H, c = _gram_terms(X, values, sample_weight, None, fit_intercept)
    start = start.clamp_min(0.0) if positive else start
    return solve_l1_quadratic(H, quadratic_gradient(H, -c, start), start, alpha, positive,
                              1e-3 * tol * max(float(c.norm()), 1e-300))


class NuclearNormImputer(TransformerMixin, BaseEstimator):
    r"""Fill missing entries by nuclear-norm matrix completion, solved by DCS: an imputer in the manner of
    scikit-learn's ``SimpleImputer`` / ``KNNImputer`` (``fancyimpute``'s ``SoftImpute`` solves the same problem).

    ``fit(X)`` solves $\min_W \tfrac12 ‖P_Ω(W - X)‖^2_F + α‖W‖_*$ over the observed entries Ω of ``X``
    ([`matrix_completion`][symopt.problems.matrix_completion]; the data term is a sum, so α scales with
    the data: ``alpha_max_``, where $W = 0$ becomes optimal, is $‖P_Ω X‖_2$). DCS writes $W = UV^\top$
    with balanced factors, and at its optimum each row $u_i$ solves the ridge problem
    $\min_u \tfrac12 ‖x_{i,o} - V_o u‖^2 + \tfrac{α}{2}‖u‖^2$ over its observed columns $o$, with
    $V = Q\sqrt{S}$ from $W = P S Q^\top$ (``components_``). ``transform`` solves that ridge problem for
    each row it is given, so it reproduces the completion on the fitted rows and extends it to new
    ones; observed entries are returned as given, missing ones filled.

    Args:
        alpha: α > 0, the nuclear-norm strength (in the data's units; see ``alpha_max_``).
        missing_values: the placeholder of a missing entry (``np.nan`` by default).
        tol: relative KKT tolerance of the solve.
        max_iter: outer iterations of the solve.

    Attributes:
        components_: ``(rank, n_features)``, the rows of $\sqrt{S} Q^\top$.
        rank_: the rank of the completion.
        completed_: the completed training matrix $W$ (every entry, observed ones included).
        alpha_max_: the smallest α at which the completion is 0.
        result_: the solver's [`Result`][symopt.Result].

    Examples:
        >>> import numpy as np
        >>> from symopt.estimators import NuclearNormImputer
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(60, 2)) @ rng.normal(size=(2, 8))        # rank 2
        >>> X_missing = np.where(rng.random(X.shape) < 0.3, np.nan, X)
        >>> filled = NuclearNormImputer(alpha=0.1).fit_transform(X_missing)
        >>> missing = np.isnan(X_missing)
        >>> round(float(np.sqrt(((filled - X)[missing] ** 2).mean())), 3)    # column means: 1.177
        0.039
    """

    def __init__(self, alpha: float = 1.0, *, missing_values=np.nan, tol: float = 1e-6, max_iter: int = 500):
        self.alpha, self.missing_values, self.tol, self.max_iter = alpha, missing_values, tol, max_iter

    def _observed(self, X):
        if isinstance(self.missing_values, float) and np.isnan(self.missing_values):
            return ~np.isnan(X)
        return (X != self.missing_values) & ~np.isnan(X)

    def fit(self, X, y=None):
        """Complete ``X`` (missing entries marked by ``missing_values``).

        Returns:
            self.

        Raises:
            ValueError: a bad ``alpha`` / ``tol`` / ``max_iter``, Inf in ``X``, or no observed entry.
        """
        _check_params(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", ensure_min_samples=1)
        observed = self._observed(X)
        if not observed.any():
            raise ValueError("NuclearNormImputer: X has no observed entry; there is nothing to complete from")
        values = np.where(observed, X, 0.0)
        problem = matrix_completion(torch.as_tensor(values), torch.as_tensor(observed), float(self.alpha))
        result = _solve(self, problem)
        W = result.x.to(torch.float64)
        P, S, Qh = torch.linalg.svd(W, full_matrices=False)
        rank = int((S > max(S.max().item(), 1e-300) * max(W.shape) * np.finfo(np.float64).eps).sum())
        self.rank_ = rank
        self.components_ = (S[:rank, None].sqrt() * Qh[:rank]).numpy()
        self.completed_ = W.numpy().copy()
        self.alpha_max_ = float(torch.linalg.matrix_norm(torch.as_tensor(values), ord=2))
        return self

    def transform(self, X):
        """``X`` with its missing entries filled by the ridge fit of each row in ``components_``.

        Returns:
            ndarray of ``X``'s shape, with no missing entry.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        observed = self._observed(X)
        V = self.components_.T  # (n_features, rank)
        out = np.where(observed, X, 0.0)
        if self.rank_ == 0:
            return out
        alpha = float(self.alpha)
        eye = alpha * np.eye(self.rank_)
        # rows with the same observed columns share one factorisation: often all of them
        patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            rows = np.flatnonzero(inverse.reshape(-1) == p)
            Vo = V[pattern]
            coef = np.linalg.solve(Vo.T @ Vo + eye, Vo.T @ out[np.ix_(rows, pattern)].T)  # (rank, rows)
            filled = (V @ coef).T
            out[rows] = np.where(observed[rows], out[rows], filled)
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
