"""group_sparse over several tensors (UnitGroups): one gate per unit shared by a layer's weight slice, bias
entry and norm entries — the group lasso whose groups span tensors, and a dead channel that is wholly 0."""

import copy as copying
import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt import ExportWarning
from helpers import lbfgs_fit, cross_entropy_steps, cross_entropy_training, resumed_matches

DT = torch.float64
NAMES = ["0.weight", "0.bias", "1.weight", "1.bias"]


def _conv_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 3, 3, padding=1)).double().eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def test_registration_keeps_every_value_and_one_gate_serves_every_tensor():
    net = _conv_bn()
    before = [net.get_parameter(n).detach().clone() for n in NAMES]
    handle = symopt.group_sparse(net, NAMES, strength=1e-2)
    for value, old in zip(handle.values(), before):
        assert torch.allclose(value, old, atol=1e-15, rtol=0)
    gates = net[0].parametrizations.weight.original0
    assert handle.constraint.gates is gates and gates.shape == (6,)
    loss = sum(v.sum() for v in handle.values()[1:])  # only the other tensors: the gates still get gradient
    loss.backward()
    assert gates.grad is not None and bool(gates.grad.abs().gt(0).all())


def test_penalty_at_balance_is_lambda_times_the_joint_unit_norms():
    net = _conv_bn()
    handle = symopt.group_sparse(net, NAMES, strength=0.3)
    values = [v.detach() for v in handle.values()]
    norms = handle.constraint.unit_norms(values)
    expected = torch.cat([v.movedim(0, 0).reshape(6, -1) for v in values], dim=1).norm(dim=1)
    assert torch.allclose(norms, expected, atol=1e-14)
    with torch.no_grad():  # the balanced factors: |s_c| = √‖θ[c]‖, ω_t = θ_t / s
        gates = norms.sqrt()
        net[0].parametrizations.weight.original0.copy_(gates)
        for copy, value in zip(handle.constraint.copies, values):
            omega = copy.original1 if copy is handle.constraint.copies[0] else copy.original0
            omega.copy_(value / handle.constraint.spread(gates, value))
    assert float(symopt.penalty(net)) == pytest.approx(0.3 * float(norms.sum()), rel=1e-12)
    assert handle.constraint.copies[0][0].balance(net[0].parametrizations.weight.original0) < 1e-12


def test_plain_unit_maps_lay_out_and_sum_as_the_gather_does():
    # a channel group's units are each tensor's own indices (a view, no gather); a group along another
    # axis, or one whose map is not the identity (attention heads), keeps the gather: both must give the
    # same per-unit norms and layouts as the explicit map
    net = _conv_bn()
    group = symopt.group_sparse(net, NAMES, strength=0.3).constraint
    assert group._plain_maps == (True, True, True, True) and group.units_lead_rows()
    values = [v.detach() for v in symopt.group_sparse(_conv_bn(), NAMES, strength=0.3).values()]
    per_unit = torch.arange(1.0, 7.0, dtype=DT)
    for i, v in enumerate(values):
        ids = getattr(group, f"unit_map{i}")
        assert torch.equal(group.spread(per_unit, v, i), per_unit[ids].view([-1] + [1] * (v.dim() - 1)))
        squares = v.reshape(6, -1).square().sum(dim=1)
        assert torch.equal(group._unit_squares(v, i), squares.new_zeros(6).index_add(0, ids, squares))
    torch.manual_seed(0)
    heads = nn.MultiheadAttention(8, 2).double()
    head_group = symopt.attention_heads(heads, max_heads=1).constraint
    assert not all(head_group._plain_maps) and not head_group.units_lead_rows()
    wide = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).double()
    across = symopt.group_sparse(wide, ["0.weight", "1.weight"], dim=[0, 1], strength=0.1).constraint
    assert across._plain_maps == (True, True) and not across.units_lead_rows()  # (units on the second axis)


