"""Atoms below the dtype's resolution go to the mirror's fixed point (`symopt.decay.flush_unresolved`).

An atom the decay drives to zero shrinks geometrically and passes through the subnormal floats, where a
CPU's arithmetic (the weight's matrix products included) costs tens of times a normal one: the digits
MLP's fixed-λ step grew from 2.1 to 6.6 ms over its training (benchmarks/RESULTS.md). Once in
``FLUSH_EVERY`` optimizer steps, an atom whose value is below the smallest normal number is put at
u = v = 0, with its first moments: θ moves by less than the dtype resolves.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symopt
from symopt.decay import FLUSH_EVERY, factor_state_layers
from symopt.decay import flush_unresolved as FLUSH  # (the function itself: some tests switch the hook's off)

TINY = torch.finfo(torch.float32).tiny


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, generator=g)
    return X, X[:, :2].sum(1, keepdim=True)


def _train(register, optimizer, steps, flush=True, monkeypatch=None):
    torch.manual_seed(0)
    model = nn.Linear(12, 1, bias=False)
    handle = register(model)
    opt = optimizer(symopt.param_groups(model))
    if not flush:
        monkeypatch.setattr(symopt.decay, "flush_unresolved", lambda optimizer: None)
    X, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        (model(X) - y).square().mean().backward()
        opt.step()
    return model, handle, opt


SPARSE = (lambda m: symopt.sparse(m, "weight", strength=0.5))
# (SGD at lr 1 on the decay 0.5: an unused input's u and v halve each step, its θ falls 4× a step and is
# subnormal after ~60 steps)
SGD = (lambda groups: torch.optim.SGD(groups, lr=1.0))
STEPS_TO_SUBNORMAL = 64


def _subnormal(t):
    return (t != 0) & (t.abs() < TINY)


def _flush_now(opt):
    """Run the flush as the step pre-hook does on its ``FLUSH_EVERY``-th step."""
    opt.__dict__["_symopt_flush_steps"] = FLUSH_EVERY - 1
    FLUSH(opt)


def _factors(model):
    chain = model.parametrizations.weight
    return chain.original0, chain.original1


def test_the_decay_takes_atoms_through_the_subnormals_without_the_flush(monkeypatch):
    model, _, _ = _train(SPARSE, SGD, STEPS_TO_SUBNORMAL, flush=False, monkeypatch=monkeypatch)
    assert bool(_subnormal(model.weight.detach()).any())


@pytest.mark.parametrize("optimizer", [SGD, lambda g: torch.optim.Adam(g, lr=0.05),
                                       lambda g: torch.optim.SGD(g, lr=0.5, momentum=0.5)],
                         ids=["sgd", "adam", "sgd_momentum"])
def test_atoms_below_resolution_go_to_the_fixed_point_with_gradients_and_first_moments(optimizer, monkeypatch):
    model, _, opt = _train(SPARSE, optimizer, 20, flush=False, monkeypatch=monkeypatch)
    u, v = _factors(model)
    X, y = _data()
    opt.zero_grad()
    with torch.no_grad():  # inputs 5..8: u = v = 1e-20, θ = 1e-40 (subnormal); 9: 1e-25, θ underflows to 0
        u[0, 5:9], v[0, 5:9], u[0, 9], v[0, 9] = 1e-20, -1e-20, 1e-25, 1e-25
    (model(X) - y).square().mean().backward()
    before = model.weight.detach().clone()
    assert bool(_subnormal(before[0, 5:9]).all()) and bool((u.grad[0, 5:9] != 0).all())
    _flush_now(opt)
    after = model.weight.detach()
    flushed = before.abs() < TINY
    assert bool(flushed[0, 5:10].all())
    assert not bool(_subnormal(after).any())
    assert bool((u[flushed] == 0).all()) and bool((v[flushed] == 0).all())
    assert bool((u.grad[flushed] == 0).all()) and bool((v.grad[flushed] == 0).all())
    assert float((after - before).abs().max()) < TINY  # θ moved by less than the dtype resolves
    assert torch.equal(after[~flushed], before[~flushed])
    for key, layer in factor_state_layers(opt, [u, v]):
        for t in layer:
            if key in ("exp_avg", "momentum_buffer"):
                assert bool((t[flushed] == 0).all()), key
            if key == "exp_avg_sq":  # (left to the optimizer: normal for ~1e5 more steps)
                assert bool((t[flushed] > 0).all())
    opt.step()
    for _ in range(5):  # the fixed point: no gradient or decay moves them off it
        assert bool((u[flushed] == 0).all()) and bool((v[flushed] == 0).all())
        opt.zero_grad()
        (model(X) - y).square().mean().backward()
        opt.step()


def test_training_flushes_once_in_flush_every_steps():
    model, _, _ = _train(SPARSE, SGD, 6 * FLUSH_EVERY)
    u, v = _factors(model)
    assert int(((u == 0) & (v == 0)).sum()) >= 5  # the unused inputs reached the fixed point
    assert bool((model.weight.detach()[0, :2].abs() > 0.05).all())  # the used inputs kept


def test_a_nan_is_kept_for_the_guard_to_see():
    model = nn.Linear(3, 1, bias=False)
    handle = symopt.sparse(model, "weight", strength=0.1)
    u = torch.tensor([[float("nan"), 1e-30, 1.0]])
    v = torch.tensor([[1.0, 1e-30, 1.0]])
    assert handle.constraint.unresolved_atoms((u, v)).tolist() == [[True, False, True]]


@pytest.mark.parametrize("kind", ["nonnegative", "group_sparse"])
def test_other_kinds_that_say_flush_their_atoms_below_resolution(kind):
    torch.manual_seed(0)
    model = nn.Linear(6, 2, bias=False)
    if kind == "nonnegative":
        with torch.no_grad():
            model.weight.abs_()
        symopt.nonnegative(model, "weight", strength=0.1)
    else:
        symopt.group_sparse(model, "weight", dim=1, strength=0.1)  # one group per input column
    opt = torch.optim.Adam(symopt.param_groups(model), lr=0.01)
    model(torch.ones(3, 6)).sum().backward()
    opt.step()
    chain = model.parametrizations.weight
    with torch.no_grad():
        if kind == "nonnegative":
            chain.original0[:, 0] = 1e-20  # θ = ½u² = 5e-41: subnormal
        else:
            chain.original0[0] = 1e-20  # column 0's gate: its entries ~1e-20 · ω, a group norm below 1.2e-38
            chain.original1[:, 0] = 1e-20
    assert bool(_subnormal(model.weight.detach()[:, 0]).any() | (model.weight.detach()[:, 0] == 0).all())
    before = model.weight.detach().clone()
    _flush_now(opt)
    after = model.weight.detach()
    assert bool((after[:, 0] == 0).all()) and torch.equal(after[:, 1:], before[:, 1:])
    assert float((after - before).abs().max()) < TINY
    state = dict(factor_state_layers(opt, [chain.original0] + ([chain.original1] if kind != "nonnegative" else [])))
    assert bool((state["exp_avg"][0][..., 0] == 0).all())


@pytest.mark.parametrize("register", [
    lambda m: symopt.fixed_zeros(m, "weight", torch.arange(12).reshape(1, 12) >= 6, strength=0.5),
], ids=["fixed_zeros"])
def test_kinds_that_do_not_say_are_left_alone(register, monkeypatch):
    slow = (lambda groups: torch.optim.SGD(groups, lr=0.1))
    flushed, _, _ = _train(register, slow, 2 * FLUSH_EVERY)
    plain, _, _ = _train(register, slow, 2 * FLUSH_EVERY, flush=False, monkeypatch=monkeypatch)
    for a, b in zip(flushed.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def _low_rank_factors(model):
    chain = model.parametrizations.weight
    return chain.original0, chain.original1  # U (out × r), V (in × r): θ = U Vᵀ


@pytest.mark.parametrize("optimizer", [SGD, lambda g: torch.optim.Adam(g, lr=0.05),
                                       lambda g: torch.optim.SGD(g, lr=0.5, momentum=0.5)],
                         ids=["sgd", "adam", "sgd_momentum"])
def test_low_rank_factor_entries_below_resolution_go_to_zero_with_gradients_and_first_moments(optimizer):
    # A low-rank factor's entries shrink one by one where the loss does not pull them (a row of V for an input
    # that is always 0): an entry of U goes where |U_ij| max_k |V_kj| < tiny (every term U_ij V_kj of θ it enters
    # is below the smallest normal number), one of V likewise; θ moves by less than r = 3 such terms
    torch.manual_seed(0)
    model = nn.Linear(12, 3, bias=False)
    symopt.low_rank(model, "weight", strength=0.1)
    opt = optimizer(symopt.param_groups(model))
    X, y = _data()
    for _ in range(3):
        opt.zero_grad()
        (model(X) - y).square().mean().backward()
        opt.step()
    U, V = _low_rank_factors(model)
    opt.zero_grad()
    with torch.no_grad():
        V[:, 2] = 1.0
        V[7] = 1e-41  # input 7's row: every term of θ[:, 7] is ~1e-41 · |U|, far below 1.18e-38
        V[8, 0] = 1e-41  # one entry, beside normal ones in its row
        U[1, 1] = 1e-41  # one of U, against column 1 of V
        U[2, 2] = 1e-38  # a normal number, against V's column of ones: 1e-38 < 1.18e-38, gone too
        U[0, 2] = 5e-38  # ... and 5e-38 is not: kept
    (model(X) - y).square().mean().backward()  # (the step's gradients, and the moments of earlier steps there)
    factors_before = (U.detach().clone(), V.detach().clone())
    before = model.weight.detach().clone()
    largest_u, largest_v = U.detach().abs().amax(0), V.detach().abs().amax(0)
    expected = (U.detach().abs() * largest_v < TINY, V.detach().abs() * largest_u < TINY)
    assert bool(expected[1][7].all()) and bool(expected[1][8, 0]) and not bool(expected[1][8, 1:].any())
    assert bool(expected[0][1, 1]) and bool(expected[0][2, 2]) and not bool(expected[0][0, 2])
    assert int(expected[0].sum()) == 2 and int(expected[1].sum()) == 4
    _flush_now(opt)
    after = model.weight.detach()
    for factor, old, flushed in zip((U, V), factors_before, expected):
        assert bool((factor[flushed] == 0).all())
        assert torch.equal(factor[~flushed], old[~flushed])  # (nothing else moved)
        assert factor.grad is None or bool((factor.grad[flushed] == 0).all())
    assert float((after - before).abs().max()) < U.shape[1] * TINY  # θ moved below the dtype's resolution
    for key, layer in factor_state_layers(opt, [U, V]):
        if key in ("exp_avg", "momentum_buffer"):
            for t, flushed in zip(layer, expected):
                assert bool((t[flushed] == 0).all()), key


def test_low_rank_rows_without_gradient_pass_the_subnormals_only_without_the_flush(monkeypatch):
    # SGD at a fixed λ on full-width factors, inputs 6-11 always 0: their rows of V have only the decay, which
    # multiplies them by 1 - lr λ = 0.8 a step, into the subnormals by ~400 steps, where they stay (0.8 times a
    # few units of the smallest subnormal rounds back; under Adam the digits MLP's step grew tenfold so,
    # benchmarks/RESULTS.md). With the flush they end at exactly 0, and θ's used part is the same to the last
    # bit: the flush moves θ below its resolution only
    def run(flush):
        torch.manual_seed(0)
        model = nn.Linear(12, 3, bias=False)
        symopt.low_rank(model, "weight", strength=1.0)
        opt = torch.optim.SGD(symopt.param_groups(model), lr=0.2)
        if not flush:
            monkeypatch.setattr(symopt.decay, "flush_unresolved", lambda optimizer: None)
        X, y = _data()
        X = torch.cat([X[:, :6], torch.zeros(64, 6)], 1)
        for _ in range(30 * FLUSH_EVERY):
            opt.zero_grad()
            (model(X) - y).square().mean().backward()
            opt.step()
        monkeypatch.undo()
        return model
    plain, flushed = run(False), run(True)
    _, V_plain = _low_rank_factors(plain)
    _, V_flushed = _low_rank_factors(flushed)
    assert bool(_subnormal(V_plain[6:]).any())
    assert not bool(_subnormal(V_flushed).any()) and bool((V_flushed[6:] == 0).all())
    assert torch.equal(flushed.weight.detach()[:, :6], plain.weight.detach()[:, :6])


def test_a_rank_pool_asks_its_tensors_kind_for_entries():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6, bias=False), nn.Linear(6, 4, bias=False))
    symopt.low_rank(model, ["0.weight", "1.weight"], target_rank=4)
    for layer in model:
        chain = layer.parametrizations.weight
        U, V = chain.original0, chain.original1
        with torch.no_grad():
            V[0] = 1e-44
        keep_u, keep_v = chain[0].unresolved_entries((U, V))
        assert not bool(keep_v[0].any()) and bool(keep_v[1:].all()) and bool(keep_u.all())


def test_a_pool_flushes_each_of_its_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 4, bias=False), nn.Linear(4, 1, bias=False))
    symopt.sparse(model, ["0.weight", "1.weight"], max_nonzero=6)
    opt = torch.optim.SGD(symopt.param_groups(model), lr=0.5)
    X, y = _data()
    opt.zero_grad()
    (model(X) - y).square().mean().backward()
    opt.step()
    with torch.no_grad():
        for layer in model:
            chain = layer.parametrizations.weight
            chain.original0[..., 0] = 1e-25  # an entry of each tensor below resolution: 1e-50 in float32
            chain.original1[..., 0] = 1e-25
    _flush_now(opt)
    for layer in model:
        chain = layer.parametrizations.weight
        assert bool((chain.original0[..., 0] == 0).all()) and bool((chain.original1[..., 0] == 0).all())
        assert bool((chain.original0[..., 1:] != 0).all())


def test_an_optimizer_without_symopt_groups_is_not_touched():
    model = nn.Linear(3, 1)
    other = nn.Linear(3, 1)
    symopt.sparse(other, "weight", strength=0.1)
    symopt.param_groups(other)  # (installs the process's step hook)
    assert symopt.decay._step_hook is not None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2 * FLUSH_EVERY):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
    assert "_symopt_flush_steps" not in opt.__dict__


def _zero_gradient_run(flush_moments: bool, monkeypatch) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Adam with no decay on a weight whose last input the data never use: that entry's factors keep their
    values and get gradient exactly 0, so a first moment placed there decays by 0.9 a step, from 1e-30 into
    the subnormals after ~180 steps (as a unit that a sparse layer before it no longer feeds)."""
    if not flush_moments:
        monkeypatch.setattr(symopt.decay, "flush_subnormal_moments", lambda state: None)
    torch.manual_seed(0)
    model = nn.Linear(12, 1, bias=False)
    symopt.sparse(model, "weight", strength=1e-4)
    opt = torch.optim.Adam(symopt.param_groups(model), lr=0.05)
    for group in opt.param_groups:
        group["weight_decay"] = 0.0  # (no decay: the unused entry's gradient is exactly 0)
    X, y = _data()
    X[:, -1] = 0.0
    for step in range(14 * FLUSH_EVERY):
        opt.zero_grad()
        (model(X) - y).square().mean().backward()
        opt.step()
        if step == 0:
            for u in _factors(model):
                opt.state[u]["exp_avg"][0, -1] = 1e-30
    monkeypatch.undo()
    return model, opt


