"""symopt.certify: violation, KKT residual and the multiplier test, checked against known optima."""

import copy

import pytest
import torch
from sklearn.linear_model import Lasso

import symopt
from helpers import DT, Vector, least_squares, ls_grad, ls_loss, null_space_solution, train


def test_certify_subspace_at_and_away_from_the_optimum():
    X, y = least_squares(n=40, d=12, seed=1)
    A = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    theta_star = null_space_solution(X, y, A)
    lam_star = float(symopt.Subspace(A).dual_norm(ls_grad(X, y, theta_star)))
    model = Vector(12, init=theta_star)
    handle = symopt.subspace(model, "theta", A, strength=1.05 * lam_star)
    loss = lambda m: ls_loss(X, y)(m.theta)  # noqa: E731
    state = copy.deepcopy(model.state_dict())
    (e,) = symopt.certify(model, loss).entries
    assert e.violation_before <= 1e-12 and e.kkt_residual <= 1e-12
    assert e.multiplier == pytest.approx(lam_star, rel=1e-10) and e.exact is True
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))  # unchanged
    assert all(p.grad is None for p in model.parameters())  # no .grad touched
    handle.constraint.strength = 0.9 * lam_star
    assert symopt.certify(model, loss).entries[0].exact is False
    with torch.no_grad():  # move off the optimum, off the set
        model.theta = theta_star + 0.1
    (e,) = symopt.certify(model, loss).entries
    assert e.violation_before > 1e-3 and e.kkt_residual > 1e-3 and e.relative_violation > 1e-3
    assert "KKT residual" in str(symopt.certify(model, loss))


def test_certify_lasso_kkt_matches_sklearn_optimum():
    X, y = least_squares(n=60, d=15)
    lam = 0.1
    ref = torch.from_numpy(Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6)
                           .fit(X.numpy(), y.numpy()).coef_)
    model = Vector(15, init=ref)
    symopt.sparse(model, "theta", strength=lam)
    loss = lambda m, batch: ls_loss(*batch)(m.theta)  # noqa: E731
    assert symopt.certify(model, loss, batch=(X, y), tol=1e-12).entries[0].kkt_residual <= 1e-9
    model.theta = ref * 1.01
    assert symopt.certify(model, loss, batch=(X, y), tol=1e-12).entries[0].kkt_residual > 1e-4


def test_certify_does_not_feed_auto_estimates():
    X, y = least_squares(n=40, d=12, seed=1)
    A = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    model = Vector(12, init=torch.randn(12, dtype=DT))
    handle = symopt.subspace(model, "theta", A)
    train(model, lambda m: ls_loss(X, y)(m.theta), 20, 0.3)
    before = handle.constraint.policy.estimate.count.clone()
    symopt.certify(model, lambda m: 100 * ls_loss(X, y)(m.theta))
    assert torch.equal(handle.constraint.policy.estimate.count, before)


def test_certify_tie_without_loss():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)).double()
    symopt.tie(net, ["0.weight", "1.weight"], strength=1.0)
    (e,) = symopt.certify(net).entries
    assert e.kind == "tied" and e.violation_before > 0 and e.kkt_residual is None


def test_certify_tie_with_loss_uses_every_copy():
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    model.b = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    symopt.tie(model, ["a", "b"], strength=1.0)
    # ∂/∂a = (0.3, -0.2), ∂/∂b = (-0.3, 0.2): tied optimum, multipliers ‖g_j‖∞ = 0.3
    loss = lambda m: 0.3 * m.a[0] - 0.2 * m.a[1] - 0.3 * m.b[0] + 0.2 * m.b[1]  # noqa: E731
    (e,) = symopt.certify(model, loss).entries
    assert e.kkt_residual == pytest.approx(0.0, abs=1e-15)
    assert e.multiplier == pytest.approx(0.3) and e.exact is True


