"""Budgets that arrive during training and land: ``total_steps=N`` ramps the budget with the cubic schedule
of gradual pruning and, at the end of the ramp, puts the dropped atoms' factors on the fixed subspace of
their mirror symmetry. From then on the budget holds exactly (whatever the optimizer, clipping or LR
schedule), and ``symopt.finalize(model)`` succeeds with its default arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import symopt
from helpers import optimizer_step, resumed_matches
from symopt.constraints.budget import scheduled_count

DT = torch.float64
STEPS = 400


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, 12, generator=g, dtype=DT)
    W = torch.zeros(12, 6, dtype=DT)
    W[:4, :3] = torch.randn(4, 3, generator=g, dtype=DT)
    return X, X @ W + 0.05 * torch.randn(200, 6, generator=g, dtype=DT)


def _narrow_low_rank(model):
    """Factors of width 3 on the 6 × 12 matrix: narrow (3·18 ≤ 72), so the layer computes x V Uᵀ between
    the budget's readings and the landing runs on the factors (the random init truncated to rank 3)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return symopt.low_rank(model, "weight", max_rank=3, target_rank=2, total_steps=STEPS)


# kind → (register it on a 6×12 Linear with a budget landing at the end of the ramp, count the atoms left)
KINDS = {
    "sparse": (lambda m: symopt.sparse(m, "weight", max_nonzero=9, total_steps=STEPS),
               lambda w: int((w != 0).sum()), 9),
    "nonnegative": (lambda m: symopt.nonnegative(m, "weight", max_nonzero=9, total_steps=STEPS),
                    lambda w: int((w != 0).sum()), 9),
    "group_sparse": (lambda m: symopt.group_sparse(m, "weight", dim=1, max_groups=4, total_steps=STEPS),
                     lambda w: int((w.abs().sum(0) != 0).sum()), 4),
    "low_rank": (lambda m: symopt.low_rank(m, "weight", target_rank=2, total_steps=STEPS),
                 lambda w: int((torch.linalg.svdvals(w) > 1e-12).sum()), 2),
    "low_rank_narrow": (_narrow_low_rank, lambda w: int((torch.linalg.svdvals(w) > 1e-12).sum()), 2),
}

OPTIMIZERS = {
    "adam": lambda groups: (torch.optim.Adam(groups, lr=1e-2), None, None),
    "sgd_momentum_clipped": lambda groups: (torch.optim.SGD(groups, lr=0.05, momentum=0.9), None, 0.5),
    "sgd_onecycle_clipped": lambda groups: (
        opt := torch.optim.SGD(groups, lr=0.05, momentum=0.9),
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=STEPS), 0.5),
    "adam_cosine": lambda groups: (
        opt := torch.optim.Adam(groups, lr=1e-2),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS), None),
}


def _train(kind: str, optimizer: str, steps: int = STEPS):
    torch.manual_seed(0)
    X, Y = _data()
    model = nn.Linear(12, 6, bias=False).double()
    if kind == "nonnegative":
        with torch.no_grad():
            model.weight.abs_()
    register, count, budget = KINDS[kind]
    handle = register(model)
    opt, schedule, clip = OPTIMIZERS[optimizer](symopt.param_groups(model, lr=1e-2))
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (model(X) - Y).square().mean()).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if schedule:
            schedule.step()
        counts.append(count(model.weight.detach()))
    return model, handle, counts, budget


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_budget_lands_exactly_and_finalize_needs_no_force(kind, optimizer):
    model, handle, counts, budget = _train(kind, optimizer)
    land = round(0.75 * STEPS)
    assert all(c == budget for c in counts[land:])        # exact from the landing to the end
    assert "landed" in repr(handle.constraint)
    assert symopt.finalize(model).ok                       # default tol, no force
    assert KINDS[kind][1](model.weight.detach()) == budget  # never a layer killed: exactly the budget


def test_no_decay_before_the_ramp_and_the_cubic_count_on_it():
    torch.manual_seed(0)
    X, Y = _data()
    model = nn.Linear(12, 6, bias=False).double()
    handle = symopt.sparse(model, "weight", max_nonzero=9, total_steps=STEPS, ramp=(0.25, 0.5))
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05)
    for _ in range(int(0.25 * STEPS)):
        opt.zero_grad()
        (0.5 * (model(X) - Y).square().mean()).backward()
        opt.step()
    assert handle.strength == 0.0 and opt.param_groups[0]["weight_decay"] == 0.0  # warm-up: plain training
    assert scheduled_count(100, 72, 9, 100, 200) == 71 and scheduled_count(150, 72, 9, 100, 200) == 17
    assert scheduled_count(199, 72, 9, 100, 200) == 10 and scheduled_count(200, 72, 9, 100, 200) == 9


