"""Property tests (hypothesis): for random shapes (1×1, tall, wide, 3-d), kinds, strengths, dtypes and
the devices present, registration keeps the value, the penalty bounds the induced norm and equals it at
balanced factors, finalize lands on the set, report / certify never raise (NaN factors included), and
bad group lists are refused with the module untouched.

Each property runs twice: a fast profile (40 examples) in the default suite, and 1000 examples under
``-m slow`` (``pytest -m slow tests/test_properties.py``)."""

import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import symopt

FAST = settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fast_and_slow(*strategies):
    """The property under the fast profile, and a ``slow``-marked twin with 1000 examples."""
    def register(body):
        fast = FAST(given(*strategies)(body))
        slow = pytest.mark.slow(SLOW(given(*strategies)(body)))
        return fast, slow
    return register


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
shapes = st.one_of(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    st.sampled_from([(1, 1), (1,), (20, 2), (2, 20), (1, 7), (7, 1)]),  # degenerate, tall, wide
)
strengths = st.floats(1e-4, 10.0)
dtypes = st.sampled_from([torch.float32, torch.float64])
KINDS = ["sparse", "group", "subspace", "subspace_slices", "fixed_zeros", "low_rank", "tied"]


@st.composite
def constrained_case(draw, zeros=True):
    """(module with parameters p (and q for a tie), constraint, the value(s) before registration)."""
    shape = draw(shapes)
    numel = int(torch.Size(shape).numel())
    kinds = [k for k in KINDS if k != "low_rank" or len(shape) >= 2]
    kind = draw(st.sampled_from(kinds))
    lam = draw(strengths)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "sparse":
        c = symopt.Sparse(lam, seed=seed)
    elif kind == "group":
        c = symopt.GroupSparse(draw(st.integers(-len(shape), len(shape) - 1)), lam, seed=seed)
    elif kind == "low_rank":
        m, n = shape[0], numel // shape[0]
        c = symopt.LowRank(lam, draw(st.one_of(st.none(), st.integers(1, min(m, n)))), seed=seed)
    elif kind == "subspace":
        c = symopt.Subspace(torch.randn(draw(st.integers(1, numel)), numel, generator=g, dtype=torch.float64),
                            lam, seed=seed)
    elif kind == "subspace_slices":  # A on each slice over a random, possibly non-trailing, ordered set of axes
        axes = draw(st.permutations(range(len(shape))).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
        dim = tuple(a - len(shape) if draw(st.booleans()) else a for a in axes)  # negative axes too
        size = int(torch.Size([shape[a] for a in axes]).numel())
        c = symopt.Subspace(torch.randn(draw(st.integers(1, size)), size, generator=g, dtype=torch.float64),
                            lam, seed=seed, dim=dim)
    elif kind == "tied":
        c = symopt.Tied(lam, seed=seed)
    else:
        mask = torch.rand(shape, generator=g) < 0.5
        mask.view(-1)[0] = True
        c = symopt.FixedZeros(mask, lam, seed=seed)
    dtype, device = draw(dtypes), draw(st.sampled_from(DEVICES))
    values = []
    for _ in range(2 if kind == "tied" else 1):
        value = torch.randn(shape, generator=g, dtype=torch.float64)
        if zeros:
            value[torch.rand(shape, generator=g) < 0.3] = 0.0  # exact zeros exercise the live-factor path
        values.append(value.to(device=device, dtype=dtype))
    module = nn.Module()
    module.p = nn.Parameter(values[0].clone())
    if kind == "tied":
        module.q = nn.Parameter(values[1].clone())
    return module, c, values


def register(module, c):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the low-rank truncation warning
        if isinstance(c, symopt.Tied):
            return symopt.constrain(module, ["p", "q"], c)
        return symopt.constrain(module, "p", c)


def expected_after_registration(c, value):
    """The value itself, except a rank cap below the value's rank keeps its best rank-r approximation."""
    if isinstance(c, symopt.LowRank) and c.max_rank is not None and c.max_rank < min(c.matrix(value).shape):
        P, S, Qh = torch.linalg.svd(c.matrix(value.double()), full_matrices=False)
        r = c.max_rank
        return ((P[:, :r] * S[:r]) @ Qh[:r]).reshape(value.shape).to(value.dtype)
    return value


def tolerance(value):
    return (1e-5 if value.dtype == torch.float32 else 1e-10) * (1.0 + float(value.abs().max()))


def factors_of(module, name="p"):
    plist = getattr(module.parametrizations, name)
    count = sum(1 for n in vars(plist)["_parameters"] if n.startswith("original"))
    return [getattr(plist, f"original{i}") for i in range(count)]


def balanced(c, factors):
    """The balanced factors of the same value (the decay's minimiser over the symmetry orbit)."""
    if isinstance(c, symopt.LowRank):
        U, V = factors
        P, S, Qh = torch.linalg.svd(U @ V.mT, full_matrices=False)
        root = S.sqrt()
        return P * root, Qh.mT * root
    if isinstance(c, symopt.GroupSparse):
        gates, omega = factors
        norms = c.group_norms(c.spread(gates, omega) * omega)
        new = norms.sqrt()
        scale = torch.where(new > 0, gates / new.clamp_min(1e-300), torch.zeros_like(new))
        return new, omega * c.spread(scale, omega)
    first = 1 if isinstance(c, (symopt.Subspace, symopt.FixedZeros)) else 0
    u, v = factors[first], factors[first + 1]
    product = u * v
    root = product.abs().sqrt()
    return (*factors[:first], product.sign() * root, root)


@fast_and_slow(constrained_case())
def _registration(case):
    module, c, values = case
    register(module, c)
    names = ["p", "q"][:len(values)]
    for name, value in zip(names, values):
        got = getattr(module, name).detach()
        assert float((got - expected_after_registration(c, value)).abs().max()) <= tolerance(value)
    pen = float(symopt.penalty(module))
    if not isinstance(c, symopt.Tied):
        induced = c.strength * float(c.induced_norm(module.p.detach()))
        assert pen >= induced * (1 - 1e-4) - 1e-6  # AM–GM: decay ≥ induced norm
    rows = symopt.report(module)  # the per-constraint rows add up to the model's decay
    assert sum(r.penalty for r in rows) == pytest.approx(pen, rel=1e-12, abs=1e-15)


test_registration_preserves_value_and_penalty_bounds_norm, test_registration_slow = _registration


@fast_and_slow(constrained_case(zeros=False))
def _balance(case):
    module, c, values = case
    if isinstance(c, symopt.Tied):
        return  # its penalty is per copy around the anchor, not a norm of one tensor
    register(module, c)
    factors = tuple(t.detach() for t in factors_of(module))
    even = balanced(c, factors)
    value = c(*even)
    assert float((value - module.p.detach()).abs().max()) <= tolerance(values[0]) * 10
    pen = float(c.penalty(*even))
    induced = c.strength * float(c.induced_norm(value))
    rel = 1e-5 if values[0].dtype == torch.float32 else 1e-10
    assert abs(pen - induced) <= rel * (1 + induced)  # equality at balance


test_penalty_equals_induced_norm_at_balance, test_balance_slow = _balance


@fast_and_slow(constrained_case(), st.floats(1e-8, 1e-1))
def _finalize(case, tol):
    module, c, values = case
    register(module, c)
    cert = symopt.finalize(module, tol=tol, force=True)
    atol = 1e-5 if values[0].dtype == torch.float32 else 1e-12
    scale = 1 + max(float(v.abs().max()) for v in values)
    assert cert.entries[0].violation_after <= max(tol, atol * scale)
    after = [module.p.detach()] + ([module.q.detach()] if isinstance(c, symopt.Tied) else [])
    if isinstance(c, symopt.Tied):
        assert float((after[0] - after[1]).abs().max()) <= atol * scale
    elif c.linear:
        assert float((c.project(after[0]) - after[0]).abs().max()) <= atol * scale
    assert isinstance(module.p, nn.Parameter) and not symopt.list_constraints(module)


test_finalize_lands_on_the_set, test_finalize_slow = _finalize


@fast_and_slow(constrained_case(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30]))
def _report_never_raises(case, poison):
    module, c, values = case
    register(module, c)
    with torch.no_grad():
        factors_of(module)[-1].view(-1)[0] = poison
    assert len(symopt.report(module)) == 1
    str(symopt.report(module))
    symopt.certify(module)