def test_a_ties_multipliers_are_the_later_copies_gradients():
    """Three copies at a tied optimum with ∂/∂a = 0.5, ∂/∂b = −0.2, ∂/∂c = −0.3 (they sum to 0): the
    anchored penalty λ(‖b − a‖₁ + ‖c − a‖₁) is exact once λ > max(0.2, 0.3), the anchor's 0.5 is not
    a multiplier; and strength="auto" never observes the anchor."""
    model = torch.nn.Module()
    for name in "abc":
        model.register_parameter(name, torch.nn.Parameter(torch.ones(1, dtype=DT)))
    loss = lambda m: (0.5 * m.a - 0.2 * m.b - 0.3 * m.c).sum()  # noqa: E731
    symopt.tie(model, ["a", "b", "c"], strength=0.4)
    (e,) = symopt.certify(model, loss).entries
    assert e.kkt_residual == pytest.approx(0.0, abs=1e-15)
    assert e.multiplier == pytest.approx(0.3) and e.exact is True
    auto = torch.nn.Module()
    for name in "abc":
        auto.register_parameter(name, torch.nn.Parameter(torch.ones(1, dtype=DT)))
    handle = symopt.tie(auto, ["a", "b", "c"])
    loss(auto).backward()
    assert handle.constraint.policy.estimate.count.tolist() == [0.0, 1.0, 1.0]
    assert handle.constraint.multiplier() == pytest.approx(0.3)


def test_certify_never_calls_a_violated_constraint_exact():
    """λ above the multiplier is not enough: a tie still 0.08 apart is not exact (issue 20's report)."""
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    model.b = torch.nn.Parameter(torch.tensor([1.08, 2.0], dtype=DT))
    symopt.tie(model, ["a", "b"], strength=10.0)
    loss = lambda m: 0.1 * (m.a.sum() - m.b.sum())  # noqa: E731 - multipliers 0.1, far below λ
    (e,) = symopt.certify(model, loss).entries
    assert e.strength > e.multiplier and e.violation_before > 0.05
    assert e.exact is False


def test_ok_means_optimal_within_tolerance_not_merely_feasible():
    """An under-trained sparse model satisfies its (penalty) constraint trivially, so it is feasible;
    with its loss the certificate measures the KKT residual and refuses ``ok`` (issue 22: ``ok`` was
    True at a KKT residual of 0.32). At the Lasso optimum the same certificate is ``ok``."""
    X, y = least_squares(n=50, d=10, k=3, seed=2)
    model = Vector(10, init=torch.zeros(10, dtype=DT))
    symopt.sparse(model, "theta", strength=0.05)
    loss = lambda m: ls_loss(X, y)(m.theta)  # noqa: E731
    early = symopt.certify(model, loss)
    assert early.feasible and early.optimal is False and not early.ok
    assert early.entries[0].relative_kkt > 0.1
    assert symopt.certify(model).ok and symopt.certify(model).optimal is None  # nothing measured
    reference = Lasso(alpha=0.05, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy())
    with torch.no_grad():
        model.theta = torch.as_tensor(reference.coef_, dtype=DT)
    at_optimum = symopt.certify(model, loss)
    assert at_optimum.optimal and at_optimum.ok


def test_low_rank_structure_is_the_numerical_rank_not_float_rounding():
    """A float32 rank-8 product with σ_max ≈ 100 has singular values ≈ 1e-5 beyond the 8th: rounding,
    which the report and certificate must not count as rank (they showed 'rank 32/8')."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 128)
    handle = symopt.low_rank(lin, "weight", max_rank=8, strength=1e-4)
    with torch.no_grad():
        for factor in lin.parametrizations.weight.parameters():
            factor.mul_(8)
    assert float(torch.linalg.svdvals(lin.weight.detach())[8]) > 1e-6  # rounding above the default tol
    assert handle.constraint.structure(lin.weight, 1e-6) == "rank 8/8"
    assert "rank 8/8" in str(symopt.report(lin))
