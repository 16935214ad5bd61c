"""DCS reaches the convex optimum of the induced penalty (Lasso, group lasso, SVT)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

import symopt
from helpers import DT, Vector, least_squares, ls_loss, proximal_group_lasso, soft_threshold_svd, train


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
def test_sparse_equals_sklearn_lasso(path):
    X, y = least_squares(n=60, d=15)
    lam = 0.1
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    model = Vector(15, init=torch.randn(15, dtype=DT))
    symopt.sparse(model, "theta", strength=lam)
    train(model, lambda m: ls_loss(X, y)(m.theta), steps=6000, lr=0.4, path=path)  # ~1e-8 from sklearn
    w = model.theta.detach().numpy()
    assert np.abs(w - ref).max() <= 1e-6
    np.testing.assert_array_equal(np.abs(w) > 1e-6, ref != 0)
    assert 0 < (ref != 0).sum() < 15  # the test exercises a real support choice


def test_sparse_from_zero_init_finds_support():
    """All-zero start (on every mirror plane at once) must still leave zero where the loss asks."""
    X, y = least_squares(n=60, d=15)
    lam = 0.1
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    model = Vector(15)
    symopt.sparse(model, "theta", strength=lam)
    train(model, lambda m: ls_loss(X, y)(m.theta), steps=6000, lr=0.4)  # 9e-9 from sklearn
    assert np.abs(model.theta.detach().numpy() - ref).max() <= 1e-6


def test_balanced_init_is_the_pitfall_symopt_avoids():
    """With u = v at the start (sign-balanced) coordinates cannot change sign: wrong answer.
    symopt's own init is independent, so the same problem is solved (previous tests)."""
    X, y = least_squares(n=60, d=15)
    lam = 0.1
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    model = Vector(15, init=-torch.from_numpy(np.sign(ref) + (ref == 0)).to(DT))  # wrong signs
    symopt.sparse(model, "theta", strength=lam)
    plist = model.parametrizations.theta
    with torch.no_grad():  # force the balanced factorisation u = v = sqrt|w| (signs from w)
        w = model.theta.detach()
        plist.original0.copy_(w.abs().sqrt() * w.sign())
        plist.original1.copy_(w.abs().sqrt())
    train(model, lambda m: ls_loss(X, y)(m.theta), steps=6000, lr=0.2)
    assert np.abs(model.theta.detach().numpy() - ref).max() > 1e-2


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
def test_group_sparse_equals_proximal_group_lasso(path):
    X, y = least_squares(n=80, d=12, k=6, seed=3)
    groups = [list(range(i, i + 3)) for i in range(0, 12, 3)]
    lam = 0.15
    ref = proximal_group_lasso(X, y, groups, lam)
    model = Vector(4, 3, init=torch.randn(4, 3, dtype=DT))  # row g = group g
    symopt.group_sparse(model, "theta", dim=0, strength=lam)
    train(model, lambda m: ls_loss(X, y)(m.theta), steps=4000, lr=0.2, path=path)  # at rounding by then
    w = model.theta.detach().reshape(-1)
    assert (w - ref).abs().max() <= 1e-6
    zero_groups = [g for g in groups if float(ref[g].norm()) == 0.0]
    assert 0 < len(zero_groups) < len(groups)
    assert all(float(w[g].norm()) <= 1e-6 for g in zero_groups)


def test_group_sparse_with_unequal_index_groups():
    X, y = least_squares(n=80, d=12, k=6, seed=3)
    groups = [[0, 5], [1, 2, 3], [4, 6, 7, 8, 9], [10, 11]]
    lam = 0.12
    ref = proximal_group_lasso(X, y, groups, lam)
    model = Vector(12, init=torch.randn(12, dtype=DT))
    symopt.group_sparse(model, "theta", groups=groups, strength=lam)
    train(model, lambda m: ls_loss(X, y)(m.theta), steps=4000, lr=0.2)  # at rounding by then
    assert (model.theta.detach() - ref).abs().max() <= 1e-6
    assert 0 < sum(float(ref[g].norm()) == 0.0 for g in groups) < len(groups)


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
def test_low_rank_equals_singular_value_thresholding(path):
    g = torch.Generator().manual_seed(2)
    M = torch.randn(8, 3, generator=g, dtype=DT) @ torch.randn(3, 6, generator=g, dtype=DT)
    M = M + 0.3 * torch.randn(8, 6, generator=g, dtype=DT)
    lam = 1.0
    ref = soft_threshold_svd(M, lam)
    model = Vector(8, 6, init=torch.randn(8, 6, dtype=DT))
    symopt.low_rank(model, "theta", strength=lam)
    train(model, lambda m: 0.5 * (m.theta - M).square().sum(), steps=4000, lr=0.05, path=path)
    W = model.theta.detach()
    assert (W - ref).abs().max() <= 1e-5
    rank_ref = int((torch.linalg.svdvals(ref) > 1e-8).sum())
    assert int((torch.linalg.svdvals(W) > 1e-5).sum()) == rank_ref < 6


def test_adam_with_coupled_decay_also_reaches_lasso():
    """Coupled decay in Adam implements the equivalence (looser: Adam's own noise floor);
    AdamW's decoupled decay does not (see test_decay.py)."""
    X, y = least_squares(n=60, d=15)
    lam = 0.2
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    model = Vector(15, init=torch.randn(15, dtype=DT))
    symopt.sparse(model, "theta", strength=lam)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.999)
    for _ in range(6000):
        opt.zero_grad()
        ls_loss(X, y)(model.theta).backward()
        opt.step()
        sched.step()
    assert np.abs(model.theta.detach().numpy() - ref).max() <= 1e-3
