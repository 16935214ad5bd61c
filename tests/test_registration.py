"""Registration on any module keeps the value; assignment, gradients, state_dict, deepcopy."""

import copy
import io

import pytest
import torch
from torch import nn

import symopt
from helpers import DT

MASK = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5


def make(kind):
    """(constraint factory, target tensor shape) for each kind on a 4×6 weight."""
    return {
        "sparse": lambda: symopt.Sparse(1e-2),
        "group_rows": lambda: symopt.GroupSparse(0, 1e-2),
        "group_cols": lambda: symopt.GroupSparse(-1, 1e-2),
        "group_index": lambda: symopt.GroupSparse(groups=[list(range(0, 24, 2)), [1, 3], list(range(5, 24, 2))],
                                                  strength=1e-2),
        "group_size": lambda: symopt.GroupSparse(groups=8, strength=1e-2),
        "low_rank": lambda: symopt.LowRank(1e-2),
        "subspace": lambda: symopt.Subspace(torch.randn(5, 24, generator=torch.Generator().manual_seed(2)), 1.0),
        "fixed_zeros": lambda: symopt.FixedZeros(MASK, 1.0),
    }[kind]()


KINDS = ["sparse", "group_rows", "group_cols", "group_index", "group_size", "low_rank", "subspace", "fixed_zeros"]


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("kind", KINDS)
def test_registration_keeps_value_and_assignment_works(kind, dtype, atol):
    lin = nn.Linear(6, 4).to(dtype)
    w0 = lin.weight.detach().clone()
    symopt.constrain(lin, "weight", make(kind))
    assert lin.weight.dtype == dtype
    assert float((lin.weight - w0).abs().max()) <= atol
    W = torch.randn(4, 6, dtype=dtype)
    lin.weight = W  # assignment goes through right_inverse
    assert float((lin.weight - W).abs().max()) <= atol


@pytest.mark.parametrize("module,name,constraint", [
    (lambda: nn.Conv1d(3, 5, 3), "weight", lambda: symopt.LowRank(1e-2)),
    (lambda: nn.Conv2d(3, 8, 3), "weight", lambda: symopt.LowRank(1e-2)),
    (lambda: nn.Conv2d(3, 8, 3), "weight", lambda: symopt.GroupSparse(0, 1e-2)),
    (lambda: nn.Conv2d(3, 8, 3), "weight", lambda: symopt.Sparse(1e-2)),
    (lambda: nn.Embedding(10, 4), "weight", lambda: symopt.GroupSparse(1, 1e-2)),
    (lambda: nn.Embedding(10, 4), "weight", lambda: symopt.LowRank(1e-2, 3)),
    (lambda: nn.Linear(4, 3), "bias", lambda: symopt.Sparse(1e-2)),
])
def test_other_modules(module, name, constraint):
    mod = module().double()
    before = getattr(mod, name).detach().clone()
    c = constraint()
    if isinstance(c, symopt.LowRank) and c.max_rank is not None:
        with pytest.warns(UserWarning, match="best rank-3 approximation"):
            symopt.constrain(mod, name, c)
        P, S, Qh = torch.linalg.svd(before)
        before = (P[:, :3] * S[:3]) @ Qh[:3]  # the best rank-3 approximation is what is kept
    else:
        symopt.constrain(mod, name, c)
    assert float((getattr(mod, name) - before).abs().max()) <= 1e-12
    x = torch.randint(0, 10, (5,)) if isinstance(mod, nn.Embedding) else torch.randn(
        2, *((4,) if isinstance(mod, nn.Linear) else (3, 9) if isinstance(mod, nn.Conv1d) else (3, 9, 9)),
        dtype=DT)
    mod(x).sum().backward()  # gradients reach every factor
    assert all(p.grad is not None for p in mod.parameters())


def test_batched_low_rank_layout():
    bare = nn.Module()
    bare.w = nn.Parameter(torch.randn(3, 5, 4, dtype=DT))
    w0 = bare.w.detach().clone()
    handle = symopt.low_rank(bare, "w", strength=1e-2, max_rank=4, layout="batch")
    assert float((bare.w - w0).abs().max()) <= 1e-12
    U, V = handle.members[0].factors
    assert U.shape == (3, 5, 4) and V.shape == (3, 4, 4)


