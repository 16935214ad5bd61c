"""syre, diagnose and conserved: the seeds' claims (a)–(c) on small models, and the API's contract."""

import copy

import pytest
import torch
from torch import nn

import symopt
from helpers import DT
from helpers import load_example as load


# -- the claims ----------------------------------------------------------------------------------
def test_a_identical_tanh_units_stay_identical_under_decay_and_separate_under_syre():
    out = load("syre_identical_units").main(steps=2500)
    (plain_loss, plain_gap), (syre_loss, syre_gap) = out["weight decay"], out["syre"]
    assert plain_gap == 0.0  # exactly on the permutation mirror plane, forever
    assert syre_gap > 0.5 and syre_loss < plain_loss / 100


def test_b_decay_collapses_rank_and_units_syre_does_not():
    out = load("syre_collapse").main(strengths=(1e-2, 1.0), steps=1500)
    (plain_small, syre_small), (plain_big, syre_big) = out["linear"][1e-2], out["linear"][1.0]
    assert plain_small[1] == syre_small[1] == 8
    assert plain_big[1] <= 3 and syre_big[1] == 8
    plain_mlp, syre_mlp = out["mlp"][1.0]
    assert plain_mlp[1] >= 16 and syre_mlp[1] == 0


def test_c_charges_conserved_by_gradient_flow_and_decay_as_exp_minus_2_lambda_t():
    out = load("noether_charges").main(steps=2000, decay=0.1)
    assert set(out) == {"units 0→2", "linear 2→3"}
    for drift, rate in out.values():
        assert drift < 1e-3
        assert rate == pytest.approx(0.2, rel=0.02)


# -- syre's contract -------------------------------------------------------------------------------
def test_syre_minimises_the_anchored_quadratic():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 6, generator=g, dtype=DT), torch.randn(40, generator=g, dtype=DT)
    lin = nn.Linear(6, 1, bias=False).double()
    lam = 0.5
    (handle,) = symopt.syre(lin, lam, names=["weight"], sigma=0.3, anisotropy=0.5, seed=3)
    anchor, D = handle.constraint.anchor.reshape(-1), handle.constraint.weights.reshape(-1)
    assert float(D.min()) >= 0.5 and float(D.max()) <= 1.5 and float(D.std()) > 0
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=0)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (lin(X).squeeze(1) - y).square().mean() + symopt.penalty(lin)
        loss.backward()
        return loss

    opt.step(closure)
    # (XᵀX/n + λD) w = Xᵀy/n + λDθ₀
    expected = torch.linalg.solve(X.T @ X / 40 + lam * torch.diag(D), X.T @ y / 40 + lam * D * anchor)
    assert torch.allclose(lin.weight.detach().reshape(-1), expected, atol=1e-9)


def test_syre_penalty_param_groups_and_defaults():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    std = float(net[0].weight.detach().double().std())
    handles = symopt.syre(net, 1e-2)
    assert [h.name for h in handles] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert float(handles[0].constraint.sigma) == pytest.approx(0.01 * std, rel=1e-5)
    expected = sum(0.5 * 1e-2 * float((h.values()[0] - h.constraint.anchor).square().sum()) for h in handles)
    assert float(symopt.penalty(net)) == pytest.approx(expected, rel=1e-5)
    groups = symopt.param_groups(net)
    assert [g["weight_decay"] for g in groups] == [1e-2] * 4


def test_syre_survives_state_dict_round_trip_and_deepcopy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    symopt.syre(net, 1e-2, anisotropy=0.3, seed=7)
    torch.manual_seed(1)  # a different init: σ₀ and the anchors must come from the checkpoint and the seed
    other = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    symopt.syre(other, 1e-2, anisotropy=0.3, seed=7)
    other.load_state_dict(net.state_dict())
    for a, b in zip(symopt.list_constraints(net), symopt.list_constraints(other)):
        assert torch.equal(a.constraint.anchor, b.constraint.anchor)
        assert torch.equal(a.constraint.weights, b.constraint.weights)
        assert torch.equal(a.values()[0], b.values()[0])
    clone = copy.deepcopy(net)
    assert torch.equal(clone[0].weight, net[0].weight)


@pytest.mark.parametrize("names", [None, ["0.weight", "0.bias"]])
def test_syre_refuses_constrained_parameters_and_changes_nothing(names):
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    symopt.sparse(net, "0.weight", strength=1e-3)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="removes exactly the mirror symmetry"):
        symopt.syre(net, 1e-2, names=names)
    assert [h.kind for h in symopt.list_constraints(net)] == ["sparse"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(strength=0.0), ValueError, "strength"),
    (dict(strength=1e-2, anisotropy=1.0), ValueError, "anisotropy"),
    (dict(strength=1e-2, sigma=-1.0), ValueError, "sigma"),
    (dict(strength=1e-2, names="0.weight"), TypeError, "list of parameter names"),
    (dict(strength=1e-2, names=["0.nope"]), ValueError, "no parameter"),
    (dict(strength=1e-2, seed=1.5), TypeError, "seed"),
])
def test_syre_bad_inputs(kwargs, error, match):
    net = nn.Sequential(nn.Linear(3, 2))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(error, match=match):
        symopt.syre(net, **kwargs)
    assert not symopt.list_constraints(net) and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- diagnose and conserved ----------------------------------------------------------------------------