def test_assignment_after_registration_keeps_the_other_tensors():
    net = _conv_bn()
    symopt.group_sparse(net, NAMES, strength=1e-2)
    with torch.no_grad():
        net[0].parametrizations.weight.original0[2] = 0.0  # a dead gate: unit 2 is 0 in every tensor
    others = [net[0].weight.detach().clone(), net[0].bias.detach().clone(), net[1].weight.detach().clone()]
    new_bias = torch.arange(6, dtype=DT) + 1.0  # unit 2 non-zero: the gates must be drawn again
    net[1].bias = new_bias
    assert torch.allclose(net[1].bias, new_bias, atol=1e-14)
    for now, old in zip((net[0].weight, net[0].bias, net[1].weight), others):
        assert torch.allclose(now, old, atol=1e-14)
    net[0].weight = torch.ones(6, 2, 3, 3, dtype=DT)  # the first tensor (holder of the gates) too
    assert torch.allclose(net[0].weight, torch.ones(6, 2, 3, 3, dtype=DT), atol=1e-14)
    assert torch.allclose(net[1].bias, new_bias, atol=1e-14)


def _least_squares_by_sgd(lin, X, Y, steps: int = 1200) -> None:
    """``steps`` of SGD with momentum (lr 0.1, symopt's decay groups) on the mean of ½‖lin(x) − y‖²."""
    opt = torch.optim.SGD(symopt.param_groups(lin), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((lin(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()


def test_training_matches_the_group_lasso_of_cvxpy_with_bias_in_the_groups():
    cp = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 5, generator=g, dtype=DT)
    W0 = torch.zeros(4, 5, dtype=DT)
    W0[0], W0[2] = torch.tensor([1.0, -2, 0, 0, 1]), torch.tensor([0, 0.5, 1, 0, 0])
    Y = X @ W0.T + torch.tensor([0.3, 0.0, -0.2, 0.0]) + 0.05 * torch.randn(60, 4, generator=g, dtype=DT)
    lam = 0.15
    lin = nn.Linear(5, 4).double()
    symopt.group_sparse(lin, ["weight", "bias"], strength=lam)
    _least_squares_by_sgd(lin, X, Y)
    Wv, bv = cp.Variable((4, 5)), cp.Variable(4)
    residual = X.numpy() @ Wv.T + cp.reshape(bv, (1, 4), order="C") - Y.numpy()
    objective = 0.5 * cp.sum_squares(residual) / 60 + lam * cp.sum(cp.norm(cp.hstack([Wv, cp.reshape(bv, (4, 1), order="C")]), 2, axis=1))
    cp.Problem(cp.Minimize(objective)).solve()
    W_ref, b_ref = torch.tensor(Wv.value), torch.tensor(bv.value)
    joint_ref = torch.cat([W_ref, b_ref[:, None]], 1).norm(dim=1)
    joint = torch.cat([lin.weight, lin.bias[:, None]], 1).detach().norm(dim=1)
    assert ((joint_ref > 1e-6) == (joint > 1e-6)).all() and bool((joint_ref < 1e-6).any())  # same dead units
    assert torch.allclose(lin.weight.detach(), W_ref, atol=2e-4) and torch.allclose(lin.bias.detach(), b_ref, atol=2e-4)
    assert float(joint[joint_ref < 1e-6].max()) < 1e-8  # a dead unit is dead in weight and bias alike


def test_wholly_dead_channels_leave_even_a_padded_consumer():
    net = _conv_bn()
    symopt.group_sparse(net, NAMES, strength=1e-2)
    with torch.no_grad():  # what training leaves: a unit's gate and every ω at the mirror's fixed point
        net[0].parametrizations.weight.original0[[1, 4]] = 0.0
        for copy in symopt.list_constraints(net)[0].constraint.copies:
            (copy.original1 if hasattr(copy, "original1") else copy.original0)[[1, 4]] = 0.0
    x = torch.randn(3, 2, 7, 7, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        small = symopt.export(net, mode="compressed")
    assert (small[0].out_channels, small[1].num_features, small[3].in_channels) == (4, 4, 4)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)
    cert = symopt.finalize(net)
    assert "units 4/6" in cert.entries[0].structure and net[0].weight.shape == (6, 2, 3, 3)


def test_state_dict_round_trip_into_a_fresh_registration():
    net = _conv_bn()
    symopt.group_sparse(net, NAMES, strength=1e-2)
    with torch.no_grad():
        net[0].parametrizations.weight.original0.mul_(1.7)
    other = _conv_bn()
    symopt.group_sparse(other, NAMES, strength=1e-2)
    other.load_state_dict(net.state_dict())
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    assert torch.equal(other(x), net(x))


@pytest.mark.parametrize("names, kwargs, error, match", [
    (["0.weight", "3.weight"], {}, ValueError, r"same number of units along dim=0 \('0.weight': 6, '3.weight': 3\)"),
    (["0.weight"], {}, ValueError, "needs at least two names"),
    (NAMES, dict(strength="auto"), ValueError, "give a number for strength"),
    (NAMES, dict(groups=2), ValueError, r"total_steps, ramp and land_on_the_way; not \['groups'\]"),
    (NAMES, dict(dim=2), ValueError, "dim=2 is out of range for '0.bias'"),
    (NAMES, dict(dim=1.0), TypeError, "dim must be an int"),
])
def test_bad_inputs_name_the_tensor_and_change_nothing(names, kwargs, error, match):
    net = _conv_bn()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        symopt.group_sparse(net, names, **kwargs)
    assert symopt.list_constraints(net) == [] and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


# -- a channel budget over the weight, bias and BatchNorm of a conv (issue 20) ---------------------------

def _cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


CHANNEL = ["0.weight", "0.bias", "1.weight", "1.bias"]


def _channels(net) -> int:
    joint = (net[0].weight.detach().flatten(1).square().sum(1) + net[0].bias.detach().square()
             + net[1].weight.detach().square() + net[1].bias.detach().square())
    return int((joint > 0).sum())


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum_clipped"])
def test_a_channel_budget_over_four_tensors_lands_and_export_removes_the_rest(optimizer):
    """max_groups=6 of 16 channels, counted over conv weight, conv bias and BN γ, β with one gate per
    channel: exactly 6 whole channels from the landing on (momentum and clipping do not move the dropped
    ones), finalize with defaults, and compressed export leaves a 6-channel conv and BatchNorm with the
    same outputs."""
    torch.manual_seed(0)
    net = _cnn()
    steps = 240
    handle = symopt.group_sparse(net, CHANNEL, max_groups=6, total_steps=steps)
    X, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    counts = cross_entropy_training(net, X, y, steps, optimizer, _channels)
    land = round(0.75 * steps)
    assert counts[land - 2] > 6 and all(c == 6 for c in counts[land:])
    assert "budget 6" in handle.constraint.structure(handle.values())
    net.eval()
    reference = net(X[:8]).detach()
    small = symopt.export(net, mode="compressed", example_input=X[:4])
    assert small[0].out_channels == 6 and small[1].num_features == 6 and small[3].in_channels == 6
    assert torch.allclose(small(X[:8]), reference, atol=1e-5)


def test_a_model_exported_at_the_landing_fine_tunes_as_a_plain_small_model():
    """The recipe of `benchmarks.channels`' "symopt (compact)" row: once the budget has landed, the
    compressed export is the final structure, with the trained model's outputs, plain parameters
    (no parametrization left) and BatchNorm that still trains; the last quarter fine-tunes it with a
    fresh optimizer, and its channel count cannot change."""
    torch.manual_seed(0)
    net = _cnn()
    steps = 80
    handle = symopt.group_sparse(net, CHANNEL, max_groups=6, total_steps=steps)
    X, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    cross_entropy_training(net, X, y, round(0.75 * steps) + 1)
    assert handle.constraint.policy.has_landed()
    net.eval()
    reference = net(X).detach()
    small = symopt.export(net, mode="compressed", example_input=X[:4])
    assert torch.allclose(small(X), reference, atol=1e-5)
    assert not symopt.list_constraints(small) and small[0].out_channels == 6
    assert all(type(p) is nn.Parameter for p in small.parameters())
    exported_mean = small[1].running_mean.clone()
    small.train()
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(small(X), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] and small[0].out_channels == 6 and small[1].num_features == 6
    assert not torch.equal(small[1].running_mean, exported_mean)  # BatchNorm still trains


def test_a_channel_budget_without_total_steps_adapts_and_finalizes():
    torch.manual_seed(0)
    net = _cnn()
    handle = symopt.group_sparse(net, CHANNEL, max_groups=10)
    X, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    # Without total_steps the budget is approached, not landed: λ adapts (here past the budget: Adam keeps
    # shrinking units once λ has peaked), and finalize keeps at most the 10 largest channels.
    assert handle.constraint.strength > 0
    symopt.finalize(net, tol=1e-2)
    assert 1 <= _channels(net) <= 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_groups=16), "does not bind"),
    (dict(max_groups=0), "max_groups must be an int >= 1"),
    (dict(total_steps=100), "total_steps schedules a budget"),
    (dict(max_groups=4, total_steps=0), "total_steps must be an int >= 1"),
    (dict(groups=2), "not \\['groups'\\]"),
])
def test_bad_channel_budgets_change_nothing(kwargs, match):
    net = _cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        symopt.group_sparse(net, CHANNEL, **kwargs)
    assert symopt.list_constraints(net) == []
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_a_resumed_channel_budget_lands_the_same_channels():
    """model + optimizer state_dicts saved mid-ramp: the step count and the landed mask travel with the
    model, and the resumed run ends bit-identical to the uninterrupted one."""
    X, y = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 3

    def build():
        torch.manual_seed(0)
        net = _cnn()
        symopt.group_sparse(net, CHANNEL, max_groups=5, total_steps=120)
        opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
        symopt.bind(opt)
        return net, opt

    net, again = resumed_matches(build, cross_entropy_steps(X, y), 60, 60)
    assert _channels(net) == 5 and _channels(again) == 5


