"""What users bring to the regression families: an unpenalised intercept, sample weights, the
elastic net, ``positive`` and several targets — each against the outside tool a user would
otherwise pick (scikit-learn, skglm) and against the problem's own cvxpy twin, on shipped data."""

import warnings

import numpy as np
import pytest
import torch

import symopt
from symopt.problems import group_lasso, lasso, logistic_l1, multitask_lasso
from symopt.problems.glm import logistic_intercept

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.linear_model import ElasticNet, Lasso, MultiTaskLasso  # noqa: E402

DIABETES = load_diabetes(return_X_y=True)
CANCER = load_breast_cancer(return_X_y=True)
WEIGHTS = np.random.default_rng(0).uniform(0.0, 2.0, len(DIABETES[1]))


def _standardised_cancer():
    X, y = CANCER
    return (X - X.mean(0)) / X.std(0), y.astype(float)


def _close(result, reference_objective, rel=1e-9):
    assert result.status == "optimal", result.message
    assert result.objective - reference_objective <= rel * max(1.0, abs(reference_objective))


@pytest.mark.parametrize("options, reference", [
    ({"fit_intercept": True}, lambda: Lasso(alpha=0.1)),
    ({"fit_intercept": True, "sample_weight": WEIGHTS}, lambda: Lasso(alpha=0.1)),
    ({"fit_intercept": True, "l1_ratio": 0.5}, lambda: ElasticNet(alpha=0.1, l1_ratio=0.5)),
    ({"fit_intercept": True, "positive": True}, lambda: Lasso(alpha=0.1, positive=True)),
    ({"sample_weight": WEIGHTS, "l1_ratio": 0.3, "positive": True},
     lambda: ElasticNet(alpha=0.1, l1_ratio=0.3, positive=True, fit_intercept=False)),
], ids=["intercept", "weights", "elastic_net", "positive", "weighted_positive_enet"])
def test_lasso_options_match_scikit_learn_on_diabetes(options, reference):
    X, y = DIABETES
    problem = lasso(X, y, 0.1, **options)
    result = symopt.solve(problem)  # raw diabetes columns (norm 1, coefficients ~500): the default tol
    model = reference().set_params(tol=1e-12, max_iter=10**6)
    model.fit(X, y, sample_weight=options.get("sample_weight"))
    ours = problem.objective(torch.as_tensor(model.coef_))
    _close(result, ours)
    assert np.abs(result.x.numpy() - model.coef_).max() <= 1e-4 * np.abs(model.coef_).max()
    if options.get("fit_intercept"):
        assert result.intercept == pytest.approx(model.intercept_, abs=1e-6 * abs(model.intercept_))
    else:
        assert result.intercept is None
    assert (result.x != 0).sum() == (np.abs(model.coef_) > 1e-8).sum()
    gap = symopt.certify(result).duality_gap
    assert -1e-12 * result.objective <= gap <= 1e-6 * result.objective


def test_the_intercept_is_the_centred_problem():
    """Profiling the intercept out is centring X and y by their (weighted) means, exactly."""
    X, y = DIABETES
    w = WEIGHTS / WEIGHTS.sum()
    Xc, yc = X - w @ X, y - w @ y
    profiled = lasso(X, y, 0.2, fit_intercept=True, sample_weight=WEIGHTS)
    centred = lasso(Xc, yc, 0.2, sample_weight=WEIGHTS)
    theta = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 100
    assert profiled.objective(theta) == pytest.approx(centred.objective(theta), rel=1e-12)
    result = symopt.solve(profiled, tol=1e-8)
    assert result.intercept == pytest.approx(float(w @ y - w @ X @ result.x.numpy()), rel=1e-12)


def test_sparse_design_with_an_intercept_is_not_densified():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = DIABETES
    Xs = scipy_sparse.csr_matrix(np.where(np.abs(X) > 0.03, X, 0.0))
    dense = symopt.solve(lasso(Xs.toarray(), y, 0.05, fit_intercept=True), tol=1e-8)
    sparse_problem = lasso(Xs, y, 0.05, fit_intercept=True)
    assert sparse_problem.data["X"].layout == torch.sparse_csr
    sparse = symopt.solve(sparse_problem, tol=1e-8)
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-10)
    assert sparse.intercept == pytest.approx(dense.intercept, rel=1e-8)