def test_diagnose_finds_dead_identical_and_rotation_planes():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[3] = 0; net[0].bias[3] = 0; net[2].weight[:, 3] = 0  # unit 3: in and out zero
        net[0].weight[1] = net[0].weight[0]; net[0].bias[1] = net[0].bias[0]
        net[2].weight[:, 1] = net[2].weight[:, 0]  # units 0 and 1 identical in and out
        net[2].weight[2] = 0; net[2].bias[2] = 0; net[3].weight[:, 2] = 0  # shared null direction
    report = symopt.diagnose(net)
    first, middle = report["0"], report["2"]
    assert first.dead == (3,) and first.identical == ((0, 1),)
    assert "sign/rescale (units 3)" in first.mirror_planes and "permutation (units 0=1)" in first.mirror_planes
    assert any(p.startswith("rotation (2→3)") for p in middle.mirror_planes)
    assert report.collapsed and "mirror planes" in str(report)
    X = torch.randn(50, 3)
    with torch.no_grad():
        net[0].bias[2] = -100.0  # unit 2 never active under the ReLU
    assert 2 in symopt.diagnose(net, X)["0"].dead


def test_diagnose_healthy_model_and_effective_rank():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    report = symopt.diagnose(net, torch.randn(100, 6))
    assert not report.collapsed and report["0"].feature_rank > 3
    assert symopt.effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert symopt.effective_rank(torch.zeros(3, 3)) == 0.0


def test_conserved_values_by_hand():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([1.0, 0.0]))
        net[2].weight.copy_(torch.tensor([[2.0, 3.0]]))
    charges = symopt.conserved(net)["units 0→2"]
    assert charges.tolist() == [1 + 4 + 1 - 4, 1 - 9]


def _gradient_flow_drift(net):
    """The drift of each charge over the example's 400 small SGD steps."""
    tracker = symopt.ConservationTracker(net)
    tracker.record(0)
    load("charges_in_forward").train(net)
    tracker.record(400)
    return tracker.drift()


def test_conserved_reports_only_charges_the_traced_graph_justifies():
    torch.manual_seed(0)
    functional = load("charges_in_forward").Functional  # activations applied inside forward
    tanh_net = functional(torch.tanh).double()
    with pytest.warns(UserWarning, match=r"a→b: tanh between them is not positively homogeneous per unit"):
        charges = symopt.conserved(tanh_net)
    assert "units a→b" not in charges and "units b→c" in charges
    relu_net = functional(torch.relu).double()
    drift = _gradient_flow_drift(relu_net)
    assert set(drift) == {"units a→b", "units b→c"}
    assert max(drift.values()) < 1e-3  # conserved by small-step gradient descent


def test_a_unit_read_twice_or_added_to_a_residual_has_no_charge():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + h  # a's units also feed the sum: rescaling them changes the output

    with pytest.warns(UserWarning, match=r"a→b: the output of relu goes to 2 places"):
        assert symopt.conserved(Residual()) == {}


def test_diagnose_sees_functional_collapse_on_the_inputs():
    """Units that are not exactly dead or identical but functionally so: 10 of 32 units send < 1% of the
    largest unit's output, 3 pairs are the same function up to small weight noise."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    with torch.no_grad():
        net[0].weight[:10] *= 1e-4   # faint units: alive, but their output is ~1e-4 of the others'
        net[0].bias[:10] *= 1e-4
        for a, b in ((20, 21), (22, 23), (24, 25)):
            net[0].weight[b] = net[0].weight[a] * 1.5 + 0.02 * torch.randn(8, dtype=torch.float64)
            net[0].bias[b] = net[0].bias[a] * 1.5
    x = torch.randn(512, 8, dtype=torch.float64)
    plain = symopt.diagnose(net)
    assert not plain.collapsed and not plain.functionally_collapsed  # the weights alone show nothing
    found = symopt.diagnose(net, x)
    layer = found["0"]
    silent = [u for u in range(10) if float(torch.relu(net[0](x))[:, u].abs().max()) > 0]
    assert set(layer.near_dead) >= set(silent) and set(layer.near_dead) <= set(range(10))
    assert {tuple(sorted(g)) for g in layer.near_duplicate} >= {(20, 21), (22, 23), (24, 25)}
    assert found.functionally_collapsed and "near-dead" in str(found)
    with pytest.raises(ValueError, match="dead_fraction must be a number in"):
        symopt.diagnose(net, x, dead_fraction=2)


@pytest.mark.parametrize("strength", [0.03, 0.3])
def test_permutation_threshold_predicts_whether_identical_units_split_and_how_fast(strength):
    """Two identical tanh units: settled by GD with coupled decay λ (they stay identical), then nudged
    along the predicted direction. The measured log-growth per step of their difference equals
    log|1 − lr(h/2 + λ)| to 3 digits, and its sign is that of λ* − λ."""
    found, measured, predicted = load("permutation_threshold").measure(strength, lr=0.1, settle=600, settle_lr=0.5)
    assert measured == pytest.approx(predicted, rel=2e-2)
    assert (measured > 0) == (strength < found.threshold)


def test_permutation_threshold_refuses_units_that_are_not_identical():
    net = load("permutation_threshold").identical_units()
    with torch.no_grad():
        net[0].weight[1, 0] += 0.5
    with pytest.raises(ValueError, match="are not identical"):
        symopt.permutation_threshold(net, "0", (0, 1), lambda o, t: (o - t).pow(2).mean(), torch.zeros(4, 3, dtype=torch.float64),
                                     torch.zeros(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be a Linear layer followed by a Linear consumer"):
        symopt.permutation_threshold(net, "2", (0, 1), None, None, None)
