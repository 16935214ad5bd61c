"""Budgets (≤ k non-zeros / groups / rank): λ adapts in a plain training loop and in ``solve``; the
λ found is a point of the convex path with that support size (checked with sklearn and cvxpy);
``finalize`` meets the budget exactly and reports the loss change, or refuses."""

import contextlib
import copy
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symopt
from helpers import DT, Vector, lbfgs_fit, least_squares, ls_loss, train
from symopt.problems import group_lasso, lasso, make_matrix_completion, matrix_completion

sklearn = pytest.importorskip("sklearn.linear_model")


def _init(d, seed=7):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _lasso_data():
    return least_squares(n=100, d=40, k=8, noise=0.5, seed=3)


def _train_adam(model, loss_fn, steps):
    train(model, loss_fn, steps, 1e-2, path="param_groups", optimizer=torch.optim.Adam)


def _train_lbfgs(model, loss_fn, steps):
    # unbound on purpose: λ moves at every closure call; torch's default tolerance_change
    lbfgs_fit(model, loss_fn, steps, tolerance_change=1e-9, bind=False)


def _sklearn_support(X, y, lam):
    coef = sklearn.Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy()).coef_
    return sorted(np.flatnonzero(coef).tolist())


def _path_supports_of_size(X, y, k):
    alphas, coefs, _ = sklearn.lasso_path(X.numpy(), y.numpy(), alphas=np.geomspace(3.0, 1e-3, 400), tol=1e-12,
                                          max_iter=100_000)
    return {tuple(np.flatnonzero(c).tolist()) for c in coefs.T if np.count_nonzero(c) == k}, alphas, coefs


@pytest.mark.parametrize("trainer", ["adam_param_groups", "lbfgs_penalty"])
def test_max_nonzero_in_a_training_loop_matches_the_lasso_path(trainer):
    X, y = _lasso_data()
    k = 5
    model = Vector(40, init=_init(40))
    handle = symopt.sparse(model, "theta", max_nonzero=k)  # no strength: λ comes from the gradients
    assert handle.constraint.budget == k and handle.strength == 0.0
    loss_fn = lambda m: ls_loss(X, y)(m.theta)  # noqa: E731
    if trainer == "adam_param_groups":
        _train_adam(model, loss_fn, 3000)
    else:
        _train_lbfgs(model, loss_fn, 300)
    lam = handle.strength
    ours = sorted(torch.topk(model.theta.detach().abs(), k).indices.tolist())
    # λ found is on the path's k-interval: sklearn at that λ has the same k-support ...
    assert _sklearn_support(X, y, lam) == ours
    # ... which is the support lasso_path shows at size k
    supports, _, _ = _path_supports_of_size(X, y, k)
    assert supports == {tuple(ours)}
    cert = symopt.finalize(model, tol=1e-4, loss_fn=loss_fn)
    theta = model.theta.detach()
    assert int((theta != 0).sum()) == k and sorted(np.flatnonzero(theta.numpy()).tolist()) == ours
    assert cert.loss_change is not None and abs(cert.loss_change) < 1e-6
    assert "loss" in str(cert)


def test_density_sets_the_budget_from_the_size():
    lin = nn.Linear(20, 5)
    handle = symopt.sparse(lin, "weight", density=0.1)
    assert handle.constraint.budget == 10 and "budget 10" in handle.structure(handle.values())


def test_max_groups_in_a_training_loop_matches_the_group_lasso_path():
    X, y = least_squares(n=80, d=24, k=9, noise=0.3, seed=4)
    model = Vector(24, init=_init(24))
    handle = symopt.group_sparse(model, "theta", groups=3, max_groups=2)
    _train_adam(model, lambda m: ls_loss(X, y)(m.theta), 3000)
    lam = handle.strength
    norms = handle.constraint.group_norms(model.theta.detach())
    ours = sorted(torch.topk(norms, 2).indices.tolist())
    # the group lasso at the λ found (FISTA reference, KKT-certified) has exactly those 2 groups
    ref = symopt.baselines.solve_proximal(group_lasso(X, y, 3, lam), tol=1e-10)
    ref_norms = symopt.GroupSparse(groups=3).group_norms(ref.x)
    assert sorted(torch.nonzero(ref_norms > 1e-8).reshape(-1).tolist()) == ours
    symopt.finalize(model, tol=1e-4)
    assert int((symopt.GroupSparse(groups=3).group_norms(model.theta.detach()) > 0).sum()) == 2


def test_target_rank_in_a_training_loop_matches_cvxpy_at_the_lambda_found():
    cp = pytest.importorskip("cvxpy")
    base = make_matrix_completion(m=30, n=25, rank=3, observed=0.5, noise=0.1)
    M, mask = base.data["M"], base.data["mask"]
    model = Vector(30, 25)
    handle = symopt.low_rank(model, "theta", target_rank=3)
    _train_adam(model, lambda m: 0.5 * (mask * (m.theta - M)).square().sum(), 4000)
    lam = handle.strength
    symopt.finalize(model, tol=1e-3)
    W = model.theta.detach()
    assert int(torch.linalg.matrix_rank(W, atol=1e-9)) == 3
    ours = float(0.5 * (mask * (W - M)).square().sum() + lam * torch.linalg.svdvals(W).sum())
    Wc = cp.Variable(M.shape)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(cp.multiply(mask.numpy(), Wc - M.numpy()))
                                  + lam * cp.normNuc(Wc)))
    prob.solve()
    assert abs(ours - prob.value) <= 1e-4 * abs(prob.value)
    assert int((np.linalg.svd(Wc.value, compute_uv=False) > 1e-5).sum()) == 3


def test_minibatch_sgd_feature_budget_on_an_mlp():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 12, generator=g)
    y = (X[:, 0] - 2 * X[:, 1] + 1.5 * torch.tanh(2 * X[:, 2]) > 0).float()  # features 0, 1, 2 only
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 1))
    handle = symopt.group_sparse(net, "0.weight", dim=1, max_groups=3)  # keep 3 input features
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for epoch in range(60):
        for idx in torch.randperm(512, generator=g).split(64):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(net(X[idx]).squeeze(1), y[idx]).backward()
            opt.step()
    norms = handle.constraint.group_norms(net[0].weight.detach())
    assert sorted(torch.topk(norms, 3).indices.tolist()) == [0, 1, 2]
    symopt.finalize(net, tol=1e-2)
    kept = torch.nonzero(net[0].weight.detach().norm(dim=0) > 0).reshape(-1).tolist()
    assert kept == [0, 1, 2]


