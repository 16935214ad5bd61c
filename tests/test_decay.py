"""penalty / param_groups agree, and decoupled (AdamW) decay on factors is flagged."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

import symopt
from symopt.constraints.budget import READ_EVERY
from helpers import DT, Vector, least_squares, ls_loss


def model():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)).double()
    symopt.sparse(m, "0.weight", strength=0.1)
    symopt.low_rank(m, "1.weight", strength=0.1)
    symopt.subspace(m, "2.weight", torch.ones(1, 8, dtype=DT), strength=2.0)
    symopt.tie(m, ["0.bias", "1.bias"], strength=2.0)
    return m


def test_param_groups_cover_every_parameter_once():
    m = model()
    groups = symopt.param_groups(m, lr=0.1, weight_decay=1e-4, momentum=0.9)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    by_decay = [(g["weight_decay"], len(g["params"])) for g in groups]
    # one group per constraint: sparse (u, v), tie (u, v of the second copy), low rank (U, V), subspace (a, b);
    # rest: subspace w, the tie's anchor (its first copy, stored as is), 2.bias
    assert by_decay == [(0.1, 2), (2.0, 2), (0.1, 2), (2.0, 2), (1e-4, 3)]
    assert all(g["lr"] == 0.1 and g["momentum"] == 0.9 for g in groups)
    torch.optim.SGD(groups)  # accepted as is


def test_penalty_matches_param_groups_gradient():
    """One SGD step through each path moves the parameters identically."""
    m1 = model()
    m2 = copy.deepcopy(m1)
    x = torch.randn(8, 4, dtype=DT)
    opt1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    opt2 = torch.optim.SGD(symopt.param_groups(m2, lr=0.1), lr=0.1)
    (m1(x).square().mean() + symopt.penalty(m1)).backward()
    m2(x).square().mean().backward()
    opt1.step()
    opt2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, atol=1e-14)


def test_penalty_without_constraints_is_zero():
    assert float(symopt.penalty(nn.Linear(2, 2))) == 0.0


def _lasso_with(optimizer_fn, steps=6000):
    X, y = least_squares(n=60, d=15)
    lam = 0.2
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    m = Vector(15, init=torch.randn(15, dtype=DT))
    symopt.sparse(m, "theta", strength=lam)
    opt = optimizer_fn(m, lam)
    symopt.bind(opt)  # the decoupled-decay check runs before the first step
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.999)
    for _ in range(steps):
        opt.zero_grad()
        ls_loss(X, y)(m.theta).backward()
        opt.step()
        sched.step()
    return np.abs(m.theta.detach().numpy() - ref).max()


def test_adamw_decoupled_decay_warns_and_is_wrong():
    with pytest.warns(symopt.DecoupledDecayWarning, match="decoupled weight decay"):
        err = _lasso_with(lambda m, lam: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=lam))
    assert err > 0.05  # THEORY.md §4: decoupled decay does not give the ℓ₁ solution


def test_adam_coupled_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", symopt.DecoupledDecayWarning)
        err = _lasso_with(lambda m, lam: torch.optim.Adam(symopt.param_groups(m, lr=1e-2), lr=1e-2))
    assert err <= 1e-3


@pytest.mark.parametrize("make_opt", [
    lambda m: torch.optim.AdamW(symopt.param_groups(m, lr=1e-3), lr=1e-3),
    lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True),
])
def test_decoupled_decay_detected(make_opt):
    opt = make_opt(model())
    with pytest.warns(symopt.DecoupledDecayWarning):
        assert symopt.check_optimizer(opt)


def test_flags_restored_on_deepcopy_by_discovery():
    clone = copy.deepcopy(model())
    symopt.penalty(clone)  # any symopt call on the copy re-flags its factors
    with pytest.warns(symopt.DecoupledDecayWarning):
        assert symopt.check_optimizer(torch.optim.AdamW(clone.parameters(), weight_decay=0.01))


def test_adamw_without_decay_on_factors_is_fine():
    m = model()
    groups = symopt.param_groups(m, lr=1e-3)
    for g in groups:
        if "symopt_strength" in g:
            g["weight_decay"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", symopt.DecoupledDecayWarning)
        assert not symopt.check_optimizer(torch.optim.AdamW(groups, lr=1e-3))


def test_import_registers_no_global_optimizer_hook():
    import subprocess
    import sys
    code = ("import torch.optim.optimizer as o; before = (len(o._global_optimizer_pre_hooks), "
            "len(o._global_optimizer_post_hooks)); import symopt; "
            "assert (len(o._global_optimizer_pre_hooks), len(o._global_optimizer_post_hooks)) == before")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failed_step_does_not_freeze_lambda_of_other_optimizers():
    """An unrelated optimizer whose step raises touches no symopt state; a bound optimizer's failed
    step is abandoned at its next step, so λ keeps following the gradients."""
    m = Vector(6, init=torch.randn(6, dtype=DT))
    handle = symopt.subspace(m, "theta", torch.ones(1, 6, dtype=DT))  # strength="auto"
    opt = torch.optim.SGD(symopt.param_groups(m, lr=0.01), lr=0.01)
    binding = symopt.bind(opt)
    other = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    other.step = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        other.step()
    counts = []
    for _ in range(3):
        opt.zero_grad()
        (m.theta - 1).square().sum().backward()
        opt.step()
        counts.append(int(handle.constraint.policy.estimate.count.sum()))
    assert counts == [1, 2, 3]
    assert opt.param_groups[0]["weight_decay"] == handle.strength > 0
    binding.remove()
    assert not hasattr(opt, "_symopt_binding")


def test_bind_holds_lambda_within_a_step():
    """L-BFGS evaluates its closure many times per step: under bind, λ moves once per step."""
    m = Vector(6, init=torch.randn(6, dtype=DT))
    handle = symopt.subspace(m, "theta", torch.ones(1, 6, dtype=DT))
    opt = torch.optim.LBFGS(m.parameters(), lr=1, max_iter=10)
    symopt.bind(opt)
    seen = []

    def closure():
        opt.zero_grad()
        loss = (m.theta - torch.arange(6, dtype=DT)).square().sum() + symopt.penalty(m)
        loss.backward()
        seen.append(handle.strength)
        return loss

    opt.step(closure)
    assert len(seen) > 2 and len(set(seen)) == 1      # one λ for every evaluation of the step
    assert int(handle.constraint.policy.estimate.count.sum()) == 1
    assert handle.strength > 0


def test_bind_rejects_a_non_optimizer():
    with pytest.raises(TypeError, match="bind: expected a torch.optim.Optimizer"):
        symopt.bind(nn.Linear(2, 2))


def _auto_step(m, opt):
    opt.zero_grad()
    (m.theta - 1).square().sum().backward()
    opt.step()


def test_replaced_groups_warn_unless_bound():
    """optimizer.load_state_dict replaces the groups param_groups made: an adaptive λ can no longer
    reach weight_decay, which symopt says (once) unless the optimizer is bound."""
    m = Vector(6, init=torch.randn(6, dtype=DT))
    handle = symopt.subspace(m, "theta", torch.ones(1, 6, dtype=DT))
    opt = torch.optim.SGD(symopt.param_groups(m, lr=0.01), lr=0.01)
    _auto_step(m, opt)
    opt.load_state_dict(opt.state_dict())
    with pytest.warns(UserWarning, match="symopt.bind"):
        for _ in range(READ_EVERY):  # (λ follows its estimate on one step in READ_EVERY: it moves within these)
            _auto_step(m, opt)
    assert opt.param_groups[0]["weight_decay"] != handle.strength  # stale: what the warning is about

    m2 = Vector(6, init=torch.randn(6, dtype=DT))
    handle2 = symopt.subspace(m2, "theta", torch.ones(1, 6, dtype=DT))
    opt2 = torch.optim.SGD(symopt.param_groups(m2, lr=0.01), lr=0.01)
    symopt.bind(opt2)
    _auto_step(m2, opt2)
    opt2.load_state_dict(opt2.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _auto_step(m2, opt2)
        _auto_step(m2, opt2)
    assert opt2.param_groups[0]["weight_decay"] > 0  # re-read before every step by the binding
    assert handle2.strength > 0
