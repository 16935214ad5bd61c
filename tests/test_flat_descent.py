"""The lean descent (`symopt.solver.flat`): its pieces checked against the parametrized path they
replace — the compact L-BFGS direction against the two-loop recursion, each kind's ``pullback``
against autograd through ``forward``, the data terms' ``value_and_grad`` against autograd — and
whole solves against the torch L-BFGS path and cvxpy."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symopt
from symopt.constraints import KINDS
from symopt.problems import group_lasso, lasso, logistic_l1
from symopt.problems.glm import DataTerm, LogLoss, SquaredError
from symopt.solver.flat import FlatLBFGS, FlatObjective

from helpers import model_sizes

DT = torch.float64


def _two_loop(S, Y, g):
    """The textbook two-loop recursion (Nocedal & Wright, Algorithm 7.4), the reference."""
    q, alphas = g.clone(), []
    for s, y in zip(reversed(S), reversed(Y)):
        a = (s @ q) / (y @ s)
        alphas.append(a)
        q = q - a * y
    r = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) * q
    for (s, y), a in zip(zip(S, Y), reversed(alphas)):
        b = (y @ r) / (y @ s)
        r = r + s * (a - b)
    return -r


@pytest.mark.parametrize("pairs", [1, 3, 5, 7, 12])
def test_compact_direction_equals_the_two_loop_recursion(pairs):
    gen = torch.Generator().manual_seed(pairs)
    A = torch.randn(12, 12, generator=gen, dtype=DT)
    H = A @ A.T + torch.eye(12, dtype=DT)  # a convex quadratic: every pair has positive curvature
    lbfgs = FlatLBFGS(lambda x: (0.5 * x @ H @ x, H @ x), torch.randn(12, generator=gen, dtype=DT), history_size=5)
    S, Y = [], []
    for _ in range(pairs):
        s = torch.randn(12, generator=gen, dtype=DT)
        lbfgs.remember(s, H @ s)
        S, Y = (S + [s])[-5:], (Y + [H @ s])[-5:]
    assert lbfgs.count == min(pairs, 5)
    torch.testing.assert_close(lbfgs.direction(), _two_loop(S, Y, lbfgs.g), rtol=1e-10, atol=1e-12)


def test_directions_with_carried_products_equal_the_two_loop_recursion():
    """`FlatLBFGS` carries S g and Y g from one iteration to the next and forms Y s from its small
    matrices instead of reading the history again: every direction of a run that wraps its memory
    several times must still be the textbook one on the pairs it holds."""
    gen = torch.Generator().manual_seed(7)
    A = torch.randn(30, 12, generator=gen, dtype=DT)
    b = torch.randn(30, generator=gen, dtype=DT)

    def objective(x):  # a smooth, non-quadratic loss (softplus regression)
        z = A @ x - b
        return torch.nn.functional.softplus(z).sum() + 0.05 * x @ x, A.T @ torch.sigmoid(z) + 0.1 * x

    checked = []

    class Checked(FlatLBFGS):
        def direction(self):
            d = super().direction()
            if self.count:
                slots = self._slots()
                reference = _two_loop(list(self.Sb[slots]), list(self.Yb[slots]), self.g)
                torch.testing.assert_close(d, reference, rtol=1e-9, atol=1e-12)
                checked.append(self._products is not None)
            return d

    lbfgs = Checked(objective, torch.zeros(12, dtype=DT), history_size=4)
    lbfgs.run(12)
    lbfgs.run(12)  # a second run reads the products afresh, then carries them again
    assert len(checked) >= 20 and sum(checked) >= 15  # most directions used the carried products


def test_a_pair_without_positive_curvature_is_not_kept():
    lbfgs = FlatLBFGS(lambda x: (x.square().sum(), 2 * x), torch.ones(3, dtype=DT), history_size=4)
    lbfgs.remember(torch.tensor([1.0, 0, 0], dtype=DT), torch.tensor([-1.0, 0, 0], dtype=DT))
    assert lbfgs.count == 0
    torch.testing.assert_close(lbfgs.direction(), -lbfgs.g)


def test_flat_lbfgs_minimises_the_rosenbrock_function():
    """A non-convex valley where a bad line search stalls: the weak-Wolfe search keeps every pair."""
    def rosenbrock(x):
        a, b = x[0], x[1]
        value = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        return value, torch.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])

    lbfgs = FlatLBFGS(rosenbrock, torch.tensor([-1.2, 1.0], dtype=DT), history_size=10)
    assert lbfgs.run(200) is None
    torch.testing.assert_close(lbfgs.x, torch.ones(2, dtype=DT), rtol=0, atol=1e-8)


def test_no_decreasing_step_leaves_x_unchanged():
    """A gradient that does not describe the objective: no step decreases it, x stays (the descent
    then reports ``stalled`` with the reason, tests/test_hardening.py)."""
    start = torch.ones(3, dtype=DT)
    lbfgs = FlatLBFGS(lambda x: (x.square().sum(), -2 * x), start, history_size=4)
    lbfgs.run(5)
    assert torch.equal(lbfgs.x, start)


def test_nan_at_every_trial_step_raises():
    from symopt.solver.steppers import NonFinite

    def objective(x):
        value = x.square().sum()
        return (value, 2 * x) if torch.equal(x, torch.ones(3, dtype=DT)) else (value * torch.nan, 2 * x)

    with pytest.raises(NonFinite, match="every trial step"):
        FlatLBFGS(objective, torch.ones(3, dtype=DT), history_size=4).run(3)


@pytest.mark.parametrize("kind", sorted(k for k, cls in KINDS.items() if not cls.multi_tensor))
def test_pullback_is_the_vector_jacobian_product_of_forward(kind):
    """Every single-tensor kind (its own closed form, or the autograd default) against autograd."""
    cls = KINDS[kind]
    example = cls.example()
    constraint = example.make()
    value = torch.randn(example.shapes[0], generator=torch.Generator().manual_seed(0), dtype=DT)
    if example.draw is not None:
        value = example.draw(value)
    constraint = constraint.to(DT)
    constraint.validate(value, "w")
    split = constraint.right_inverse(value)
    factors = [f.detach() for f in split] if isinstance(split, tuple) else [split.detach()]
    grad = torch.randn_like(constraint.forward(*factors))
    leaves = [f.clone().requires_grad_() for f in factors]
    expected = torch.autograd.grad(constraint.forward(*leaves), leaves, grad, allow_unused=True)
    got = constraint.pullback(factors, grad)
    assert len(got) == len(factors)
    for g, e, f in zip(got, expected, factors):
        torch.testing.assert_close(g, torch.zeros_like(f) if e is None else e, rtol=1e-12, atol=1e-12)


# Every option of a data term: the fit, an intercept, sample weights, an elastic-net ridge.
DATA_TERMS = [(fit, intercept, weighted, ridge) for fit in (SquaredError(), LogLoss())
              for intercept in (False, True) for weighted in (False, True) for ridge in (0.0, 0.3)]
DATA_TERM_IDS = [f"{type(f).__name__}-intercept={i}-weighted={w}-ridge={r}" for f, i, w, r in DATA_TERMS]


def _design(seed: int, d: int, weighted: bool):
    """``(X, y, weights, generator)``: 40 samples, 0/1 labels (valid for both fits), weights summing to 1."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, d, generator=gen, dtype=DT)
    y = (torch.rand(40, generator=gen, dtype=DT) > 0.5).to(DT)
    weights = torch.rand(40, generator=gen, dtype=DT) if weighted else None
    return X, y, None if weights is None else weights / weights.sum(), gen


