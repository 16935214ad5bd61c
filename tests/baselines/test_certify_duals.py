"""certify(result): KKT residuals, multipliers and duality gaps, checked against cvxpy's duals."""

import dataclasses

import numpy as np
import pytest
import torch

import symopt
from symopt.problems import (equality_ls, lasso, make_fixed_zeros_ls, make_lasso, make_logistic_l1,
                             make_matrix_completion)

cp = pytest.importorskip("cvxpy")


def _lasso_with_residual_dual(problem):
    """The Lasso with an explicit residual r = Xw − y, so cvxpy reports its dual ν (= r/n at the optimum)."""
    X, y = problem.data["X"].numpy(), problem.data["y"].numpy()
    n, d = X.shape
    lam = problem.meta["strength"]
    w, r = cp.Variable(d), cp.Variable(n)
    link = r == X @ w - y
    prob = cp.Problem(cp.Minimize(cp.sum_squares(r) / (2 * n) + lam * cp.norm1(w)), [link])
    prob.solve(solver=cp.CLARABEL)
    return prob.value, np.asarray(link.dual_value)


def test_lasso_certificate_matches_cvxpy_dual_and_bounds_suboptimality():
    problem = make_lasso(n=60, d=40, nonzeros=5)
    result = symopt.solve(problem, tol=1e-9)
    cert = symopt.certify(result)
    p_star, nu_cvx = _lasso_with_residual_dual(problem)
    assert cert.entries[0].kkt_residual <= 1e-7
    assert 0 <= cert.duality_gap <= 1e-8 * abs(p_star)
    nu = cert.extra["dual_point"].numpy()
    assert np.abs(np.abs(nu) - np.abs(nu_cvx)).max() <= 1e-6 * np.abs(nu_cvx).max()  # cvxpy's sign convention
    assert np.abs(nu - nu_cvx).max() <= 1e-6 * np.abs(nu_cvx).max() or np.abs(nu + nu_cvx).max() <= 1e-6 * np.abs(nu_cvx).max()
    assert cert.extra["objective"] == pytest.approx(p_star, rel=1e-7)
    # away from the optimum the gap is positive and bounds the true suboptimality P(x) − P*
    worse = dataclasses.replace(result, x=result.x + 0.05 * torch.randn(40, dtype=torch.float64,
                                                                      generator=torch.Generator().manual_seed(0)))
    bad = symopt.certify(worse)
    assert bad.duality_gap >= bad.extra["objective"] - p_star - 1e-9 > 0
    assert bad.entries[0].kkt_residual > 1e-3


def test_logistic_gap_bounds_suboptimality_against_cvxpy():
    problem = make_logistic_l1(n=120, d=30, nonzeros=4)
    reference = symopt.baselines.solve_cvxpy(problem)
    cert = symopt.certify(symopt.solve(problem, tol=1e-9))
    assert 0 <= cert.duality_gap <= 1e-7
    assert cert.extra["objective"] <= reference.objective + 1e-8
    worse = symopt.certify(dataclasses.replace(reference, x=reference.x * 0.8))
    assert worse.duality_gap >= worse.extra["objective"] - reference.objective - 1e-9 > 0


def test_completion_dual_objective_reaches_the_cvxpy_optimum():
    problem = make_matrix_completion(m=20, n=15, rank=2)
    reference = symopt.baselines.solve_cvxpy(problem)
    cert = symopt.certify(symopt.solve(problem, tol=1e-9))
    assert cert.extra["dual_objective"] <= reference.objective + 1e-6 * abs(reference.objective)
    assert cert.duality_gap <= 1e-6 * abs(reference.objective)


def test_equality_multiplier_matches_cvxpy_dual():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(60, 20, generator=g, dtype=torch.float64)
    y = X @ torch.randn(20, generator=g, dtype=torch.float64) + 0.1 * torch.randn(60, generator=g, dtype=torch.float64)
    A = torch.randn(4, 20, generator=g, dtype=torch.float64)
    problem = equality_ls(X, y, A, strength=100.0)
    w = cp.Variable(20)
    eq = A.numpy() @ w == 0
    cp.Problem(cp.Minimize(cp.sum_squares(X.numpy() @ w - y.numpy()) / 120), [eq]).solve(solver=cp.CLARABEL)
    cert = symopt.certify(symopt.solve(problem, tol=1e-10)).entries[0]
    # ∇ℓ(w*) = −Aᵀμ: in the orthonormal basis O of A's rows the multipliers are Oᵀ Aᵀ μ
    O = symopt.Subspace(A).basis.numpy()
    expected = np.abs(O.T @ (A.numpy().T @ eq.dual_value)).max()
    assert cert.multiplier == pytest.approx(expected, rel=1e-5)
    assert cert.exact and cert.violation_before <= 1e-9


def test_fixed_zero_multipliers_match_cvxpy_dual():
    problem = make_fixed_zeros_ls(n=60, d=20, zeros=5)
    X, y = problem.data["X"].numpy(), problem.data["y"].numpy()
    mask = problem.constraint().mask.numpy()
    w = cp.Variable(20)
    eq = w[np.flatnonzero(mask)] == 0
    cp.Problem(cp.Minimize(cp.sum_squares(X @ w - y) / (2 * X.shape[0])), [eq]).solve(solver=cp.CLARABEL)
    cert = symopt.certify(symopt.solve(problem, tol=1e-10)).entries[0]
    assert cert.multiplier == pytest.approx(np.abs(eq.dual_value).max(), rel=1e-5)


def test_budget_result_is_certified_at_the_lambda_found():
    base = make_lasso(n=60, d=40, nonzeros=5)
    result = symopt.solve(lasso(base.data["X"], base.data["y"], max_nonzero=4), tol=1e-9)
    cert = symopt.certify(result)
    assert cert.entries[0].budget == 4 and cert.entries[0].strength == result.strength
    assert -1e-12 <= cert.duality_gap <= 1e-8 and cert.ok  # exact up to rounding (Newton on the face)


def test_certify_rejects_what_it_cannot_measure():
    result = symopt.solve(make_lasso(n=30, d=10, nonzeros=2))
    with pytest.raises(ValueError, match="carries no problem"):
        symopt.certify(dataclasses.replace(result, problem=None))
    with pytest.raises(TypeError, match="nn.Module or a solver Result"):
        symopt.certify("model")
