"""NonNegative (``θ = ½u⊙u``): the non-negative Lasso, checked against scikit-learn's
``Lasso(positive=True)`` and cvxpy on real data (diabetes), plus what only this kind has: the orthant
held by construction, negative entries projected at registration, and its budget."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso

import symopt
from helpers import DT, Vector


def _diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return torch.tensor(X, dtype=DT), torch.tensor(y, dtype=DT)


def _fit(model, X, y, steps=40):
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=100, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-15, tolerance_change=0.0)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (X @ model.theta - y).square().mean() + symopt.penalty(model)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return model.theta.detach()


@pytest.mark.parametrize("alpha", [0.003, 0.03])
def test_matches_sklearn_positive_lasso_and_cvxpy_on_diabetes(alpha):
    X, y = _diabetes()
    reference = Lasso(alpha=alpha, positive=True, fit_intercept=False, tol=1e-12, max_iter=10**6)
    coef = reference.fit(X.numpy(), y.numpy()).coef_
    w = cp.Variable(X.shape[1])
    objective = cp.sum_squares(X.numpy() @ w - y.numpy()) / (2 * X.shape[0]) + alpha * cp.sum(w)
    cp.Problem(cp.Minimize(objective), [w >= 0]).solve()
    model = Vector(X.shape[1], init=torch.full((X.shape[1],), 0.1, dtype=DT))
    handle = symopt.nonnegative(model, "theta", strength=alpha)
    theta = _fit(model, X, y)
    assert np.abs(theta.numpy() - coef).max() <= 1e-6
    assert np.abs(theta.numpy() - w.value).max() <= 1e-5
    assert set(np.flatnonzero(theta.numpy() > 1e-8)) == set(np.flatnonzero(coef > 0))
    grad = X.T @ (X @ theta - y) / X.shape[0]
    assert handle.kkt_residual([theta], [grad], 1e-8) <= 1e-7
    assert bool((model.theta >= 0).all())  # by construction, at every step


def test_negative_entries_are_projected_with_a_warning():
    model = Vector(4, init=torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=DT))
    with pytest.warns(UserWarning, match="1 negative entries of 4"):
        symopt.nonnegative(model, "theta", strength=0.1)
    theta = model.theta.detach()
    assert theta[[0, 3]].tolist() == pytest.approx([1.0, 3.0], rel=1e-12)
    assert 0 < float(theta[1]) <= 1e-11 and 0 < float(theta[2]) <= 1e-11  # off the mirror plane: can grow


def test_a_zero_that_should_grow_grows():
    """A registered zero sits at 1e-12 of the scale, off the fixed subspace u = 0, so gradient descent
    moves it to the optimum (an exact zero could never leave)."""
    model = Vector(2, init=torch.tensor([1.0, 0.0], dtype=DT))
    symopt.nonnegative(model, "theta", strength=0.1)
    target = torch.tensor([1.0, 2.0], dtype=DT)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.2), lr=0.2)
    for _ in range(400):
        opt.zero_grad()
        (0.5 * (model.theta - target).square().sum()).backward()
        opt.step()
    assert torch.allclose(model.theta.detach(), target - 0.1, atol=1e-6)


def test_budget_lands_and_finalizes():
    """max_nonzero=3 under L-BFGS (bound, so λ moves once per step): λ moves up the path until 3
    entries are positive (about 300 steps here), and finalize succeeds with its default arguments."""
    X, y = _diabetes()
    model = Vector(X.shape[1], init=torch.full((X.shape[1],), 0.1, dtype=DT))
    handle = symopt.nonnegative(model, "theta", max_nonzero=3)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=20, line_search_fn="strong_wolfe", history_size=50)
    symopt.bind(opt)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (X @ model.theta - y).square().mean() + symopt.penalty(model)
        loss.backward()
        return loss

    for _ in range(300):
        opt.step(closure)
    assert handle.strength > 0
    assert symopt.finalize(model, tol=1e-6).ok
    assert int((model.theta > 0).sum()) == 3 and bool((model.theta >= 0).all())


@pytest.mark.parametrize("kwargs,error,match", [
    ({"strength": -1.0}, ValueError, "strength must be finite and > 0"),
    ({"max_nonzero": 0}, ValueError, "max_nonzero must be an int >= 1"),
    ({"max_nonzero": 2, "density": 0.1}, ValueError, "not both"),
    ({"strength": "auto"}, ValueError, "applies to the exact-penalty kinds"),
    ({"max_nonzero": 10}, ValueError, "does not bind"),
])
def test_bad_inputs(kwargs, error, match):
    model = Vector(10, init=torch.ones(10, dtype=DT))
    with pytest.raises(error, match=match):
        symopt.nonnegative(model, "theta", **kwargs)
    assert symopt.list_constraints(model) == [] and torch.equal(model.theta, torch.ones(10, dtype=DT))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("raw", [False, True], ids=["standardised", "raw+intercept"])
def test_solve_finds_the_positive_lasso_with_k_nonzeros(k, raw):
    """``lasso(positive=True, max_nonzero=k)``: the budget search starts where k entries' pull off zero,
    (−∂ℓ/∂θ_i)⁺, would exceed λ (it read (∂ℓ/∂θ_i)⁺ before: on raw diabetes with an intercept that
    start was λ = 0, a ValueError), and ends at a λ whose positive Lasso (scikit-learn's, at that λ)
    has exactly k non-zeros."""
    from symopt.problems import lasso

    if raw:
        X, y = (torch.tensor(a, dtype=DT) for a in load_diabetes(return_X_y=True))
    else:
        X, y = _diabetes()
    result = symopt.solve(lasso(X.numpy(), y.numpy(), max_nonzero=k, positive=True, fit_intercept=raw))
    assert result.status == "optimal" and int((result.x > 0).sum()) == k and bool((result.x >= 0).all())
    reference = Lasso(alpha=result.strength, positive=True, fit_intercept=raw, tol=1e-14, max_iter=10**6)
    coef = reference.fit(X.numpy(), y.numpy()).coef_
    assert np.abs(result.x.numpy() - coef).max() <= 1e-6 * max(1.0, np.abs(coef).max())
    assert set(np.flatnonzero(coef > 0)) == set(np.flatnonzero(result.x.numpy() > 0))


def test_a_positive_budget_the_data_cannot_reach_is_reported_unreachable():
    """Raw diabetes with an intercept has 5 positive coefficients at most (scikit-learn's
    Lasso(positive=True) at 1e-6 λ_max keeps 5): max_nonzero=6 ends as budget_unreachable with the
    5-atom solution at tol·λ_max, not max_iter after 40 rounds."""
    from symopt.problems import lasso

    X, y = load_diabetes(return_X_y=True)
    result = symopt.solve(lasso(X, y, max_nonzero=6, positive=True, fit_intercept=True))
    assert result.status == "budget_unreachable", result.message
    assert int((result.x > 0).sum()) == 5 and bool((result.x >= 0).all())
    lam_max = float(np.clip(X.T @ (y - y.mean()), 0, None).max()) / len(y)
    reference = Lasso(alpha=1e-6 * lam_max, positive=True, tol=1e-12, max_iter=10**6).fit(X, y)
    assert int((reference.coef_ > 0).sum()) == 5