# -- one channel budget over several layers: a global budget (issue 20) ---------------------------------

TWO_LAYERS = [["0.weight", "0.bias", "1.weight", "1.bias"], ["3.weight", "3.bias", "4.weight", "4.bias"]]


def _two_conv_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3))


def _alive(conv: nn.Module, bn: nn.Module) -> int:
    joint = (conv.weight.detach().flatten(1).square().sum(1) + conv.bias.detach().square()
             + bn.weight.detach().square() + bn.bias.detach().square())
    return int((joint > 0).sum())


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum_clipped"])
def test_a_global_channel_budget_lands_over_both_convs_and_export_shrinks_each(optimizer):
    """max_groups=12 of the 16 + 12 channels of two convs (each with its bias and BatchNorm): one λ, the
    count over both layers, exactly 12 whole channels from the landing on, split between the layers as
    the loss decides; finalize with defaults, and the compressed export removes each layer's dead
    channels with the same outputs."""
    torch.manual_seed(0)
    net = _two_conv_cnn()
    steps = 240
    handle = symopt.group_sparse(net, TWO_LAYERS, max_groups=12, total_steps=steps)
    assert handle.constraint.set_units == [16, 12] and handle.constraint.gates.shape == (28,)
    X, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    totals = cross_entropy_training(net, X, y, steps, optimizer, lambda n: _alive(n[0], n[1]) + _alive(n[3], n[4]))
    land = round(0.75 * steps)
    assert totals[land - 2] > 12 and all(t == 12 for t in totals[land:])
    first, second = _alive(net[0], net[1]), _alive(net[3], net[4])
    assert first >= 1 and second >= 1 and first + second == 12
    assert f"per layer {first}/16, {second}/12" in handle.constraint.structure(handle.values())
    symopt.finalize(copying.deepcopy(net))  # default arguments: the landed budget holds exactly
    net.eval()
    reference = net(X[:8]).detach()
    small = symopt.export(net, mode="compressed", example_input=X[:4])
    assert (small[0].out_channels, small[1].num_features, small[3].in_channels) == (first, first, first)
    assert (small[3].out_channels, small[4].num_features, small[8].in_features) == (second, second, second)
    assert torch.allclose(small(X[:8]), reference, atol=1e-5)