def test_low_rank_zero_singular_values_get_live_factor():
    bare = nn.Module()
    bare.w = nn.Parameter(torch.zeros(5, 4, dtype=DT))
    handle = symopt.low_rank(bare, "w", strength=1e-2)
    U, V = handle.members[0].factors
    assert float(U.abs().max()) > 0 and float(V.abs().max()) == 0  # on the plane, but not stuck
    (bare.w * torch.randn(5, 4, dtype=DT)).sum().backward()
    assert float(V.grad.abs().max()) > 0


@pytest.mark.parametrize("mask", [MASK, torch.ones(4, 6, dtype=torch.bool), torch.eye(4, 6, dtype=torch.bool)],
                         ids=["random", "all", "diagonal"])
def test_fixed_zeros_stores_only_the_free_entries(mask):
    """``w`` is exactly θ[~mask] (no slot the mask overwrites), a ⊙ b is θ[mask]; the layout buffer
    is int32 and rebuilds the mask; gradients reach each factor through the gather."""
    lin = nn.Linear(6, 4, bias=False).double()
    value = lin.weight.detach().clone()
    symopt.fixed_zeros(lin, "weight", mask, strength=1.0)
    constraint = lin.parametrizations.weight[0]
    w, a, b = (getattr(lin.parametrizations.weight, f"original{i}") for i in range(3))
    assert w.shape == (int((~mask).sum()),) and a.shape == b.shape == (int(mask.sum()),)
    assert torch.equal(w, value[~mask]) and torch.allclose(a * b, value[mask], atol=1e-15)
    assert constraint.source.dtype == torch.int32 and torch.equal(constraint.mask, mask)
    assert constraint.zeros == int(mask.sum())
    g = torch.randn(4, 6, dtype=DT)
    (lin.weight * g).sum().backward()
    assert torch.equal(w.grad, g[~mask]) and torch.allclose(a.grad, g[mask] * b.detach())


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_of_forward(kind):
    c = make(kind).double()
    value = torch.randn(4, 6, dtype=DT)
    factors = tuple(f.detach().requires_grad_() for f in c.right_inverse(value))
    assert torch.autograd.gradcheck(lambda *f: c(*f), factors)


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_equals_induced_norm_at_balanced_factors(kind):
    """(λ/2)Σ‖factors‖² = λ·‖w‖ (ℓ₁ / group / nuclear / ‖Oᵀθ‖₁) at the balanced factorisation."""
    c = make(kind).double()
    value = torch.randn(4, 6, dtype=DT)
    factors = list(c.right_inverse(value))
    if kind == "sparse":
        factors = [value.abs().sqrt() * value.sign(), value.abs().sqrt()]
    elif kind.startswith("group"):
        norms = c.group_norms(value)
        factors = [norms.sqrt(), value / c.spread(norms.sqrt(), value)]
    elif kind == "low_rank":
        P, S, Qh = torch.linalg.svd(value, full_matrices=False)
        factors = [P * S.sqrt(), Qh.mT * S.sqrt()]
    else:
        z = factors[1] * factors[2]
        factors[1:] = [z.abs().sqrt() * z.sign(), z.abs().sqrt()]
    assert torch.allclose(c(*factors), value, atol=1e-12)
    assert float(c.penalty(*factors)) == pytest.approx(c.strength * float(c.induced_norm(value)), rel=1e-12)
    assert c.balance(*factors) == pytest.approx(0.0, abs=1e-12)
    # and the penalty of any other factorisation is larger (AM–GM / the variational norm)
    assert float(c.penalty(*c.right_inverse(value))) >= c.strength * float(c.induced_norm(value)) * (1 - 1e-12)


def test_initial_factors_are_not_sign_balanced_and_deterministic():
    lin = nn.Linear(6, 4).double()
    handle = symopt.sparse(lin, "weight")
    u, v = handle.members[0].factors
    assert float((u.abs() - v.abs()).abs().max()) > 1e-3
    lin2 = nn.Linear(6, 4).double()
    lin2.load_state_dict({"weight": lin.weight.detach(), "bias": lin.bias.detach()}, strict=False)
    h2 = symopt.sparse(lin2, "weight")
    assert torch.equal(h2.members[0].factors[0], u)  # same value + same seed → same factors


def _trained_copy(model_fn, constrain_fn):
    model = model_fn()
    constrain_fn(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model(torch.randn(5, 6, dtype=DT)).square().mean() + symopt.penalty(model)).backward()
        opt.step()
    return model


