"""Landing on the way: a budget with ``total_steps`` whose atoms own their factors' entries (entries,
groups, channels; alone or pooled) lands, at each reading of its ramp, the atoms ranked beyond
``LAND_BEYOND`` × the scheduled count (`BudgetStrength.lands_early`). The decay moves a factor only as fast
as the optimizer does, so on a trained layer (large factors, a short ramp, Adam at a small lr) nothing
would leave before the ramp's end, and the landing would be one cut of every atom beyond the budget."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import symopt
from helpers import recorded_training
from symopt.constraints.budget import LAND_BEYOND, scheduled_count

DT = torch.float64
STEPS = 200
RAMP = (0.0, 0.5)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 12, generator=g, dtype=DT)
    W = torch.randn(12, 6, generator=g, dtype=DT)  # dense: every entry carries signal
    return X, X @ W + 0.05 * torch.randn(256, 6, generator=g, dtype=DT)


def _trained_layer():
    """A 12 → 6 layer at its least-squares fit: large weights whose loss gradient is ~0."""
    X, Y = _data()
    model = nn.Linear(12, 6, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, Y).solution.T)
    return model, X, Y


def _loss(model, X, Y):
    return 0.5 * (model(X) - Y).square().mean()


# kind → (register on the trained 6 × 12 layer, atoms alive in a weight, atoms in all, budget)
KINDS = {
    "sparse": (lambda m: symopt.sparse(m, "weight", max_nonzero=9, total_steps=STEPS, ramp=RAMP),
               lambda w: int((w != 0).sum()), 72, 9),
    "nonnegative": (lambda m: symopt.nonnegative(m, "weight", max_nonzero=9, total_steps=STEPS, ramp=RAMP),
                    lambda w: int((w != 0).sum()), 72, 9),
    "group_sparse": (lambda m: symopt.group_sparse(m, "weight", dim=1, max_groups=2, total_steps=STEPS, ramp=RAMP),
                     lambda w: int((w.abs().sum(0) != 0).sum()), 12, 2),
}


def _trace(model, loss, measure):
    """``measure()`` after each of STEPS Adam steps at lr 1e-3 on ``loss()`` (reading θ runs the hooks:
    landed atoms are held at 0)."""
    return recorded_training(model, loss, STEPS, measure, lr=1e-3, optimizer=torch.optim.Adam)


def _train(kind):
    model, X, Y = _trained_layer()
    if kind == "nonnegative":
        with torch.no_grad():
            model.weight.abs_()
    register, alive, atoms, budget = KINDS[kind]
    handle = register(model)
    counts = _trace(model, lambda: _loss(model, X, Y), lambda: alive(model.weight.detach()))
    return model, handle, counts, atoms, budget


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_trained_layer_loses_its_atoms_along_the_schedule_not_in_one_cut(kind):
    """At Adam's lr 1e-3 the factors of a least-squares fit (entries ~1) cannot reach 0 in a 100-step
    ramp by decay; the atoms still leave along the cubic schedule: after each reading at most
    LAND_BEYOND × its count are alive, the count only falls, and the landing cuts from there to the
    budget, which then holds exactly; finalize needs no force."""
    model, handle, counts, atoms, budget = _train(kind)
    policy = handle.constraint.policy
    start, end = policy.ramp
    assert policy.lands_early
    readings = range(start, end, policy.every)
    for step in range(start + 1, end):
        last = max(r for r in readings if r < step)  # its landing is applied at the next forward
        assert counts[step] <= math.ceil(LAND_BEYOND * scheduled_count(last, atoms, budget, start, end))
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # nothing that landed comes back
    assert counts[end - 2] <= math.ceil(LAND_BEYOND * (budget + 1)) < atoms  # not one cut at the ramp's end
    assert all(c == budget for c in counts[end:])
    assert symopt.finalize(model).ok


def test_landed_atoms_sit_on_the_fixed_subspace_between_readings():
    """Both factors of a landed entry are exactly 0 before each forward (Adam's moments would move them
    off for a while), and so is the entry."""
    model, X, Y = _trained_layer()
    handle = symopt.sparse(model, "weight", max_nonzero=9, total_steps=STEPS, ramp=RAMP)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
    u, v = handle.decayed_factors()
    for step in range(60):
        opt.zero_grad()
        _loss(model, X, Y).backward()
        opt.step()
        weight = model.weight.detach()  # the forward pre-hooks run: landing, then holding
        landed = ~handle.constraint.landed_keep.view_as(u)
        if step >= 40:
            assert bool(landed.any())
            assert bool((u.detach()[landed] == 0).all()) and bool((v.detach()[landed] == 0).all())
            assert bool((weight[landed] == 0).all())


def test_rank_budgets_do_not_land_on_the_way():
    """Landing a singular direction rotates the factors (an SVD); a rank budget keeps full rank until
    the end of its ramp and lands there."""
    model, X, Y = _trained_layer()
    handle = symopt.low_rank(model, "weight", target_rank=2, total_steps=STEPS, ramp=RAMP, max_rank=None)
    assert not handle.constraint.policy.lands_early
    ranks = _trace(model, lambda: _loss(model, X, Y), lambda: int(torch.linalg.matrix_rank(model.weight.detach())))
    end = handle.constraint.policy.ramp[1]
    assert ranks[end - 2] == 6 and all(r == 2 for r in ranks[end:])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_land_on_the_way_false_keeps_every_atom_until_the_ramps_end(kind):
    """``land_on_the_way=False`` at registration: the same trained layer keeps every atom alive through the
    ramp (the decay alone cannot move its factors to 0 there), and the landing at its end still meets
    the budget exactly."""
    model, X, Y = _trained_layer()
    if kind == "nonnegative":
        with torch.no_grad():
            model.weight.abs_()
    verb = {"sparse": symopt.sparse, "nonnegative": symopt.nonnegative}.get(kind)
    if verb is None:
        handle = symopt.group_sparse(model, "weight", dim=1, max_groups=2, total_steps=STEPS, ramp=RAMP,
                                     land_on_the_way=False)
    else:
        handle = verb(model, "weight", max_nonzero=9, total_steps=STEPS, ramp=RAMP, land_on_the_way=False)
    _, alive, atoms, budget = KINDS[kind]
    assert not handle.constraint.policy.lands_early
    counts = _trace(model, lambda: _loss(model, X, Y), lambda: alive(model.weight.detach()))
    end = handle.constraint.policy.ramp[1]
    assert counts[end - 2] == atoms and all(c == budget for c in counts[end:])
    assert symopt.finalize(model).ok


def test_land_on_the_way_reaches_pools_unit_groups_and_heads():
    """The keyword goes through a pooled budget, a channel budget over several tensors and a head budget;
    each policy says so, and the default stays on."""
    def two_layers():
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    for choice in (False, None):
        extra = {} if choice is None else {"land_on_the_way": choice}
        pooled = symopt.sparse(two_layers(), ["0.weight", "2.weight"], density=0.2, total_steps=50, **extra)
        units = symopt.group_sparse(two_layers(), [["0.weight", "0.bias"], ["2.weight"]], dim=0, max_groups=6,
                                    total_steps=50, **extra)
        heads = symopt.attention_heads(nn.MultiheadAttention(16, 4), max_heads=2, total_steps=50, **extra)
        for handle in (pooled, units, heads):
            assert handle.constraint.policy.lands_early is (choice is None)


@pytest.mark.parametrize("register, error, match", [
    (lambda m: symopt.sparse(m, "weight", max_nonzero=9, total_steps=STEPS, land_on_the_way="no"), TypeError,
     "land_on_the_way must be True, False or None"),
    (lambda m: symopt.sparse(m, "weight", max_nonzero=9, land_on_the_way=False), ValueError, "give total_steps="),
    (lambda m: symopt.sparse(m, "weight", strength=1e-3, land_on_the_way=False), ValueError, "give total_steps="),
    (lambda m: symopt.low_rank(m, "weight", target_rank=2, total_steps=STEPS, land_on_the_way=True), ValueError,
     "at the end of the ramp only"),
    (lambda m: symopt.low_rank(m, ["weight"], target_rank=2, total_steps=STEPS, land_on_the_way=True), ValueError,
     "at the end of the ramp only"),
    (lambda m: symopt.group_sparse(m, ["weight", "bias"], max_groups=2, land_on_the_way=False), ValueError,
     "give total_steps="),
])
def test_a_bad_land_on_the_way_is_refused_before_anything_changes(register, error, match):
    model = nn.Linear(12, 6).double()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(error, match=match):
        register(model)
    assert not symopt.list_constraints(model)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_rank_budgets_accept_land_on_the_way_false():
    """False is what a rank budget does anyway: accepted, and it changes nothing."""
    model, _, _ = _trained_layer()
    handle = symopt.low_rank(model, "weight", target_rank=2, total_steps=STEPS, land_on_the_way=False, max_rank=None)
    assert not handle.constraint.policy.lands_early


def test_a_pooled_budget_lands_on_the_way_over_all_its_tensors():
    """One budget over two trained layers: the pool's readings land its smallest entries over both
    (the count taken over all), and the landing leaves exactly the budget."""
    torch.manual_seed(0)
    X = torch.randn(256, 12, dtype=DT)
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    teacher = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    Y = teacher(X).detach()
    handle = symopt.sparse(net, ["0.weight", "2.weight"], max_nonzero=40, total_steps=STEPS, ramp=RAMP)
    alive = _trace(net, lambda: _loss(net, X, Y), lambda: int((net[0].weight != 0).sum() + (net[2].weight != 0).sum()))
    policy = handle.constraint.policy
    assert policy.lands_early
    start, end = policy.ramp
    assert alive[end - 2] <= math.ceil(LAND_BEYOND * 41) < 256
    assert all(a >= b for a, b in zip(alive, alive[1:]))
    assert all(a == 40 for a in alive[end:])
    assert symopt.finalize(net).ok


def test_a_global_channel_budget_keeps_a_channel_in_every_layer_on_the_way():
    """A channel budget over two convolutions lands channels on the way by the same rule as its
    landing (relative to each layer's scale, at least one per layer): no layer is ever emptied."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).double()
    X = torch.randn(32, 1, 8, 8, dtype=DT)
    y = torch.randint(0, 3, (32,))
    handle = symopt.group_sparse(net, [["0.weight", "0.bias"], ["2.weight", "2.bias"]], max_groups=4,
                                 total_steps=STEPS, ramp=RAMP)

    def channels(layer):
        return int((layer.weight.detach().flatten(1).abs().sum(1) != 0).sum())

    per_layer = _trace(net, lambda: nn.functional.cross_entropy(net(X), y), lambda: (channels(net[0]), channels(net[2])))
    policy = handle.constraint.policy
    start, end = policy.ramp
    assert policy.lands_early and sum(per_layer[end - 2]) < 24
    assert all(a >= 1 and b >= 1 for a, b in per_layer)
    assert sum(per_layer[-1]) == 4


def test_a_checkpoint_between_a_reading_and_its_landing_resumes_bit_identically():
    """The reading decides which atoms land at the next forward; a state_dict saved in between carries
    that decision (``early_keep``), so the resumed run lands the same atoms on the same step."""
    def build():
        model, X, Y = _trained_layer()
        symopt.sparse(model, "weight", max_nonzero=9, total_steps=STEPS, ramp=RAMP)
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
        symopt.bind(opt)  # (weight_decay keeps following λ after load_state_dict)
        return model, opt, X, Y

    def run(model, opt, X, Y, steps):
        for _ in range(steps):
            opt.zero_grad()
            _loss(model, X, Y).backward()
            opt.step()

    model, opt, X, Y = build()
    run(model, opt, X, Y, 40)  # steps 0..39: the reading of step 40 comes with the next backward
    opt.zero_grad()
    _loss(model, X, Y).backward()  # step 40 reads: its landing waits for the next forward
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    assert "parametrizations.weight.0.policy.early_keep" in model.state_dict()
    run(model, opt, X, Y, 30)
    again, opt2, _, _ = build()
    state = torch.load(io.BytesIO(buffer.getvalue()))
    again.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    run(again, opt2, X, Y, 30)
    assert torch.equal(again.weight, model.weight)
    assert torch.equal(again.parametrizations.weight[0].landed_keep, model.parametrizations.weight[0].landed_keep)


@pytest.mark.parametrize("n, k", [(16_384, 5_000), (65_536, 3_000), (262_144, 13_000), (262_144, 87_000)])
def test_the_landing_edge_is_exact_on_small_tensors_and_within_a_few_standard_errors_on_large(n, k):
    """`sampled_kth`: the k-th largest exactly up to 4 × 4096 entries; above, a sample's quantile,
    which leaves k ± 4 standard errors (√(k(n − k)/4096)) at or above it, half of them exact zeros
    (landed atoms) included."""
    from symopt.constraints.budget import leading, sampled_kth

    g = torch.Generator().manual_seed(n + k)
    values = torch.rand(n, generator=g, dtype=DT)
    values[torch.randperm(n, generator=g)[: n // 2]] = 0.0
    above = int((values >= sampled_kth(values, k)).sum())
    if n <= 4 * 4096:
        assert above == k and sampled_kth(values, k) == leading(values, k)[1]
        more = n // 2 + 700  # (more than the positive entries: the answer is a zero, as leading's)
        assert sampled_kth(values, more) == leading(values, more)[1] == 0.0
        assert sampled_kth(values.float(), k) == leading(values.float(), k)[1]
    else:
        assert abs(above - k) <= 4 * math.sqrt(k * (n - k) / 4096)


@pytest.mark.parametrize("register", [
    lambda net: symopt.sparse(net, "0.weight", max_nonzero=40, total_steps=40, ramp=RAMP),
    lambda net: symopt.low_rank(net, "0.weight", target_rank=2, total_steps=40, ramp=RAMP, max_rank=None),
    lambda net: symopt.sparse(net, ["0.weight", "2.weight"], max_nonzero=60, total_steps=40, ramp=RAMP),
], ids=["sparse", "low_rank", "pooled"])
def test_a_landed_budget_holds_its_atoms_without_reading_anything_to_the_host(register):
    """After the landing every step holds the dropped atoms at 0 before the forward; on a GPU each read
    of a tensor's value is a synchronisation, and a rank budget's hold read its kept count on every
    step. The held masks and counts are formed once per landing mask."""
    from test_budgets import _HostReads

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).double()
    register(net)
    x, y = torch.randn(32, 16, dtype=DT), torch.randn(32, 16, dtype=DT)
    # (SGD: torch's Adam reads its own step counts to the host on the CPU, which would be counted too)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2, momentum=0.9)

    def step():
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()

    for _ in range(25):  # past the landing (step 20) and the first holds after it
        step()
    with _HostReads() as reads:
        for _ in range(8):
            step()
    assert reads.count == 0
