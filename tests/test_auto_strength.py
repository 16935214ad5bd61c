"""strength="auto": symopt estimates the Lagrange multipliers from the gradients it sees and keeps
λ = margin × estimate, so the linear constraints become exact without the user giving λ."""

import copy

import pytest
import torch
from torch import nn

import symopt
from helpers import DT, Vector, least_squares, ls_grad, ls_loss, null_space_solution, train
from symopt.problems import equality_ls


def _subspace_problem():
    X, y = least_squares(n=40, d=12, seed=1)
    A = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    return X, y, A


@pytest.mark.parametrize("path", ["penalty", "param_groups"])
def test_auto_subspace_least_squares_is_exact(path):
    X, y, A = _subspace_problem()
    theta_star = null_space_solution(X, y, A)
    lam_star = float(symopt.Subspace(A).dual_norm(ls_grad(X, y, theta_star)))
    model = Vector(12, init=torch.randn(12, dtype=DT))
    handle = symopt.subspace(model, "theta", A)  # no strength given
    assert handle.constraint.auto and handle.strength == 0.0
    train(model, lambda m: ls_loss(X, y)(m.theta), 3000, 0.3, path=path)  # at rounding (1e-16) by 2,500
    theta = model.theta.detach()
    assert handle.constraint.violation(theta) <= 1e-10
    assert float((theta - theta_star).abs().max()) <= 1e-8
    assert handle.constraint.multiplier() == pytest.approx(lam_star, rel=1e-3)
    assert handle.strength == pytest.approx(1.5 * lam_star, rel=1e-3)
    row = symopt.report(model)[0]
    assert row.multiplier == pytest.approx(lam_star, rel=1e-3) and "multiplier est." in str(symopt.report(model))


def test_param_groups_weight_decay_follows_auto_strength():
    X, y, A = _subspace_problem()
    model = Vector(12, init=torch.randn(12, dtype=DT))
    handle = symopt.subspace(model, "theta", A)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.3), lr=0.3)
    for _ in range(50):
        opt.zero_grad()
        ls_loss(X, y)(model.theta).backward()
        opt.step()
    (group,) = [g for g in opt.param_groups if "symopt_strength" in g]
    # synced before the last step, the estimate then absorbed that step's gradient
    assert group["weight_decay"] > 0
    assert group["weight_decay"] == pytest.approx(handle.strength, rel=0.2)


def test_auto_fixed_zeros_logistic_regression():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(200, 8, generator=g, dtype=DT)
    truth = torch.tensor([2.0, -2.0, 1.5, 1.0, 0, 0, 0, 0], dtype=DT)
    yb = (torch.rand(200, generator=g, dtype=DT) < torch.sigmoid(X @ truth)).to(DT)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 5]] = True  # coordinate 0 matters: its constraint is active
    model = Vector(8, init=0.1 * torch.randn(8, dtype=DT))
    handle = symopt.fixed_zeros(model, "theta", mask)
    bce = nn.functional.binary_cross_entropy_with_logits
    train(model, lambda m: bce(X @ m.theta, yb), 4000, 1.0)  # 3,000 already give a 1e-16 gradient here
    theta = model.theta.detach()
    assert float(theta[mask].abs().max()) <= 1e-10
    # stationarity on the free coordinates: the constrained optimum
    point = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(bce(X @ point, yb), point)
    assert float(grad[~mask].abs().max()) <= 1e-8
    assert handle.strength > float(grad[mask].abs().max())  # λ above the multipliers


def test_auto_tie_in_an_mlp_with_minibatch_sgd():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    handle = symopt.tie(net, ["0.weight", "2.weight"])
    X = torch.randn(256, 6, dtype=DT)
    y = torch.sin(X.sum(1, keepdim=True))
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05, momentum=0.9), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for epoch in range(300):
        for batch in torch.randperm(256, generator=gen).split(32):
            opt.zero_grad()
            (net(X[batch]) - y[batch]).square().mean().backward()
            opt.step()
    assert float((net[0].weight - net[2].weight).abs().max()) <= 1e-10
    assert handle.strength > 0 and handle.constraint.multiplier() > 0
    cert = symopt.finalize(net, tol=1e-9)
    assert cert.ok and cert.entries[0].violation_before <= 1e-9


