"""Every bad input raises a clear ValueError/TypeError before anything changes."""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import symopt
from helpers import DT


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def assert_untouched(model, snap):
    state, types = snap
    assert [type(m) for m in model.modules()] == types  # no parametrization was registered
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def net():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3)).double()
    m.register_buffer("running", torch.zeros(3, dtype=DT))
    m.counts = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
    return m


CASES = [
    # (call, error type, message fragment)
    (lambda m: symopt.sparse(m, "0.weigth"), ValueError, "has no parameter 'weigth'"),
    (lambda m: symopt.sparse(m, "5.weight"), ValueError, "no submodule '5'"),
    (lambda m: symopt.sparse(m, "counts"), TypeError, "floating-point"),
    (lambda m: symopt.sparse(m, "running"), ValueError, "is a buffer"),
    (lambda m: symopt.sparse(m, "0.weight", strength=0.0), ValueError, "strength must be finite and > 0"),
    (lambda m: symopt.sparse(m, "0.weight", strength=-1.0), ValueError, "strength"),
    (lambda m: symopt.sparse(m, "0.weight", strength=float("nan")), ValueError, "strength"),
    (lambda m: symopt.sparse(m, "0.weight", strength=float("inf")), ValueError, "strength"),
    (lambda m: symopt.sparse(m, "0.weight", strength="big"), TypeError, "strength must be a positive real"),
    (lambda m: symopt.sparse(m, "0.weight", strength=True), TypeError, "strength"),
    (lambda m: symopt.group_sparse(m, "0.weight", dim=2), ValueError, "dim=2 is out of range"),
    (lambda m: symopt.group_sparse(m, "0.weight", dim=-3), ValueError, "out of range"),
    (lambda m: symopt.group_sparse(m, "0.weight", dim=1.0), TypeError, "dim must be an int"),
    (lambda m: symopt.group_sparse(m, "0.weight", dim=0, groups=3), ValueError, "either dim"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups=5), ValueError, "group size 5 does not divide"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups=[[0, 1], [1, 2]]), ValueError, "must be disjoint"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups=[[0, 2]]), ValueError, "indices [1] are in no group"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups=[[0, 1], []]), ValueError, "non-empty list"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups=[[0, 1]]), ValueError, "the groups cover 2 indices"),
    (lambda m: symopt.group_sparse(m, "0.weight", groups="rows"), TypeError, "groups must be an int size"),
    (lambda m: symopt.low_rank(m, "0.weight", max_rank=0), ValueError, "max_rank must be >= 1"),
    (lambda m: symopt.low_rank(m, "0.weight", max_rank=4), ValueError, "max_rank=4 exceeds min(m, n) = 3"),
    (lambda m: symopt.low_rank(m, "0.bias"), ValueError, "needs a matrix"),
    (lambda m: symopt.low_rank(m, "0.weight", layout="rows"), ValueError, "layout must be one of"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(2, 11, dtype=DT)), ValueError, "A has 11 columns"),
    (lambda m: symopt.subspace(m, "0.weight", torch.zeros(2, 12, dtype=DT)), ValueError, "A is all zeros"),
    (lambda m: symopt.subspace(m, "0.weight", torch.full((2, 12), float("nan"))), ValueError, "NaN or Inf"),
    (lambda m: symopt.subspace(m, "0.weight", [[1.0] * 12]), TypeError, "torch.Tensor or numpy array"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(2, 12, dtype=torch.long)), TypeError, "floating"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 4, dtype=DT), dim=2), ValueError,
     "dim=2 is out of range"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 3, dtype=DT), dim=1), ValueError,
     "a slice over dim=(1,) of the parameter (shape (3, 4)) has 4 entries; A must be (m, 4)"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 12, dtype=DT), dim=(1, -1)), ValueError,
     "names an axis twice"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 4, dtype=DT), dim=1.0), TypeError,
     "dim must be None, an int axis"),
    (lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 4, dtype=DT), dim=()), TypeError,
     "non-empty tuple"),
    (lambda m: symopt.fixed_zeros(m, "0.weight", torch.ones(4, 3, dtype=torch.bool)), ValueError,
     "mask has shape (4, 3)"),
    (lambda m: symopt.fixed_zeros(m, "0.weight", torch.ones(3, 4)), TypeError, "mask must be a bool"),
    (lambda m: symopt.fixed_zeros(m, "0.weight", torch.zeros(3, 4, dtype=torch.bool)), ValueError,
     "selects no entry"),
    (lambda m: symopt.tie(m, ["0.weight", "1.weight"]), ValueError, "has shape"),
    (lambda m: symopt.tie(m, ["0.bias", "0.bias"]), ValueError, "tied with itself"),
    (lambda m: symopt.tie(m, ["0.bias"]), ValueError, "at least two"),
    (lambda m: symopt.tie(m, "0.bias"), TypeError, "list of at least two"),
    (lambda m: symopt.tie(m, ["0.bias", "1.bias", "1.weigth"]), ValueError, "no parameter 'weigth'"),
    (lambda m: symopt.constrain(m, "0.weight", "sparse"), TypeError, "expected a symopt constraint"),
    (lambda m: symopt.constrain(m, "0.bias", symopt.Tied()), TypeError, "list of parameter names"),
    (lambda m: symopt.constrain(m, ["0.bias"], symopt.Sparse()), TypeError, "acts on one parameter"),
    (lambda m: symopt.sparse(m, ""), TypeError, "non-empty string"),
    (lambda m: symopt.sparse("model", "weight"), TypeError, "expected an nn.Module"),
]


@pytest.mark.parametrize("call,error,fragment", CASES, ids=[c[2][:30] for c in CASES])
def test_bad_input_raises_before_any_change(call, error, fragment):
    model = net()
    snap = snapshot(model)
    with pytest.raises(error, match=re.escape(fragment)):
        call(model)
    assert_untouched(model, snap)


def test_tie_dtype_and_device_mismatch():
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(3, dtype=DT))
    model.b = nn.Parameter(torch.zeros(3, dtype=torch.float32))
    model.c = nn.Parameter(torch.zeros(3, dtype=DT, device="meta"))
    with pytest.raises(ValueError, match="'b' has dtype torch.float32"):
        symopt.tie(model, ["a", "b"])
    with pytest.raises(ValueError, match="'c' is on the meta device"):  # refused before the device check
        symopt.tie(model, ["a", "c"])
    assert not parametrize.is_parametrized(model)


def test_constraining_twice_names_what_is_there():
    model = net()
    symopt.low_rank(model, "0.weight", strength=1e-3)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"'0.weight' is already constrained \(LowRank\)"):
        symopt.sparse(model, "0.weight")
    with pytest.raises(ValueError, match="already constrained"):
        symopt.tie(model, ["1.weight", "0.weight"])
    assert_untouched(model, snap)


def test_reusing_a_constraint_object_is_refused():
    model = net()
    c = symopt.Sparse(1e-3)
    symopt.constrain(model, "0.weight", c)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="already attached to '0.weight'"):
        symopt.constrain(model, "1.weight", c)
    assert_untouched(model, snap)


def test_finalize_bad_tol():
    model = net()
    symopt.sparse(model, "0.weight")
    snap = snapshot(model)
    for tol in (-1.0, float("nan"), "small"):
        with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
            symopt.finalize(model, tol=tol)
    assert_untouched(model, snap)


def test_param_groups_bad_weight_decay():
    model = net()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            symopt.param_groups(model, weight_decay=bad)