def test_finalize_refuses_an_unmet_budget_and_changes_nothing():
    lin = nn.Linear(10, 3)
    symopt.sparse(lin, "weight", max_nonzero=4)
    before = copy.deepcopy(lin.state_dict())
    with pytest.raises(ValueError, match="keeping its 4 largest atoms"):
        symopt.finalize(lin)
    assert symopt.list_constraints(lin) and all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    cert = symopt.finalize(lin, force=True)
    assert int((lin.weight != 0).sum()) == 4 and cert.entries[0].budget == 4


def test_budget_state_dict_round_trip_keeps_lambda():
    X, y = _lasso_data()
    model = Vector(40, init=_init(40))
    handle = symopt.sparse(model, "theta", max_nonzero=5)
    _train_adam(model, lambda m: ls_loss(X, y)(m.theta), 200)
    fresh = Vector(40)
    symopt.sparse(fresh, "theta", max_nonzero=5)
    fresh.load_state_dict(model.state_dict())
    assert symopt.list_constraints(fresh)[0].strength == handle.strength > 0


def test_setting_strength_stops_adaptation():
    X, y = _lasso_data()
    model = Vector(40, init=_init(40))
    handle = symopt.sparse(model, "theta", max_nonzero=5)
    handle.constraint.strength = 0.3
    _train_adam(model, lambda m: ls_loss(X, y)(m.theta), 50)
    assert handle.strength == 0.3 and handle.constraint.budget == 5


@pytest.mark.parametrize("k", [3, 7])
def test_solve_finds_the_lasso_lambda_with_k_nonzeros(k):
    X, y = _lasso_data()
    result = symopt.solve(lasso(X, y, max_nonzero=k))
    assert result.status == "optimal", result.message
    support = sorted(np.flatnonzero(result.x.numpy()).tolist())
    assert len(support) == k
    assert _sklearn_support(X, y, result.strength) == support
    at = lasso(X, y, result.strength)
    assert result.objective == pytest.approx(at.objective(result.x), rel=1e-12)


def test_a_budget_beyond_the_paths_largest_support_is_reported_unreachable():
    """A Lasso on 20 samples has at most 20 non-zeros at any λ (scikit-learn's lasso_path on a fine grid
    down to 1e-6 λ_max never passes 20): asked for 30, solve stops at tol·λ_max, the smallest λ its
    tolerance resolves, with budget_unreachable and that solution (20 atoms), where it used to halve λ
    for 40 rounds and end on a meaningless count at λ ~ 1e-9 (max_iter)."""
    from sklearn.linear_model import lasso_path

    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((20, 50)), rng.standard_normal(20)
    problem = lasso(A, b, max_nonzero=30)
    result = symopt.solve(problem)
    assert result.status == "budget_unreachable", result.message
    assert "fewer than the budget 30" in result.message
    assert int((result.x != 0).sum()) == 20
    lam_max = float(np.abs(A.T @ b).max()) / len(b)
    _, coefs, _ = lasso_path(A, b, alphas=lam_max * np.geomspace(1.0, 1e-6, 200), tol=1e-10, max_iter=100_000)
    assert int((np.abs(coefs) > 1e-12).sum(0).max()) <= 20


def test_solve_target_rank_matches_cvxpy_nuclear_norm():
    base = make_matrix_completion(m=30, n=25, rank=3, observed=0.5, noise=0.1)
    problem = matrix_completion(base.data["M"], base.data["mask"].bool(), target_rank=2)
    result = symopt.solve(problem)
    assert result.status == "optimal", result.message
    assert int(torch.linalg.matrix_rank(result.x, atol=1e-8)) == 2
    reference = symopt.baselines.solve_cvxpy(problem.at_strength(result.strength))
    assert abs(result.objective - reference.objective) <= 1e-4 * abs(reference.objective)


def test_baselines_refuse_a_budget_problem_with_the_way_forward():
    X, y = _lasso_data()
    problem = lasso(X, y, max_nonzero=3)
    for solver in (symopt.baselines.solve_cvxpy, symopt.baselines.solve_proximal, symopt.baselines.solve_sklearn):
        with pytest.raises(symopt.result.NotApplicable, match="at_strength"):
            solver(problem)