def test_a_global_group_budget_lands_on_the_group_lasso_path_of_the_stacked_problem():
    """Two linear blocks Y ≈ X₁W₁ᵀ + X₂W₂ᵀ whose input features (columns, dim=1) are the groups: a
    global budget of 4 features is the multi-task group lasso of the concatenated design at the λ the
    budget found — checked against cvxpy at that λ (same 4 features, coefficients to 1e-4), with the
    features shared unevenly between the blocks (the loss decides, not a per-layer quota)."""
    cp = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(5)
    X = torch.randn(150, 12, generator=g, dtype=DT)
    W0 = torch.zeros(3, 12, dtype=DT)
    W0[:, [0, 2, 3, 9]] = torch.randn(3, 4, generator=g, dtype=DT) + 1.0
    Y = X @ W0.T + 0.1 * torch.randn(150, 3, generator=g, dtype=DT)
    X1, X2 = X[:, :5], X[:, 5:]

    class TwoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.full((3, 5), 0.1, dtype=DT))
            self.w2 = nn.Parameter(torch.full((3, 7), 0.1, dtype=DT))

        def forward(self, a, b):
            return a @ self.w1.T + b @ self.w2.T

    model = TwoBlocks()
    handle = symopt.group_sparse(model, [["w1"], ["w2"]], dim=1, max_groups=4)
    # λ still drifts down the path's 4-feature interval; by 150 steps the point has caught up
    lbfgs_fit(model, lambda m: 0.5 * (m(X1, X2) - Y).square().sum(1).mean(), 150)
    lam = handle.strength
    W = cp.Variable((3, 12))
    objective = 0.5 * cp.sum_squares(X.numpy() @ W.T - Y.numpy()) / 150 + lam * cp.sum(cp.norm(W, 2, axis=0))
    cp.Problem(cp.Minimize(objective)).solve()
    reference = torch.tensor(W.value)
    found = torch.cat([model.w1.detach(), model.w2.detach()], 1)
    alive_ref, alive = reference.norm(dim=0) > 1e-6, found.norm(dim=0) > 1e-6
    assert int(alive_ref.sum()) == 4 and torch.equal(alive, alive_ref)
    assert int(alive[:5].sum()) != int(alive[5:].sum())
    assert torch.allclose(found, reference, atol=1e-4)
    assert symopt.finalize(model, tol=1e-6).ok