@pytest.mark.parametrize("fit,intercept,weighted,ridge", DATA_TERMS, ids=DATA_TERM_IDS)
def test_value_and_grad_of_the_data_terms_matches_autograd(fit, intercept, weighted, ridge):
    X, y, weights, gen = _design(1, 6, weighted)
    term = DataTerm(fit, intercept, ridge)
    theta = torch.randn(6, generator=gen, dtype=DT, requires_grad=True)
    value = term(theta, X, y, weights)
    (expected,) = torch.autograd.grad(value, theta)
    got_value, got = term.value_and_grad(theta.detach(), X, y, weights)
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_value_and_grad_of_the_completion_fit_matches_autograd():
    from symopt.problems import matrix_completion

    gen = torch.Generator().manual_seed(4)
    M = torch.randn(7, 5, generator=gen, dtype=DT)
    mask = torch.rand(7, 5, generator=gen) < 0.6
    problem = matrix_completion(M, mask, 0.3)
    theta = torch.randn(7, 5, generator=gen, dtype=DT, requires_grad=True)
    value = problem.loss(theta, **problem.data)
    (expected,) = torch.autograd.grad(value, theta)
    got_value, got = problem.bind(problem.data).value_and_grad(theta.detach())
    torch.testing.assert_close(got_value, value.detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


def test_flat_objective_is_the_parametrized_objective():
    """The same value and factor gradients as the registered parametrization with its decay."""
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randn(30, 8, generator=gen, dtype=DT), torch.randn(30, generator=gen, dtype=DT)
    problem = lasso(X, y, 0.05, fit_intercept=True)
    holder = torch.nn.Module()
    holder.w = torch.nn.Parameter(torch.randn(8, generator=gen, dtype=DT))
    handle = symopt.constrain(holder, "w", problem.constraint())
    constraint = holder.parametrizations["w"][0]
    factors = [holder.parametrizations["w"].original0, holder.parametrizations["w"].original1]
    objective = problem.loss(holder.w, **problem.data) + handle.penalty()
    grads = torch.autograd.grad(objective, factors)
    flat = FlatObjective(constraint, [f.shape for f in factors], problem.bind(problem.data))  # its value_and_grad
    value, grad = flat(torch.cat([f.detach() for f in factors]))
    torch.testing.assert_close(value, objective.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad, torch.cat(grads), rtol=1e-11, atol=1e-13)


def _cancer():
    from sklearn.datasets import load_breast_cancer
    X, y = load_breast_cancer(return_X_y=True)
    return torch.as_tensor(X, dtype=DT), torch.as_tensor(y, dtype=DT)


@pytest.mark.parametrize("family", ["lasso", "logistic_l1", "group_lasso"])
def test_lean_and_torch_lbfgs_reach_the_same_optimum_on_raw_breast_cancer(family):
    """Raw columns (scales 1e-3 to 1e3): both loops certified optimal, the same optimum as cvxpy."""
    X, y = _cancer()
    make = {"lasso": lambda lam: lasso(X, y, lam, fit_intercept=True),
            "logistic_l1": lambda lam: logistic_l1(X, y, lam, fit_intercept=True),
            "group_lasso": lambda lam: group_lasso(X, y, 3, lam)}[family]
    problem = make(1.0)
    problem = make(0.05 * problem.strength_max())
    lean, plain = symopt.solve(problem), symopt.solve(problem, method="lbfgs")
    assert lean.status == plain.status == "optimal"
    assert abs(lean.objective - plain.objective) <= 1e-7 * abs(plain.objective)
    from symopt.baselines import solve_cvxpy
    reference = solve_cvxpy(problem).objective
    assert lean.objective <= reference + 1e-6 * abs(reference)


def test_logistic_intercept_stops_at_the_sums_resolution_on_saturated_logits(monkeypatch):
    """Raw breast_cancer columns saturate the sigmoid: the root is found to the resolution of the
    sum in a few Newton steps (it ran ~50 bisection steps a call before)."""
    from symopt.problems import glm

    X, y = _cancer()
    problem = logistic_l1(X, y, 1.0, fit_intercept=True)
    w = symopt.solve(problem.at_strength(0.1 * problem.strength_max())).x
    z = 2 * X @ w  # logits from -46 to -2 (the old loop took 52 steps here, measured)
    assert float(z.abs().max()) > 20  # saturated
    calls = {"n": 0}
    sigmoid = torch.sigmoid

    def counting(t):
        calls["n"] += 1
        return sigmoid(t)

    monkeypatch.setattr(glm.torch, "sigmoid", counting)
    b = glm.logistic_intercept(z, y)
    monkeypatch.undo()
    assert calls["n"] <= 12
    residual = float(torch.sigmoid(z + b).mean()) - float(y.mean())
    assert abs(residual) <= 1e-14



@pytest.mark.parametrize("fit,intercept,weighted,ridge", DATA_TERMS, ids=DATA_TERM_IDS)
def test_curvature_of_the_data_terms_is_the_autograd_hessian_on_the_mask(fit, intercept, weighted, ridge):
    X, y, weights, gen = _design(4, 7, weighted)
    term = DataTerm(fit, intercept, ridge)
    theta = torch.randn(7, generator=gen, dtype=DT) * 0.5
    mask = torch.tensor([True, False, True, True, False, False, True])
    full = torch.autograd.functional.hessian(lambda t: term(t, X, y, weights), theta)
    expected = full[mask][:, mask]
    torch.testing.assert_close(term.curvature(theta, mask, X, y, weights), expected, rtol=1e-9, atol=1e-12)


def test_the_face_hessian_from_the_losss_curvature_equals_differentiating_twice():
    """Sparse and GroupSparse faces (entries of θ) on logistic-L1 with an intercept: the Hessian the
    polish builds from the data term's curvature is the autograd Hessian of the face objective."""
    from symopt.optimality import _face_hessian

    X, y = _cancer()
    Xs = (X - X.mean(0)) / X.std(0)
    for problem in (logistic_l1(Xs, y, 0.01, fit_intercept=True), group_lasso(Xs, y, 3, 0.01)):
        data = problem.data_on("cpu", DT)
        bound = problem.bind(data)
        constraint = problem.constraint()
        x = symopt.solve(problem).x
        face = constraint.face(x, 0.0)
        assert face.mask is not None
        z = face.start[0].clone()
        second = _face_hessian(bound, constraint.strength, face)
        expected = torch.autograd.functional.hessian(
            lambda c: bound(face.embed(c)) + constraint.strength * face.norm(c), z)
        torch.testing.assert_close(second(z), expected, rtol=1e-8, atol=1e-10)


def test_bound_loss_asks_the_loss_and_falls_back_to_none():
    from symopt.problems import BoundLoss

    plain = BoundLoss(lambda theta, X: (X @ theta).square().sum(), {"X": torch.eye(2, dtype=DT)})
    assert plain.value_and_grad is None and plain.curvature is None
    assert float(plain(torch.ones(2, dtype=DT))) == 2.0


def test_the_lean_loop_applies_where_its_objective_is_the_registered_one():
    """One tensor, a λ fixed during the solve, the standard decay: lean. A tie (several tensors) or a
    λ that follows the gradients (``"auto"``) keep torch's L-BFGS through the registered module."""
    from symopt.solver.flat import flat_stepper
    from symopt.solver.variable import Variable

    def stepper(constraint, shape=(4, 3)):
        holder = Variable(shape, "cpu", DT, constraint)
        return flat_stepper(holder, lambda t: t.square().sum(), 5, 10)

    assert stepper(symopt.Sparse(0.1)) is not None
    assert stepper(symopt.LowRank(0.1)) is not None
    assert stepper(symopt.Subspace(torch.ones(1, 12, dtype=DT), strength=5.0)) is not None
    assert stepper(symopt.Subspace(torch.ones(1, 12, dtype=DT), strength="auto")) is None
    assert stepper(symopt.Tied(1.0), shape=(2, 4, 3)) is None


def test_the_lean_loop_keeps_fewer_pairs_of_a_large_factorisation():
    """100 pairs of 10⁵ coordinates cost more to read than they save (digits completion: the same
    outer iterations in half the time with 16): the lean loop caps its memory by size."""
    from symopt.solver.flat import HISTORY_NUMBERS, history_pairs

    assert history_pairs(100, 119_104) == HISTORY_NUMBERS // 119_104 == 16
    assert history_pairs(100, 20_000) == 100  # every Lasso / logistic / group lasso of the benchmarks
    assert history_pairs(100, 10**8) == 10 and history_pairs(3, 10**8) == 3


def _directions_per_outer_iteration(problem, **options):
    """(L-BFGS iterations of each outer iteration, the result) of ``symopt.solve(problem)``."""
    from symopt.solver.descent import Descent
    counts = []
    iterate = Descent._iterate

    def counting(self, step, rule, iteration, iterations=None, **options):
        counts.append(self.options.inner if iterations is None else iterations)
        return iterate(self, step, rule, iteration, iterations, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Descent, "_iterate", counting)
        return counts, symopt.solve(problem, **options)


@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
@pytest.mark.parametrize("family", ["lasso", "logistic_l1"])
def test_an_l1_problem_with_enough_rows_is_checked_before_any_descent(monkeypatch, family, dataset):
    """An ℓ1 problem whose curvature can be positive definite on every column (rows ≥ columns:
    `BoundLoss.determined`) is first checked before any L-BFGS iteration (QUADRATIC_EARLY_ITERATIONS),
    and the polish from θ = 0 certifies the optimum in that check (breast_cancer, 30 columns, and
    digits, 64, binary for the logistic): the same objective and support as the full 20 iterations,
    which it takes when nothing says so (``determined`` False, θ wide) and with polish=False."""
    from sklearn import datasets

    from symopt.problems import lasso, logistic_l1
    from symopt.problems.base import BoundLoss
    from symopt.solver.descent import QUADRATIC_EARLY_ITERATIONS

    X, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    if dataset == "digits":
        y = (y < 5) if family == "logistic_l1" else y
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)  # (digits has constant pixels)
    make = lasso if family == "lasso" else logistic_l1
    problem = make(X, y.astype(float), 1.0, fit_intercept=True)
    problem = problem.at_strength(0.05 * problem.strength_max())
    counts, short = _directions_per_outer_iteration(problem)
    assert counts[0] == QUADRATIC_EARLY_ITERATIONS == 0 and short.status == "optimal" and short.iterations == 1
    counts, _ = _directions_per_outer_iteration(problem, polish=False)
    assert counts[0] == 20
    import symopt.solver.descent as descent
    monkeypatch.setattr(descent, "EARLY_ENTRIES", problem.shape[0] - 1)  # θ now counts as wide
    monkeypatch.setattr(BoundLoss, "determined", lambda self: False)
    monkeypatch.setattr(descent, "L1_FROM_ZERO", False)  # (nor the wide Lasso's rule)
    monkeypatch.setattr(descent, "WIDE_L1_ROWS", 0.0)  # (nor the rule on few pulled entries a row)
    counts, full = _directions_per_outer_iteration(problem)
    assert counts[0] == 20 and full.status == "optimal"
    assert abs(short.objective - full.objective) <= 1e-12 * abs(full.objective)
    assert torch.equal(short.x == 0, full.x == 0)


