"""Property tests (hypothesis): for random shapes, kinds, strengths and dtypes, registration keeps the
value, the penalty bounds the induced norm (equal at balance), finalize lands on the set, report runs.
The fast profile (40 examples) runs by default; `HYPOTHESIS_PROFILE=slow pytest tests/test_properties.py`
runs 1000 examples per property."""

import os
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import symopt

settings.register_profile("fast", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
strengths = st.floats(1e-4, 10.0)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def constrained_case(draw):
    shape = draw(shapes)
    numel = int(torch.Size(shape).numel())
    kinds = ["sparse", "group", "subspace", "fixed_zeros"] + (["low_rank"] if len(shape) >= 2 else [])
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
        c = symopt.LowRank(lam, draw(st.integers(1, min(m, n))), seed=seed)
    elif kind == "subspace":
        c = symopt.Subspace(torch.randn(draw(st.integers(1, numel)), numel, generator=g, dtype=torch.float64),
                            lam, seed=seed)
    else:
        mask = torch.rand(shape, generator=g) < 0.5
        mask.view(-1)[0] = True
        c = symopt.FixedZeros(mask, lam, seed=seed)
    value = torch.randn(shape, generator=g, dtype=torch.float64)
    value[torch.rand(shape, generator=g) < 0.3] = 0.0  # exact zeros exercise the live-factor path
    return c, value.to(draw(dtypes))


@given(constrained_case())
def test_registration_preserves_value_and_penalty_bounds_norm(case):
    c, value = case
    module = nn.Module()
    module.p = nn.Parameter(value.clone())
    expected = value
    if isinstance(c, symopt.LowRank) and c.max_rank < min(c.matrix(value).shape):
        # the value may have rank > max_rank: registration keeps its best rank-r approximation
        P, S, Qh = torch.linalg.svd(c.matrix(value.double()), full_matrices=False)
        r = c.max_rank
        expected = ((P[:, :r] * S[:r]) @ Qh[:r]).reshape(value.shape).to(value.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning
        symopt.constrain(module, "p", c)
    tol = 1e-5 if value.dtype == torch.float32 else 1e-10
    scale = 1.0 + float(value.abs().max())
    assert float((module.p.detach() - expected).abs().max()) <= tol * scale
    pen = float(symopt.penalty(module))
    induced = c.strength * float(c.induced_norm(module.p.detach()))
    assert pen >= induced * (1 - 1e-4) - 1e-6  # AM–GM: decay ≥ induced norm, equality at balance
    assert symopt.report(module)[0].balance >= 0.0


@given(constrained_case(), st.floats(1e-8, 1e-1))
def test_finalize_lands_on_the_set(case, tol):
    c, value = case
    module = nn.Module()
    module.p = nn.Parameter(value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        symopt.constrain(module, "p", c)
    cert = symopt.finalize(module, tol=tol, force=True)
    after = module.p.detach()
    atol = 1e-5 if value.dtype == torch.float32 else 1e-12
    assert cert.entries[0].violation_after <= max(tol, atol * (1 + float(value.abs().max())))
    if c.linear:
        assert float((c.project(after) - after).abs().max()) <= atol * (1 + float(value.abs().max()))
    assert isinstance(module.p, nn.Parameter)
