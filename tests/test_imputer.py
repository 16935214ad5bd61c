"""NuclearNormImputer: the completion of symopt.problems.matrix_completion as a scikit-learn imputer,
checked against cvxpy and accelerated SoftImpute, scikit-learn's check_estimator and a Pipeline."""

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
from sklearn.impute import SimpleImputer  # noqa: E402

from symopt.estimators import NuclearNormImputer  # noqa: E402


def _low_rank(seed=0, shape=(80, 12), rank=3, missing=0.3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))
    return X, np.where(rng.random(X.shape) < missing, np.nan, X)


def test_the_fit_is_the_convex_completion():
    """completed_ is the nuclear-norm optimum (cvxpy's objective to 1e-6) and SoftImpute's answer."""
    cp = pytest.importorskip("cvxpy")
    from symopt.baselines import solve_softimpute
    from symopt.problems import matrix_completion

    _, Xm = _low_rank(shape=(30, 10))
    imputer = NuclearNormImputer(alpha=0.5).fit(Xm)
    observed = ~np.isnan(Xm)
    W = cp.Variable(Xm.shape)
    objective = 0.5 * cp.sum_squares(cp.multiply(observed, W - np.nan_to_num(Xm))) + 0.5 * cp.normNuc(W)
    reference = cp.Problem(cp.Minimize(objective)).solve()
    ours = 0.5 * (((imputer.completed_ - np.nan_to_num(Xm)) * observed) ** 2).sum() \
        + 0.5 * np.linalg.svd(imputer.completed_, compute_uv=False).sum()
    assert abs(ours - reference) <= 1e-6 * abs(reference)
    peer = solve_softimpute(matrix_completion(torch.as_tensor(np.nan_to_num(Xm)), torch.as_tensor(observed), 0.5))
    # both at relative KKT 1e-6; completion is not strongly convex, so the points agree to ~1e-4
    assert np.abs(peer.x.numpy() - imputer.completed_).max() <= 1e-4 * np.abs(imputer.completed_).max()
    assert imputer.rank_ == int(np.linalg.matrix_rank(imputer.completed_, tol=1e-6 * np.abs(imputer.completed_).max()))


def test_transform_reproduces_the_completion_and_extends_it_to_new_rows():
    """On the fitted rows the ridge row update in components_ is the optimum's own stationarity
    condition, so transform equals the completion there; held-out rows are filled far better than by
    column means, and observed entries come back as given."""
    X, Xm = _low_rank(seed=1, shape=(120, 12))
    train, test = Xm[:100], Xm[100:]
    imputer = NuclearNormImputer(alpha=0.2).fit(train)
    observed = ~np.isnan(train)
    filled = imputer.transform(train)
    # equal at the exact optimum; the solve stops at relative KKT 1e-6
    assert np.abs(filled - np.where(observed, train, imputer.completed_)).max() <= 1e-4 * np.abs(X).max()
    assert np.array_equal(filled[observed], train[observed])
    new = imputer.transform(test)
    missing = np.isnan(test)
    ours = np.sqrt(((new - X[100:])[missing] ** 2).mean())
    means = np.sqrt(((SimpleImputer().fit(train).transform(test) - X[100:])[missing] ** 2).mean())
    assert ours < 0.1 * means
    assert not np.isnan(new).any() and np.array_equal(new[~missing], test[~missing])


def test_alpha_max_empties_the_completion_and_a_placeholder_other_than_nan():
    _, Xm = _low_rank(seed=2)
    imputer = NuclearNormImputer(alpha=1.0).fit(Xm)
    at_max = NuclearNormImputer(alpha=imputer.alpha_max_ * (1 + 1e-9)).fit(Xm)
    assert at_max.rank_ == 0 and np.abs(at_max.completed_).max() == 0.0
    coded = np.where(np.isnan(Xm), -999.0, Xm)
    same = NuclearNormImputer(alpha=1.0, missing_values=-999.0).fit(coded)
    assert np.allclose(same.completed_, imputer.completed_, atol=1e-9)


def test_in_a_pipeline_and_a_grid_search():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    X, Xm = _low_rank(seed=3, shape=(90, 10))
    y = X[:, 0] - 2 * X[:, 1]
    search = GridSearchCV(make_pipeline(NuclearNormImputer(), Ridge(alpha=1e-3)),
                          {"nuclearnormimputer__alpha": [0.1, 10.0]}, cv=3).fit(Xm, y)
    assert search.best_params_["nuclearnormimputer__alpha"] == 0.1
    assert search.best_score_ > 0.9


@pytest.mark.parametrize("kwargs, data, match", [
    (dict(alpha=0.0), None, "alpha=0.0 must be a positive"),
    (dict(alpha=float("nan")), None, "alpha=nan"),
    (dict(tol=-1.0), None, "tol=-1.0"),
    (dict(max_iter=0), None, "max_iter=0"),
    (dict(), np.full((4, 3), np.nan), "no observed entry"),
    (dict(), np.array([[1.0, np.inf], [2.0, 3.0]]), "[Ii]nf"),
])
def test_bad_input_is_refused_before_fitting(kwargs, data, match):
    imputer = NuclearNormImputer(**kwargs)
    with pytest.raises(ValueError, match=match):
        imputer.fit(_low_rank()[1] if data is None else data)
    assert not hasattr(imputer, "components_")


def test_scikit_learns_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(NuclearNormImputer(alpha=0.1, tol=1e-4))
