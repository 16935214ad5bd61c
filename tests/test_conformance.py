"""The conformance suite: every registered constraint kind (``symopt.constraints.KINDS``, filled by each
kind's own file) passes these tests by existing. A new kind joins by defining ``kind`` and ``example``;
nothing here lists kinds.

For each kind, with its example: registration keeps the value; assignment round-trips; training
``½‖θ − t‖²`` with the decay lands on the convex optimum (the prox of λ·norm for penalty kinds; the
projection for exact-penalty kinds above their multipliers, and a violated set just below them), where
the decay equals λ·induced_norm (balance) and the KKT residual vanishes; state_dict and deepcopy round
trips; torch.compile; bad inputs refused with nothing changed.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

import symopt
from symopt.constraints import KINDS

EXPORT = importlib.import_module("symopt.export")  # the module (symopt.export is the function)

DT = torch.float64
KIND_NAMES = sorted(KINDS)


class Holder(nn.Module):
    """One parameter per tensor of the example, ``p0``, ``p1``, ..."""

    def __init__(self, values):
        super().__init__()
        for i, v in enumerate(values):
            self.register_parameter(f"p{i}", nn.Parameter(v.clone()))


def _draw(example, seed: int):
    g = torch.Generator().manual_seed(seed)
    draw = example.draw or (lambda z: z)
    return [draw(torch.randn(shape, generator=g, dtype=DT)) for shape in example.shapes]


def _register(name: str, seed: int = 0, constraint=None):
    example = KINDS[name].example()
    values = _draw(example, seed)
    model = Holder(values)
    constraint = constraint or example.make()
    names = [f"p{i}" for i in range(len(values))]
    handle = symopt.constrain(model, names if constraint.multi_tensor else names[0], constraint)
    return model, handle, values


def _target(c, values):
    return values if c.multi_tensor else values[0]


def _fit(model, targets, steps: int = 60):
    """Minimise Σ ½‖θ_j − t_j‖² + decay by L-BFGS (float64, strong Wolfe) under symopt.bind."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=100, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-15, tolerance_change=0.0)
    symopt.bind(opt)
    handle = symopt.list_constraints(model)[0]

    def closure():
        opt.zero_grad()
        loss = sum(0.5 * (v - t).square().sum() for v, t in zip(handle.values(), targets)) + symopt.penalty(model)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return [v.detach() for v in handle.values()]