def test_auto_with_lbfgs_closure():
    X, y, A = _subspace_problem()
    theta_star = null_space_solution(X, y, A)
    model = Vector(12, init=torch.randn(12, dtype=DT))
    symopt.subspace(model, "theta", A)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=0.0)  # the defaults stop near 1e-7

    def closure():
        opt.zero_grad()
        loss = ls_loss(X, y)(model.theta) + symopt.penalty(model)
        loss.backward()
        return loss

    for _ in range(60):
        opt.step(closure)
    theta = model.theta.detach()
    assert float((A @ theta).abs().max()) <= 1e-10
    assert float((theta - theta_star).abs().max()) <= 1e-8


def test_auto_in_solve():
    X, y, A = _subspace_problem()
    problem = equality_ls(X, y, A, strength="auto")
    result = symopt.solve(problem, tol=1e-8)
    assert result.status == "optimal" and result.violation <= 1e-12
    assert float((result.x - null_space_solution(X, y, A)).abs().max()) <= 1e-6


def test_estimate_survives_state_dict_and_deepcopy():
    X, y, A = _subspace_problem()
    model = Vector(12, init=torch.randn(12, dtype=DT))
    handle = symopt.subspace(model, "theta", A)
    train(model, lambda m: ls_loss(X, y)(m.theta), 200, 0.3)
    fresh = Vector(12)
    fresh_handle = symopt.subspace(fresh, "theta", A)
    fresh.load_state_dict(model.state_dict())
    assert fresh_handle.strength == handle.strength > 0
    assert symopt.list_constraints(copy.deepcopy(model))[0].strength == handle.strength
    plain = Vector(12)
    symopt.subspace(plain, "theta", A)
    plain.load_state_dict({"theta": torch.zeros(12, dtype=DT)})  # a plain checkpoint still loads
    assert symopt.list_constraints(plain)[0].strength == 0.0


@pytest.mark.parametrize("make,match", [
    (lambda: symopt.Sparse("auto"), "applies to the exact-penalty kinds"),
    (lambda: symopt.LowRank("auto"), "applies to the exact-penalty kinds"),
    (lambda: symopt.Subspace(torch.ones(1, 3), margin=1.0), "margin must be a number > 1"),
    (lambda: symopt.Tied(margin="big"), "margin must be"),
    (lambda: symopt.FixedZeros(torch.ones(3, dtype=torch.bool), strength="automatic"), "strength must be a positive"),
])
def test_auto_bad_inputs(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("register", [
    lambda net: symopt.tie(net, ["0.weight", "2.weight"]),
    lambda net: symopt.subspace(net, "0.weight", torch.randn(3, 256, generator=torch.Generator().manual_seed(2))),
    lambda net: symopt.fixed_zeros(net, "0.weight", torch.rand(16, 16, generator=torch.Generator().manual_seed(3)) < 0.5),
    lambda net: symopt.tie(net, ["0.weight", "2.weight"], total_steps=10 ** 6),
], ids=["tie", "subspace", "fixed_zeros", "landing_tie"])
def test_auto_reads_its_estimate_to_the_host_on_one_step_in_four(register):
    """``"auto"`` folds each step's dual norm into its estimate on θ's device and reads the estimate
    (one transfer) on one step in READ_EVERY: on a GPU each read is a synchronisation, and it read five
    values a step before. λ then equals margin × the estimate's buffers (the host copy is exact at a
    reading) and stays there until the next reading; a resumed run reads on the same steps
    (tests/test_tie_landing.py, tests/test_training_loop.py)."""
    from test_budgets import _HostReads
    from symopt.constraints.budget import READ_EVERY

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    handle = register(net)
    x, y = torch.randn(32, 16), torch.randn(32, 16)
    # (SGD: torch's Adam reads its own step counts to the host on the CPU, which would be counted too)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2, momentum=0.9)

    def step():
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()

    for _ in range(3 * READ_EVERY):
        step()
    lam = handle.strength
    assert lam > 0 and lam == pytest.approx(1.5 * handle.constraint.multiplier(), rel=1e-15)  # exact at a reading
    with _HostReads() as reads:
        for _ in range(READ_EVERY - 1):
            step()
            assert handle.strength == lam  # between readings λ stays
        step()
    assert reads.count == 1  # (before: 5 per step, 20 here)
    assert handle.strength != lam and handle.strength == pytest.approx(1.5 * handle.constraint.multiplier(), rel=1e-15)