def test_first_moments_below_resolution_go_to_zero_and_move_no_weight(monkeypatch):
    flushed_model, flushed = _zero_gradient_run(True, monkeypatch)
    plain_model, plain = _zero_gradient_run(False, monkeypatch)
    moments = [opt.state[u]["exp_avg"] for opt, model in ((flushed, flushed_model), (plain, plain_model))
               for u in _factors(model)]
    assert all(bool(_subnormal(m).any()) for m in moments[2:])  # without the flush: subnormal moments
    assert not any(bool(_subnormal(m).any()) for m in moments[:2])
    assert all(float(m[0, -1]) == 0.0 for m in moments[:2])
    assert bool((_factors(flushed_model)[0][0, -1] != 0).all())  # a live atom, not put on the fixed point
    for a, b in zip(flushed_model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(a, b)  # the weights, to the bit


def test_the_moments_flush_leaves_normal_entries_and_other_state_alone():
    from symopt.decay import flush_subnormal_moments

    moment = torch.tensor([1e-39, -1e-40, TINY, 2 * TINY, -0.5, 0.0, float("nan")])
    square = torch.tensor([1e-39, 1.0])
    state = {"exp_avg": moment, "exp_avg_sq": square.clone(), "step": torch.tensor(3.0),
             "momentum_buffer": torch.tensor([-1e-41], dtype=torch.float64)}
    flush_subnormal_moments(state)
    assert state["exp_avg"] is moment  # (in place: the optimizer keeps its own tensors)
    assert moment[:3].tolist() == [0.0, 0.0, 0.0] and moment[3:6].tolist() == [2 * TINY, -0.5, 0.0]
    assert bool(moment[6].isnan())
    assert torch.equal(state["exp_avg_sq"], square) and float(state["step"]) == 3.0
    assert float(state["momentum_buffer"]) == -1e-41  # (normal in float64)
    flush_subnormal_moments(None)
    flush_subnormal_moments({})


def test_a_flush_that_finds_nothing_writes_nothing_on_the_cpu():
    """Most flushes find no atom below resolution; on the CPU (where asking costs no synchronisation) such a
    flush leaves the factors unwritten (their version counters unchanged), where the holds it skips cost
    0.4–0.7 ms on the digits MLP."""
    model, _, opt = _train(SPARSE, SGD, 3)
    u, v = _factors(model)
    assert not bool((model.weight.detach().abs() < TINY).any())
    versions = (u._version, v._version)
    _flush_now(opt)
    assert (u._version, v._version) == versions