@pytest.mark.parametrize("name", KIND_NAMES)
def test_registration_keeps_the_value(name):
    model, handle, values = _register(name)
    for got, want in zip(handle.values(), values):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_assignment_round_trips(name):
    model, handle, _ = _register(name)
    new = _draw(KINDS[name].example(), seed=1)[0]
    member = handle.members[0]
    with torch.no_grad():
        setattr(member.module, member.tensor, new)
    assert torch.allclose(member.value, new, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_training_lands_on_the_convex_optimum(name):
    """½‖θ − t‖² + λ‖θ‖ has the closed-form minimiser prox(t); an exact penalty above its multipliers
    gives the projection of t instead. At the trained point the decay is λ·induced_norm (balanced
    factors) and the KKT residual vanishes."""
    model, handle, values = _register(name)
    c = handle.constraint
    targets = [2 * t for t in _draw(KINDS[name].example(), seed=2)]
    if c.linear:
        star = c.project(_target(c, targets))
        star_list = list(star.unbind(0)) if c.multi_tensor else [star]
        lam_star = float(c.dual_norm(_target(c, [s - t for s, t in zip(star_list, targets)])))
        c.strength = 1.05 * lam_star
        expected = star_list
    else:
        out = c.prox(_target(c, targets), 1.0)
        expected = list(out.unbind(0)) if c.multi_tensor else [out]
    theta = _fit(model, targets)
    for got, want in zip(theta, expected):
        assert torch.allclose(got, want, atol=1e-6), float((got - want).abs().max())
    grads = [v - t for v, t in zip(theta, targets)]
    assert c.kkt_residual(_target(c, theta), _target(c, grads), 1e-8) <= 1e-5
    if c.linear:
        assert c.infeasibility(_target(c, theta)) <= 1e-8
    induced = c.strength * float(c.induced_norm(_target(c, theta)))
    assert float(handle.penalty()) == pytest.approx(induced, rel=1e-5, abs=1e-7)
    assert isinstance(c.structure(_target(c, theta), 1e-8), str)


@pytest.mark.parametrize("name", [n for n in KIND_NAMES if KINDS[n].linear])
def test_exact_penalty_threshold_is_sharp(name):
    """Below the multipliers (0.9·λ*) the set is not reached: the threshold is the multipliers."""
    model, handle, _ = _register(name)
    c = handle.constraint
    targets = [2 * t for t in _draw(KINDS[name].example(), seed=2)]
    star = c.project(_target(c, targets))
    star_list = list(star.unbind(0)) if c.multi_tensor else [star]
    c.strength = 0.9 * float(c.dual_norm(_target(c, [s - t for s, t in zip(star_list, targets)])))
    theta = _fit(model, targets)
    assert c.infeasibility(_target(c, theta)) > 1e-4


@pytest.mark.parametrize("name", KIND_NAMES)
def test_state_dict_round_trip(name):
    model, handle, _ = _register(name)
    _fit(model, [2 * t for t in _draw(KINDS[name].example(), seed=2)], steps=2)
    fresh, fresh_handle, _ = _register(name, seed=5)
    fresh.load_state_dict(model.state_dict())
    for got, want in zip(fresh_handle.values(), handle.values()):
        assert torch.equal(got, want)
    assert fresh_handle.strength == pytest.approx(handle.strength)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_deepcopy_is_independent(name):
    model, handle, _ = _register(name)
    groups = symopt.param_groups(model, lr=0.1)  # the original's policy follows these groups
    clone = copy.deepcopy(model)
    clone_handle = symopt.list_constraints(clone)[0]
    assert clone_handle.kind == handle.kind
    for got, want in zip(clone_handle.values(), handle.values()):
        assert torch.equal(got, want)
    before = [v.detach().clone() for v in handle.values()]
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)
    for got, want in zip(handle.values(), before):
        assert torch.equal(got, want)
    clone_handle.constraint.strength = 123.0  # the copy follows no optimizer group of the original
    assert all(g["weight_decay"] != 123.0 for g in groups)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_compiles(name):
    model, handle, _ = _register(name)

    def loss_of(m):
        return sum(v.square().sum() for v in symopt.list_constraints(m)[0].values()) + symopt.penalty(m)

    eager = loss_of(model)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(lambda: loss_of(model), backend="aot_eager")()
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    assert torch.allclose(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_bad_inputs_change_nothing(name):
    example = KINDS[name].example()
    values = _draw(example, 0)
    names = [f"p{i}" for i in range(len(values))]

    # An integer tensor: TypeError naming the parameter, nothing registered.
    ints = nn.Module()
    for i, v in enumerate(values):
        ints.register_parameter(f"p{i}", nn.Parameter(v.to(torch.int64), requires_grad=False))
    c = example.make()
    with pytest.raises(TypeError, match="p0"):
        symopt.constrain(ints, names if c.multi_tensor else names[0], c)
    assert symopt.list_constraints(ints) == [] and c.attached_to is None

    # A typo in the name: ValueError listing the parameters, nothing registered.
    holder = Holder(values)
    state = {k: v.clone() for k, v in holder.state_dict().items()}
    c = example.make()
    with pytest.raises(ValueError, match="no parameter"):
        symopt.constrain(holder, ["p0", "nope"] if c.multi_tensor else "nope", c)
    assert symopt.list_constraints(holder) == []
    assert all(torch.equal(holder.state_dict()[k], v) for k, v in state.items())

    # A registered object reused: ValueError; a bad strength: ValueError, λ unchanged.
    model, handle, _ = _register(name)
    with pytest.raises(ValueError, match="already attached"):
        symopt.constrain(Holder(values), names if handle.constraint.multi_tensor else names[0], handle.constraint)
    lam = handle.strength
    for bad in (-1.0, float("nan"), 0.0):
        with pytest.raises(ValueError, match="strength"):
            handle.constraint.strength = bad
    assert handle.strength == lam


@pytest.mark.parametrize("name", [n for n in KIND_NAMES if not KINDS[n].linear])
def test_dual_norm_exceeds_is_the_dual_norms_comparison(name):
    """`dual_norm_exceeds` answers exactly as ``dual_norm(g) > level``, just below and above the norm
    (a kind's cheap lower bound may settle it, never wrongly)."""
    model, handle, values = _register(name)
    c = handle.constraint
    for seed in (1, 2):
        grad = _target(c, _draw(KINDS[name].example(), seed))
        norm = float(c.dual_norm(grad))
        for level in (0.5 * norm, (1 - 1e-9) * norm, norm, (1 + 1e-9) * norm, 2 * norm):
            assert c.dual_norm_exceeds(grad, level) == (norm > level)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_capabilities_answer(name):
    """Every capability the layers above ask is answered (by the kind or the base's default)."""
    model, handle, values = _register(name)
    c = handle.constraint
    value = _target(c, [v.detach() for v in handle.values()])
    assert c.compressed_structure() is None or c.compressed_structure() in EXPORT.REWRITES
    key = c.structure_key(torch.stack(list(value)) if c.multi_tensor else value, 1e-8)
    assert key is None or hash(key) is not None
    width, full = c.working_width(tuple(values[0].shape))
    assert width is None or 0 < width <= full
    rank = c.fixed_rank(tuple(values[0].shape))
    assert rank is None or rank >= 1
    if not c.linear:  # a penalty kind promises no set, or one its factors hold by construction
        assert c.infeasibility(value) <= 1e-10