@pytest.mark.parametrize("options", [{"fit_intercept": True},
                                     {"fit_intercept": True, "sample_weight": "cancer"},
                                     {"fit_intercept": True, "l1_ratio": 0.6}],
                         ids=["intercept", "weights", "elastic_net"])
def test_logistic_options_match_cvxpy_and_skglm_on_breast_cancer(options):
    from symopt.baselines import solve_cvxpy, solve_sklearn

    X, y = _standardised_cancer()
    if options.get("sample_weight") == "cancer":
        options = dict(options, sample_weight=np.random.default_rng(1).uniform(0.0, 2.0, len(y)))
    problem = logistic_l1(X, y, 0.01, **options)
    result = symopt.solve(problem, tol=1e-8)
    reference = solve_cvxpy(problem)
    _close(result, reference.objective, rel=1e-8)
    sk = solve_sklearn(problem)  # saga: liblinear would penalise the intercept
    assert result.objective <= sk.objective + 1e-9
    # the intercept zeroes the mean residual: Σ ω (σ(z) − y) = 0
    w = problem.data.get("weights", torch.full((len(y),), 1 / len(y), dtype=torch.float64))
    z = torch.as_tensor(X) @ result.x + result.intercept
    assert abs(float((w * (torch.sigmoid(z) - torch.as_tensor(y))).sum())) <= 1e-12
    assert -1e-12 * result.objective <= symopt.certify(result).duality_gap <= 1e-7  # (rounding on either side)


@pytest.mark.slow  # skglm compiles its numba kernels on first use (~20 s)
def test_skglm_logistic_with_intercept_agrees():
    pytest.importorskip("skglm")
    from symopt.baselines import solve_skglm

    X, y = _standardised_cancer()
    problem = logistic_l1(X, y, 0.02, fit_intercept=True)
    _close(symopt.solve(problem, tol=1e-8), solve_skglm(problem).objective)


def test_multitask_lasso_matches_scikit_learn():
    X, y = DIABETES
    Y = np.stack([y, X[:, 2] * 300 + np.random.default_rng(2).normal(size=len(y))], axis=1)
    problem = multitask_lasso(X, Y, 2.0, fit_intercept=True)
    result = symopt.solve(problem, tol=1e-8)
    model = MultiTaskLasso(alpha=2.0, tol=1e-12, max_iter=10**6).fit(X, Y)
    _close(result, problem.objective(torch.as_tensor(model.coef_.T)))
    assert (result.x.norm(dim=1) > 0).tolist() == (np.linalg.norm(model.coef_, axis=0) > 0).tolist()
    assert torch.allclose(result.intercept, torch.as_tensor(model.intercept_), rtol=1e-6)
    assert -1e-12 * result.objective <= symopt.certify(result).duality_gap <= 1e-6 * result.objective


def test_group_lasso_intercept_matches_cvxpy_and_the_centred_problem():
    pytest.importorskip("cvxpy")
    from symopt.baselines import solve_cvxpy

    X, y = DIABETES
    problem = group_lasso(X, y, [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]], 0.5, fit_intercept=True)
    result = symopt.solve(problem)
    _close(result, solve_cvxpy(problem).objective, rel=1e-7)  # Clarabel's own accuracy
    assert result.intercept == pytest.approx(float(y.mean() - X.mean(0) @ result.x.numpy()), rel=1e-10)