def test_every_layer_of_a_global_budget_keeps_a_unit():
    """A layer whose units are all smaller than every other layer's would lose them all to a plain
    ranking (cutting the network); the landing and the snap keep its largest unit in place of the
    smallest one kept elsewhere, still exactly max_groups in all."""
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        net[0].weight.mul_(1e-3)
        net[0].bias.mul_(1e-3)
    handle = symopt.group_sparse(net, [["0.weight", "0.bias"], ["2.weight", "2.bias"]], max_groups=3)
    group = handle.constraint
    norms = group.unit_norms(handle.values()).detach()
    keep = group.keep_mask(norms)
    assert int(keep.sum()) == 3 and int(keep[:6].sum()) == 1 and bool(keep[int(norms[:6].argmax())])
    assert bool(keep[6 + int(norms[6:].argmax())])  # the second layer keeps its two largest
    snapped = group.truncate(handle.values(), 3)
    rows = [int((torch.cat([w, b[:, None]], 1).abs().sum(1) > 0).sum()) for w, b in (snapped[:2], snapped[2:])]
    assert rows == [1, 2]


@pytest.mark.parametrize("names, kwargs, error, match", [
    ([["0.weight"], "3.weight"], dict(max_groups=4), ValueError, "or a list of such lists, one per layer"),
    ([[], ["3.weight"]], dict(max_groups=4), ValueError, "or a list of such lists, one per layer"),
    ([["0.weight", "3.weight"], ["4.weight"]], dict(max_groups=4), ValueError,
     r"the tensors of layer 0 must have the same number of units along dim=0 \('0.weight': 16, '3.weight': 12\)"),
    (TWO_LAYERS, dict(max_groups=1), ValueError, "below the 2 layers of the global budget"),
    (TWO_LAYERS, dict(max_groups=28), ValueError, "does not bind"),
])
def test_bad_global_budgets_change_nothing(names, kwargs, error, match):
    net = _two_conv_cnn()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        symopt.group_sparse(net, names, **kwargs)
    assert symopt.list_constraints(net) == [] and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_a_global_ramp_ranks_units_relative_to_their_layer():
    """The trimmed ramp and the landing of a global budget rank each unit by its norm over its layer's
    mean: scaling one layer's weights by any factor leaves the choice unchanged, and a layer whose
    units are all smaller than the other's (here by 100×) is not drained to its last unit."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[0].weight.mul_(1e-2)
        net[0].bias.mul_(1e-2)
        net[4].weight.mul_(1e2)  # the network's function is what it was, up to ReLU's positive homogeneity
    steps = 200
    handle = symopt.group_sparse(net, [["0.weight", "0.bias"], ["2.weight", "2.bias"]], max_groups=16,
                                 total_steps=steps)
    group = handle.constraint
    values = [v.detach() for v in handle.values()]
    relative = group.unit_norms(values) / group.layer_scales(group.unit_norms(values))
    rescaled = [values[0] * 37.0, values[1] * 37.0, values[2], values[3]]
    assert torch.allclose(group.unit_norms(rescaled) / group.layer_scales(group.unit_norms(rescaled)), relative)
    X = torch.randn(128, 8)
    cross_entropy_training(net, X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long(), steps)
    alive = [int((torch.cat([w, b[:, None]], 1).abs().sum(1) > 0).sum()) for w, b in
             ((net[0].weight, net[0].bias), (net[2].weight, net[2].bias))]
    assert sum(alive) == 16 and min(alive) >= 4, alive  # raw norms left [1, 15]


class _SharedBlock(nn.Module):
    """A conv + BN block applied twice in every forward pass (shared across depth)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x))).mean((2, 3)))