CONSTRAIN = {
    "sparse": lambda m: symopt.sparse(m, "0.weight", strength=1e-2),
    "group": lambda m: symopt.group_sparse(m, "0.weight", dim=1, strength=1e-2),
    "low_rank": lambda m: symopt.low_rank(m, "0.weight", strength=1e-2),
    "subspace": lambda m: symopt.subspace(m, "0.weight", torch.ones(1, 36, dtype=DT), strength=1.0),
    "fixed_zeros": lambda m: symopt.fixed_zeros(m, "0.weight", torch.eye(6, dtype=torch.bool), strength=1.0),
    "tied": lambda m: symopt.tie(m, ["0.weight", "2.weight"], strength=1.0),
    # the anchor (first name) comes after the other copy in module order, so a plain checkpoint
    # loads the other copy before the anchor it is stored relative to
    "tied_anchor_last": lambda m: symopt.tie(m, ["2.weight", "0.weight"], strength=1.0),
}


def mlp():
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)).double()


@pytest.mark.parametrize("kind", CONSTRAIN)
def test_state_dict_round_trip_into_fresh_constrained_model(kind):
    trained = _trained_copy(mlp, CONSTRAIN[kind])
    fresh = mlp()
    CONSTRAIN[kind](fresh)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 6, dtype=DT)
    assert torch.equal(fresh(x), trained(x))
    for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    assert float(symopt.penalty(fresh)) == float(symopt.penalty(trained))


@pytest.mark.parametrize("kind", CONSTRAIN)
def test_plain_checkpoint_loads_into_constrained_model(kind):
    plain = mlp()
    constrained = mlp()
    CONSTRAIN[kind](constrained)
    constrained.load_state_dict(plain.state_dict())  # strict: weight → factors by the load hook
    x = torch.randn(4, 6, dtype=DT)
    assert torch.allclose(constrained(x), plain(x), atol=1e-12)
    assert symopt.list_constraints(constrained)


@pytest.mark.parametrize("kind", CONSTRAIN)
def test_deepcopy_is_independent_and_keeps_constraints(kind):
    model = _trained_copy(mlp, CONSTRAIN[kind])
    clone = copy.deepcopy(model)
    x = torch.randn(4, 6, dtype=DT)
    assert torch.equal(clone(x), model(x))
    assert [h.kind for h in symopt.list_constraints(clone)] == [h.kind for h in symopt.list_constraints(model)]
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    assert not torch.equal(clone(x), model(x))
    if kind == "tied":  # the copy's members still share one centre
        (h,) = symopt.list_constraints(clone)
        a, b = (m.parametrization.group for m in h.members)
        assert a is b and a is not symopt.list_constraints(model)[0].constraint


def test_report_and_finalize_all_kinds():
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 4)).double()
    symopt.sparse(model, "0.weight", strength=1e-2)
    symopt.low_rank(model, "1.weight", strength=1e-2, max_rank=6)
    symopt.fixed_zeros(model, "3.weight", torch.ones(4, 6, dtype=torch.bool), strength=1.0)
    symopt.tie(model, ["0.bias", "1.bias"], strength=1.0)
    rows = symopt.report(model)
    assert [r.kind for r in rows] == ["sparse", "tied", "low_rank", "fixed_zeros"]
    text = str(rows)
    assert "0.bias, 1.bias" in text and "density" in text and "rank" in text
    with pytest.raises(ValueError, match="finalize refused, nothing changed"):
        symopt.finalize(model, tol=1e-6)  # the tie and fixed zeros do not hold yet
    assert len(symopt.list_constraints(model)) == 4
    cert = symopt.finalize(model, tol=1e-6, force=True)
    assert cert.ok and len(cert) == 4
    assert torch.equal(model[0].bias, model[1].bias)
    assert float(model[3].weight.abs().max()) == 0.0
    assert cert["3.weight"].violation_before > 0 and cert["3.weight"].change == pytest.approx(
        cert["3.weight"].violation_before)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters()) and symopt.list_constraints(model) == []
    assert "violation before" in str(cert)


def test_finalize_snaps_small_entries_and_singular_values():
    lin = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([1.0, 0.5, 1e-8, 0.0], dtype=DT)))
    lin2 = copy.deepcopy(lin)
    symopt.sparse(lin, "weight")
    symopt.low_rank(lin2, "weight")
    c1, c2 = symopt.finalize(lin, tol=1e-6), symopt.finalize(lin2, tol=1e-6)
    assert int((lin.weight != 0).sum()) == 2 and int(torch.linalg.matrix_rank(lin2.weight)) == 2
    assert c1["weight"].change == pytest.approx(1e-8) and c2["weight"].change == pytest.approx(1e-8)
    assert c1["weight"].structure.startswith("density 0.125")