def test_a_check_before_any_descent_makes_no_factors_unless_the_descent_runs(monkeypatch):
    """A first check before any descent takes θ = 0 as it is: where it certifies, no factors (no
    `Variable`, no registered parametrization) are made; where it does not (a certifier made to
    refuse it), the descent makes them from the same θ and reaches the same optimum."""
    from sklearn.datasets import load_breast_cancer

    from symopt.problems import logistic_l1
    from symopt.solver import descent

    X, y = load_breast_cancer(return_X_y=True)
    problem = logistic_l1((X - X.mean(0)) / X.std(0), y.astype(float), 1.0, fit_intercept=True)
    problem = problem.at_strength(0.1 * problem.strength_max())
    made = []
    make = descent.Variable.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        make(self, *args, **kwargs)

    monkeypatch.setattr(descent.Variable, "__init__", counting)
    quick = symopt.solve(problem)
    assert quick.status == "optimal" and quick.iterations == 1 and not made
    from symopt.solver.certifier import Certifier

    certify, checks = Certifier.certify, []

    def first_fails(self, theta, constraint, widens=None, **options):  # the first check does not certify:
        # the descent runs
        checks.append(theta.clone())
        point, kkt, data, certifying = certify(self, theta, constraint, widens, **options)
        return (point, 1e3 * self.target if len(checks) == 1 else kkt, data, certifying)

    monkeypatch.setattr(Certifier, "certify", first_fails)
    counts, slow = _directions_per_outer_iteration(problem)
    assert not bool(checks[0].any())  # (the first check saw θ = 0)
    assert counts[:2] == [0, 20] and len(made) == 1 and slow.status == "optimal" and slow.iterations > 1
    assert abs(slow.objective - quick.objective) <= 1e-9 * abs(quick.objective)
    assert torch.equal(slow.x == 0, quick.x == 0)