def _rank_data():
    X = torch.randn(300, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return X, X @ torch.randn(128, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["sparse", "low_rank"])
def test_a_resumed_run_lands_and_holds_the_same_atoms(kind):
    """model + optimizer state_dicts saved mid-ramp: the resumed run follows the same schedule (the step
    count and the landing mask are buffers) and ends bit-identical. A rank budget on a 96×128 layer
    reads its singular values from a range tracked across readings (one subspace step from the last
    basis): the basis is in the state_dict too (without it the factors differed after the resume)."""
    X, Y = _rank_data() if kind == "low_rank" else _data()

    def build():
        torch.manual_seed(0)
        if kind == "low_rank":
            model = nn.Linear(128, 96, bias=False).double()
            symopt.low_rank(model, "weight", target_rank=4, total_steps=200)
        else:
            model = nn.Linear(12, 6, bias=False).double()
            symopt.sparse(model, "weight", max_nonzero=9, total_steps=200)
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
        symopt.bind(opt)
        return model, opt

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * (model(X) - Y).square().mean()).backward()
            opt.step()

    model, again = resumed_matches(build, run, 120, 80)
    assert torch.equal(again.weight, model.weight)
    if kind == "low_rank":
        state = model.state_dict()
        assert {"parametrizations.weight.0.tracked_range_point", "parametrizations.weight.0.tracked_range_score"} <= set(state)
        assert int(torch.linalg.matrix_rank(again.weight.detach())) == 4
    else:
        assert int((again.weight != 0).sum()) == 9


