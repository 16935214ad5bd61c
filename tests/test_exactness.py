"""Linear constraints are exact penalties: λ = 1.05·λ* holds the constraint to 1e-10 and lands on the
KKT solution of the equality-constrained problem; λ = 0.9·λ* does not (the threshold is sharp)."""

import pytest
import torch
from torch import nn

import symopt
from helpers import DT, Vector, least_squares, ls_grad, ls_loss, null_space_solution, train

STEPS, LR = 6000, 0.3


def _subspace_problem():
    X, y = least_squares(n=40, d=12, seed=1)
    A = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    A = torch.cat([A, A[:1] + A[1:2]])  # a dependent row: must be accepted and orthonormalised away
    return X, y, A


def _fixed_zeros_problem():
    X, y = least_squares(n=40, d=12, seed=2)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[0, 3, 7, 11]] = True  # includes planted non-zeros 0 and 3: the constraint is active
    return X, y, mask


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
@pytest.mark.parametrize("factor,exact", [(1.05, True), (0.9, False)])
def test_subspace_threshold(factor, exact, path):
    X, y, A = _subspace_problem()
    theta_star = null_space_solution(X, y, A)
    lam_star = float(symopt.Subspace(A).dual_norm(ls_grad(X, y, theta_star)))  # ‖Oᵀ∇ℓ(θ*)‖_∞
    model = Vector(12, init=torch.randn(12, dtype=DT))
    handle = symopt.subspace(model, "theta", A, strength=factor * lam_star)
    train(model, lambda m: ls_loss(X, y)(m.theta), STEPS, LR, path=path)
    theta = model.theta.detach()
    violation = handle.constraint.violation(theta)
    if exact:
        assert violation <= 1e-10
        assert float((A @ theta).abs().max()) <= 1e-10
        assert float((theta - theta_star).abs().max()) <= 1e-8
    else:
        assert violation >= 1e-3


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
@pytest.mark.parametrize("factor,exact", [(1.05, True), (0.9, False)])
def test_fixed_zeros_threshold(factor, exact, path):
    X, y, mask = _fixed_zeros_problem()
    A = torch.eye(12, dtype=DT)[mask]
    theta_star = null_space_solution(X, y, A)
    lam_star = float(ls_grad(X, y, theta_star)[mask].abs().max())
    model = Vector(12, init=torch.randn(12, dtype=DT))
    symopt.fixed_zeros(model, "theta", mask, strength=factor * lam_star)
    train(model, lambda m: ls_loss(X, y)(m.theta), STEPS, LR, path=path)
    theta = model.theta.detach()
    if exact:
        assert float(theta[mask].abs().max()) <= 1e-10
        assert float((theta - theta_star).abs().max()) <= 1e-8
    else:
        assert float(theta[mask].abs().max()) >= 1e-3


class TwoCopies(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d, dtype=DT))
        self.b = nn.Parameter(torch.randn(d, dtype=DT))


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
@pytest.mark.parametrize("factor,exact", [(1.05, True), (0.9, False)])
def test_tied_threshold(factor, exact, path):
    X1, y1 = least_squares(n=40, d=8, seed=3)
    X2, y2 = least_squares(n=40, d=8, seed=4)
    y2 = y2 + X2 @ torch.linspace(-1, 1, 8, dtype=DT)  # copies disagree: multipliers well above 0
    # Tied optimum: both copies equal θ*, the LS solution of the stacked problem.
    theta_star = torch.linalg.lstsq(torch.cat([X1, X2]), torch.cat([y1, y2])).solution
    lam_star = max(float(ls_grad(X1, y1, theta_star).abs().max()), float(ls_grad(X2, y2, theta_star).abs().max()))
    model = TwoCopies(8)
    symopt.tie(model, ["a", "b"], strength=factor * lam_star)
    loss = lambda m: ls_loss(X1, y1)(m.a) + ls_loss(X2, y2)(m.b)  # noqa: E731
    train(model, loss, STEPS, LR, path=path)
    a, b = model.a.detach(), model.b.detach()
    if exact:
        assert float((a - b).abs().max()) <= 1e-10
        assert float((a - theta_star).abs().max()) <= 1e-8
    else:
        assert float((a - b).abs().max()) >= 1e-3


def test_finalize_after_exact_training_changes_nothing_measurable():
    X, y, A = _subspace_problem()
    theta_star = null_space_solution(X, y, A)
    lam_star = float(symopt.Subspace(A).dual_norm(ls_grad(X, y, theta_star)))
    model = Vector(12, init=torch.randn(12, dtype=DT))
    symopt.subspace(model, "theta", A, strength=1.05 * lam_star)
    train(model, lambda m: ls_loss(X, y)(m.theta), STEPS, LR)
    before = model.theta.detach().clone()
    cert = symopt.finalize(model, tol=1e-9)
    assert cert.ok and cert["theta"].violation_before <= 1e-10
    assert cert["theta"].violation_after <= 1e-14
    assert isinstance(model.theta, nn.Parameter) and symopt.list_constraints(model) == []
    assert float((model.theta.detach() - before).abs().max()) <= 1e-10