def test_with_more_columns_than_rows_only_a_small_quadratic_skips_the_descent():
    """Where columns outnumber rows the polish's model at θ = 0 is singular on large faces: a
    logistic-L1 of at most EARLY_ENTRIES columns gets the short first descent (EARLY_ITERATIONS), a
    wider one the full ``inner``; the Lasso of at most EARLY_ENTRIES columns (its model is the
    objective) none. A ridge (the elastic net) makes the curvature positive definite whatever the
    shape: none. Every one certified optimal in its first check or after."""
    from sklearn.datasets import load_digits

    from symopt.problems import lasso, logistic_l1
    from symopt.solver.descent import EARLY_ITERATIONS, QUADRATIC_EARLY_ITERATIONS

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    rows, labels = X[:50], (y[:50] < 5).astype(float)  # 50 rows, 64 columns (constant ones too)
    cases = [(logistic_l1(rows, labels, 1.0, fit_intercept=True), EARLY_ITERATIONS),
             (logistic_l1(np.hstack([rows, rows[:, :8] ** 2]), labels, 1.0, fit_intercept=True), 20),  # 72 columns
             (lasso(rows, y[:50].astype(float), 1.0, fit_intercept=True), QUADRATIC_EARLY_ITERATIONS),
             (logistic_l1(rows, labels, 1.0, fit_intercept=True, l1_ratio=0.5), QUADRATIC_EARLY_ITERATIONS)]
    for problem, first in cases:
        problem = problem.at_strength(0.1 * problem.strength_max())
        counts, result = _directions_per_outer_iteration(problem)
        assert counts[0] == first, (problem.name, counts)
        assert result.status == "optimal", problem.name


def test_a_wide_logistic_problem_skips_the_descent_where_few_columns_are_pulled_or_the_probe_finds_them_shared():
    """Logistic-L1 on more than DENSE_FROM_ZERO columns with enough rows: the first check comes before any
    descent. Where ∇loss(0) pulls at most PULLED_AT_ZERO of the columns off zero the polish goes on from θ = 0;
    where it pulls more, θ = 0 is probed (DENSE_PROBE): where the polish's first, full model keeps nearly all
    its entries (an answer holding most columns: make_classification 400 × 200 at 1e-3 λ_max) the
    polish declines and the full ``inner`` descent runs; where it drops some (pulls shared by correlated
    columns: a design of 3 factors whose label reads 3 columns, 4-9 alive) the check certifies from θ = 0."""
    from sklearn.datasets import make_classification

    from symopt.problems import logistic_l1
    from symopt.solver import descent
    from symopt.solver.descent import DENSE_FROM_ZERO, PULLED_AT_ZERO

    X, y = make_classification(n_samples=400, n_features=200, n_informative=10, random_state=0)
    problem = logistic_l1(X, y.astype(float), 1.0, fit_intercept=True)
    assert problem.shape[0] > DENSE_FROM_ZERO
    pull = np.abs((X - X.mean(0)).T @ (y - y.mean())) / len(y)  # ∇loss(0) with the intercept profiled out
    for fraction, first in ((0.3, [0]), (1e-3, [0, 20])):
        strength = fraction * problem.strength_max()
        assert ((pull > strength).mean() <= PULLED_AT_ZERO) == (fraction == 0.3)
        counts, result = _directions_per_outer_iteration(problem.at_strength(strength))
        assert counts[:2] == first and result.status == "optimal"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 200)) + 0.5 * rng.standard_normal((500, 200))
    labels = (X[:, :3].sum(1) > np.median(X[:, :3].sum(1))).astype(float)
    problem = logistic_l1(X, labels, 1.0, fit_intercept=True)
    strength = 0.03 * problem.strength_max()
    pull = np.abs((X - X.mean(0)).T @ (labels - labels.mean())) / len(labels)
    assert (pull > strength).mean() > PULLED_AT_ZERO  # (the probe's case: most columns pulled)
    problem = problem.at_strength(strength)
    counts, result = _directions_per_outer_iteration(problem)
    assert counts == [0] and result.status == "optimal"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(descent, "DENSE_PROBE", False)
        unprobed_counts, unprobed = _directions_per_outer_iteration(problem)
    assert unprobed_counts[0] == 20 and abs(unprobed.objective - result.objective) <= 1e-12 * abs(result.objective)