test_report_and_certify_never_raise, test_report_slow = _report_never_raises


@st.composite
def bad_groups(draw):
    """Index groups over n entries with one defect: an empty group, a gap or an overlap."""
    n = draw(st.integers(2, 12))
    perm = draw(st.permutations(list(range(n))))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)))
    groups = [list(perm[a:b]) for a, b in zip([0] + cuts, cuts + [n])]
    defect = draw(st.sampled_from(["empty", "gap", "overlap"]))
    if defect == "empty":
        groups.insert(draw(st.integers(0, len(groups))), [])
    elif defect == "gap":
        victim = max(groups, key=len)
        victim.pop()
        groups = [g for g in groups if g]
    else:
        other = draw(st.sampled_from(perm))
        groups[0] = groups[0] + [other] if other not in groups[0] else groups[0] + groups[0][:1]
    return n, groups, defect


@fast_and_slow(bad_groups())
def _bad_groups(case):
    n, groups, defect = case
    module = nn.Module()
    module.p = nn.Parameter(torch.randn(n, dtype=torch.float64))
    before = module.p.detach().clone()
    with pytest.raises(ValueError):
        symopt.group_sparse(module, "p", groups=groups, strength=0.1)
    assert not symopt.list_constraints(module) and torch.equal(module.p.detach(), before)
    assert type(module) is nn.Module  # no parametrization class was swapped in


