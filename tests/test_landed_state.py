"""A landing puts its dropped atoms on the fixed point in the optimizer's state too.

A landed atom's factors and gradient are exactly 0. A momentum built before the landing then decays
geometrically and, in float arithmetic, stops at a few units of the smallest subnormal (Adam's
``lerp`` by 0.1 of 4 units rounds back to 4); on a CPU every operation on a subnormal is slow, and the
digits MLP's step after its landing cost 2.6 times the dense step (benchmarks/RESULTS.md). So the next
optimizer step after a landing finds the landed entries' first moments (and gradients) at 0 and their
second moments at a large normal value (`symopt.decay.landed_second_moment`): the update there is
exactly 0 from then on, and nothing else of the training changes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symopt
from symopt.decay import FIRST_MOMENTS, SECOND_MOMENTS, factor_state_layers, landed_second_moment

STEPS = 200
LAND = round(0.75 * STEPS)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(128, 12, generator=g)
    W = torch.zeros(12, 6)
    W[:4, :3] = torch.randn(4, 3, generator=g)
    return X, X @ W + 0.05 * torch.randn(128, 6, generator=g)


def _two_layers():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6))


# kind → register a landing budget (or a landing set) on the two-layer net
KINDS = {
    "sparse": lambda m: symopt.sparse(m, "0.weight", max_nonzero=20, total_steps=STEPS),
    "group_sparse": lambda m: symopt.group_sparse(m, "0.weight", dim=1, max_groups=5, total_steps=STEPS),
    "low_rank": lambda m: symopt.low_rank(m, "0.weight", max_rank=None, target_rank=2, total_steps=STEPS),
    "global_sparse": lambda m: symopt.sparse(m, ["0.weight", "2.weight"], max_nonzero=40, total_steps=STEPS),
    "units": lambda m: symopt.group_sparse(m, ["0.weight", "0.bias"], max_groups=4, total_steps=STEPS),
    # a set that lands (its decayed factors go to 0 whole; a tie's later copies land the same way)
    "subspace": lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 96), total_steps=STEPS),
}

OPTIMIZERS = {
    "adam": lambda g: torch.optim.Adam(g, lr=1e-2),
    "amsgrad": lambda g: torch.optim.Adam(g, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9),
    "rmsprop": lambda g: torch.optim.RMSprop(g, lr=1e-3),
    "adagrad": lambda g: torch.optim.Adagrad(g, lr=0.05),
}


def _factors(model):
    return [p for n, p in model.named_parameters() if "parametrizations" in n]


def _train(kind, optimizer, steps, bind=False, hold_state=True, monkeypatch=None):
    X, Y = _data()
    model = _two_layers()
    KINDS[kind](model)
    opt = OPTIMIZERS[optimizer](symopt.param_groups(model, lr=1e-2))
    if bind:
        symopt.bind(opt)
    if not hold_state:  # (and the flush of atoms below resolution, which would catch the landed atoms' momenta)
        monkeypatch.setattr(symopt.decay, "hold_landed_state", lambda optimizer: None)
        monkeypatch.setattr(symopt.decay, "flush_unresolved", lambda optimizer: None)
    for _ in range(steps):
        opt.zero_grad()
        (model(X) - Y).square().mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("bind", [False, True], ids=["global hook", "bound"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_after_the_landing_the_optimizer_leaves_landed_entries_exactly_at_zero(kind, optimizer, bind):
    model, opt = _train(kind, optimizer, LAND + 30, bind=bind)
    with torch.no_grad():
        model(torch.zeros(1, 12))  # the landing's hold: every landed factor entry is 0 now
    factors = _factors(model)
    landed = [f.detach() == 0 for f in factors]
    assert any(bool(m.any()) for m in landed)
    for key, layer in factor_state_layers(opt, factors):
        for t, m in zip(layer, landed):
            if key in SECOND_MOMENTS:
                # (written at the landing, decayed since by β₂ or RMSprop's α a step: still far from small)
                big = landed_second_moment(t.dtype)
                assert bool(((t[m] > 1e-3 * big) & (t[m] <= big)).all()), key
            else:
                assert key in FIRST_MOMENTS and bool((t[m] == 0).all()), key
    X, Y = _data(1)
    for _ in range(20):  # the optimizer's own update of a landed entry is 0: no hold needed between steps
        opt.zero_grad()
        (model(X) - Y).square().mean().backward()
        opt.step()
        assert all(bool((f.detach()[m] == 0).all()) for f, m in zip(factors, landed))


@pytest.mark.parametrize("kind", ["sparse", "units", "low_rank"])
def test_no_subnormal_state_long_after_the_landing(kind):
    """Without the hold of the state, Adam's first moments of the landed entries stop at subnormals
    (checked: the same run with it switched off has them); with it, every state entry is 0 or normal."""
    model, opt = _train(kind, "adam", LAND + 1200)
    tiny = torch.finfo(torch.float32).tiny
    for _, layer in factor_state_layers(opt, _factors(model)):
        for t in layer:
            assert not bool(((t != 0) & (t.abs() < tiny)).any())


def test_without_the_hold_of_the_state_the_momenta_are_subnormal(monkeypatch):
    """The cause the hold removes, seen: the same run as above with `hold_landed_state` switched off."""
    model, opt = _train("sparse", "adam", LAND + 1200, hold_state=False, monkeypatch=monkeypatch)
    tiny = torch.finfo(torch.float32).tiny
    (layer,) = [layer for key, layer in factor_state_layers(opt, _factors(model)) if key == "exp_avg"]
    assert any(bool(((t != 0) & (t.abs() < tiny)).any()) for t in layer)


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
@pytest.mark.parametrize("kind", ["sparse", "units", "low_rank", "global_sparse"])
def test_the_trained_model_is_the_same_with_and_without_the_hold_of_the_state(kind, optimizer, monkeypatch):
    """Only the landed entries' state changes, and those entries are held at 0 either way: θ after the
    same training is bitwise the same (elementwise optimizers)."""
    with_hold, _ = _train(kind, optimizer, LAND + 40)
    without, _ = _train(kind, optimizer, LAND + 40, hold_state=False, monkeypatch=monkeypatch)
    with torch.no_grad():
        for m in (with_hold, without):
            m(torch.zeros(1, 12))
    for (name, a), b in zip(with_hold.state_dict().items(), without.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_step_count_is_never_taken_for_state_of_a_scalar_factor():
    p = nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.tensor(0.5)
    opt.step()
    assert opt.state[p]["step"].shape == p.shape
    assert [key for key, _ in factor_state_layers(opt, [p])] == ["exp_avg", "exp_avg_sq"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_landed_second_moment_is_normal_and_its_root_finite(dtype):
    value = torch.tensor(landed_second_moment(dtype), dtype=dtype)
    assert torch.isfinite(value) and value >= torch.finfo(dtype).tiny
    assert torch.isfinite(value.sqrt() + 1e-8) and torch.isfinite(value * 0.999)