def test_anchored_tie_trains_to_equal_copies():
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5)).double()
    symopt.tie(model, ["0.weight", "2.weight"], strength=0.5)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 25 + 2 * 25 + 10  # the anchor as is, u and v of the other copy, the biases
    x = torch.randn(64, 5, dtype=DT)
    target = torch.sin(x)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.1), lr=0.1)
    for _ in range(3000):
        opt.zero_grad()
        (model(x) - target).square().mean().backward()
        opt.step()
    assert float((model[0].weight - model[2].weight).abs().max()) <= 1e-10


def test_a_tie_of_k_copies_stores_2k_minus_1_tensors():
    model = nn.ModuleDict({name: nn.Linear(4, 4).double() for name in "abc"})
    values = [model[n].weight.detach().clone() for n in "abc"]
    handle = symopt.tie(model, ["b.weight", "a.weight", "c.weight"], strength=1.0)
    weights = [p for name, p in model.named_parameters() if "weight" in name]
    assert sum(p.numel() for p in weights) == (2 * 3 - 1) * 16
    # the anchor stores its own value; the others their difference to it, as u ⊙ v
    assert torch.equal(handle.constraint.center, values[1])
    assert [m.qualname for m in symopt.list_constraints(model)[0].members] == ["b.weight", "a.weight", "c.weight"]
    for n, v in zip("abc", values):
        assert torch.allclose(model[n].weight, v, atol=1e-14)
    assert [len(m.factors) for m in handle.members] == [1, 2, 2]
    assert [m.parametrization.decayed for m in handle.members] == [(), (0, 1), (0, 1)]


@pytest.mark.parametrize("assigned", ["a", "b", "c"])
def test_assigning_one_tied_copy_leaves_the_others(assigned):
    model = nn.ModuleDict({name: nn.Linear(3, 2).double() for name in "abc"})
    symopt.tie(model, ["a.weight", "b.weight", "c.weight"], strength=1.0)
    before = {n: model[n].weight.detach().clone() for n in "abc"}
    new = torch.randn(2, 3, dtype=DT)
    model[assigned].weight = new  # the anchor ("a") moves the centre; the others keep their values
    for n in "abc":
        expected = new if n == assigned else before[n]
        assert torch.allclose(model[n].weight, expected, atol=1e-14), n


def test_tied_anchor_gradient_is_its_own():
    """∂ℓ/∂θ_1 of the anchor's value is its own gradient, although the other copies read its tensor."""
    model = nn.Module()
    model.a = nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    model.b = nn.Parameter(torch.tensor([0.5, 2.0], dtype=DT))
    symopt.tie(model, ["a", "b"], strength=1.0)
    a, b = model.a, model.b
    ga, gb = torch.autograd.grad((3 * a).sum() + (5 * b).sum(), [a, b])
    assert torch.equal(ga, torch.full((2,), 3.0, dtype=DT)) and torch.equal(gb, torch.full((2,), 5.0, dtype=DT))
    # while the stored anchor tensor gets both: every copy moves with it
    centre = model.parametrizations.a.original0
    (3 * model.a).sum().add((5 * model.b).sum()).backward()
    assert torch.equal(centre.grad, torch.full((2,), 8.0, dtype=DT))


@pytest.mark.parametrize("names", [["p", "child.w"], ["child.w", "p"]])
def test_plain_checkpoint_loads_a_tie_across_parent_and_child(names):
    """The parent's hook runs before the child's subtree loads, and the child before the parent's
    own factors: either way round, every copy ends at its checkpoint value."""
    def build(seed):
        gen = torch.Generator().manual_seed(seed)
        model = nn.Module()
        model.child = nn.Module()
        model.child.w = nn.Parameter(torch.randn(3, 2, generator=gen, dtype=DT))
        model.p = nn.Parameter(torch.randn(3, 2, generator=gen, dtype=DT))
        return model

    plain, tied = build(0), build(1)
    symopt.tie(tied, names, strength=1.0)
    tied.load_state_dict(plain.state_dict())
    assert torch.allclose(tied.p, plain.p, atol=1e-14) and torch.allclose(tied.child.w, plain.child.w, atol=1e-14)