test_bad_group_lists_are_refused, test_bad_groups_slow = _bad_groups


@st.composite
def ties(draw):
    """(k copies, the order they are tied in, the copy assigned, shape, dtype)."""
    k = draw(st.integers(2, 4))
    order = draw(st.permutations(list(range(k))))
    return k, order, draw(st.integers(0, k - 1)), draw(shapes), draw(dtypes)


def _tie_model(k: int, shape, dtype, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Module()
    for j in range(k):
        model.register_parameter(f"p{j}", nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype)))
    return model


@fast_and_slow(ties())
def _tie_round_trips(case):
    """An anchored tie, in any order: registration keeps every copy; assigning one copy changes that
    copy only; a state_dict and a plain checkpoint both load back every value."""
    k, order, assigned, shape, dtype = case
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    names = [f"p{j}" for j in order]
    model = _tie_model(k, shape, dtype, seed=0)
    before = [getattr(model, f"p{j}").detach().clone() for j in range(k)]
    symopt.tie(model, names, strength=1.0)
    assert all(torch.allclose(getattr(model, f"p{j}"), before[j], atol=atol) for j in range(k))
    new = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    setattr(model, f"p{assigned}", new)
    expected = [new if j == assigned else before[j] for j in range(k)]
    assert all(torch.allclose(getattr(model, f"p{j}"), expected[j], atol=atol) for j in range(k))
    fresh = _tie_model(k, shape, dtype, seed=2)
    symopt.tie(fresh, names, strength=1.0)
    fresh.load_state_dict(model.state_dict())
    assert all(torch.equal(getattr(fresh, f"p{j}"), getattr(model, f"p{j}")) for j in range(k))
    plain = _tie_model(k, shape, dtype, seed=3)
    fresh.load_state_dict(plain.state_dict())  # the load hook maps each plain value onto its copy
    assert all(torch.allclose(getattr(fresh, f"p{j}"), getattr(plain, f"p{j}"), atol=atol) for j in range(k))


test_tie_round_trips_in_any_order, test_tie_round_trips_slow = _tie_round_trips


@FAST
@given(casts=st.lists(st.sampled_from(["bfloat16", "half", "float", "double"]), min_size=1, max_size=5),
       steps=st.integers(min_value=1, max_value=12))
def test_casting_a_model_keeps_every_policy_state_exact(casts, steps):
    """Any sequence of casts of a model (`model.bfloat16()`, `.half()`, `.float()`, `.double()`) after
    some training leaves every strength policy's state — a budget's step count and log λ, a schedule's
    count, an "auto" multiplier estimate — float64 and bit-for-bit what it was, and the host copies
    agree with the buffers (`symopt.constraints.state`). Before, one bfloat16 cast rounded them."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    budget = symopt.sparse(net, "0.weight", max_nonzero=10, total_steps=50)
    schedule = symopt.Scheduled(lambda step: 1e-3 / (1 + step))
    symopt.sparse(net, "2.weight", strength=schedule)
    auto = symopt.subspace(net, "2.bias", torch.ones(1, 3), strength="auto")
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    policies = [budget.constraint.policy, schedule, auto.constraint.policy]
    before = [{k: v.clone() for k, v in p.state_dict().items()} for p in policies]
    strengths = [budget.strength, schedule.value()]
    for cast in casts:
        getattr(net, cast)()
    for policy, saved in zip(policies, before):
        for key, value in policy.state_dict().items():
            assert torch.equal(value.double(), saved[key].double()), key
            # (a trimmed ramp's dropped-atom mask, 1.0 / 0.0, is not state: it is in its reading's dtype)
            assert value.dtype == torch.float64 or key.endswith("dropped"), key
    assert [budget.strength, schedule.value()] == strengths
    policy = budget.constraint.policy
    policy.reload_state()  # the copies re-read from the buffers: the same numbers
    assert [budget.strength, schedule.value()] == strengths