@pytest.mark.parametrize("build", [
    lambda X, y, w: lasso(X, y, 0.3, fit_intercept=True, sample_weight=w),
    lambda X, y, w: lasso(X, y, 0.3, fit_intercept=True, l1_ratio=0.4, positive=True),
    lambda X, y, w: logistic_l1(X, (y > np.median(y)).astype(float), 0.01, fit_intercept=True, sample_weight=w),
    lambda X, y, w: logistic_l1(X, (y > np.median(y)).astype(float), 0.01, l1_ratio=0.5),
    lambda X, y, w: multitask_lasso(X, np.stack([y, -y], 1), 0.3, fit_intercept=True, sample_weight=w),
], ids=["lasso_weighted", "enet_positive", "logistic_weighted", "logistic_enet", "multitask"])
def test_weak_duality_holds_everywhere_and_the_gap_closes(build):
    """The dual point built from any θ is feasible: P(θ) − D(ν(θ)) ≥ 0 at random θ (a wrong
    conjugate or a missing Σν = 0 breaks it), and the gap closes at DCS's answer."""
    X, y = DIABETES
    X = X * np.sqrt(len(y))  # unit-variance columns
    problem = build(X, y, WEIGHTS)
    constraint = problem.constraint().to(dtype=torch.float64)
    data = problem.data_on("cpu", torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        theta = torch.randn(problem.shape, generator=g, dtype=torch.float64) * 10
        dual, _ = problem.dual(theta, data, constraint)
        assert problem.value(theta, data, constraint) - dual >= -1e-9
    result = symopt.solve(problem, tol=1e-10)
    scale = max(1.0, abs(result.objective))
    assert -1e-12 * scale <= symopt.certify(result).duality_gap <= 1e-7 * scale  # rounding on either side


def test_working_sets_carry_the_intercept_and_weights():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(150, 1200, generator=g, dtype=torch.float64) + 5.0  # far from centred
    y = X[:, :4] @ torch.tensor([2.0, -1.0, 1.5, 1.0], dtype=torch.float64) + 40.0
    weights = torch.rand(150, generator=g, dtype=torch.float64)
    problem = lasso(X, y, 0.05, fit_intercept=True, sample_weight=weights)
    with_sets = symopt.solve(problem, working_set=True, tol=1e-8)
    plain = symopt.solve(problem, working_set=False, tol=1e-8)
    assert "working sets" in with_sets.message
    assert with_sets.objective == pytest.approx(plain.objective, rel=1e-9)
    assert with_sets.intercept == pytest.approx(plain.intercept, rel=1e-7)


def test_logistic_intercept_is_the_root_even_far_out():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, generator=g, dtype=torch.float64) * 30 - 50  # σ flat: Newton alone overshoots
    y = (torch.rand(200, generator=g, dtype=torch.float64) < 0.3).to(torch.float64)
    b = logistic_intercept(z, y)
    assert abs(float(torch.sigmoid(z + b).mean() - y.mean())) <= 1e-13


@pytest.mark.parametrize("call, error, words", [
    (lambda X, y: lasso(X, y, 0.1, sample_weight=-np.ones(len(y))), ValueError, "negative"),
    (lambda X, y: lasso(X, y, 0.1, sample_weight=np.ones(3)), ValueError, "one weight per sample"),
    (lambda X, y: lasso(X, y, 0.1, sample_weight=np.full(len(y), np.nan)), ValueError, "NaN"),
    (lambda X, y: lasso(X, y, 0.1, sample_weight=np.zeros(len(y))), ValueError, "sums to 0"),
    (lambda X, y: lasso(X, y, 0.1, l1_ratio=0.0), ValueError, "l1_ratio"),
    (lambda X, y: lasso(X, y, 0.1, l1_ratio=1.5), ValueError, "l1_ratio"),
    (lambda X, y: lasso(X, y, max_nonzero=3, l1_ratio=0.5), ValueError, "l1_ratio=1"),
    (lambda X, y: lasso(X, y, 0.1, fit_intercept="yes"), TypeError, "fit_intercept"),
    (lambda X, y: logistic_l1(X, np.ones(len(y)), 0.1, fit_intercept=True), ValueError, "both labels"),
    (lambda X, y: multitask_lasso(X, y, 0.1), ValueError, "(n, T)"),
    # a str or a bool strength: named by the family (before: "can't multiply sequence", or True taken as 1.0)
    (lambda X, y: lasso(X, y, "auto"), TypeError, "lasso: strength must be a positive real number, got str"),
    (lambda X, y: lasso(X, y, True), TypeError, "lasso: strength must be a positive real number, got bool"),
    (lambda X, y: lasso(X, y, -0.1, l1_ratio=0.5), ValueError, "lasso: strength must be finite and > 0"),
    (lambda X, y: logistic_l1(X, (y > 150).astype(float), "big"), TypeError, "logistic_l1: strength must be"),
])
def test_bad_options_are_named(call, error, words):
    X, y = DIABETES
    with pytest.raises(error, match=pytest.importorskip("re").escape(words)):
        call(X, y)