@pytest.mark.parametrize("make,match", [
    (lambda: symopt.Sparse(max_nonzero=3, total_steps=0), "total_steps must be an int >= 1"),
    (lambda: symopt.Sparse(max_nonzero=3, total_steps=1.5), "total_steps must be an int >= 1"),
    (lambda: symopt.Sparse(max_nonzero=3, total_steps=100, ramp=(0.5, 1.2)), "cannot be after total_steps"),
    (lambda: symopt.Sparse(max_nonzero=3, total_steps=100, ramp=(0.6, 0.5)), "0 <= start < end <= 1"),
    (lambda: symopt.Sparse(0.1, total_steps=100), "total_steps schedules a budget"),
    (lambda: symopt.Sparse(symopt.Fixed(0.1), max_nonzero=3, total_steps=100), "do not pass a Strength"),
    (lambda: symopt.Sparse(max_nonzero=3, ramp=(0.0, 0.25)), "give total_steps= .* or drop ramp"),
])
def test_bad_schedules_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("register", [
    lambda m: symopt.sparse(m, "0.weight", density=0.1, ramp=(0.0, 0.25)),
    lambda m: symopt.sparse(m, ["0.weight", "2.weight"], density=0.1, ramp=(0.0, 0.25)),
    lambda m: symopt.group_sparse(m, ["0.weight", "0.bias"], max_groups=4, ramp=(0.0, 0.25)),
    lambda m: symopt.low_rank(m, "0.weight", target_rank=2, ramp=(0.0, 0.25)),
    lambda m: symopt.tie(m, ["0.weight", "2.weight"], ramp=(0.0, 0.5)),
], ids=["sparse", "pooled", "unit_groups", "low_rank", "tie"])
def test_a_ramp_without_total_steps_is_refused_before_anything_changes(register):
    """A ramp places a schedule within total_steps: given without it, it would be ignored (no schedule, no
    landing), so it is refused, naming both, and the model is left as it was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="ramp=.* give total_steps="):
        register(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_every_default_ramp_is_the_one_the_check_knows():
    """The verbs and kinds spell the default ramp in their signatures; `check_total_steps` refuses any other
    ramp without total_steps, so every default must be `budget.DEFAULT_RAMP`."""
    import importlib
    import inspect
    import pkgutil

    import symopt.constraints
    from symopt import verbs
    from symopt.constraints.budget import DEFAULT_RAMP

    modules = [verbs] + [importlib.import_module(f"symopt.constraints.{info.name}")
                         for info in pkgutil.iter_modules(symopt.constraints.__path__)]
    defaults = {}
    for module in modules:
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                try:
                    parameter = inspect.signature(obj).parameters.get("ramp")
                except (TypeError, ValueError):
                    continue
                if parameter is not None and parameter.default is not inspect.Parameter.empty:
                    defaults[f"{module.__name__}.{name}"] = parameter.default
    assert len(defaults) >= 12 and "symopt.verbs.attention_heads" in defaults and "symopt.constraints.base.Constraint" in defaults
    assert {where: d for where, d in defaults.items() if d != DEFAULT_RAMP} == {}


def test_a_pooled_budget_lands_over_all_its_tensors():
    """One budget over two layers with total_steps: exactly k entries over both from the landing on,
    allocated between the layers by the training, and finalize needs no force."""
    torch.manual_seed(0)
    X, Y = _data()
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    handle = symopt.sparse(model, ["0.weight", "2.weight"], max_nonzero=40, total_steps=STEPS)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    counts = []
    for _ in range(STEPS):
        opt.zero_grad()
        (0.5 * (model(X) - Y).square().mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        counts.append([int((model[i].weight != 0).sum()) for i in (0, 2)])
    land = round(0.75 * STEPS)
    assert all(sum(c) == 40 for c in counts[land:])
    assert counts[-1][0] != counts[-1][1]
    assert "landed" in repr(handle.constraint)
    assert symopt.finalize(model).ok


def mixed_precision_run(kind: str, amp_dtype: torch.dtype, scaler=None, device: str = "cpu"):
    """The budget ``kind`` on a float32 layer trained by Adam under ``device``'s autocast to ``amp_dtype``;
    with ``scaler`` (a torch.amp.GradScaler) the loss is scaled before backward and the scaler is handed
    to symopt.bind. Returns ``(model, handle, atoms counted each step, λ each step)``. The rank is
    counted numerically (σ above float32 rounding of σ_max), since a float32 product of rank 2 has
    singular values ~1e-7·σ_max. (Also the CUDA tests' run, tests/test_gpu.py.)"""
    torch.manual_seed(0)
    X, Y = (t.float().to(device) for t in _data())
    model = nn.Linear(12, 6, bias=False).to(device)
    if kind == "nonnegative":
        with torch.no_grad():
            model.weight.abs_()
    register, count, _ = KINDS[kind]
    handle = register(model)
    if kind.startswith("low_rank"):
        def count(w):
            sigma = torch.linalg.svdvals(w.float())
            return int((sigma > 6 * torch.finfo(torch.float32).eps * sigma.max()).sum())
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    if scaler is not None:
        symopt.bind(opt, scaler=scaler)
    counts, strengths = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        with torch.autocast(device, dtype=amp_dtype):
            out = model(X)
        loss = 0.5 * (out.float() - Y).square().mean()
        optimizer_step(opt, loss, scaler)
        counts.append(count(model.weight.detach()))
        strengths.append(handle.strength)
    return model, handle, counts, strengths


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_budget_lands_under_mixed_precision(kind):
    """A float32 model trained under CPU autocast (bfloat16 matmuls) by Adam: the budget lands exactly
    at the end of the ramp and finalize needs no force."""
    model, handle, counts, _ = mixed_precision_run(kind, torch.bfloat16)
    assert all(c == KINDS[kind][2] for c in counts[round(0.75 * STEPS):])
    assert "landed" in repr(handle.constraint)
    assert symopt.finalize(model).ok


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_budget_under_float16_and_a_grad_scaler_lands_with_the_unscaled_lambda(kind):
    """float16 autocast with a GradScaler (the loss ×2¹⁶ before backward, the gradients unscaled after it)
    handed to symopt.bind: λ follows the unscaled run's (the budget reads the gradient during backward,
    where it is still scaled; unbound, λ came out ~10⁴× too large), the budget lands exactly, and
    finalize needs no force."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10 ** 6)
    model, handle, counts, strengths = mixed_precision_run(kind, torch.float16, scaler)
    _, _, _, unscaled = mixed_precision_run(kind, torch.float16)
    budget = KINDS[kind][2]
    assert scaler.get_scale() == 2.0 ** 16  # no step skipped: the same trajectory as the unscaled run's
    before_landing = slice(round(0.3 * STEPS), round(0.75 * STEPS) - 1)
    ratios = torch.tensor(strengths[before_landing]) / torch.tensor(unscaled[before_landing])
    # float16 rounding alone moves λ by up to ~2× from the float32-gradient run's; unbound, ~10⁴×
    assert float(ratios.min()) > 0.25 and float(ratios.max()) < 4.0 and 0.5 < float(ratios.median()) < 2.0
    assert all(c == budget for c in counts[round(0.75 * STEPS):])
    assert "landed" in repr(handle.constraint)
    assert symopt.finalize(model).ok


def _sparse_20(layer):
    return symopt.sparse(layer, "weight", max_nonzero=20, total_steps=40, ramp=(0.0, 0.5))


def _narrow_rank_2(layer):
    import warnings

    with warnings.catch_warnings():  # (width 4 on 8 × 8: narrow, the layer skips W between readings)
        warnings.simplefilter("ignore", UserWarning)
        return symopt.low_rank(layer, "weight", max_rank=4, target_rank=2, total_steps=40, ramp=(0.0, 0.5))


@pytest.mark.parametrize("register, atoms, budget", [
    (_sparse_20, lambda w: int((w != 0).sum()), 20),
    (_narrow_rank_2, lambda w: int((torch.linalg.svdvals(w) > 1e-12).sum()), 2)], ids=["sparse", "narrow_low_rank"])
def test_a_layer_applied_twice_a_step_counts_one_step_and_reads_the_whole_gradient(register, atoms, budget):
    """A layer applied twice in a forward pass (a recurrent cell; a block shared across depth) forms θ
    twice, and each use's gradient hook sees its own part of ∂ℓ/∂θ. The backward pass is one step with
    the parts' sum: λ's course, the landing step and the weights equal those of the same model that
    forms θ once and uses it twice (one hook, the whole gradient); after the landing, holding the dropped
    atoms at 0 does not write again to factors the pass has used. Before, each use counted a step (a
    budget of total_steps=N landed at half its ramp), and the second use's hold broke the backward pass."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 8, generator=g, dtype=DT), torch.randn(64, 8, generator=g, dtype=DT)

    def make():
        torch.manual_seed(0)
        layer = nn.Linear(8, 8).double()
        return layer, register(layer)

    twice, handle_twice = make()
    once, handle_once = make()

    def applied_twice():
        return (twice(torch.tanh(twice(x))) - y).square().mean()

    def formed_once():
        w = once.weight  # θ formed once, used twice: one hook, the whole gradient
        hidden = torch.tanh(nn.functional.linear(x, w, once.bias))
        return (nn.functional.linear(hidden, w, once.bias) - y).square().mean()

    from helpers import recorded_training

    record = lambda handle: lambda: (handle.strength, handle.constraint.policy.has_landed())  # noqa: E731
    course = recorded_training(twice, applied_twice, 30, record(handle_twice), lr=0.05)
    reference = recorded_training(once, formed_once, 30, record(handle_once), lr=0.05)
    assert [landed for _, landed in course].index(True) == [landed for _, landed in reference].index(True) == 20
    assert [lam for lam, _ in course] == pytest.approx([lam for lam, _ in reference], rel=1e-10)
    torch.testing.assert_close(twice.weight, once.weight, rtol=1e-10, atol=1e-12)
    assert atoms(twice.weight.detach()) == budget


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_half_precision_lands_on_time_and_keeps_its_step_count_exact(dtype):
    """``model.bfloat16()`` / ``model.half()`` after registering: the policies' state (step counts, log
    λ) stays float64, so the budget lands at the end of its ramp and a schedule reads the true step.
    Before, the cast took the step count along, and a bfloat16 count stops at 256 (256 + 1 rounds to
    256): a budget never landed (measured with total_steps=1000: 72 of 72 entries alive after 1000
    steps)."""
    torch.manual_seed(0)
    X, Y = _data()
    model = nn.Sequential(nn.Linear(12, 6, bias=False), nn.Linear(6, 6, bias=False))
    budget = symopt.sparse(model, "0.weight", max_nonzero=9, total_steps=STEPS)
    ramp = symopt.Scheduled(lambda step: 1e-3 * (1 + step))
    symopt.sparse(model, "1.weight", strength=ramp)
    model.to(dtype)
    policy = budget.constraint.policy
    assert {policy.step.dtype, policy.controller.log_strength.dtype, ramp.step.dtype} == {torch.float64}
    # (Adam's default eps, 1e-8, is 0 in float16: the first step divided by 0 and the run was NaN throughout)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2, eps=1e-4), lr=1e-2, eps=1e-4)
    counts = []
    for _ in range(STEPS):
        opt.zero_grad()
        (0.5 * (model(X.to(dtype)).float() - Y).square().mean()).backward()
        opt.step()
        counts.append(int((model[0].weight != 0).sum()))
    assert bool(torch.isfinite(model[0].weight).all())
    assert all(c == 9 for c in counts[round(0.75 * STEPS):]) and "landed" in repr(budget.constraint)
    assert int(ramp.step) == STEPS and ramp.value() == pytest.approx(1e-3 * (1 + STEPS))
    assert int(policy.step) == round(0.75 * STEPS)  # (a landed budget stops counting)
