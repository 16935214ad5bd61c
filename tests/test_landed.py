"""symopt.landed: whether every constraint that lands at a known step (a budget or a set with total_steps) has
landed, the moment to export and fine-tune the smaller model; refused where nothing lands."""

import pytest
import torch
from torch import nn

import symopt


def _step(model, optimizer, x):
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def _steps_until_landed(model, steps):
    """The answer of symopt.landed after each of ``steps`` Adam steps."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    x = torch.randn(16, model[0].in_features)
    answers = []
    for _ in range(steps):
        _step(model, optimizer, x)
        answers.append(symopt.landed(model))
    return answers


def test_two_budgets_landing_at_different_steps_are_landed_once_both_have():
    """A 20-step budget lands at step 15 and a 40-step one at 30 (ramps end at 75%): landed stays False
    until the later one, then True for good, and the budgets hold exactly from then on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    early = symopt.sparse(model, "0.weight", max_nonzero=12, total_steps=20)
    late = symopt.group_sparse(model, "2.weight", max_groups=2, total_steps=40, dim=1)
    fixed = symopt.sparse(model, "2.bias", strength=1e-3)  # (no schedule: not asked)
    answers = _steps_until_landed(model, 36)
    assert early.constraint.policy.has_landed() and late.constraint.policy.has_landed()
    assert not fixed.constraint.policy.lands()
    first = answers.index(True)
    assert answers[first:] == [True] * (36 - first) and not any(answers[:first])
    assert 28 <= first <= 31  # (the later budget's landing: step 30 of 40, counted from 0 or 1)
    assert int(model[0].weight.count_nonzero()) == 12
    assert int((model[2].weight.abs().sum(0) > 0).sum()) == 2


def test_a_global_budget_counts_once_for_all_its_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    symopt.sparse(model, ["0.weight", "2.weight"], max_nonzero=20, total_steps=12)
    answers = _steps_until_landed(model, 12)
    assert answers[-1] and not answers[0]
    assert int(model[0].weight.count_nonzero()) + int(model[2].weight.count_nonzero()) == 20


def test_a_tie_with_total_steps_lands_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    symopt.tie(model, ["0.weight", "2.weight"], total_steps=8)
    answers = _steps_until_landed(model, 8)
    assert answers[-1] and not answers[0]
    assert torch.equal(model[0].weight, model[2].weight)


@pytest.mark.parametrize("constrain", [
    lambda m: None,
    lambda m: symopt.sparse(m, "0.weight", strength=1e-3),
    lambda m: symopt.sparse(m, "0.weight", max_nonzero=4),  # (a budget without total_steps: no landing)
])
def test_a_model_where_nothing_lands_is_refused_by_name(constrain):
    model = nn.Sequential(nn.Linear(4, 4))
    constrain(model)
    with pytest.raises(ValueError, match="no constraint of the model lands at a known step.*total_steps="):
        symopt.landed(model)


def test_landed_needs_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module, got Tensor"):
        symopt.landed(torch.zeros(3))