@pytest.mark.parametrize("make, match", [
    (lambda: symopt.Sparse(max_nonzero=0), "max_nonzero must be an int >= 1"),
    (lambda: symopt.Sparse(density=1.5), "density must be a fraction"),
    (lambda: symopt.Sparse(max_nonzero=3, density=0.1), "not both"),
    (lambda: symopt.Sparse(max_nonzero=2, adapt_rate=0), "adapt_rate"),
    (lambda: symopt.GroupSparse(max_groups=2.5), "max_groups must be an int"),
    (lambda: symopt.LowRank(target_rank=3, max_rank=2), "exceeds max_rank"),
    (lambda: symopt.LowRank(target_rank=2, layout="batch"), "layout='flatten'"),
    (lambda: lasso(torch.randn(5, 3), torch.randn(5), 0.1, max_nonzero=2), "exactly one of"),
])
def test_bad_budgets(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_budget_that_does_not_bind_is_refused_before_registration():
    lin = nn.Linear(3, 2)
    before = copy.deepcopy(lin.state_dict())
    with pytest.raises(ValueError, match="does not bind"):
        symopt.sparse(lin, "weight", max_nonzero=6)
    assert not symopt.list_constraints(lin) and all(torch.equal(before[k], v) for k, v in lin.state_dict().items())


@pytest.mark.parametrize("max_rank", [None, "auto"], ids=["full_width", "default_width"])
def test_target_rank_on_a_large_layer_needs_no_full_svd_and_lands_on_singular_value_thresholding(max_rank):
    """½‖θ − M‖² + λ‖θ‖_* has the closed form SVT_λ(M). A rank budget of 4 on a 160×128 θ asks only
    the 5 leading singular values of θ − t∇ℓ each step (a randomized range finder), never a full
    SVD of a 160×128 matrix, and still ends with λ between σ₅(M) and σ₄(M) and θ's spectrum SVT_λ's:
    on full-width factors and on the default's (width 16: the answer's rank is below it)."""
    g = torch.Generator().manual_seed(0)
    spectrum = torch.tensor([9.0, 7.0, 5.0, 4.0, 1.0, 0.8, 0.6], dtype=torch.float64)
    P = torch.linalg.qr(torch.randn(160, 7, generator=g, dtype=torch.float64)).Q
    Q = torch.linalg.qr(torch.randn(128, 7, generator=g, dtype=torch.float64)).Q
    M = (P * spectrum) @ Q.T + 1e-3 * torch.randn(160, 128, generator=g, dtype=torch.float64)
    model = Vector(160, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the default width truncates the random start to rank 16)
        handle = symopt.low_rank(model, "theta", target_rank=4, max_rank=max_rank)
    assert handle.members[0].factors[0].shape[-1] == (128 if max_rank is None else 16)
    full_svds = []
    real_svd, real_svdvals = torch.linalg.svd, torch.linalg.svdvals

    def watch(real):
        def call(A, *args, **kwargs):
            if min(A.shape[-2:]) >= 128:
                full_svds.append(tuple(A.shape))
            return real(A, *args, **kwargs)
        return call

    _train_adam(model, lambda m: 0.5 * (m.theta - M).square().sum(), 5)  # registration and λ's first estimate
    torch.linalg.svd, torch.linalg.svdvals = watch(real_svd), watch(real_svdvals)
    try:
        _train_adam(model, lambda m: 0.5 * (m.theta - M).square().sum(), 1500)
    finally:
        torch.linalg.svd, torch.linalg.svdvals = real_svd, real_svdvals
    assert full_svds == []
    lam = handle.strength
    S = torch.linalg.svdvals(M)
    assert float(S[4]) < lam < float(S[3])
    # SVT_λ(M) keeps σ_i − λ of the first 4 and drops the rest. (Entrywise, Adam leaves lr-sized
    # jitter, about 1e-3 per entry, so the singular values are the sharp check.)
    trained = torch.linalg.svdvals(model.theta.detach())
    assert torch.allclose(trained[:4], S[:4] - lam, rtol=1e-3) and float(trained[4]) <= 1e-3
    symopt.finalize(model, tol=1e-3)  # no total_steps: the budget is approached, not landed (σ₅ ≈ 4e-5)
    assert int(torch.linalg.matrix_rank(model.theta.detach())) == 4


def test_tracked_readings_follow_a_drifting_matrix_from_the_seeded_start():
    """A rank budget's readings (`tracked_singular_values`): the first, without a basis, is the seeded
    range finder's; then one subspace step a call from the last basis follows a matrix that drifts
    as a layer's weights do, to the exact leading singular values; a basis of another size restarts."""
    from symopt.constraints.lowrank import leading_singular_values, tracked_singular_values

    g = torch.Generator().manual_seed(3)
    P = torch.linalg.qr(torch.randn(200, 150, generator=g, dtype=torch.float64)).Q
    Q = torch.linalg.qr(torch.randn(150, 150, generator=g, dtype=torch.float64)).Q
    A = (P * 0.95 ** torch.arange(150.0, dtype=torch.float64)) @ Q.T
    values, basis = tracked_singular_values(A, 6, seed=7)
    assert torch.allclose(values, leading_singular_values(A, 6, seed=7), rtol=1e-12, atol=0)
    assert basis.shape == (150, 14) and torch.allclose(basis.mT @ basis, torch.eye(14, dtype=torch.float64))
    for _ in range(30):
        A = A + 1e-5 * torch.randn(200, 150, generator=g, dtype=torch.float64)  # a step's worth of drift
        values, basis = tracked_singular_values(A, 6, basis, seed=7)
        exact = torch.linalg.svdvals(A)[:6]
        assert bool((values <= exact * (1 + 1e-12)).all())  # Rayleigh-Ritz values: lower bounds
        fresh = leading_singular_values(A, 6, seed=7)  # a new range finder each call, as before
        assert float((exact - values).max()) <= float((exact - fresh).max()) + 1e-12
    assert float(((exact - values) / exact).max()) < 1e-6  # (the fresh one: 4e-3 on this slow spectrum)
    restarted = tracked_singular_values(A, 6, basis[:, :5], seed=7)[0]
    assert torch.allclose(restarted, leading_singular_values(A, 6, seed=7), rtol=1e-12, atol=0)


def test_a_wide_rank_budgets_reading_computes_values_only(monkeypatch):
    """Early in a ramp a rank budget on factors of width 4k asks for more singular values than the
    tracked range serves (here 65 of a 256 × 256 θ): `LowRank.singular_values` then takes them from
    `torch.linalg.svdvals`, not from a full SVD with its vectors (twice the time), for θ and for its
    proximal score alike; the values are the exact ones."""
    from symopt.constraints import LowRank

    g = torch.Generator().manual_seed(0)
    constraint = LowRank(max_rank=64)
    theta = torch.randn(256, 64, generator=g) @ torch.randn(64, 256, generator=g)
    score = torch.randn(256, 256, generator=g)
    exact = [torch.linalg.svdvals(m)[:64] for m in (theta, score)]  # (the atoms of a width-64 kind: 64 at most)

    def refused(*args, **kwargs):
        raise AssertionError("a full SVD for singular values alone")

    monkeypatch.setattr(torch.linalg, "svd", refused)
    for matrix, reading, values in zip((theta, score), ("point", "score"), exact):
        top = constraint.top_dual_atoms(matrix, 65, reading)
        assert torch.allclose(top.sort(descending=True).values[:64], values, rtol=1e-5, atol=1e-4)


def test_a_wide_rank_budgets_reading_of_theta_comes_from_its_own_range(monkeypatch):
    """θ = UVᵀ of a LowRank(max_rank=r) has rank ≤ r: where a reading asks for more values than the tracked
    range serves (65 of a 256 × 256 θ at r = 64), θ's own reading takes them from a seeded range of r + 8
    directions, which holds θ's range exactly (`values_of_low_rank`), without any SVD of the 256 × 256
    matrix (3.6 against 0.8 ms here); the values are the exact ones, the 65th is 0 to rounding (the Gram's
    $\sqrt{ε}·σ_1$ of float64, or float32's own). The proximal score has full rank and keeps
    `torch.linalg.svdvals`."""
    from symopt.constraints import LowRank

    g = torch.Generator().manual_seed(1)
    constraint = LowRank(max_rank=64)
    for dtype in (torch.float32, torch.float64):
        theta = (torch.randn(256, 64, generator=g, dtype=torch.float64)
                 @ torch.randn(64, 256, generator=g, dtype=torch.float64)).to(dtype)
        exact = torch.linalg.svdvals(theta.double())[:65]
        calls = []
        real = torch.linalg.svdvals
        monkeypatch.setattr(torch.linalg, "svdvals", lambda m: calls.append(tuple(m.shape)) or real(m))
        top = constraint.top_dual_atoms(theta, 65, "point")
        monkeypatch.setattr(torch.linalg, "svdvals", real)
        assert calls == [] and top.shape == (65,) and top.dtype == dtype
        scale = float(exact[0]) * (1e-5 if dtype == torch.float32 else 1e-11)
        assert float((top[:64].double() - exact[:64]).abs().max()) <= scale
        floor = max(2 * math.sqrt(torch.finfo(torch.float64).eps), 4 * torch.finfo(dtype).eps)  # (θ's own rounding)
        assert float(top[64]) <= floor * float(exact[0])
    # (a narrower matrix, where r + 8 is more than half its side: the full values as before)
    narrow = torch.randn(256, 64, generator=g) @ torch.randn(64, 120, generator=g)
    calls = []
    real = torch.linalg.svdvals
    monkeypatch.setattr(torch.linalg, "svdvals", lambda m: calls.append(tuple(m.shape)) or real(m))
    constraint.top_dual_atoms(narrow, 65, "point")
    assert calls == [(256, 120)]


def test_a_rank_budget_tracks_theta_and_its_proximal_score_apart():
    """A rank budget reads two matrices each time, θ and its proximal score θ/t − ∇ℓ, whose leading
    singular vectors differ: `LowRank.top_dual_atoms` keeps a tracked range for each reading. Read
    alternately as a budget does, each is exact to 1e-4 (relative) once tracked; one range shared by
    the two (both read as "point", as before) was off by 5e-3 and 2e-2."""
    n, k = 200, 9
    g = torch.Generator().manual_seed(0)
    P = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    theta = (P * 0.97 ** torch.arange(n, dtype=torch.float64)) @ Q.T
    G = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.05
    errors = {}
    for mode in ("own", "shared"):
        constraint, worst = symopt.LowRank(target_rank=k - 1), [0.0, 0.0]
        for step in range(30):
            point = theta + 1e-4 * step * G  # a drifting layer, and a score whose top directions are G's
            score = point / 0.5 - G
            read = (constraint.top_dual_atoms(point, k, "point"),
                    constraint.top_dual_atoms(score, k, "score" if mode == "own" else "point"))
            if step >= 10:
                for i, (values, matrix) in enumerate(zip(read, (point, score))):
                    exact = torch.linalg.svdvals(matrix)[:k]
                    worst[i] = max(worst[i], float(((values[:k] - exact).abs() / exact).max()))
        errors[mode] = worst
    assert max(errors["own"]) < 1e-4 and min(errors["shared"]) > 1e-3


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_a_wide_block_s_singular_values_from_its_gram(dtype, rtol):
    """The readings' small SVD (`_wide_svd`: the p × p Gram's eigen-decomposition in float64, 10× cheaper
    than LAPACK's SVD of a 25 × 512 block): the singular values, over three decades, to the precision
    of the block's dtype, and an orthonormal basis of its row space in the same order."""
    from symopt.constraints.lowrank import _wide_svd

    g = torch.Generator().manual_seed(5)
    B = torch.randn(25, 512, generator=g, dtype=torch.float64) * torch.logspace(0, -3, 25, dtype=torch.float64)[:, None]
    values, right = _wide_svd(B.to(dtype))
    exact = torch.linalg.svdvals(B.to(dtype).double())
    assert values.dtype == right.dtype == dtype and right.shape == (512, 25)
    assert torch.allclose(values.double(), exact, rtol=rtol, atol=0)
    assert torch.allclose((right.mT @ right).double(), torch.eye(25, dtype=torch.float64), atol=10 * rtol)
    # each basis vector is its singular value's: ‖B r_j‖ = σ_j
    assert torch.allclose((B.to(dtype) @ right).norm(dim=0).double(), exact, rtol=10 * rtol, atol=0)


def _selection(which: str):
    """Both of `leading`'s selections: NumPy's partition (a CPU tensor of float32/float64) and the sampled
    bracket in torch (a GPU's or a half precision's tensor), the latter forced here on the CPU."""
    from unittest import mock

    from symopt.constraints import budget
    return mock.patch.object(budget, "_cpu_array", lambda flat: None) if which == "bracket" else contextlib.nullcontext()


@pytest.fixture(params=["numpy", "bracket"])
def selection(request):
    with _selection(request.param):
        yield request.param


@pytest.mark.parametrize("n, k, ties", [(50, 7, False), (100_000, 10_000, False), (100_000, 1, False),
                                        (100_000, 99_998, False), (100_000, 5_000, True), (70_001, 30_000, True),
                                        (100_000, 60_000, True), (50, 40, False), (9, 8, True)])
def test_leading_selection_is_exactly_topks(n, k, ties, selection):
    """The selection a budget runs at each reading equals torch.topk, also with heavy ties (values
    rounded to 40 levels: the bracket's edges sit on ties and it must fall back), at both ends, and for
    k > n/2 (the bracket selects through the n − k smallest), by either selection."""
    from symopt.constraints.budget import leading

    g = torch.Generator().manual_seed(n + k)
    values = torch.randn(n, generator=g, dtype=torch.float64).abs()
    if ties:
        values = (values * 10).round() / 10
    values[:: 997] = 0.0  # zeros, as pruned atoms are
    total, kth, after = leading(values, k)
    top = torch.topk(values, k + 1).values
    assert (kth, after) == (float(top[k - 1]), float(top[k]))
    assert total == pytest.approx(float(top[:k].sum()), rel=1e-12)


@settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 40)), deadline=None)
@given(n=st.sampled_from([2, 7, 300, 16_384, 16_385, 40_000, 65_536]), fraction=st.floats(0.0, 1.0),
       shape=st.sampled_from(["normal", "ties", "zeros", "few positive", "signed", "constant", "heavy tail"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 16),
       selection=st.sampled_from(["numpy", "bracket"]))
def test_leading_selection_matches_topk_on_random_draws(n, fraction, shape, dtype, seed, selection):
    """The same exactness on random draws: every size about the sample's threshold (4 · 4096), every
    k from 1 to n − 1, ties on 40 levels, a tensor mostly zero (pruned atoms: NumPy selects among the
    positive entries alone), one with a handful of positive entries and -0.0 among its zeros (fewer than k
    positive: zeros complete the answer), signed values with zeros (no shortcut), all entries equal (the
    bracket has no inside), heavy tails (|x|⁸), in both float dtypes, by either selection."""
    from symopt.constraints.budget import leading

    k = min(n - 1, max(1, round(fraction * n)))
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=g, dtype=dtype).abs()
    if shape == "ties":
        values = (values * 10).round() / 10
    elif shape == "zeros":
        values[: int(0.9 * n)] = 0.0
    elif shape == "few positive":
        values[3:] = 0.0
        values[3::2] = -0.0
    elif shape == "signed":
        values = torch.randn(n, generator=g, dtype=dtype)
        values[::3] = 0.0
    elif shape == "constant":
        values = torch.full((n,), 0.5, dtype=dtype)
    elif shape == "heavy tail":
        values = values ** 8
    with _selection(selection):
        total, kth, after = leading(values, k)
    top = torch.topk(values.double(), k + 1).values
    assert (kth, after) == (float(top[k - 1]), float(top[k]))
    # (float32 sums round at their own precision: the total only sets a reading's scale)
    assert total == pytest.approx(float(top[:k].sum()), rel=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("n", [8_193, 16_384, 65_536, 262_144])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpys_selection_answers_from_its_samples_bracket_and_exactly(n, dtype):
    """On the CPU a selection among more than BAND_FROM positive entries goes through a strided sample's bracket
    (`_leading_in_band`): on smooth draws, at every share k/n from one entry to nearly all, the bracket answers
    (it does not fall back to the full partition) and its k-th and (k+1)-th values are torch.topk's exactly, the
    sum to rounding; on 40 levels of ties, where its edges sit on ties, it falls back or answers, exactly."""
    from unittest import mock

    from symopt.constraints import budget

    answered = []
    band = budget._leading_in_band
    g = torch.Generator().manual_seed(n)
    for shape in ("normal", "heavy tail", "ties"):
        values = torch.randn(n, generator=g, dtype=dtype).abs() + 1e-3
        values = values ** 8 if shape == "heavy tail" else (values * 10).round() / 10 + 0.05 if shape == "ties" \
            else values
        for k in (1, 7, n // 100, n // 10, n // 2, n - 2):
            answered.clear()
            with mock.patch.object(budget, "_leading_in_band", lambda *a: answered.append(band(*a)) or answered[-1]), \
                    mock.patch.object(budget, "SIMD_PARTITION", False):  # (the path of a CPU without NumPy's SIMD one)
                total, kth, after = budget.leading(values, k)
            top = torch.topk(values.double(), k + 1).values
            assert (kth, after) == (float(top[k - 1]), float(top[k]))
            assert total == pytest.approx(float(top[:k].sum()), rel=1e-12 if dtype == torch.float64 else 1e-5)
            assert len(answered) == 1
            if shape != "ties":
                assert answered[0] is not None, (shape, k)


@pytest.mark.parametrize("n", [8_193, 65_536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_where_numpy_selects_by_simd_one_partition_answers_exactly_and_the_bracket_is_not_asked(n, dtype):
    """Where NumPy's partition is a SIMD selection (`SIMD_PARTITION`: the CPU's AVX-512 group), a selection among more
    than BAND_FROM positive entries is one ``np.partition``: the bracket is never asked, the k-th and (k+1)-th values
    are torch.topk's exactly and the sum is theirs to float64 rounding (no float32 differences on the way), with and
    without zeros among the entries; the flag itself is what NumPy says of the CPU."""
    from unittest import mock

    from symopt.constraints import budget

    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # (NumPy 1: the bracket, whatever the CPU)
        __cpu_features__ = {}
    assert budget.SIMD_PARTITION is bool(__cpu_features__.get("AVX512_SKX", False))
    g = torch.Generator().manual_seed(n)
    asked = []
    for zeros in (0.0, 0.3):
        values = torch.randn(n, generator=g, dtype=dtype).abs() + 1e-3
        values[torch.rand(n, generator=g) < zeros] = 0.0
        for k in (1, n // 10, n // 2, n - 2):
            with mock.patch.object(budget, "SIMD_PARTITION", True), \
                    mock.patch.object(budget, "_leading_in_band", lambda *a: asked.append(1)):
                total, kth, after = budget.leading(values, k)
            top = torch.topk(values.double(), k + 1).values
            assert (kth, after) == (float(top[k - 1]), float(top[k]))
            assert total == pytest.approx(float(top[:k].sum()), rel=1e-12)
    assert not asked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_a_readings_masks_are_torchs_comparisons_in_every_dtype(dtype):
    """`below` (the trimmed decay's mask, 1.0 / 0.0 in the value's dtype) and `at_or_above` (a landing on the
    way's kept atoms, bool) answer as torch's ``<`` and ``>=`` do, ties, zeros, infinities and NaN (False)
    included, through NumPy for float32/float64 and through torch for the half precisions; and `leading`
    selects exactly in the half precisions too (the bracket's path)."""
    from symopt.constraints.budget import at_or_above, below, leading

    g = torch.Generator().manual_seed(3)
    values = ((torch.randn(40_000, generator=g).abs() * 10).round() / 10).to(dtype)
    values[:100] = 0.0
    values[100], values[101], values[102] = float("inf"), float("nan"), -0.0
    for edge in (0.0, float(values[5]), 0.7, float("inf")):
        mask = below(values, edge, dtype)
        assert mask.dtype == dtype and torch.equal(mask, (values < edge).to(dtype))
        kept = at_or_above(values, edge)
        assert kept.dtype == torch.bool and torch.equal(kept, values >= edge)
    finite = values[103:]
    total, kth, after = leading(finite, 4_000)
    top = torch.topk(finite.double(), 4_001).values
    assert (kth, after) == (float(top[3_999]), float(top[4_000]))
    assert total == pytest.approx(float(top[:4_000].sum()), rel=1e-2)


def test_the_step_scale_of_a_reading_is_exact_on_small_tensors_and_close_on_large():
    """`mean_of_largest` (the scale of a reading's step off the ramp): the mean of the k largest exactly
    up to 4 × 4096 entries; above, its sample's within a few percent; exact again where the sample sees
    only zeros (a tensor whose few non-zeros all fall between the sampled entries)."""
    from symopt.constraints.budget import mean_of_largest

    g = torch.Generator().manual_seed(0)
    for n, k in ((16_384, 1_600), (65_536, 6_554), (262_144, 2_000)):
        values = torch.randn(n, generator=g, dtype=torch.float64).abs()
        exact = float(values.topk(k).values.mean())
        estimate = mean_of_largest(values, k)
        assert estimate == pytest.approx(exact, rel=1e-12 if n <= 4 * 4096 else 0.05)
    sparse = torch.zeros(65_536, dtype=torch.float64)
    sparse[3:40:4] = torch.arange(1.0, 11.0, dtype=torch.float64)  # ten non-zeros, none on the stride-16 sample
    assert mean_of_largest(sparse, 6_554) == pytest.approx(55.0 / 6_554, rel=1e-12)


def test_a_landed_float32_rank_budget_finalizes_with_defaults():
    """After the landing a float32 U Vᵀ has rank ≤ k exactly, but its SVD shows trailing singular values
    of order σ_max·eps (the product's rounding). They are not rank: finalize must accept the model with
    its default tol (it refused a 256×256 layer by 9e-6 before the violation counted above rounding):
    full-width factors, as then, and the default's (width 64)."""
    for max_rank in (None, "auto"):
        _a_landed_float32_rank_budget_finalizes_with_defaults(max_rank)


def _a_landed_float32_rank_budget_finalizes_with_defaults(max_rank):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the default width truncates the random init)
        symopt.low_rank(model, "2.weight", target_rank=16, total_steps=120, max_rank=max_rank)
    X, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    assert symopt.finalize(model).ok
    assert int(torch.linalg.matrix_rank(model[2].weight.detach())) == 16  # at float32's own tolerance


@pytest.mark.parametrize("make", [lambda m: symopt.low_rank(m, "weight", 1e-37, target_rank=4),
                                  lambda m: symopt.sparse(m, "weight", 1e-37, max_nonzero=100)])
def test_a_tiny_strength_does_not_overflow_the_budget_target(make):
    """With λ ≈ 0 the controller's step t = spread·size/λ is ~1e30: forming θ − t∇ℓ overflowed float32 to
    Inf (an SVD of Inf on a rank budget). The score is computed as atoms(θ/t − ∇ℓ) instead."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 256)
    handle = make(layer)
    opt = torch.optim.Adam(symopt.param_groups(layer, lr=1e-3), lr=1e-3)
    X = torch.randn(32, 64)
    for _ in range(3):
        opt.zero_grad()
        (1e3 * layer(X)).square().sum().backward()
        opt.step()
    assert math.isfinite(handle.strength) and handle.strength > 1e-37


def test_a_landing_rank_budget_on_narrow_factors_counts_what_they_hold():
    """With ``max_rank=r`` a rank budget counts r atoms, not min(m, n): the landing's schedule starts
    from r, its kept set has r entries whichever SVD read the value (the randomized one returns r + 8
    values, a full one min(m, n)), and it lands and finalizes with defaults. A 128 × 128 layer at
    r = 8 failed at its first forward after the ramp before (a keep mask of 16 for 128 atoms)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the random init truncated to rank 8)
        handle = symopt.low_rank(net, "0.weight", max_rank=8, target_rank=2, total_steps=20)
    assert handle.constraint.atom_total == 8
    x, y = torch.randn(64, 128), torch.randn(64, 128)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    assert handle.constraint.policy.has_landed()
    symopt.finalize(net)
    assert int(torch.linalg.matrix_rank(net[0].weight)) == 2


def test_a_rank_budget_trains_factors_of_width_4k_where_they_are_narrow():
    """``max_rank="auto"`` (the default): a rank budget k on a matrix where factors of width 4k are thin
    gets them (registration keeps the value's best rank-4k part and says how to keep it whole); on a
    matrix where they are not, full width, the value kept exactly, no warning; ``max_rank=None`` is
    full width everywhere."""
    torch.manual_seed(0)
    wide = nn.Linear(512, 256)  # matrix 256 × 512: 64 · 768 ≤ 256 · 512
    with pytest.warns(UserWarning, match="max_rank=None"):
        handle = symopt.low_rank(wide, "weight", target_rank=16)
    U, V = handle.members[0].factors
    assert tuple(U.shape) == (256, 64) and tuple(V.shape) == (512, 64)
    assert handle.constraint.max_rank == 64 and handle.constraint.atom_total == 64
    assert int(torch.linalg.matrix_rank(wide.weight.detach())) == 64
    for layer, width in ((nn.Linear(64, 256), 64), (nn.Linear(512, 256), 256)):  # not narrow / asked full
        before = layer.weight.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no truncation, no warning
            handle = symopt.low_rank(layer, "weight", target_rank=16,
                                     **({} if layer.in_features == 64 else {"max_rank": None}))
        assert handle.members[0].factors[0].shape[-1] == width and handle.constraint.max_rank is None
        torch.testing.assert_close(layer.weight.detach(), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("m, n, k", [(m, n, k) for m in (8, 64, 256, 512, 1000) for n in (8, 64, 300, 512)
                                     for k in (1, 2, 4, 16, 64)])
def test_the_default_width_is_narrow_only_where_the_layer_then_skips_its_weight(m, n, k):
    """Where ``max_rank="auto"`` narrows a rank budget's factors, they are thin for any batch
    (`LowRank.thin_factors` with rows unknown): the layer never forms W between the budget's readings.
    Elsewhere the factors are full width and hold the whole value."""
    width = symopt.LowRank.default_width((m, n), k)
    if width is None:
        assert 4 * k >= min(m, n) or 4 * k * (m + n) > m * n
        return
    assert width == 4 * k < min(m, n)
    constraint = symopt.LowRank(max_rank=width, target_rank=k)
    constraint.shape = (m, n)
    assert constraint.thin_factors((torch.zeros(m, width), torch.zeros(n, width))) is not None


def test_max_rank_accepts_auto_none_or_a_width_and_solves_keep_full_width():
    layer = nn.Linear(512, 256)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="max_rank must be an int, None .* or 'auto'"):
        symopt.low_rank(layer, "weight", target_rank=16, max_rank="wide")
    assert not symopt.attach.parametrize.is_parametrized(layer) and torch.equal(layer.weight, before)
    assert symopt.LowRank(1e-3).max_rank is None  # no budget: full width, as always
    # symopt.solve's rank budget searches the convex path: full width, its factors sized by the solver
    problem = matrix_completion(torch.zeros(200, 300), torch.ones(200, 300, dtype=torch.bool), target_rank=4)
    constraint = problem.constraint()
    constraint.validate(torch.zeros(200, 300), "W")
    assert constraint.max_rank is None


def test_a_pooled_rank_budget_gives_each_matrix_the_default_width_for_the_whole_count():
    """One rank budget k over several matrices: each member's factors are 4k wide where that is narrow
    (a member may take the whole count), full width elsewhere and with ``max_rank=None``; the pool counts
    what the factors hold, lands and finalizes with defaults; a pooled density budget has no width."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    with pytest.warns(UserWarning, match="max_rank='auto'"):
        pool = symopt.low_rank(net, ["0.weight", "2.weight", "4.weight"], target_rank=6, total_steps=60)
    assert [m.factors[0].shape[-1] for m in pool.members] == [24, 24, 24]
    assert pool.constraint.atom_counts == [24, 24, 24]
    x, y = torch.randn(128, 64), torch.randn(128, 64)
    _train_adam(net, lambda model: (model(x) - y).square().mean(), 60)
    assert pool.constraint.policy.has_landed()
    symopt.finalize(net)
    assert sum(int(torch.linalg.matrix_rank(net[i].weight)) for i in (0, 2, 4)) == 6
    wide = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256))
    full = symopt.low_rank(wide, ["0.weight", "2.weight"], target_rank=32)  # 128 · 320 > 256 · 64: full
    assert [m.factors[0].shape[-1] for m in full.members] == [64, 128]
    asked = symopt.low_rank(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)), ["0.weight", "1.weight"],
                            target_rank=8, max_rank=None)
    assert [m.factors[0].shape[-1] for m in asked.members] == [256, 256]
    dense = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256))
    assert symopt.sparse(dense, ["0.weight", "2.weight"], density=0.1).constraint.atom_counts == [64 * 256, 256 * 256]


def test_a_checkpoint_of_another_factor_width_names_the_max_rank_that_loads_it():
    """A rank budget's checkpoint saved with full-width factors (the default before 'auto') does not
    fit the default width's factors: load_state_dict fails as torch fails it, and says which max_rank
    loads it; registered so, the same checkpoint loads and the weights are the saved ones."""
    torch.manual_seed(0)
    saved = nn.Sequential(nn.Linear(256, 256))
    symopt.low_rank(saved, "0.weight", target_rank=8, max_rank=None)
    checkpoint = saved.state_dict()
    narrow = nn.Sequential(nn.Linear(256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(narrow, "0.weight", target_rank=8)
    with pytest.raises(RuntimeError, match=r"register it with max_rank=None \(full width\) as when it was saved"):
        narrow.load_state_dict(checkpoint)
    again = nn.Sequential(nn.Linear(256, 256))
    symopt.low_rank(again, "0.weight", target_rank=8, max_rank=None)
    again.load_state_dict(checkpoint)
    assert torch.equal(again[0].weight, saved[0].weight)
    width_16 = nn.Sequential(nn.Linear(256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(width_16, "0.weight", target_rank=8, max_rank=16)
        with pytest.raises(RuntimeError, match="columns wide, this model's 16: register it with max_rank=32 "):
            width_16.load_state_dict(narrow.state_dict())


def test_a_rank_budget_at_the_factor_width_is_refused_by_name():
    """A budget the factors already meet never binds: refused, naming max_rank, the layer unchanged."""
    layer = nn.Linear(20, 10)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="max_rank=4"):
        symopt.low_rank(layer, "weight", max_rank=4, target_rank=4)
    assert not symopt.attach.parametrize.is_parametrized(layer) and torch.equal(layer.weight, before)


class _HostReads:
    """Counts the reads of a tensor's value to the host (``item``, ``float``, ``int``, ``bool``,
    ``tolist``, ``numpy``): each is a synchronisation on a GPU. The steps inside run as on a GPU: the
    flush's test for nothing to flush (`symopt.decay._nothing_to_flush`, a read asked on the CPU only,
    where it costs no synchronisation) is switched off meanwhile."""

    NAMES = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "__index__")

    def __enter__(self):
        self._shortcut = symopt.decay._nothing_to_flush
        symopt.decay._nothing_to_flush = lambda keep: False
        self.count, self._real = 0, {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def counted(real):
            def read(tensor, *args, **kwargs):
                self.count += 1
                return real(tensor, *args, **kwargs)
            return read

        for name, real in self._real.items():
            setattr(torch.Tensor, name, counted(real))
        return self

    def __exit__(self, *exc):
        for name, real in self._real.items():
            setattr(torch.Tensor, name, real)
        symopt.decay._nothing_to_flush = self._shortcut


def test_a_long_ramp_reads_on_one_step_in_eight_and_still_lands_exactly():
    """A ramp of at least ``budget.LONG_RAMP`` steps reads its atoms on one step in
    ``LONG_RAMP_READ_EVERY`` (8), a shorter one and a budget without ``total_steps`` on one in ``READ_EVERY``
    (4); the long ramp's readings are the steps it says, and its budget lands exactly, with the default
    ``finalize``."""
    from symopt.constraints.budget import LONG_RAMP, LONG_RAMP_READ_EVERY, READ_EVERY

    long_total = math.ceil(LONG_RAMP / 0.65) + 1  # (the default ramp: 10% .. 75% of the steps)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    handle = symopt.sparse(net, "0.weight", max_nonzero=20, total_steps=long_total)
    policy = handle.constraint.policy
    assert policy.ramp[1] - policy.ramp[0] >= LONG_RAMP and policy.every == LONG_RAMP_READ_EVERY
    for total in (None, long_total // 2):
        other = symopt.sparse(nn.Linear(8, 16), "weight", max_nonzero=20, total_steps=total)
        assert other.constraint.policy.every == READ_EVERY
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    y = x[:, :2].sin()
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    readings = []
    for step in range(long_total):
        reads = policy.quiet() is None and policy.ramp[0] <= step < policy.ramp[1]
        readings += [step] if reads else []
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    # (the ramp's first step reads too: λ is not known before it)
    assert readings[0] == policy.ramp[0] and all(step % LONG_RAMP_READ_EVERY == 0 for step in readings[1:])
    assert len(readings) >= (policy.ramp[1] - policy.ramp[0]) // LONG_RAMP_READ_EVERY
    assert policy.has_landed() and int((net[0].weight != 0).sum()) == 20
    assert symopt.finalize(net).ok


@pytest.mark.parametrize("register", [
    lambda net: symopt.sparse(net, "0.weight", density=0.25),
    lambda net: symopt.sparse(net, "0.weight", density=0.25, total_steps=400, ramp=(0.0, 0.9)),
    lambda net: symopt.group_sparse(net, "0.weight", dim=0, max_groups=8, total_steps=400, ramp=(0.0, 0.9)),
    lambda net: symopt.low_rank(net, "0.weight", target_rank=4, total_steps=400, ramp=(0.0, 0.9)),
], ids=["density", "density_ramp", "groups_ramp", "rank_ramp"])
def test_a_budget_reads_nothing_to_the_host_between_its_readings(register):
    """A budget reads its atoms on one step in four; the three steps between, and the forward passes,
    read no tensor value to the host — on a GPU, a synchronisation that stalls the launch-bound steps
    of a small model (the step count, the landed flag and log λ are host copies of their buffers, re-read
    after a load, a move and sync_strengths, and at each reading under torch.distributed). Under a bound
    float16 GradScaler too (its scale divides the gradient on the device)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    handle = register(net)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=10 ** 6)
    symopt.bind(opt, scaler=scaler)

    def step():
        opt.zero_grad()
        scaler.scale((net(x) - y).square().mean()).backward()
        scaler.step(opt)  # (the scaler's own check for infinite gradients reads one value: counted apart)
        scaler.update()

    for _ in range(20):  # λ known, past the ScaleWatch's first steps
        step()
    policy = handle.constraint.policy
    reads = []
    for _ in range(16):
        reading = policy.quiet() is None
        with _HostReads() as during:
            opt.zero_grad()
            loss = scaler.scale((net(x) - y).square().mean())
            loss.backward()
        scaler.step(opt)
        scaler.update()
        reads.append((reading, during.count))
    assert sum(r for r, _ in reads) == 4
    assert all(count == 0 for reading, count in reads if not reading), reads
    assert all(0 < count <= 12 for reading, count in reads if reading), reads