def test_logistic_intercept_from_a_nearby_start_is_the_same_root_in_fewer_steps(monkeypatch):
    """The data term starts each root search at the last root found for its labels: the same root (to
    the sum's resolution), in at most 3 evaluations after a small change of the logits, fewer than cold;
    and a wild start still ends at the root (the bracket)."""
    from symopt.problems import glm

    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, generator=g, dtype=torch.float64)
    y = (torch.rand(300, generator=g, dtype=torch.float64) < 0.4).to(torch.float64)
    weights = torch.rand(300, generator=g, dtype=torch.float64)
    weights = weights / weights.sum()
    calls = {"n": 0}
    sigmoid = torch.sigmoid

    def counting(t):
        calls["n"] += 1
        return sigmoid(t)

    for w in (None, weights):
        before = logistic_intercept(z, y, w)
        moved = z + 1e-3 * torch.randn(300, generator=g, dtype=torch.float64)
        monkeypatch.setattr(glm.torch, "sigmoid", counting)
        calls["n"] = 0
        cold = logistic_intercept(moved, y, w)
        cold_steps, calls["n"] = calls["n"], 0
        warm = logistic_intercept(moved, y, w, start=float(before))
        warm_steps = calls["n"]
        wild = logistic_intercept(moved, y, w, start=1e6)
        monkeypatch.undo()
        assert warm_steps <= 3 and warm_steps < cold_steps
        for b in (warm, wild):
            assert abs(float(b) - float(cold)) <= 1e-13