def test_a_channel_budget_on_a_block_applied_twice_lands_once_a_step():
    """The block's four tensors are formed twice a pass. The budget counts one step per backward pass (it
    lands at 75% of total_steps, not half way), and after the landing the dropped channels are held once
    after each optimizer step, not between the two uses (the second use's write made autograd refuse the
    backward before). It ends with exactly 4 channels and finalizes with defaults."""
    torch.manual_seed(0)
    net = _SharedBlock()
    handle = symopt.group_sparse(net, [["block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"]],
                                 max_groups=4, total_steps=20)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    landed = []
    for _ in range(24):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        landed.append(handle.constraint.policy.has_landed())
    assert landed.index(True) == 15  # the forward after step 15 of 20 lands
    symopt.finalize(net)
    assert int((net.block[0].weight.detach().flatten(1).abs().sum(1) != 0).sum()) == 4


# -- indices of no unit (SHARED): multi-query attention's k and v rows in a fused projection -----------------

from symopt.constraints.unit_groups import SHARED, UnitGroups  # noqa: E402

# rows 1 and 3 of a Linear(5, 4) belong to no unit (out of order: the layout puts them back); unit 0 is row 0,
# unit 1 is row 2
SHARED_MAP = torch.tensor([0, SHARED, 1, SHARED])


def _shared_linear(strength=0.15, **kwargs):
    torch.manual_seed(0)
    lin = nn.Linear(5, 4).double()
    handle = symopt.constrain(lin, ["weight", "bias"], UnitGroups(0, strength, unit_maps=[SHARED_MAP, SHARED_MAP],
                                                                 **kwargs))
    return lin, handle


