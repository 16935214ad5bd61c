"""penalty / param_groups agree, and decoupled (AdamW) decay on factors is flagged."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

import symopt
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