@pytest.mark.parametrize("features", [100, 128])
def test_a_logistic_problem_on_few_columns_goes_on_from_zero_however_many_are_pulled(features):
    """Logistic-L1 on more than EARLY_ENTRIES but at most DENSE_FROM_ZERO columns with enough rows, most of them
    pulled off zero by ∇loss(0) and the answer holding nearly all of them (make_classification at 1e-3 λ_max):
    the probe's first model keeps its entries, yet the polish goes on from θ = 0 (its models hold every column by
    the third), and certifies there without any descent; with DENSE_FROM_ZERO at EARLY_ENTRIES the probe hands
    over to the full ``inner`` descent, and both reach the same optimum."""
    from sklearn.datasets import make_classification

    from symopt.problems import logistic_l1
    from symopt.solver import descent
    from symopt.solver.descent import DENSE_FROM_ZERO, EARLY_ENTRIES, PULLED_AT_ZERO

    X, y = make_classification(n_samples=400, n_features=features, n_informative=10, random_state=0)
    problem = logistic_l1(X, y.astype(float), 1.0, fit_intercept=True)
    assert EARLY_ENTRIES < problem.shape[0] <= DENSE_FROM_ZERO
    strength = 1e-3 * problem.strength_max()
    pull = np.abs((X - X.mean(0)).T @ (y - y.mean())) / len(y)
    assert (pull > strength).mean() > PULLED_AT_ZERO
    problem = problem.at_strength(strength)
    counts, result = _directions_per_outer_iteration(problem)
    assert counts == [0] and result.status == "optimal"
    assert int((result.x != 0).sum()) >= 0.9 * features  # (a dense answer: the probe's case)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(descent, "DENSE_FROM_ZERO", EARLY_ENTRIES)
        probed_counts, probed = _directions_per_outer_iteration(problem)
    assert probed_counts[:2] == [0, 20] and probed.status == "optimal"  # (the probe, then the descent)
    assert abs(probed.objective - result.objective) <= 1e-12 * abs(result.objective)


