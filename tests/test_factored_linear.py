"""A Linear layer whose weight is narrow low rank computes x V Uᵀ without forming W = U Vᵀ
(`Constraint.linear_map`, installed by registration): the same output and factor gradients as the
formed weight, the weight formed wherever something needs it (a budget's reading step, a watched
forward), and the model's copies, checkpoints and removal unchanged."""

import copy
import sys
import warnings

import pytest
import torch
from torch import nn

import symopt
from helpers import DT, recorded_training

LOWRANK = sys.modules["symopt.constraints.lowrank"]


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(40, 30).double())
    with warnings.catch_warnings():  # (a random init truncated to the rank: said at registration)
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(net, "0.weight", **kwargs)
    return net


def _strength_course(net, loss, steps: int) -> list[float]:
    """λ of the layer after each of ``steps`` SGD steps on ``loss()``."""
    return recorded_training(net, loss, steps, lambda: net[0].parametrizations.weight[0].strength)


@pytest.fixture
def formed(monkeypatch):
    """Counts the times the layer forms W (LowRank.forward)."""
    calls = []
    real = LOWRANK.LowRank.forward

    def counting(self, *factors):
        calls.append(1)
        return real(self, *factors)

    monkeypatch.setattr(LOWRANK.LowRank, "forward", counting)
    return calls


def _dense_reference(net, x):
    """Output and factor gradients with W formed (nn.Linear's own forward)."""
    layer = net[0]
    out = nn.functional.linear(x, layer.weight, layer.bias)
    grads = torch.autograd.grad(out.square().sum(), [layer.parametrizations.weight.original0,
                                                     layer.parametrizations.weight.original1, layer.bias])
    return out.detach(), grads


def test_narrow_factors_give_the_formed_weights_output_and_gradients_without_forming_it(formed):
    net = _layer(strength=1e-3, max_rank=4)
    x = torch.randn(16, 40, dtype=DT, generator=torch.Generator().manual_seed(1))
    reference, reference_grads = _dense_reference(net, x)
    formed.clear()
    layer = net[0]
    out = net(x)
    grads = torch.autograd.grad(out.square().sum(), [layer.parametrizations.weight.original0,
                                                     layer.parametrizations.weight.original1, layer.bias])
    assert not formed, "the weight was formed"
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_full_width_factors_form_the_weight(formed):
    net = _layer(strength=1e-3)  # (40 × 30 at full width: the thin products would cost more)
    net(torch.randn(4, 40, dtype=DT))
    assert formed


def test_a_watched_forward_forms_the_weight(formed):
    net = _layer(strength=1e-3, max_rank=4)
    seen = []
    net[0].parametrizations.weight[0].register_forward_hook(lambda *args: seen.append(1))
    net(torch.randn(4, 40, dtype=DT))
    assert formed and seen


def test_a_budget_forms_the_weight_on_its_reading_steps_only_and_counts_every_step(formed):
    """A rank budget reads θ's gradient one step in four (`READ_EVERY`): those steps form W, the
    others do not, and λ follows the same course as with W formed on every step."""
    x = torch.randn(32, 40, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.randn(32, 30, dtype=DT, generator=torch.Generator().manual_seed(3))

    def train(net):
        course = _strength_course(net, lambda: (net(x) - y).square().mean(), steps=13)
        return course, int(net[0].parametrizations.weight[0].policy.step)

    factored = _layer(max_rank=8, target_rank=2)
    formed.clear()
    course, steps = train(factored)
    reads = len(formed)
    always = _layer(max_rank=8, target_rank=2)
    del always[0].forward  # (nn.Linear's own forward: W formed on every step)
    formed.clear()
    reference, reference_steps = train(always)
    assert steps == reference_steps == 13
    assert 0 < reads < len(formed) == 13  # the first step and one in four after it
    assert course == pytest.approx(reference, rel=1e-9)


def test_a_scheduled_strength_never_forms_the_weight_and_counts_every_step(formed):
    """A schedule reads no gradient (λ is schedule(step)): every step is factored, and the step count,
    so λ's course, is the one with W formed."""
    x = torch.randn(8, 40, dtype=DT, generator=torch.Generator().manual_seed(4))

    def train(net):
        return _strength_course(net, lambda: net(x).square().mean(), steps=5)

    schedule = lambda step: 1e-3 * (step + 1)  # noqa: E731
    factored = _layer(max_rank=4, strength=symopt.Scheduled(schedule))
    formed.clear()
    course = train(factored)
    assert not formed
    always = _layer(max_rank=4, strength=symopt.Scheduled(schedule))
    del always[0].forward
    assert course == train(always) == [1e-3 * (k + 2) for k in range(5)]


def test_deepcopy_state_dict_and_removal_keep_the_layer_working():
    net = _layer(strength=1e-3, max_rank=4)
    x = torch.randn(5, 40, dtype=DT)
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone[0].parametrizations.weight.original0.mul_(2.0)  # the copy's factors, not the original's
    torch.testing.assert_close(clone(x), nn.functional.linear(x, clone[0].weight, clone[0].bias))
    assert not torch.allclose(clone(x), net(x))
    # (torch.save of a whole parametrized model is refused by torch itself: checkpoints are state_dicts)
    restored = _layer(seed=5, strength=1e-3, max_rank=4)
    restored.load_state_dict(net.state_dict())
    torch.testing.assert_close(restored(x), net(x))
    expected = net(x).detach()
    symopt.attach.remove(net[0], "weight")
    assert "forward" not in vars(net[0])
    torch.testing.assert_close(net(x), expected)
