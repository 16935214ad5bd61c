"""Hardening: every failure mode ends in a status or a clear error, and nothing is left corrupted.

solve returns ``nan`` / ``diverged`` / ``stalled`` with a message (never a torch exception); the
problem builders reject bad data by name; :class:`symopt.Guard` skips bad batches and rolls broken
steps back (parameters, buffers, optimizer state); finalize / export refuse NaN.
"""

import math
import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt.problems import Problem, lasso, logistic_l1, make_lasso, matrix_completion
from symopt.solver.stop import Watchdog as _Watchdog

DT = torch.float64


def custom(loss, constraint=lambda: symopt.Sparse(0.1), shape=(3,)):
    return Problem("custom", shape, loss, constraint)


class WrongSign(torch.autograd.Function):
    """(θ − 1)² summed, with the gradient's sign flipped: a wrongly differentiated loss."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return (t - 1).square().sum()

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return -2 * (t - 1) * g


# -- solve: statuses -------------------------------------------------------------------------------
def test_nan_at_the_start_is_a_status():
    r = symopt.solve(custom(lambda t: t.sum() * float("nan")))
    assert r.status == "nan" and "θ = 0" in r.message and r.iterations == 0
    assert torch.equal(r.x, torch.zeros(3, dtype=DT))


def test_infinite_gradient_at_the_start_is_a_status():
    r = symopt.solve(custom(lambda t: t.abs().sqrt().sum()))
    assert r.status == "nan" and "gradient" in r.message


def test_nan_mid_run_returns_the_last_finite_point():
    # log(1 − Σθ) has a pole torch's strong-Wolfe line search jumps over
    r = symopt.solve(custom(lambda t: -torch.log(1 - t.sum()) - 5 * t.sum()), method="lbfgs")
    assert r.status == "nan" and "iteration 1" in r.message and "last finite" in r.message
    assert bool(torch.isfinite(r.x).all())


def test_the_lean_loop_backs_off_a_pole_and_reports_nan_everywhere():
    # The default loop counts a NaN trial as too long a step: it stays inside the domain and solves it.
    r = symopt.solve(custom(lambda t: -torch.log(1 - t.sum()) - 5 * t.sum()))
    assert r.status == "optimal" and abs(float(r.x.sum()) - (1 - 1 / 4.9)) < 1e-6
    # A loss that turns NaN everywhere mid-run (the clean run takes 25-55 evaluations, depending on
    # where rounding stops its last line search): nan, with the last finite certified point.
    calls = {"n": 0}

    def poisoned(t):
        calls["n"] += 1
        value = (t - 1).square().sum()
        return value * torch.nan if calls["n"] > 15 else value

    r = symopt.solve(custom(poisoned), max_iter=50)
    assert r.status == "nan" and "last finite" in r.message and "NaN or Inf" in r.message
    assert bool(torch.isfinite(r.x).all())


@pytest.mark.parametrize("method", ["auto", "lbfgs", "momentum"])
def test_unbounded_below_is_diverged(method):
    r = symopt.solve(custom(lambda t: -10 * t.sum()), method=method)
    assert r.status == "diverged" and "bounded below?" in r.message
    assert bool(torch.isfinite(r.x).all()) and math.isfinite(r.objective)


def test_wrong_gradient_momentum_step_collapse_is_diverged():
    A = torch.tensor([[1.0, 0, 0]], dtype=DT)
    problem = custom(lambda t: WrongSign.apply(t), lambda: symopt.Subspace(A, 5.0))
    r = symopt.solve(problem, method="momentum", max_iter=50)
    assert r.status == "diverged" and "step size collapsed" in r.message


def test_wrong_gradient_lbfgs_stalls_and_says_why():
    r = symopt.solve(custom(lambda t: WrongSign.apply(t)), max_iter=50)
    assert r.status == "stalled" and "may not describe the objective" in r.message


def test_watchdog_flags_a_rising_objective_and_only_that():
    dog = _Watchdog(patience=10)
    assert all(dog.verdict(1.0 + 0.1 * i, 1.0) is None for i in range(10))
    assert "rose in each of the last 10" in dog.verdict(3.0, 1.0)
    calm = _Watchdog(patience=10)
    values = [1.0, 1.1, 0.9, 1.2, 0.8] * 10  # oscillating, never 10 rises in a row
    assert all(calm.verdict(v, 1.0) is None for v in values)


@pytest.mark.parametrize("loss,match", [
    (lambda t: t @ torch.ones(4, dtype=DT), "fails at θ = 0 of shape"),
    (lambda t: t * 2, "must return a scalar tensor"),
    (lambda t: torch.ones((), dtype=DT), "does not depend on θ"),
])
def test_a_loss_that_cannot_be_evaluated_is_a_clear_error(loss, match):
    with pytest.raises(ValueError, match=match):
        symopt.solve(custom(loss))


@pytest.mark.parametrize("kwargs,match", [
    (dict(inner=0), "inner must be"), (dict(history_size=-1), "history_size must be"),
    (dict(tol=True), "tol must be"), (dict(max_rounds=1.5), "max_rounds must be"),
])
def test_more_bad_solver_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        symopt.solve(make_lasso(n=20, d=10, nonzeros=2), **kwargs)


def test_solve_needs_a_problem():
    with pytest.raises(TypeError, match="expected a symopt.problems.Problem"):
        symopt.solve("lasso")


def test_solve_leaves_the_problem_unchanged():
    problem = make_lasso(n=40, d=30, nonzeros=3)
    before = {k: v.clone() for k, v in problem.data.items()}
    symopt.solve(problem)
    bad = custom(lambda t: -torch.log(1 - t.sum()))
    symopt.solve(bad)
    assert all(torch.equal(problem.data[k], v) for k, v in before.items())


# -- problem builders ------------------------------------------------------------------------------
@pytest.mark.parametrize("build,error,match", [
    (lambda: lasso(torch.randn(5, 3, dtype=torch.complex64), torch.randn(5), 0.1), TypeError, "X is complex"),
    (lambda: lasso("data", torch.randn(5), 0.1), TypeError, "X must be a tensor"),
    (lambda: lasso(torch.randn(0, 3), torch.randn(0), 0.1), ValueError, "X is empty"),
    (lambda: lasso(torch.randn(5, 3), torch.tensor([1.0, float("inf"), 0, 0, 0]), 0.1), ValueError,
     r"y contains NaN or Inf \(1 of 5"),
    (lambda: matrix_completion(torch.randn(3, 3), torch.full((3, 3), 0.5), 0.1), TypeError, "mask must be bool"),
    (lambda: matrix_completion(torch.full((2, 2), float("nan")), torch.ones(2, 2, dtype=torch.bool), 0.1),
     ValueError, "M contains NaN"),
    (lambda: symopt.problems.group_lasso(torch.randn(5, 4), torch.randn(5), [[0, 1], []], 0.1), ValueError,
     "non-empty list"),
    (lambda: symopt.problems.group_lasso(torch.randn(5, 4), torch.randn(5), [[0, 1], [2]], 0.1), ValueError,
     "must cover every entry"),
])
def test_builders_reject_bad_data(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_completion_ignores_unobserved_nan_and_accepts_01_masks():
    M = torch.randn(6, 5, dtype=DT)
    mask = torch.rand(6, 5) < 0.6
    holes = M.clone()
    holes[~mask] = float("nan")  # the usual way to write "unobserved"
    a = symopt.solve(matrix_completion(holes, mask, 0.1))
    b = symopt.solve(matrix_completion(M, mask.double(), 0.1))
    assert a.status == b.status == "optimal"
    assert torch.allclose(a.x, b.x, atol=1e-8)


def test_boolean_labels_are_accepted_for_logistic():
    X = torch.randn(30, 4, dtype=DT)
    y = X[:, 0] > 0
    assert symopt.solve(logistic_l1(X, y, 0.05)).status == "optimal"


# -- training: auto strength, finalize, export ------------------------------------------------------
def test_a_nan_gradient_does_not_poison_auto_strength():
    model = nn.Linear(3, 1).double()
    symopt.subspace(model, "weight", torch.tensor([[1.0, -1.0, 0.0]], dtype=DT))
    x = torch.randn(8, 3, dtype=DT)
    model(x).square().mean().backward()
    good = symopt.list_constraints(model)[0].strength
    x[0, 0] = float("nan")
    model(x).square().mean().backward()
    assert math.isfinite(symopt.list_constraints(model)[0].strength) and symopt.list_constraints(model)[0].strength == good


def _broken_sparse_linear():
    model = nn.Linear(3, 2).double()
    symopt.sparse(model, "weight", strength=0.1)
    with torch.no_grad():
        model.parametrizations.weight.original0[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("call", [
    lambda m: symopt.finalize(m, force=True),
    lambda m: symopt.export(m, force=True),
])
def test_finalize_and_export_refuse_nan_and_change_nothing(call):
    model = _broken_sparse_linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN or Inf in 'weight'"):
        call(model)
    assert symopt.list_constraints(model)  # still parametrized
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) or (torch.isnan(v).any() and torch.equal(after[k].isnan(), v.isnan()))
               for k, v in before.items())


def test_report_and_certify_do_not_raise_on_nan():
    model = _broken_sparse_linear()
    assert "nan" in str(symopt.report(model))
    symopt.certify(model)


# -- the guard -------------------------------------------------------------------------------------
def _guarded(lr=0.1, optimizer="adam", **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    symopt.subspace(model[0], "weight", torch.randn(2, 32, dtype=DT))  # auto strength: estimate buffers
    symopt.sparse(model[2], "weight", strength=1e-3)
    groups = symopt.param_groups(model, lr=lr)
    opt = torch.optim.Adam(groups, lr=lr) if optimizer == "adam" else torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return model, opt, symopt.guard(model, opt, **options)


def _train_step(model, opt, guard, x, y):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    return guard.step(loss)


def _state(model, opt):
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in opt.state.items()}
    return model_state, opt_state


def _same(a, b):
    (ma, oa), (mb, ob) = a, b
    same_model = list(ma) == list(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    same_opt = oa.keys() == ob.keys() and all(
        oa[p].keys() == ob[p].keys() and all(torch.equal(oa[p][k], ob[p][k]) if torch.is_tensor(oa[p][k])
                                             else oa[p][k] == ob[p][k] for k in oa[p]) for p in oa)
    return same_model and same_opt


def test_guard_skips_a_corrupt_batch_without_touching_anything():
    model, opt, guard = _guarded()
    x, y = torch.randn(16, 4, dtype=DT), torch.randn(16, 1, dtype=DT)
    for _ in range(3):
        assert _train_step(model, opt, guard, x, y)
    before = _state(model, opt)
    bad = x.clone()
    bad[3, 1] = float("inf")
    assert not _train_step(model, opt, guard, bad, y)
    assert guard.events[-1].action == "skipped" and "loss is" in guard.events[-1].reason
    assert _same(before, _state(model, opt)) and opt.param_groups[0]["lr"] == 0.1
    assert _train_step(model, opt, guard, x, y)  # and training goes on


def test_guard_rolls_back_nan_weights_with_buffers_and_optimizer_state():
    model, opt, guard = _guarded()
    x, y = torch.randn(16, 4, dtype=DT), torch.randn(16, 1, dtype=DT)
    for _ in range(3):
        _train_step(model, opt, guard, x, y)
    good = _state(model, opt)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()  # a real step (moves Adam's moments and the auto-strength estimate) ...
    with torch.no_grad():
        model[2].parametrizations.weight.original0[0, 1] = float("nan")  # ... that broke a factor
    assert not guard.check()
    event = guard.events[-1]
    assert event.action == "rolled_back" and "parametrizations.weight.original0" in event.reason
    assert _same(good, _state(model, opt))
    assert all(g["lr"] == 0.05 for g in opt.param_groups)


def test_guard_second_bad_step_in_a_row_rolls_back():
    model, opt, guard = _guarded()
    x, y = torch.randn(16, 4, dtype=DT), torch.randn(16, 1, dtype=DT)
    _train_step(model, opt, guard, x, y)
    bad = torch.full_like(x, float("nan"))
    assert not _train_step(model, opt, guard, bad, y)
    assert not _train_step(model, opt, guard, bad, y)
    assert [e.action for e in guard.events] == ["skipped", "rolled_back"]


def test_guard_detects_divergence_and_returns_to_before_the_rise():
    model = nn.Linear(2, 1)
    guard = symopt.guard(model, patience=5, rise=1.0)
    for loss in [4.0, 3.0, 2.0] + [1.0] * 30:  # down to a plateau: the smoothed loss settles
        assert guard.check(loss)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    verdicts = []
    for loss in [1.5, 2.5, 4.0, 7.0, 12.0]:
        with torch.no_grad():
            model.weight.add_(1.0)  # the weights wander off while the loss climbs
        verdicts.append(guard.check(loss))
    assert verdicts == [True] * 4 + [False] and guard.events[-1].action == "rolled_back" and "divergence" in guard.events[-1].reason
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_guard_noise_is_not_divergence():
    guard = symopt.guard(nn.Linear(2, 1), patience=20)
    g = torch.Generator().manual_seed(0)
    losses = 1.0 + 0.5 * torch.rand(2000, generator=g)
    assert all(guard.check(float(v)) for v in losses) and not guard.events


def test_guard_gives_up_with_the_last_good_state():
    model, opt, guard = _guarded(max_failures=2)
    x, y = torch.randn(16, 4, dtype=DT), torch.randn(16, 1, dtype=DT)
    _train_step(model, opt, guard, x, y)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    bad = torch.full_like(x, float("nan"))
    _train_step(model, opt, guard, bad, y)
    _train_step(model, opt, guard, bad, y)
    with pytest.raises(symopt.Diverged, match="3 failed steps in a row"):
        _train_step(model, opt, guard, bad, y)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())


def test_guard_rescues_a_diverging_budget_run():
    """A conv with a group budget and SGD + momentum at lr 0.2 blows up to NaN by step ~20 unguarded;
    guarded, it rolls back and lowers the lr, ends finite and finalizes."""
    warnings.simplefilter("ignore")

    def run(guarded):
        torch.manual_seed(0)
        make = lambda: nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 1, 3)).double()  # noqa: E731
        teacher = make()
        with torch.no_grad():
            teacher[0].weight[3:] = 0
            teacher[0].bias[3:] = 0
            teacher[0].weight *= 4
            teacher[2].weight *= 4
        x = torch.randn(16, 2, 8, 8, dtype=DT)
        y = teacher(x).detach()
        model = make()
        symopt.group_sparse(model[0], "weight", dim=0, max_groups=3)
        opt = torch.optim.SGD(symopt.param_groups(model, lr=0.2), lr=0.2, momentum=0.9)
        guard = symopt.guard(model, opt)
        for _ in range(120):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            guard.step(loss) if guarded else opt.step()
        return model, guard, float(nn.functional.mse_loss(model(x), y))

    _, _, unguarded_loss = run(False)
    model, guard, loss = run(True)
    assert not math.isfinite(unguarded_loss)
    assert math.isfinite(loss) and guard.rollbacks >= 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    symopt.finalize(model, force=True)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(patience=0), ValueError, "patience must be an int >= 1"),
    (dict(rise=-1.0), ValueError, "rise must be"),
    (dict(lr_factor=1.5), ValueError, "lr_factor must be a number in"),
    (dict(lr_factor=0.0), ValueError, "lr_factor must be > 0"),
    (dict(max_failures=0), ValueError, "max_failures"),
    (dict(every=2.5), ValueError, "every must be an int"),
    (dict(optimizer="adam"), TypeError, "optimizer must be a torch.optim.Optimizer"),
])
def test_guard_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        symopt.guard(nn.Linear(2, 1), **kwargs)


def test_guard_step_needs_the_optimizer():
    with pytest.raises(ValueError, match="Guard.step needs the optimizer"):
        symopt.guard(nn.Linear(2, 1)).step(1.0)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        symopt.guard("model")


# -- determinism -----------------------------------------------------------------------------------
def test_solve_is_deterministic_on_cpu():
    a = symopt.solve(make_lasso(n=60, d=80, nonzeros=4, seed=3))
    b = symopt.solve(make_lasso(n=60, d=80, nonzeros=4, seed=3))
    assert torch.equal(a.x, b.x) and a.iterations == b.iterations and a.objective == b.objective


def test_training_is_deterministic_on_cpu():
    def run():
        model, opt, guard = _guarded()
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            x = torch.randn(16, 4, dtype=DT, generator=g)
            _train_step(model, opt, guard, x, x[:, :1] - x[:, 1:2])
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- input checks the API reference promises (diagnostics, generators, optimizer check) -------------
@pytest.mark.parametrize("call, error, words", [
    (lambda: symopt.diagnose("net"), TypeError, "nn.Module"),
    (lambda: symopt.diagnose(torch.nn.Linear(2, 2), tol=-1), ValueError, "tol"),
    (lambda: symopt.diagnose(torch.nn.Linear(2, 2), eps=1.0), ValueError, "eps"),
    (lambda: symopt.effective_rank([[1.0]]), TypeError, "Tensor"),
    (lambda: symopt.effective_rank(torch.ones(2, 2, 2)), ValueError, "2-D"),
    (lambda: symopt.conserved(None), TypeError, "nn.Module"),
    (lambda: symopt.ConservationTracker("net"), TypeError, "nn.Module"),
    (lambda: symopt.check_optimizer(torch.nn.Linear(2, 2)), TypeError, "Optimizer"),
])
def test_diagnostics_refuse_bad_input_by_name(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("make, kwargs, words", [
    ("make_lasso", dict(n=0), "n must be an int"),
    ("make_lasso", dict(d=5, nonzeros=6), "nonzeros=6 exceeds d=5"),
    ("make_lasso", dict(fraction=1.5), "fraction"),
    ("make_lasso", dict(noise=-0.1), "noise"),
    ("make_group_lasso", dict(d=10, group_size=4, active_groups=1), "multiple of group_size"),
    ("make_group_lasso", dict(d=8, group_size=4, active_groups=3), "active_groups=3 exceeds"),
    ("make_logistic_l1", dict(d=3, nonzeros=4), "nonzeros=4 exceeds"),
    ("make_equality_ls", dict(d=5, constraints=5), "constraints=5 exceeds"),
    ("make_fixed_zeros_ls", dict(d=5, zeros=5), "zeros=5 exceeds"),
    ("make_tied_least_squares", dict(tasks=1), "tasks must be >= 2"),
    ("make_matrix_completion", dict(m=3, n=4, rank=4), "rank=4 exceeds"),
    ("make_matrix_completion", dict(observed=0.0), "observed"),
    ("make_low_rank_regression", dict(p=4, q=3, rank=4), "rank=4 exceeds"),
    ("make_low_rank_regression", dict(n=3, p=4, q=3, rank=1, orthogonal=True), "n >= p"),
    ("make_lasso", dict(n=2.5), "n must be an int"),
])
def test_generators_refuse_bad_sizes_by_name(make, kwargs, words):
    import symopt.problems as problems
    with pytest.raises(ValueError, match=words):
        getattr(problems, make)(**kwargs)
