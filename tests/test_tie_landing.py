"""A tie with ``total_steps`` lands: at ``round(0.75 · total_steps)`` every later copy's factors go to 0,
so the copies equal the anchor exactly from then on, under Adam (which leaves an "auto" tie 1e-3 apart
after tens of epochs), SGD with momentum and clipping, and a resumed run; finalize needs no tol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symopt
from helpers import cross_entropy_steps, cross_entropy_training, resumed_matches

STEPS = 200


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 16, generator=g)
    y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()
    return X, y


def _net(copies: int = 2):
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(copies) for m in (nn.Linear(16, 16), nn.Tanh())], nn.Linear(16, 3))


def _gaps(net, names):
    weights = [net.get_submodule(n.rsplit(".", 1)[0]).weight.detach() for n in names]
    return max(float((w - weights[0]).abs().max()) for w in weights[1:])


def _train(net, names, steps, optimizer="adam", bind=True, total_steps=STEPS):
    handle = symopt.tie(net, names, **({} if total_steps is None else dict(total_steps=total_steps)))
    X, y = _data()
    gaps = cross_entropy_training(net, X, y, steps, optimizer, measure=lambda n: _gaps(n, names), sgd_lr=0.1,
                                  bind=bind)
    return handle, gaps


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum_clipped"])
def test_the_tie_lands_exactly_and_holds(optimizer):
    names = ["0.weight", "2.weight"]
    _, plain = _train(_net(), names, STEPS, optimizer, total_steps=None)
    net = _net()
    handle, gaps = _train(net, names, STEPS, optimizer)
    land = round(0.75 * STEPS)
    assert gaps[:land - 1] == plain[:land - 1]  # the same run as the plain "auto" tie until the landing
    assert plain[-1] > 1e-6 and gaps[land - 2] > 1e-6  # which leaves the copies apart
    assert all(g == 0.0 for g in gaps[land - 1:])
    assert handle.constraint.strength == 0.0 and "landed" in repr(handle.constraint)
    X, y = _data()
    entry = symopt.certify(net, lambda m: nn.functional.cross_entropy(m(X), y))[handle.name]
    assert entry.exact and entry.violation_before == 0.0 and entry.multiplier > 0  # held by the landing, λ = 0


def test_three_copies_count_one_step_per_backward_without_bind():
    """Each later copy reports its gradient; the step count must still be one per backward pass, so
    the landing comes at round(0.75 · total_steps) also for k = 3 and without symopt.bind."""
    names = ["0.weight", "2.weight", "4.weight"]
    handle, gaps = _train(_net(3), names, STEPS, bind=False)
    land = round(0.75 * STEPS)
    assert int(handle.constraint.policy.step) == land
    assert gaps[land - 2] > 0.0 and all(g == 0.0 for g in gaps[land - 1:])


def test_finalize_needs_no_tolerance_after_the_landing():
    net = _net()
    _train(net, ["0.weight", "2.weight"], STEPS)
    certificate = symopt.finalize(net)
    assert certificate.ok and torch.equal(net[0].weight, net[2].weight)


def test_a_resumed_tie_lands_at_the_same_step_bit_identical():
    names = ["0.weight", "2.weight"]
    X, y = _data()

    def build():
        net = _net()
        symopt.tie(net, names, total_steps=STEPS)
        opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
        symopt.bind(opt)
        return net, opt

    _, again = resumed_matches(build, cross_entropy_steps(X, y), 100, 100)
    assert torch.equal(again[0].weight, again[2].weight)


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_steps=0), "total_steps must be an int >= 1"),
    (dict(total_steps=100, ramp=(0.5, 1.2)), "cannot be after total_steps"),
    (dict(total_steps=2.5), "total_steps must be an int >= 1"),
])
def test_bad_landing_schedules_change_nothing(kwargs, match):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        symopt.tie(net, ["0.weight", "2.weight"], **kwargs)
    assert symopt.list_constraints(net) == []
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("kind", ["subspace", "fixed_zeros"])
def test_single_tensor_sets_land_exactly_under_adam(kind):
    """The same landing for the other exact-penalty kinds: their decayed factors are the mirror pairs, and
    0 there is the set. Rows of a layer summing to 0 (subspace) or a fixed pattern of zeros."""
    torch.manual_seed(0)
    net = _net()
    if kind == "subspace":
        handle = symopt.subspace(net, "2.weight", torch.ones(1, 16), dim=1, total_steps=STEPS)
        violation = lambda: float(net[2].weight.detach().sum(1).abs().max())  # noqa: E731
    else:
        mask = torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) < 0.3
        handle = symopt.fixed_zeros(net, "2.weight", mask, total_steps=STEPS)
        violation = lambda: float(net[2].weight.detach()[mask].abs().max())  # noqa: E731
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    X, y = _data()
    seen = []
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
        seen.append(violation())
    land = round(0.75 * STEPS)
    assert seen[land - 2] > 0.0
    assert all(v <= 1e-6 for v in seen[land - 1:])  # float32 rounding of a projection (subspace), 0 (zeros)
    assert handle.constraint.strength == 0.0 and symopt.finalize(net).ok