def test_shared_rows_keep_their_values_in_a_free_factor_that_is_not_decayed():
    torch.manual_seed(0)
    before = nn.Linear(5, 4).double()
    lin, handle = _shared_linear()
    assert torch.allclose(lin.weight, before.weight, atol=1e-15, rtol=0)
    assert torch.allclose(lin.bias, before.bias, atol=1e-15, rtol=0)
    weight = lin.parametrizations.weight
    assert [tuple(f.shape) for f in (weight.original0, weight.original1, weight.original2)] == [(2,), (2, 5), (2, 5)]
    assert torch.equal(weight.original2, before.weight.detach()[[1, 3]])  # the shared rows, as they were
    decayed = {id(f) for f in handle.decayed_factors()}
    assert id(weight.original2) not in decayed and id(lin.parametrizations.bias.original1) not in decayed
    groups = symopt.param_groups(lin, weight_decay=0.01)
    plain = [g for g in groups if "symopt_strength" not in g]
    assert {id(p) for p in plain[0]["params"]} == {id(weight.original2), id(lin.parametrizations.bias.original1)}
    assert plain[0]["weight_decay"] == 0.01  # (the user's decay, as on any parameter outside a constraint)
    # a unit's norm and the penalty read its own rows only
    W, b = before.weight.detach(), before.bias.detach()
    rows = torch.cat([W, b[:, None]], dim=1).norm(dim=1)
    assert torch.allclose(handle.constraint.unit_norms(handle.values()), rows[[0, 2]], atol=1e-14)
    with torch.no_grad():
        assert torch.allclose(handle.constraint.induced_norm(handle.values()), rows[[0, 2]].sum(), atol=1e-14)


def test_shared_rows_train_unpenalised_next_to_the_group_lasso_of_cvxpy():
    """The optimum of least squares + λ Σ_u ‖(W_u, b_u)‖ over the units' rows, with the shared rows free (a
    plain least-squares fit): the factored model trained by SGD reaches cvxpy's, a dead unit included."""
    cp = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 5, generator=g, dtype=DT)
    W0 = torch.zeros(4, 5, dtype=DT)
    W0[0], W0[1], W0[3] = torch.tensor([1.0, -2, 0, 0, 1]), torch.tensor([0, 0.5, 1, 0, 0]), torch.tensor([0.02, 0, 0, 0, 0])
    Y = X @ W0.T + torch.tensor([0.3, 0.2, 0.0, -0.1]) + 0.05 * torch.randn(60, 4, generator=g, dtype=DT)
    lam = 0.15
    lin, _ = _shared_linear(lam)
    _least_squares_by_sgd(lin, X, Y)
    Wv, bv = cp.Variable((4, 5)), cp.Variable(4)
    residual = X.numpy() @ Wv.T + cp.reshape(bv, (1, 4), order="C") - Y.numpy()
    joint = cp.hstack([Wv, cp.reshape(bv, (4, 1), order="C")])
    penalty = cp.norm(joint[0], 2) + cp.norm(joint[2], 2)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(residual) / 60 + lam * penalty)).solve()
    W_ref, b_ref = torch.tensor(Wv.value), torch.tensor(bv.value)
    assert float(torch.cat([W_ref[2], b_ref[2:3]]).norm()) < 1e-6  # (unit 1 is dead at the optimum)
    assert float(W_ref[3].norm()) > 1e-3  # (the shared row 3, as small as unit 1's truth, is not: no penalty)
    assert torch.allclose(lin.weight.detach(), W_ref, atol=2e-4) and torch.allclose(lin.bias.detach(), b_ref, atol=2e-4)


