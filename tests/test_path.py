"""symopt.path: warm-started regularisation paths, checked against scikit-learn's lasso_path on
shipped data, every point certified."""

import numpy as np
import pytest
import torch

import symopt
from symopt.problems import group_lasso, lasso, logistic_l1, make_lasso

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402


def test_lasso_path_matches_scikit_learn_on_diabetes_with_an_intercept():
    from sklearn.linear_model import lasso_path

    X, y = load_diabetes(return_X_y=True)
    problem = lasso(X, y, 1.0, fit_intercept=True)
    ours = symopt.path(problem, n_strengths=25, eps=1e-3)
    Xc, yc = X - X.mean(0), y - y.mean()  # lasso_path has no intercept: centre, as its estimators do
    alphas, coefs, _ = lasso_path(Xc, yc, alphas=ours.strengths.numpy(), tol=1e-12, max_iter=10**6)
    assert ours.strengths[0] == pytest.approx(np.abs(Xc.T @ yc).max() / len(y), rel=1e-12)
    assert set(ours.statuses) == {"optimal"}
    for i, result in enumerate(ours):
        reference = result.problem.objective(torch.as_tensor(coefs[:, i]))
        assert result.objective <= reference + 1e-9 * max(1.0, reference)
    support = [int((np.abs(coefs[:, i]) > 1e-8).sum()) for i in range(len(alphas))]
    assert ours.nonzeros == support
    intercepts = ours.intercepts
    assert torch.allclose(intercepts, torch.as_tensor(y.mean() - X.mean(0) @ ours.coefs.numpy().T), rtol=1e-10)


def test_every_point_is_certified():
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    path = symopt.path(logistic_l1(X, y.astype(float), 1.0, fit_intercept=True), n_strengths=8, eps=1e-2, tol=1e-8)
    certificates = path.certificates()
    assert all(c.optimal for c in certificates)
    assert all(-1e-12 <= c.duality_gap <= 1e-6 * c.extra["objective"] for c in certificates)


def test_warm_started_points_are_the_cold_solutions():
    """Warm starts change where each solve begins, never where it ends."""
    problem = make_lasso(n=200, d=1200, nonzeros=10, seed=3)  # d ≥ 1000: working sets, opened by the start
    grid = problem.strength_max() * np.geomspace(1, 0.05, 6)
    warm = symopt.path(problem, grid)
    cold = [symopt.solve(problem.at_strength(lam)) for lam in grid]
    assert [r.objective for r in warm] == pytest.approx([r.objective for r in cold], rel=1e-9)
    assert [r.status for r in warm] == ["optimal"] * 6
    assert "λ_max" in warm[0].message  # θ = 0 at λ_max, exactly, without a descent


@pytest.mark.parametrize("family", ["lasso", "group", "logistic"])
def test_theta_zero_is_decided_at_lambda_max_to_the_bit(family):
    """At λ_max and a rounding above it, θ = 0 is optimal and no descent runs; a millionth
    below, one atom is alive. The data term's own gradient settles λ clearly below λ_max; near it
    autograd decides, as ``strength_max`` computes λ_max (the two differ by rounding)."""
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    problem = {"lasso": lambda: lasso(X, y.astype(float), 1.0),
               "group": lambda: group_lasso(X, y.astype(float), 3, 1.0),
               "logistic": lambda: logistic_l1(X, y.astype(float), 1.0, fit_intercept=True)}[family]()
    top = problem.strength_max()
    for factor in (1.0, 1 + 1e-15):
        result = symopt.solve(problem.at_strength(top * factor))
        assert result.status == "optimal" and not bool(result.x.any()) and "λ_max" in result.message
    below = symopt.solve(problem.at_strength(top * (1 - 1e-6)))
    assert below.status == "optimal" and bool(below.x.any()) and "λ_max" not in below.message


_LEAN = "after proximal Newton from"


@pytest.mark.parametrize("family", ["lasso raw", "lasso positive", "logistic", "group"])
def test_lean_points_end_where_full_solves_end(family):
    """A warm-started point finished by proximal Newton alone (`paths._LeanPoints`) is the point a
    warm-started `solve` certifies: the same objective and support along the whole path, on raw
    columns (scales 1e-3 to 1e3) too. ``polish=True`` is not a neutral option, so it takes `solve`."""
    X, y = load_breast_cancer(return_X_y=True)
    Xs = (X - X.mean(0)) / X.std(0)
    problem = {"lasso raw": lambda: lasso(X, y.astype(float), 1.0, fit_intercept=True),
               "lasso positive": lambda: lasso(X, y.astype(float), 1.0, positive=True),
               "logistic": lambda: logistic_l1(Xs, y.astype(float), 1.0, fit_intercept=True),
               "group": lambda: group_lasso(Xs, y.astype(float), [list(range(i, i + 3)) for i in range(0, 30, 3)],
                                            1.0)}[family]()
    lean = symopt.path(problem, n_strengths=12, eps=1e-3)
    full = symopt.path(problem, n_strengths=12, eps=1e-3, polish=True)
    assert set(lean.statuses) == set(full.statuses) == {"optimal"}
    assert sum(_LEAN in r.message for r in lean) >= 8 and not any(_LEAN in r.message for r in full)
    assert [r.objective for r in lean] == pytest.approx([r.objective for r in full], rel=1e-9, abs=1e-12)
    assert lean.nonzeros == full.nonzeros
    assert all(c.optimal for c in lean.certificates())


def test_kinds_proximal_newton_does_not_serve_take_the_full_solve():
    from symopt.problems import make_matrix_completion
    path = symopt.path(make_matrix_completion(m=30, n=20, rank=2, seed=0), n_strengths=4, eps=0.1)
    assert set(path.statuses) == {"optimal"} and not any(_LEAN in r.message for r in path)


def test_group_and_budget_problems_walk_too():
    X, y = load_diabetes(return_X_y=True)
    path = symopt.path(group_lasso(X, y, [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]], 1.0), n_strengths=5)
    assert path.nonzeros[0] == 0 and path.nonzeros[-1] == 3
    budget = symopt.path(lasso(X, y, max_nonzero=3), [0.5, 0.1])  # a budget problem's λ is free too
    assert len(budget) == 2 and budget.strengths.tolist() == [0.5, 0.1]


@pytest.mark.parametrize("strengths, words", [
    ([], "non-empty"), ([0.1, -1.0], "positive and finite"), ([0.1, float("nan")], "positive and finite"),
    ([[0.1]], "1-d"), ("abc", "positive"),
])
def test_bad_strengths_are_named(strengths, words):
    with pytest.raises(ValueError, match=words):
        symopt.path(make_lasso(n=20, d=5, nonzeros=2), strengths)


def test_bad_calls_are_named():
    problem = make_lasso(n=20, d=5, nonzeros=2)
    with pytest.raises(ValueError, match="start= is set by the path"):
        symopt.path(problem, [0.1], start=torch.zeros(5))
    with pytest.raises(ValueError, match="eps"):
        symopt.path(problem, eps=2.0)
    with pytest.raises(ValueError, match="n_strengths"):
        symopt.path(problem, n_strengths=0)
    with pytest.raises(TypeError, match="symopt.Problem"):
        symopt.path("lasso", [0.1])
    from symopt.problems import make_equality_ls
    with pytest.raises(ValueError, match="at_strength"):
        symopt.path(make_equality_ls(n=20, d=5, constraints=1), [0.1])
    with pytest.raises(ValueError, match="every λ"):
        symopt.path(lasso(torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 0.1))