def test_a_group_norm_whose_pulled_groups_fit_one_model_is_checked_before_any_descent(monkeypatch):
    """Least squares under a norm of groups with enough rows, where the groups ∇loss(0) pulls off zero fit
    in one group model (`GROUPS_FROM_ZERO` entries): diabetes in 5 groups of 2, linnerud's multi-task
    Lasso on 3 rows, breast_cancer in 10 groups of 3 and digits in 16 of 4. The first check comes
    before any descent, and the group polish from θ = 0 certifies the optimum there, the objective and
    support of the run with the short first descent (the loss made to say it is not determined);
    where the pulled entries are more than the limit, the short first descent stays."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_linnerud

    import symopt.solver.descent as descent
    from symopt.problems import group_lasso, multitask_lasso
    from symopt.problems.base import BoundLoss

    def standardised(X):
        return (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)

    Xd, yd = load_diabetes(return_X_y=True)
    Xl, Yl = load_linnerud(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xg, yg = load_digits(return_X_y=True)
    problems = [group_lasso(Xd, yd - yd.mean(), 2, 1.0), multitask_lasso(Xl, Yl - Yl.mean(0), 1.0),
                group_lasso(standardised(Xc), yc - yc.mean(), 3, 1.0), group_lasso(standardised(Xg), yg - yg.mean(), 4, 1.0)]
    for problem in problems:
        problem = problem.at_strength(0.1 * problem.strength_max())
        counts, quick = _directions_per_outer_iteration(problem)
        assert counts[0] == 0 and quick.status == "optimal" and quick.iterations == 1, problem.name
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(BoundLoss, "determined", lambda self: False)
            patch.setattr(descent, "PULLED_PER_ROW", 0)  # (nor the wide designs' rules)
            patch.setattr(descent, "CAPPED_PULLED_SHARE", 0.0)
            counts, slow = _directions_per_outer_iteration(problem)
        assert counts[0] == descent.EARLY_ITERATIONS and slow.status == "optimal"
        assert abs(quick.objective - slow.objective) <= 1e-9 * abs(slow.objective)
        assert torch.equal(quick.x == 0, slow.x == 0)
    monkeypatch.setattr(descent, "GROUPS_FROM_ZERO", 8)  # breast_cancer at 0.1 λ_max pulls more than 8 entries
    cancer = problems[2]
    counts, result = _directions_per_outer_iteration(cancer.at_strength(0.1 * cancer.strength_max()))
    assert counts[0] == descent.EARLY_ITERATIONS and result.status == "optimal"


def test_a_wide_group_problem_is_checked_from_zero_only_where_few_groups_are_pulled(monkeypatch):
    """Least squares under a group norm with more columns than rows (100 × 300 in 100 groups), the
    rule on the pulled groups' coordinates per row off (its own tests follow): where ∇loss(0) pulls at
    most CAPPED_PULLED_SHARE of the groups off zero (0.5 λ_max) the first check comes before any descent,
    at the optimum of the run with the descent; where it pulls nearly all (0.1 λ_max: the model at θ = 0
    would be singular on a face of most columns) the descent runs first."""
    from sklearn.datasets import make_regression

    import symopt.solver.descent as descent
    from symopt.problems import group_lasso

    monkeypatch.setattr(descent, "PULLED_PER_ROW", 0)
    X, y = make_regression(100, 300, n_informative=10, noise=1.0, random_state=10, effective_rank=50)
    problem = group_lasso(X, y - y.mean(), 3, 1.0)
    pull = np.sqrt(((X.T @ (y - y.mean())).reshape(-1, 3) ** 2).sum(1))
    for fraction, first in ((0.5, 0), (0.1, 20)):
        pulled = float((pull > fraction * pull.max()).mean())
        assert (pulled <= descent.CAPPED_PULLED_SHARE) == (first == 0)
        at = problem.at_strength(fraction * problem.strength_max())
        counts, result = _directions_per_outer_iteration(at)
        assert counts[0] == first and result.status == "optimal"
        if first == 0:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(descent, "CAPPED_PULLED_SHARE", 0.0)  # (the rule off: the descent first)
                counts, slow = _directions_per_outer_iteration(at)
            assert counts[0] == 20 and slow.status == "optimal"
            assert abs(result.objective - slow.objective) <= 1e-9 * abs(slow.objective)
            assert torch.equal(result.x == 0, slow.x == 0)



@pytest.mark.parametrize("rows, columns, size, fraction, from_zero", [
    (100, 300, 3, 0.1, True),     # 300 pulled coordinates: 3 a row
    (100, 300, 3, 0.03, True),
    (50, 200, 4, 0.1, True),      # 200: 4 a row
    (250, 800, 4, 0.03, False),   # 800: 3.2 a row, but above WIDE_FROM_ZERO
])
def test_a_wide_group_problem_with_few_pulled_coordinates_a_row_is_checked_from_zero(rows, columns, size, fraction,
                                                                                    from_zero):
    """Least squares under a group norm with more columns than rows, where ∇loss(0) pulls nearly every
    group off zero: the first check comes before any descent where the pulled groups hold at most
    PULLED_PER_ROW coordinates per row (and at most WIDE_FROM_ZERO in all), and certifies the optimum of
    the run with the descent first (the same objective and support); with more in all, on a design of
    more rows than a capped first model reaches (below), the descent runs first."""
    from sklearn.datasets import make_regression

    import symopt.solver.descent as descent
    from symopt.problems import group_lasso

    X, y = make_regression(rows, columns, n_informative=10, noise=1.0, random_state=columns)
    problem = group_lasso(X, y - y.mean(), size, 1.0)
    problem = problem.at_strength(fraction * problem.strength_max())
    pull = np.sqrt(((X.T @ (y - y.mean())).reshape(-1, size) ** 2).sum(1))
    pulled = int((pull > fraction * pull.max()).sum())
    # (the rules on the pulled groups' share do not apply)
    assert pulled > descent.CAPPED_PULLED_SHARE * (columns // size)
    entries = pulled * size
    assert (entries <= min(descent.PULLED_PER_ROW * rows, descent.WIDE_FROM_ZERO)) == from_zero
    # (the descent first: the short one on at most EARLY_ENTRIES groups)
    _checked_from_zero(problem, from_zero, descent.EARLY_ITERATIONS if columns // size <= descent.EARLY_ENTRIES
                       else 20, rules=[("PULLED_PER_ROW", 0), ("CAPPED_PULLED_SHARE", 0.0)])


@pytest.mark.parametrize("rows, columns, size, rank, fraction, capped_share, from_zero", [
    (60, 300, 3, 15, 0.1, False, True),    # nearly every group pulled: the cap 240, 4 a row
    (100, 1000, 5, None, 0.1, False, True),  # 10 a row pulled; the cap 400
    (200, 1200, 3, 66, 0.3, True, True),   # under 90% of the groups: the cap is WIDE_FROM_ZERO
    (200, 1200, 3, 66, 0.03, False, False),  # nearly all: the cap is WIDE_FROM_ZERO, the descent first
])
def test_a_wide_group_problem_is_checked_from_zero_with_a_capped_first_model(rows, columns, size, rank, fraction,
                                                                          capped_share, from_zero):
    """Least squares under a group norm with fewer rows than columns, where the pulled groups hold more
    coordinates than PULLED_PER_ROW a row: the first check still comes before any descent where that cap
    is below WIDE_FROM_ZERO (few rows) or at most CAPPED_PULLED_SHARE of the groups are pulled, its first
    group model taking only the strongest pulled groups that fit the cap (`proximal_newton._first_group_room`),
    and certifies the optimum of the run with the descent first (the same objective and support; the
    descent's 20 iterations were most of such a solve: 60×300 of effective rank 15 at 0.1 λ_max 17 →
    4.4 ms, benchmarks/RESULTS.md). The first model is no larger than the cap."""
    from sklearn.datasets import make_regression

    import symopt.solver.descent as descent
    from symopt.problems import group_lasso

    X, y = make_regression(rows, columns, n_informative=10 if rank is None else rank // 2, noise=1.0,
                           random_state=columns + rows, effective_rank=rank)
    problem = group_lasso(X, y - y.mean(), size, 1.0)
    problem = problem.at_strength(fraction * problem.strength_max())
    pull = np.sqrt(((X.T @ (y - y.mean())).reshape(-1, size) ** 2).sum(1))
    pulled = pull > fraction * pull.max()
    cap = min(descent.PULLED_PER_ROW * rows, descent.WIDE_FROM_ZERO)
    assert int(pulled.sum()) * size > cap  # (the cap binds)
    assert (float(pulled.mean()) <= descent.CAPPED_PULLED_SHARE) == capped_share
    with pytest.MonkeyPatch.context() as patch:
        sizes = model_sizes(patch, "solve_group_quadratic")
        _checked_from_zero(problem, from_zero, 20, rules=[("PULLED_PER_ROW", 0), ("CAPPED_PULLED_SHARE", 0.0)])
    if from_zero:
        assert size <= sizes[0] <= cap


def _checked_from_zero(problem, from_zero: bool, descent_first: int, rules: list[tuple[str, object]]) -> None:
    """The first check of ``problem`` comes before any descent exactly where ``from_zero`` (else after
    ``descent_first`` iterations), and there certifies the optimum of the run with ``rules`` (names in
    `symopt.solver.descent` and the values that turn them off) off, whose first outer iteration takes
    ``descent_first`` iterations: the same objective and support."""
    import symopt.solver.descent as descent

    counts, result = _directions_per_outer_iteration(problem)
    assert counts[0] == (0 if from_zero else descent_first) and result.status == "optimal"
    if from_zero:
        with pytest.MonkeyPatch.context() as patch:
            for rule in rules:  # (the rules off: the descent first)
                patch.setattr(descent, *rule)
            counts, slow = _directions_per_outer_iteration(problem)
        assert counts[0] == descent_first
        assert slow.status == "optimal" and abs(result.objective - slow.objective) <= 1e-9 * abs(slow.objective)
        assert torch.equal(result.x == 0, slow.x == 0)


@pytest.mark.parametrize("rows, columns, intercept, fraction", [
    (100, 300, False, 0.3),   # 50 pulled: 0.5 a row
    (80, 240, True, 0.1),     # 121: 1.5 a row
    (300, 300, True, 0.1),    # square with an intercept: 299 rows count, not determined
    (200, 800, False, 0.01),  # more than the group norms' WIDE_FROM_ZERO
    (40, 400, False, 0.1),    # 281: 7 a row
    (30, 300, True, 0.01),    # nearly every column: 10 a row
])
def test_a_wide_lasso_is_checked_from_zero(rows, columns, intercept, fraction):
    """The Lasso with fewer rows (that count: one fewer with an intercept) than columns: the first check
    comes before any descent however many entries ∇loss(0) pulls a row (``L1_FROM_ZERO``), and certifies
    the optimum of the run with the descent first (the same objective and support). (A 500×500 design with
    an intercept took 14-20 ms with the descent first, 2-4 ms from θ = 0; 40×400 at 0.1 λ_max, 7 pulled a
    row, 14 → 7 ms; benchmarks/RESULTS.md.)"""
    from sklearn.datasets import make_regression

    from symopt.problems import lasso

    X, y = make_regression(rows, columns, n_informative=10, noise=1.0, random_state=columns)
    problem = lasso(X, y if intercept else y - y.mean(), 1.0, fit_intercept=intercept)
    problem = problem.at_strength(fraction * problem.strength_max())
    _checked_from_zero(problem, True, 20, rules=[("L1_FROM_ZERO", False), ("WIDE_L1_ROWS", 0.0)])


@pytest.mark.parametrize("rows, columns, intercept, fraction, from_zero", [
    (117, 903, True, 0.4, True),    # 4 pulled on 116 rows that count
    (80, 400, True, 0.05, True),    # 258 pulled: the first model takes L1_ROOM (32) on 79 rows
    (30, 60, True, 0.5, True),      # 6 pulled; at most EARLY_ENTRIES columns: 5 iterations otherwise
    (30, 60, True, 0.3, False),     # 19 pulled on 29 rows
    (60, 480, True, 0.3, False),    # 122 pulled: 32 on 59 rows is more than half of them
    (40, 120, False, 0.01, False),  # 106 pulled: 32 on 40 rows
])
def test_a_wide_logistic_l1_is_checked_from_zero_where_its_first_model_is_small_against_its_rows(
        rows, columns, intercept, fraction, from_zero):
    """Logistic-L1 with fewer rows than columns: the first check comes before any descent where the entries
    of the first model from θ = 0 (those ∇loss(0) pulls, at most ``L1_ROOM``) are at most ``WIDE_L1_ROWS``
    of the rows that count, and certifies the optimum of the run with the descent first (the same objective
    and support); not where they are more. (Measured: 0.04-0.8× the time where the rule applies on drawn
    wide problems; benchmarks/RESULTS.md, twenty-seventh session.)"""
    from sklearn.datasets import make_classification

    import symopt.solver.descent as descent

    X, y = make_classification(rows, columns, n_informative=5, n_redundant=2, random_state=rows, flip_y=0.05)
    problem = logistic_l1(X, y.astype(float), 1.0, fit_intercept=intercept)
    problem = problem.at_strength(fraction * problem.strength_max())
    _checked_from_zero(problem, from_zero, descent.EARLY_ITERATIONS if columns <= descent.EARLY_ENTRIES else 20,
                       rules=[("WIDE_L1_ROWS", 0.0)])


def test_a_wide_logistic_l1_of_raw_scales_is_solved_from_zero():
    """Columns whose scales spread over six decades, 60 rows, 400 columns, 10 pulled at 0.5 λ_max: from θ = 0
    (its first model holds the 10 pulled entries) the optimum the descent-first run certifies. With the
    descent first such a problem ran its polish into a model singular on 69 atoms (62 × 478 at 0.46 λ_max:
    a full step 3e7 long, 30 halvings refused; 48 ms → 3.7 ms from θ = 0)."""
    generator = np.random.default_rng(0)
    X = generator.standard_normal((60, 400)) * 10.0 ** generator.uniform(-3, 3, size=400)
    y = (X[:, :5] / X[:, :5].std(0) @ generator.standard_normal(5) + 0.5 * generator.standard_normal(60) > 0)
    problem = logistic_l1(X, y.astype(float), 1.0, fit_intercept=True)
    problem = problem.at_strength(0.5 * problem.strength_max())
    _checked_from_zero(problem, True, 20, rules=[("WIDE_L1_ROWS", 0.0)])


def test_resolved_coordinates_count_rows_with_weight_the_intercept_and_the_targets():
    """`DataTerm.resolved_coordinates`: the rows with a positive weight, one fewer with an intercept, times
    θ's columns (targets); ``inf`` with a ridge. `determined` is the same count against the columns."""
    from symopt.problems.glm import DataTerm, SquaredError

    X = torch.randn(5, 8, dtype=torch.float64)
    y, Y = torch.zeros(5, dtype=torch.float64), torch.zeros(5, 3, dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert DataTerm(SquaredError()).resolved_coordinates(X, y) == 5.0
    assert DataTerm(SquaredError(), fit_intercept=True).resolved_coordinates(X, y) == 4.0
    assert DataTerm(SquaredError()).resolved_coordinates(X, y, weights) == 3.0
    assert DataTerm(SquaredError(), fit_intercept=True).resolved_coordinates(X, Y, weights) == 6.0
    assert DataTerm(SquaredError(), ridge=0.1).resolved_coordinates(X, y) == math.inf

def test_determined_counts_rows_with_weight_and_the_intercept():
    """`DataTerm.determined`: rows with a positive weight, one fewer with an intercept, against the
    columns; a ridge is always determined."""
    from symopt.problems.glm import DataTerm, LogLoss, SquaredError

    X, y = torch.randn(5, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    assert DataTerm(SquaredError()).determined(X, y) and DataTerm(LogLoss(), fit_intercept=True).determined(X, y)
    assert not DataTerm(SquaredError(), fit_intercept=True).determined(X[:4], y[:4])
    assert DataTerm(SquaredError()).determined(X[:4], y[:4])
    weights = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert not DataTerm(SquaredError()).determined(X, y, weights)
    assert DataTerm(SquaredError(), ridge=0.1).determined(X, y, weights)


def test_a_multitask_lasso_counts_its_rows_not_its_entries_for_the_short_first_descent(monkeypatch):
    """The multi-task Lasso on standardised digits (64 rows × 10 one-hot targets, 640 entries): a row's
    entries join and leave the face together, so θ counts as 64 atoms: where its pulled rows fit one
    group model it is checked from θ = 0, else it gets the short first descent, and the group polish
    certifies the optimum from either (objective and support those of the full 20 iterations)."""
    from sklearn.datasets import load_digits

    from symopt.problems import multitask_lasso
    from symopt.solver.descent import EARLY_ENTRIES, EARLY_ITERATIONS

    X, labels = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    Y = np.eye(10)[labels]
    problem = multitask_lasso(X, Y - Y.mean(0), 1.0)
    problem = problem.at_strength(0.1 * problem.strength_max())
    assert problem.shape == (64, 10) and problem.shape[0] <= EARLY_ENTRIES < 640
    import symopt.solver.descent as descent
    counts, zero = _directions_per_outer_iteration(problem)
    assert counts[0] == 0 and zero.status == "optimal"  # (its pulled rows fit one group model: from θ = 0)
    monkeypatch.setattr(descent, "GROUPS_FROM_ZERO", 0)  # (the rule for a loss whose rows do not fit)
    counts, short = _directions_per_outer_iteration(problem)
    assert counts[0] == EARLY_ITERATIONS and short.status == "optimal" and short.iterations == 1
    monkeypatch.setattr(descent, "EARLY_ENTRIES", 63)  # 64 rows now count as wide
    counts, full = _directions_per_outer_iteration(problem)
    assert counts[0] == 20 and full.status == "optimal"
    assert abs(short.objective - full.objective) <= 1e-10 * abs(full.objective)
    assert abs(zero.objective - full.objective) <= 1e-10 * abs(full.objective)
    assert torch.equal(short.x == 0, full.x == 0)


@pytest.mark.parametrize("options", [dict(dim=0), dict(dim=1), dict(groups=[[0, 3], [1, 2, 4], [5]]),
                                     dict(groups=3, weights=[1.0, 2.0]), dict(dim=0, weights=[0.5, 1.0, 3.0, 2.0])])
def test_group_sparse_pullback_is_autograds_for_every_grouping(options):
    """GroupSparse's closed-form pullback (gates and ω) on slices along either axis, index groups,
    and weighted groups, against autograd's vector-Jacobian product of its forward."""
    from symopt.constraints import GroupSparse

    shape = (6,) if "groups" in options else (4, 3)
    constraint = GroupSparse(strength=0.1, **options).to(DT)
    value = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    constraint.validate(value, "w")
    factors = [f.detach() for f in constraint.right_inverse(value)]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    leaves = [f.clone().requires_grad_() for f in factors]
    expected = torch.autograd.grad(constraint.forward(*leaves), leaves, grad)
    for got, want in zip(constraint.pullback(factors, grad), expected):
        assert torch.allclose(got, want, atol=1e-12)


def _same_optimum_from_zero_as_after_the_short_descent(problem):
    """The first check comes before any descent, and certifies the optimum that the short first
    descent (the previous rule, forced) certifies: both optimal, the objectives equal to 1e-8."""
    from symopt.solver import descent

    counts, quick = _directions_per_outer_iteration(problem)
    assert counts[0] == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(descent.Descent, "_early_check", lambda self: (descent.EARLY_ITERATIONS, False))
        counts, reference = _directions_per_outer_iteration(problem)
    assert counts[0] == descent.EARLY_ITERATIONS
    assert quick.status == reference.status == "optimal", (quick.message, reference.message)
    assert abs(quick.objective - reference.objective) <= 1e-8 * max(1.0, abs(reference.objective))


@given(rows_per_column=st.floats(1.0, 4.0), columns=st.integers(2, 40), logistic=st.booleans(),
       intercept=st.booleans(), weighted=st.booleans(), l1_ratio=st.sampled_from([1.0, 0.5]),
       fraction=st.floats(1e-3, 0.9), seed=st.integers(0, 2**16))
@settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_the_polish_from_zero_reaches_the_optimum_of_the_short_descent(rows_per_column, columns, logistic, intercept,
                                                                        weighted, l1_ratio, fraction, seed):
    """On random ℓ1 problems with at least as many rows as columns (Lasso or logistic-L1, with or
    without an intercept, sample weights, the elastic net, λ from 1e-3 to 0.9 λ_max), the first check
    before any descent — the polish from θ = 0 — certifies the same optimum as the short first
    descent does (the previous rule, forced): both optimal, the objectives equal to 1e-8."""
    g = torch.Generator().manual_seed(seed)
    n = max(columns + 2, int(rows_per_column * columns))
    X = torch.randn(n, columns, generator=g, dtype=torch.float64) * torch.rand(columns, generator=g, dtype=torch.float64).add(0.1)
    w = torch.randn(columns, generator=g, dtype=torch.float64) * (torch.rand(columns, generator=g) < 0.3)
    z = X @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    if logistic:
        y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(z)).to(torch.float64)
        if intercept and not 0 < float(y.mean()) < 1:
            y[0] = 1.0 - y[0]
    else:
        y = z
    weights = torch.rand(n, generator=g, dtype=torch.float64).add(0.1) if weighted else None
    make = logistic_l1 if logistic else lasso
    problem = make(X, y, 1.0, fit_intercept=intercept, sample_weight=weights, l1_ratio=l1_ratio)
    _same_optimum_from_zero_as_after_the_short_descent(problem.at_strength(fraction * problem.strength_max()))


@given(groups=st.integers(4, 60), size=st.integers(1, 4), rows_per_column=st.floats(0.2, 0.95),
       fraction=st.floats(0.05, 0.9), seed=st.integers(0, 2**16))
@settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_a_wide_group_polish_from_zero_reaches_the_optimum_of_the_short_descent(groups, size, rows_per_column,
                                                                               fraction, seed):
    """On random group lassos with fewer rows than columns where ∇loss(0) pulls at most CAPPED_PULLED_SHARE
    of the groups off zero (the rule that starts them at θ = 0, the first model capped), the group polish
    from there certifies the optimum that the short first descent certifies."""
    from hypothesis import assume

    from symopt.solver.descent import CAPPED_PULLED_SHARE

    g = torch.Generator().manual_seed(seed)
    columns = groups * size
    n = max(2, int(rows_per_column * columns))
    assume(n < columns)
    X = torch.randn(n, columns, generator=g, dtype=torch.float64)
    w = torch.randn(columns, generator=g, dtype=torch.float64) * (torch.rand(columns, generator=g) < 0.2).double()
    y = X @ w + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    pull = (X.mT @ y).view(groups, size).norm(dim=1)
    assume(float((pull > fraction * pull.max()).double().mean()) <= CAPPED_PULLED_SHARE)
    problem = group_lasso(X, y, size, 1.0)
    _same_optimum_from_zero_as_after_the_short_descent(problem.at_strength(fraction * problem.strength_max()))


@given(groups=st.integers(1, 24), size=st.integers(1, 4), extra_rows=st.integers(1, 60), intercept=st.booleans(),
       multitask=st.booleans(), fraction=st.floats(1e-3, 0.9), seed=st.integers(0, 2**16))
@settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_the_group_polish_from_zero_reaches_the_optimum_of_the_short_descent(groups, size, extra_rows, intercept,
                                                                              multitask, fraction, seed):
    """On random least-squares problems under a norm of up to 24 groups with enough rows (the group lasso
    with or without an intercept, the multi-task Lasso), the group polish from θ = 0, its pulled groups
    joining together, certifies the same optimum as after the short first descent (forced)."""
    from symopt.problems import multitask_lasso

    g = torch.Generator().manual_seed(seed)
    columns = groups * size if not multitask else groups
    n = columns + extra_rows
    X = torch.randn(n, columns, generator=g, dtype=torch.float64)
    w = torch.randn(columns, 3 if multitask else 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.5 * torch.randn(n, w.shape[1], generator=g, dtype=torch.float64)
    problem = (multitask_lasso(X, Y, 1.0, fit_intercept=intercept) if multitask
               else group_lasso(X, Y[:, 0], size, 1.0, fit_intercept=intercept))
    _same_optimum_from_zero_as_after_the_short_descent(problem.at_strength(fraction * problem.strength_max()))