def test_a_budget_lands_units_and_leaves_the_shared_rows():
    lin, handle = _shared_linear(max_groups=1, total_steps=60)
    X = torch.randn(40, 5, dtype=DT)
    Y = torch.randn(40, 4, dtype=DT)
    opt = torch.optim.Adam(symopt.param_groups(lin, lr=1e-2))
    for _ in range(60):
        opt.zero_grad()
        ((lin(X) - Y) ** 2).mean().backward()
        opt.step()
    rows = torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], dim=1).norm(dim=1)
    assert int((rows[[0, 2]] > 0).sum()) == 1  # the budget: one unit
    assert bool((rows[[1, 3]] > 0.05).all())  # the shared rows trained on, never landed
    weight = lin.weight.detach().clone()
    symopt.finalize(lin)  # (default arguments: the landed budget holds exactly, no force)
    assert symopt.list_constraints(lin) == [] and torch.equal(lin.weight.detach(), weight)


def test_shared_rows_round_trip_through_a_state_dict_and_an_assignment():
    lin, handle = _shared_linear()
    with torch.no_grad():
        lin.parametrizations.weight.original2.mul_(3.0)
        handle.constraint.gates.mul_(1.7)
    other, _ = _shared_linear()
    other.load_state_dict(lin.state_dict())
    x = torch.randn(3, 5, dtype=DT)
    assert torch.equal(other(x), lin(x))
    value = torch.arange(20, dtype=DT).reshape(4, 5) - 7.0
    bias = other.bias.detach().clone()
    other.weight = value  # every row, the shared ones into the free factor
    assert torch.allclose(other.weight, value, atol=1e-13) and torch.allclose(other.bias, bias, atol=1e-13)
    assert torch.equal(other.parametrizations.weight.original2, value[[1, 3]])


@pytest.mark.parametrize("unit_map, match", [
    (torch.tensor([0, -2, 1, 1]), r"a unit id >= 0 \(or -1: an index shared by every unit\)"),
    (torch.full((4,), SHARED), "gives no index of it a unit"),
])
def test_bad_shared_maps_change_nothing(unit_map, match):
    lin = nn.Linear(5, 4).double()
    state = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        symopt.constrain(lin, ["weight", "bias"], UnitGroups(0, 0.1, unit_maps=[unit_map, SHARED_MAP]))
    assert symopt.list_constraints(lin) == [] and all(torch.equal(v, state[k]) for k, v in lin.state_dict().items())


def test_regrow_refuses_a_group_with_shared_rows_by_name():
    lin, _ = _shared_linear()
    opt = torch.optim.SGD(symopt.param_groups(lin), lr=0.1)
    with pytest.raises(ValueError, match="cannot be seeded off zero"):
        symopt.regrow(lin, opt, names="weight, bias")


def test_a_channel_budget_counts_a_pass_between_readings_with_one_hook_and_every_step_once():
    """Between two readings a pool reads no gradient: its first tensor's backward alone counts the pass (one
    hook instead of four), a reading pass hears from all four tensors, and the count is one per backward pass,
    a forward under grad with no backward (a validation pass) counting nothing and taking nothing from the next."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    net(x)
    handle = symopt.group_sparse(net, [["0.weight", "0.bias", "1.weight", "1.bias"]], max_groups=4, total_steps=40)
    policy = handle.constraint.policy
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    unread, read = [], []
    observe_unread, observe = policy.observe_unread, policy.observe

    def counting(member):
        unread.append(member.slot)
        observe_unread(member)

    def reading(member, value, grad):
        read.append(member.slot)
        observe(member, value, grad)

    policy.observe_unread, policy.observe = counting, reading
    steps, kinds = [], []
    for i in range(24):
        opt.zero_grad()
        reads = policy.reads_next_gradient()
        kinds.append(reads)
        unread.clear(), read.clear()
        net(x).square().mean().backward()
        assert (sorted(read), unread) == (([0, 1, 2, 3], []) if reads else ([], [0]))
        opt.step()
        if i % 3 == 0:
            net(x).sum()  # (under grad, never backward)
        steps.append(policy._counters()[0])
    assert steps == list(range(1, 25)) and 3 <= sum(kinds) <= 12  # (readings on one step in four, past the warm-up)
