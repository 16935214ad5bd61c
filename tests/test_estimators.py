"""symopt.estimators behave as scikit-learn estimators (its own check suite, Pipeline, GridSearchCV)
and fit what scikit-learn's fit, on shipped data."""

import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn", minversion="1.6")
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import symopt  # noqa: E402
from symopt.estimators import (ElasticNet, GroupLasso, Lasso, LassoCV, MultiTaskLasso,  # noqa: E402
                               SparseLogisticRegression)

# tol=1e-10: scikit-learn's checks compare fits to 1e-7 (e.g. weights against repeated samples);
# the default 1e-6 KKT tolerance agrees to ~3e-7 only.
CHECKED = [Lasso(alpha=0.1, tol=1e-10)]
CHECKED_SLOW = [SparseLogisticRegression(alpha=0.01, tol=1e-10), ElasticNet(alpha=0.1, tol=1e-10),
                GroupLasso(alpha=0.1, tol=1e-10), MultiTaskLasso(alpha=0.1, tol=1e-10)]


@parametrize_with_checks(CHECKED)
def test_scikit_learn_check_suite(estimator, check):
    check(estimator)


@pytest.mark.slow  # ~60 checks each (run here before every stop; the default suite keeps Lasso's)
@parametrize_with_checks(CHECKED_SLOW)
def test_scikit_learn_check_suite_other_estimators(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks([LassoCV(alphas=3, cv=2, tol=1e-10)], expected_failed_checks=lambda est: {
    # as scikit-learn's own LassoCV: weights and repeated rows give different folds, so different α
    "check_sample_weight_equivalence_on_dense_data": "folds differ with repeated samples",
    "check_sample_weight_equivalence_on_sparse_data": "folds differ with repeated samples",
})
def test_scikit_learn_check_suite_cv(estimator, check):
    check(estimator)


def test_lasso_and_elastic_net_fit_what_scikit_learn_fits():
    from sklearn import linear_model

    X, y = load_diabetes(return_X_y=True)
    weights = np.random.default_rng(0).uniform(0, 2, len(y))
    for ours, theirs in [(Lasso(alpha=0.2), linear_model.Lasso(alpha=0.2)),
                         (ElasticNet(alpha=0.05, l1_ratio=0.7), linear_model.ElasticNet(alpha=0.05, l1_ratio=0.7)),
                         (Lasso(alpha=0.2, positive=True), linear_model.Lasso(alpha=0.2, positive=True))]:
        ours.fit(X, y, sample_weight=weights)
        theirs.set_params(tol=1e-12, max_iter=10**6).fit(X, y, sample_weight=weights)
        assert ours.result_.status == "optimal"
        assert np.abs(ours.coef_ - theirs.coef_).max() <= 1e-4 * np.abs(theirs.coef_).max()
        assert ours.intercept_ == pytest.approx(theirs.intercept_, rel=1e-8)
        assert ours.score(X, y) == pytest.approx(theirs.score(X, y), abs=1e-9)


@pytest.mark.slow  # skglm compiles its numba kernels on first use (~20 s)
def test_sparse_logistic_regression_matches_skglm():
    skglm = pytest.importorskip("skglm")
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours = SparseLogisticRegression(alpha=0.01, tol=1e-9).fit(X, y)
    theirs = skglm.SparseLogisticRegression(alpha=0.01, fit_intercept=True, tol=1e-12, max_iter=10**4).fit(X, y)
    assert np.abs(ours.coef_ - theirs.coef_).max() <= 1e-4
    assert ours.intercept_[0] == pytest.approx(theirs.intercept_, abs=1e-4)
    assert (ours.predict(X) == theirs.predict(X)).all()
    assert np.allclose(ours.predict_proba(X).sum(1), 1.0)


def test_sparse_logistic_regression_matches_cvxpy_with_a_free_intercept():
    pytest.importorskip("cvxpy")
    from symopt.baselines import solve_cvxpy
    from symopt.problems import logistic_l1

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours = SparseLogisticRegression(alpha=0.01, tol=1e-9).fit(X, y)
    reference = solve_cvxpy(logistic_l1(X, y.astype(float), 0.01, fit_intercept=True))
    assert ours.result_.objective <= reference.objective + 1e-9
    assert np.abs(ours.coef_[0] - reference.x.numpy()).max() <= 1e-4
    assert ours.intercept_[0] == pytest.approx(reference.intercept, abs=1e-5)
    assert np.allclose(ours.predict_proba(X).sum(1), 1.0)


def _wide_regression():
    from sklearn.datasets import make_regression
    return make_regression(n_samples=100, n_features=200, n_informative=10, noise=1.0, random_state=0)


@pytest.mark.parametrize("data, alphas, n_folds", [(lambda: load_diabetes(return_X_y=True), 15, 3),
                                                   (_wide_regression, 12, 5)], ids=["diabetes", "wide 100x200"])
def test_lasso_cv_picks_scikit_learns_alpha_on_the_same_folds(data, alphas, n_folds):
    """The grid, the α, the held-out errors and the refit of scikit-learn's LassoCV at a tight tolerance,
    on diabetes and on n ≪ d (scikit-learn's make_regression 100×200, where its default tolerance
    picks another α: its path stalls on a plateau)."""
    from sklearn import linear_model

    X, y = data()
    folds = KFold(n_folds, shuffle=True, random_state=0)
    ours = LassoCV(alphas=alphas, cv=folds).fit(X, y)
    theirs = linear_model.LassoCV(alphas=alphas, cv=folds, tol=1e-10, max_iter=10**6).fit(X, y)
    assert np.allclose(ours.alphas_, theirs.alphas_, rtol=1e-10)
    assert ours.alpha_ == pytest.approx(theirs.alpha_, rel=1e-10) and ours.result_.status == "optimal"
    assert np.allclose(ours.mse_path_, theirs.mse_path_, rtol=1e-5)
    assert np.abs(ours.coef_ - theirs.coef_).max() <= 1e-6 * np.abs(theirs.coef_).max()
    assert ours.intercept_ == pytest.approx(theirs.intercept_, rel=1e-6)


def test_lasso_cv_errors_with_weights_and_a_sparse_design_are_each_points_own():
    """The validation errors, computed for a fold's whole path at once (intercepts b = ȳ − x̄ᵀw from
    weighted means), are the errors of each point's own fit and `Result.intercept`, on CSR input."""
    import scipy.sparse as sparse

    import symopt
    from symopt.problems import lasso

    X, y = load_diabetes(return_X_y=True)
    X[np.abs(X) < 0.02] = 0.0
    weights = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    folds = KFold(3, shuffle=True, random_state=1)
    model = LassoCV(alphas=6, cv=folds).fit(sparse.csr_matrix(X), y, sample_weight=weights)
    for k, (train, test) in enumerate(folds.split(X)):
        path = symopt.path(lasso(sparse.csr_matrix(X[train]), y[train], 1.0, fit_intercept=True,
                                 sample_weight=weights[train]), model.alphas_)
        for i, result in enumerate(path):
            residual = y[test] - (X[test] @ result.x.numpy() + result.intercept)
            assert model.mse_path_[i, k] == pytest.approx(np.average(residual ** 2, weights=weights[test]),
                                                          rel=1e-9)


@pytest.mark.parametrize("fit_intercept, positive, weighted", [(True, False, True), (False, True, False),
                                                                (True, True, False)])
def test_lasso_cv_folds_solved_as_one_problem_are_each_folds_own_path(fit_intercept, positive, weighted):
    """LassoCV solves a dense design's folds as one ℓ1-regularised quadratic of their block-diagonal Gram
    matrix (each fold centred, its rows weighted): every block must be its fold's own optimum, to the
    objective and the support of its own `symopt.path`, at every α, and certified."""
    import symopt
    from symopt.estimators import _stacked_fold_paths
    from symopt.problems import lasso

    X, y = load_diabetes(return_X_y=True)
    weights = np.random.default_rng(2).uniform(0.0, 2.0, len(y)) if weighted else None
    folds = list(KFold(4, shuffle=True, random_state=3).split(X))
    top = lasso(X, y, 1.0, fit_intercept=fit_intercept, sample_weight=weights).strength_max()
    grid = top * np.geomspace(1.0, 1e-3, 12)
    together, certified = _stacked_fold_paths(X, y, weights, folds, grid, fit_intercept=fit_intercept,
                                              positive=positive, tol=1e-6)
    assert together.shape == (12, 4, X.shape[1]) and bool(certified.all())
    for k, (train, _) in enumerate(folds):
        problem = lasso(X[train], y[train], 1.0, fit_intercept=fit_intercept, positive=positive,
                        sample_weight=None if weights is None else weights[train])
        alone = symopt.path(problem, grid)
        for i, result in enumerate(alone):
            point = problem.at_strength(float(grid[i]))
            ours = point.objective(together[i, k])
            assert ours == pytest.approx(result.objective, rel=1e-9, abs=1e-12)
            assert torch.equal(together[i, k] != 0, result.x != 0)


@pytest.mark.parametrize("fit_intercept, positive, weighted", [(True, False, True), (False, True, False),
                                                                (True, True, False), (True, False, False)])
def test_the_refit_in_the_gram_space_is_the_whole_datas_optimum(fit_intercept, positive, weighted):
    """LassoCV's refit moves a start (here another α's optimum, whose support differs) to the whole
    data's optimum in its Gram space (`_gram_refit`): the objective and support of `symopt.solve`'s
    optimum, with weights, `positive`, with and without an intercept; and `solve` from it only
    certifies it."""
    import symopt
    from symopt.estimators import _gram_refit
    from symopt.problems import lasso

    X, y = load_diabetes(return_X_y=True)
    weights = np.random.default_rng(2).uniform(0.0, 2.0, len(y)) if weighted else None
    problem = lasso(X, y, 1.0, fit_intercept=fit_intercept, positive=positive, sample_weight=weights)
    top = problem.strength_max()
    start = symopt.solve(problem.at_strength(0.3 * top)).x
    whole = problem.at_strength(0.02 * top)
    moved = _gram_refit(X, y, weights, 0.02 * top, start, fit_intercept=fit_intercept, positive=positive, tol=1e-6)
    reference = symopt.solve(whole, tol=1e-10)
    assert whole.objective(moved) == pytest.approx(reference.objective, rel=1e-10)
    assert torch.equal(moved != 0, reference.x != 0) and not torch.equal(start != 0, moved != 0)
    certified = symopt.solve(whole, start=moved)
    assert certified.status == "optimal" and "warm start" in certified.message


@pytest.mark.parametrize("zero_rows", [slice(0, 100), slice(100, None)])
def test_lasso_cv_refuses_a_fold_without_weight_before_solving(zero_rows):
    X, y = load_diabetes(return_X_y=True)
    weights = np.ones(len(y))
    weights[zero_rows] = 0.0
    folds = [(np.arange(100), np.arange(100, 442)), (np.arange(100, 442), np.arange(100))]
    model = LassoCV(alphas=5, cv=folds)
    with pytest.raises(ValueError, match="LassoCV: the (training|held-out) rows of fold [01] all have sample_weight 0"):
        model.fit(X, y, sample_weight=weights)
    assert not hasattr(model, "coef_")


def test_lasso_cv_solves_folds_apart_where_one_problem_does_not_pay():
    """A sparse design, or folds of more than 1024 coordinates in all, keep a path per fold; a fold whose
    points the stacked path does not certify is reported so, and LassoCV gives it its own path."""
    import scipy.sparse as sparse

    from symopt.estimators import _stacked_fold_paths

    X, y = load_diabetes(return_X_y=True)
    folds = list(KFold(3).split(X))
    options = dict(fit_intercept=True, positive=False, tol=1e-6)
    assert _stacked_fold_paths(sparse.csr_matrix(X), y, None, folds, np.array([1.0]), **options) is None
    wide = np.random.default_rng(0).standard_normal((60, 400))
    assert _stacked_fold_paths(wide, wide[:, 0], None, list(KFold(3).split(wide)), np.array([1.0]),
                               **options) is None
    grid = np.array([100.0, 1.0, 0.01])
    _, certified = _stacked_fold_paths(X, y, None, folds, grid, fit_intercept=True, positive=False, tol=1e-300)
    assert not bool(certified.any())  # a tolerance no point meets: every fold goes to its own path
    _, certified = _stacked_fold_paths(X, y, None, folds, grid, **options)
    assert bool(certified.all())


def test_grid_search_over_a_pipeline():
    X, y = load_diabetes(return_X_y=True)
    search = GridSearchCV(make_pipeline(StandardScaler(), Lasso()), {"lasso__alpha": [0.1, 1.0, 10.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["lasso__alpha"] in (0.1, 1.0, 10.0)
    assert symopt.certify(search.best_estimator_[-1].result_).optimal


@pytest.mark.parametrize("make, X, y, words", [
    (lambda: Lasso(alpha=-1.0), None, None, "alpha=-1.0"),
    (lambda: Lasso(alpha=0.0), None, None, "LinearRegression"),
    (lambda: Lasso(tol=0.0), None, None, "tol"),
    (lambda: ElasticNet(l1_ratio=0.0), None, None, "l1_ratio"),
    (lambda: Lasso(), "nan", None, "NaN"),
    (lambda: SparseLogisticRegression(), None, "multiclass", "Only binary"),
    (lambda: GroupLasso(groups=3), None, None, "does not divide"),
    (lambda: LassoCV(tol=-1.0), None, None, "LassoCV: tol=-1.0 must be a positive number"),
    (lambda: LassoCV(max_iter=0), None, None, "LassoCV: max_iter=0 must be an int >= 1"),
])
def test_bad_input_is_named_before_any_fit(make, X, y, words):
    Xd, yd = load_diabetes(return_X_y=True)
    if X == "nan":
        Xd = Xd.copy()
        Xd[0, 0] = np.nan
    if y == "multiclass":
        yd = np.digitize(yd, [100, 200])
    elif isinstance(make(), SparseLogisticRegression):
        yd = yd > 150
    model = make()
    with pytest.raises(ValueError, match=words):
        model.fit(Xd, yd)
    assert not hasattr(model, "coef_")