def test_a_kept_predictor_is_only_reused_for_the_same_point_data_and_term(monkeypatch):
    """`DataTerm` keeps the last predictor on X: the curvature at the point whose value and gradient
    were just evaluated reuses it (one intercept root, not two), and nothing else does — other
    labels, other weights, another term (no intercept) or another θ on the same X give what a fresh
    computation gives."""
    from symopt.problems.glm import DataTerm, LogLoss

    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y1 = (torch.rand(60, generator=g) < 0.5).to(torch.float64)
    y2 = 1.0 - y1
    weights = torch.rand(60, generator=g, dtype=torch.float64)
    weights = weights / weights.sum()
    theta = torch.randn(5, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    with_b, without_b = DataTerm(LogLoss(), fit_intercept=True), DataTerm(LogLoss())

    def fresh(term, point, labels, w=None):
        return term.curvature(point, mask, X.clone(), labels, w)  # (a fresh X keeps nothing)

    calls = []
    predictor = DataTerm.predictor

    def counting(self, *args, **kwargs):
        calls.append(1)
        return predictor(self, *args, **kwargs)

    monkeypatch.setattr(DataTerm, "predictor", counting)
    with_b.value_and_grad(theta, X, y1)
    assert torch.equal(with_b.curvature(theta.clone(), mask, X, y1), fresh(with_b, theta, y1))
    assert len(calls) == 2  # the value's and the fresh X's: the curvature at the same point reused the first
    cases = [(with_b, theta, y2, None), (with_b, theta, y1, weights), (without_b, theta, y1, None),
             (with_b, theta + 0.1, y1, None)]
    for term, point, labels, w in cases:
        with_b.value_and_grad(theta, X, y1)
        assert torch.equal(term.curvature(point, mask, X, labels, w), fresh(term, point, labels, w))
        value, grad = term.value_and_grad(point, X, labels, w)
        reference = term.value_and_grad(point, X.clone(), labels, w)
        assert torch.equal(value, reference[0]) and torch.equal(grad, reference[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_an_optimal_entry_below_the_snap_on_a_large_column_is_kept(seed):
    # Columns of scales 1 and 1e6: at 1e-6 λ_max the optimum holds entries ~1e-7 of its largest, on the
    # large columns, that the fit needs. Snapped relative to θ's largest entry they were zeroed, and
    # proximal Newton's exact point was measured 3e4-1e5 from optimal: "stalled" after 0.2-0.5 s, some
    # entries 0.2 off (and a drawn users' Lasso on columns of scales 1e-3..1e3 at 0.001 λ_max the same).
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 4)) * np.array([1.0, 1e6, 1.0, 1e6])
    y = X[:, 0] + X[:, 2] + rng.standard_normal(120)
    problem = lasso(X, y, 1.0, fit_intercept=True)
    lam = 1e-6 * problem.strength_max()
    result = symopt.solve(problem.at_strength(lam))
    reference = Lasso(alpha=lam, tol=1e-14, max_iter=100000).fit(X, y)
    kept = np.abs(reference.coef_)
    assert kept.min() < 1e-6 * kept.max() and kept.min() > 0  # the case: entries the relative snap would zero
    assert result.status == "optimal", result.message
    np.testing.assert_allclose(result.x.numpy(), reference.coef_, rtol=1e-6)


def _five_planted(rng, X):
    """``X @ truth`` plus Gaussian noise of 0.1: ``truth`` with five entries at drawn columns, each of about one
    unit of the target per column standard deviation."""
    support = rng.choice(X.shape[1], 5, replace=False)
    truth = np.zeros(X.shape[1])
    truth[support] = rng.standard_normal(5) / X[:, support].std(0)
    return X @ truth + 0.1 * rng.standard_normal(X.shape[0])


def _raw_scale_problem(seed):
    """A regression on columns of scales 1e-3 to 1e3 with drawn options, at 1e-7..1e-4 λ_max."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(40, 200)), int(rng.integers(10, 120))
    X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, size=d)
    y = _five_planted(rng, X)
    options = dict(fit_intercept=bool(rng.random() < 0.5), l1_ratio=float(rng.choice([1.0, 0.7])),
                   positive=bool(rng.random() < 0.2),
                   sample_weight=rng.uniform(0.1, 3, n) if rng.random() < 0.3 else None)
    return X, y, options, float(10.0 ** rng.uniform(-7, -4))


# (seeds where, before proximal Newton's point was measured as it is, the solve stalled or hit max_iter
# 0.1-1.6 of the objective above scikit-learn's: 18 of seeds 0-29)
@pytest.mark.parametrize("seed", [0, 2, 11, 18, 20])
def test_regressions_on_raw_scales_at_tiny_strengths_match_scikit_learn(seed):
    X, y, options, fraction = _raw_scale_problem(seed)
    problem = lasso(X, y, 1.0, **options)
    lam = fraction * problem.strength_max()
    result = symopt.solve(problem.at_strength(lam))
    reference = ElasticNet(alpha=lam, l1_ratio=options["l1_ratio"], fit_intercept=options["fit_intercept"],
                           positive=options["positive"], tol=1e-15, max_iter=100000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (its duality gap at tol 1e-15: its point is compared below)
        reference.fit(X, y, sample_weight=options["sample_weight"])
    at = lasso(X, y, lam, **options)
    coef = torch.tensor(reference.coef_)
    objective = float(at.loss(coef, **at.data)) + float(at.constraint().objective_term(coef))
    _close(result, objective, rel=1e-12)


def _raw_budget_problem(seed):
    """A Lasso budget on columns of scales 1e-2 to 1e2: ``(X, y, max_nonzero, fit_intercept)``."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(30, 250)), int(rng.integers(5, 150))
    X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-2, 2, size=d)  # (d ≥ 5)
    return X, _five_planted(rng, X), int(rng.integers(1, min(d, n) // 2 + 2)), bool(rng.random() < 0.5)


# (seeds 1 and 3: "max_iter" after 40 rounds before the search bisected a bracket the controller's target only
# crawled through; 37 and 39: 30 non-zeros for a budget of 29 before atoms were counted as the certified point's
# non-zeros, not those above the snap; 12 of seeds 0-39 failed on the session's base code)
@pytest.mark.parametrize("seed", [1, 3, 37, 39])
def test_a_lasso_budget_on_raw_scales_lands_exactly_on_scikit_learns_optimum(seed):
    X, y, budget, intercept = _raw_budget_problem(seed)
    result = symopt.solve(lasso(X, y, max_nonzero=budget, fit_intercept=intercept))
    assert result.status == "optimal", result.message
    assert int((result.x != 0).sum()) == budget
    at = lasso(X, y, result.strength, fit_intercept=intercept)
    reference = Lasso(alpha=result.strength, fit_intercept=intercept, tol=1e-15, max_iter=100000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(X, y)
    coef = torch.tensor(reference.coef_)
    _close(result, float(at.loss(coef, **at.data)) + float(at.constraint().objective_term(coef)), rel=1e-10)