def test_a_loaded_budget_state_is_what_lambda_and_the_schedule_read_next():
    """The host copies follow a load_state_dict (and a move or cast): λ and the step count a policy
    reports right after loading are the loaded ones, not the copies of the run it replaced."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randn(64, 4)

    def run(steps):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(16, 4))
        handle = symopt.sparse(net, "0.weight", max_nonzero=20, total_steps=200)
        opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            (net(x) - y).square().mean().backward()
            opt.step()
        return net, handle

    late, late_handle = run(120)
    early, early_handle = run(30)
    assert early_handle.strength != late_handle.strength
    early.load_state_dict(late.state_dict())
    policy = early_handle.constraint.policy
    assert early_handle.strength == late_handle.strength and policy.quiet() is None  # step 120: a reading
    assert policy.count(20, 64) == late_handle.constraint.policy.count(20, 64)
    early.double()
    assert early_handle.strength == pytest.approx(late_handle.strength, rel=1e-15)


@pytest.mark.parametrize("register", [
    lambda net: symopt.sparse(net, "0.weight", strength=symopt.Scheduled(lambda step: 1e-3 * (1 + step) ** -0.5)),
    lambda net: symopt.tie(net, ["0.bias", "2.bias"], strength=0.5, total_steps=100),
], ids=["scheduled", "landing_tie"])
def test_a_schedule_and_a_landing_read_nothing_to_the_host_in_a_step(register):
    """A scheduled λ and a landing exact-penalty constraint count their steps in host copies too: no
    training step reads a tensor value to the host (on a GPU, none synchronises)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    handle = register(net)
    x, y = torch.randn(64, 16), torch.randn(64, 8)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for _ in range(12):  # (past the ScaleWatch's first steps, which compare gradients on the host)
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    with _HostReads() as during:
        for _ in range(8):
            opt.zero_grad()
            (net(x) - y).square().mean().backward()
            opt.step()
    assert during.count == 0
    assert int(handle.constraint.policy.step) == 20
