"""Hostile inputs: every wrong use is refused with a clean ``ValueError`` / ``TypeError`` that names what is
wrong, before anything changes (the state_dict and the module types are compared before and after),
and the failures that used to raise nothing (a shared parameter, a wrong-shape assignment, a skipped
step that still moved λ, Inf in Adam's state) are caught."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import symopt

DT = torch.float64


def _snapshot(model: nn.Module):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [type(m) for m in model.modules()]


def _unchanged(model: nn.Module, before) -> None:
    state, types = before
    now = model.state_dict()
    assert set(now) == set(state)
    for key, value in state.items():
        assert now[key].shape == value.shape and now[key].dtype == value.dtype
        assert torch.equal(now[key].nan_to_num(), value.nan_to_num()), key
    assert [type(m) for m in model.modules()] == types


def _net(dtype=DT):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)).to(dtype)


# One entry per verb: how to constrain '<name>' of a model (a tie takes '0.weight' and '<name>').
VERBS = {
    "sparse": lambda m, n: symopt.sparse(m, n, strength=0.1),
    "group_sparse": lambda m, n: symopt.group_sparse(m, n, dim=0, strength=0.1),
    "low_rank": lambda m, n: symopt.low_rank(m, n, strength=0.1, max_rank=2),
    "subspace": lambda m, n: symopt.subspace(m, n, torch.ones(1, getattr(m, "_numel", 36), dtype=DT)),
    "fixed_zeros": lambda m, n: symopt.fixed_zeros(m, n, torch.eye(6, dtype=torch.bool)),
    "nonnegative": lambda m, n: symopt.nonnegative(m, n, strength=0.1),
    "tie": lambda m, n: symopt.tie(m, ["0.weight" if n != "0.weight" else "2.weight", n]),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_non_finite_values_are_refused_at_registration(verb):
    model = _net()
    with torch.no_grad():
        model[2].weight[1, 2] = float("inf")
        model[2].weight[3, 0] = float("nan")
    before = _snapshot(model)
    with pytest.raises(ValueError, match="'2.weight' holds 2 NaN / Inf"):
        VERBS[verb](model, "2.weight")
    _unchanged(model, before)
    assert symopt.list_constraints(model) == []


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_shared_parameter_is_refused_naming_both_owners(verb):
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)).double()
    model[4].weight = model[2].weight  # b.weight = a.weight, as lm_head.weight = embed.weight
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"'2.weight' is shared with '4.weight'.*symopt.tie"):
        VERBS[verb](model, "2.weight")
    _unchanged(model, before)
    assert model[4].weight is model[2].weight


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_assignment_of_a_wrong_value_changes_nothing(verb):
    model = _net()
    VERBS[verb](model, "2.weight")
    before = _snapshot(model)
    for bad, error, match in [
        (torch.zeros(5, 5, dtype=DT), ValueError, r"shape \(6, 6\).*shape \(5, 5\)"),
        (torch.zeros(6, 6, dtype=torch.float32), ValueError, "convert it with .to"),
        (torch.full((6, 6), float("nan"), dtype=DT), ValueError, "NaN or Inf"),
        ([[0.0] * 6] * 6, TypeError, "assign a tensor"),
    ]:
        with pytest.raises(error, match=match):
            model[2].weight = bad
        _unchanged(model, before)
    model.float()  # after a conversion, assignments in the new dtype are accepted
    model[2].weight = torch.zeros(6, 6)
    assert model[2].weight.dtype == torch.float32


@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.Linear(0, 3), ValueError, "is empty"),
    (lambda: nn.Linear(3, 3, device="meta"), ValueError, "meta device"),
    (lambda: nn.Linear(3, 3, dtype=torch.complex64), TypeError, "floating-point"),
])
@pytest.mark.parametrize("verb", ["sparse", "group_sparse", "low_rank", "nonnegative"])
def test_empty_meta_and_complex_tensors_are_refused(verb, make, error, match):
    layer = make()
    with pytest.raises(error, match=match):
        VERBS[verb](layer, "weight")
    assert symopt.list_constraints(layer) == []


def test_a_tie_of_empty_tensors_is_refused():
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.zeros(0, 3)), nn.Parameter(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="'a' is empty"):
        symopt.tie(model, ["a", "b"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("verb", ["sparse", "group_sparse", "nonnegative"])
def test_half_precision_registers_and_keeps_the_value(verb, dtype):
    layer = nn.Linear(4, 3).to(dtype)
    with torch.no_grad():
        layer.weight.abs_()
    w0 = layer.weight.detach().clone()
    VERBS[verb](layer, "weight")
    assert layer.weight.dtype == dtype
    assert torch.allclose(layer.weight.float(), w0.float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("wrap", [nn.utils.parametrizations.orthogonal, nn.utils.parametrizations.weight_norm])
@pytest.mark.parametrize("verb", sorted(set(VERBS) - {"tie"}))
def test_already_parametrized_modules_are_refused(verb, wrap):
    model = _net()
    wrap(model[2])
    before = _snapshot(model)
    with pytest.raises(ValueError, match="'2.weight' is already constrained"):
        VERBS[verb](model, "2.weight")
    _unchanged(model, before)


def test_register_remove_and_register_again():
    model = _net()
    symopt.sparse(model, "2.weight", strength=0.1)
    with pytest.raises(ValueError, match="already constrained"):
        symopt.sparse(model, "2.weight", strength=0.1)
    symopt.finalize(model, force=True)
    symopt.low_rank(model, "2.weight", strength=0.1)
    assert [h.kind for h in symopt.list_constraints(model)] == ["low_rank"]
    symopt.finalize(model, force=True)
    certificate = symopt.finalize(model)  # twice: nothing left to finalize
    assert certificate.ok and certificate.entries == ()
    assert isinstance(symopt.export(model, mode="compressed"), nn.Sequential)  # no constraints: a copy


def test_finalize_force_must_be_a_bool():
    model = _net()
    symopt.subspace(model, "2.weight", torch.ones(1, 36, dtype=DT), strength=1.0)
    before = _snapshot(model)
    with pytest.raises(TypeError, match="force must be True or False"):
        symopt.finalize(model, force="no")
    _unchanged(model, before)


def test_param_groups_refuses_params_and_non_finite_decay():
    model = _net()
    symopt.sparse(model, "2.weight", strength=0.1)
    with pytest.raises(TypeError, match="'params' is not an option"):
        symopt.param_groups(model, lr=0.1, params=[])
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="weight_decay must be a finite number"):
            symopt.param_groups(model, weight_decay=bad)


def test_certify_needs_a_scalar_loss():
    model = _net()
    symopt.sparse(model, "2.weight", strength=0.1)
    x = torch.randn(5, 6, dtype=DT)
    with pytest.raises(ValueError, match="scalar tensor"):
        symopt.certify(model, lambda m: m(x))
    with pytest.raises(ValueError, match="scalar tensor"):
        symopt.certify(model, lambda m: 3.0)


def test_diagnose_and_effective_rank_refuse_nan():
    model = _net()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in the weights of 0"):
        symopt.diagnose(model)
    with pytest.raises(ValueError, match="effective_rank: the matrix holds NaN"):
        symopt.effective_rank(model[0].weight)


def test_low_rank_of_a_big_layer_registers_fast_without_touching_the_rng():
    torch.manual_seed(1)
    layer = nn.Linear(2048, 2048)
    rng = torch.random.get_rng_state()
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="best rank-16 approximation"):
        symopt.low_rank(layer, "weight", strength=1e-3, max_rank=16)
    assert time.perf_counter() - start < 20  # a full SVD took minutes at 4096²
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert int((torch.linalg.svdvals(layer.weight.detach()) > 1e-4).sum()) == 16


def test_a_low_rank_value_is_kept_exactly_through_the_randomized_path():
    g = torch.Generator().manual_seed(2)
    layer = nn.Linear(300, 200).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(200, 6, generator=g, dtype=DT) @ torch.randn(6, 300, generator=g, dtype=DT))
    w0 = layer.weight.detach().clone()
    symopt.low_rank(layer, "weight", strength=1e-3, max_rank=8)
    assert float((layer.weight - w0).abs().max()) <= 1e-10 * float(w0.abs().max())


# -- the guard -----------------------------------------------------------------------------------------------
def _guarded(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    if kind == "auto":
        handle = symopt.subspace(model, "2.weight", torch.ones(1, 8, dtype=DT))
    else:
        handle = symopt.sparse(model, "0.weight", max_nonzero=10)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05)
    return model, handle, opt, symopt.guard(model, opt)


@pytest.mark.parametrize("kind", ["auto", "budget"])
def test_a_skipped_step_leaves_lambda_as_it_was(kind):
    model, handle, opt, guard = _guarded(kind)
    x, y = torch.randn(32, 4, dtype=DT), torch.randn(32, 1, dtype=DT)
    for _ in range(5):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        assert guard.step(loss)
    lam = handle.strength
    state = {k: v.clone() for k, v in handle.constraint.policy.state_dict().items()}
    opt.zero_grad()
    # A bad batch whose loss is Inf while θ's gradient is finite: λ observes that gradient in backward()
    loss = (model(x) - y).square().mean() + torch.tensor(float("inf"), dtype=DT)
    loss.backward()
    assert not guard.step(loss) and guard.events[-1].action == "skipped"
    assert handle.strength == lam
    assert all(torch.equal(v, handle.constraint.policy.state_dict()[k]) for k, v in state.items())
    assert opt.param_groups[0]["weight_decay"] == lam


def _accepted_step(model, opt, guard, x, y):
    opt.zero_grad()
    loss = (model(x) - y).square().mean()
    loss.backward()
    assert guard.step(loss)
    return loss


def test_inf_in_the_optimizer_state_is_rolled_back():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    symopt.sparse(model, "weight", strength=1e-3)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    guard = symopt.guard(model, opt, patience=None)
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, 1, dtype=DT)
    _accepted_step(model, opt, guard, x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt.zero_grad()
    loss = (model(x) - y).square().mean()
    loss.backward()
    for p in model.parameters():
        p.grad.fill_(1e200)  # finite, but its square overflows Adam's exp_avg_sq
    assert not guard.step(loss)
    assert guard.events[-1].action == "rolled_back" and "exp_avg_sq" in guard.events[-1].reason
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)
    assert all(bool(torch.isfinite(t).all()) for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


# -- the CLI -------------------------------------------------------------------------------------------------
def test_cli_refuses_an_unwritable_output_folder_before_solving(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "symopt", "compare", "--quick", "--out", str(blocker / "sub")],
                          capture_output=True, text=True)
    assert done.returncode == 2  # a usage error, not 1 ("DCS disagrees")
    assert "--out" in done.stderr and "cannot write there" in done.stderr
    assert "lasso" not in done.stdout  # nothing was solved
    assert time.perf_counter() - start < 60


def test_cli_usage_errors_exit_2():
    done = subprocess.run([sys.executable, "-m", "symopt", "compare", "--solvers", "nope", "--quick",
                           "--problems", "lasso"], capture_output=True, text=True)
    assert done.returncode == 2 and "nope" in done.stderr


def test_a_zeroed_budget_layer_is_rolled_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    symopt.sparse(model, "0.weight", max_nonzero=10)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05)
    guard = symopt.guard(model, opt, patience=None)
    x, y = torch.randn(16, 4, dtype=DT), torch.randn(16, 1, dtype=DT)
    loss = _accepted_step(model, opt, guard, x, y)
    kept = model[0].weight.detach().clone()
    with torch.no_grad():  # what an overshooting λ does: every factor pair collapses
        for factor in model[0].parametrizations.weight.parameters():
            factor.zero_()
    assert not guard.check(loss)
    assert guard.events[-1].action == "rolled_back" and "was zeroed" in guard.events[-1].reason
    assert torch.equal(model[0].weight.detach(), kept)
