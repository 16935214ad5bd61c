"""What the solver no longer computes twice: remembered loss evaluations (`Evaluations`), the path's
shared ones, the least-squares Gram behind the face polish's curvature and the linear faces' slope.
Each is checked to give the number it replaces, and the savings are counted, so a change that
loses them fails here instead of only showing in benchmarks/RESULTS.md."""

import numpy as np
import pytest
import torch

import symopt
from symopt.problems import lasso, logistic_l1, make_lasso
from symopt.problems.base import BoundLoss, Evaluations
from symopt.problems.glm import DataTerm, SquaredError

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_diabetes  # noqa: E402


class CountingTerm(DataTerm):
    """A least-squares data term that counts its analytic evaluations (products with X)."""

    def value_and_grad(self, theta, X, y, weights=None):
        type(self).calls += 1
        return super().value_and_grad(theta, X, y, weights)


def _bound(n=40, d=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    CountingTerm.calls = 0
    return BoundLoss(CountingTerm(SquaredError()), {"X": X, "y": y}), d


def test_a_point_equal_in_value_is_answered_without_a_product():
    bound, d = _bound()
    theta = torch.linspace(-1, 1, d, dtype=torch.float64)
    value, grad = bound.value_and_grad(theta)
    again = bound.value_and_grad(theta.clone())  # another tensor, the same values
    assert CountingTerm.calls == 1 and again[0] is value and again[1] is grad
    assert bound.remembered(theta.clone()) is not None


def test_a_changed_point_is_evaluated_afresh():
    bound, d = _bound()
    theta = torch.linspace(-1, 1, d, dtype=torch.float64)
    _, grad = bound.value_and_grad(theta)
    theta[3] += 1e-12  # written into after the call: the remembered copy is not the new value
    _, moved = bound.value_and_grad(theta)
    assert CountingTerm.calls == 2 and not torch.equal(grad, moved)
    assert bound.value_and_grad(theta.float().double())[1] is not None  # rounded to float32: other values
    assert CountingTerm.calls == 3


def test_the_zero_point_is_never_evicted_and_the_rest_are_few():
    bound, d = _bound()
    bound.value_and_grad(torch.zeros(d, dtype=torch.float64))
    for i in range(Evaluations.SIZE + 3):
        bound.value_and_grad(torch.full((d,), float(i + 1), dtype=torch.float64))
    calls = CountingTerm.calls
    bound.value_and_grad(torch.zeros(d, dtype=torch.float64))
    bound.value_and_grad(torch.full((d,), float(Evaluations.SIZE + 3), dtype=torch.float64))  # the newest
    assert CountingTerm.calls == calls
    bound.value_and_grad(torch.full((d,), 1.0, dtype=torch.float64))  # the oldest: forgotten
    assert CountingTerm.calls == calls + 1


def test_other_data_or_another_loss_never_share_an_answer():
    bound, d = _bound(seed=0)
    other, _ = _bound(seed=1)
    theta = torch.ones(d, dtype=torch.float64)
    assert not torch.equal(bound.value_and_grad(theta)[1], other.value_and_grad(theta)[1])
    memo = Evaluations()
    X, y = torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    plain = BoundLoss(DataTerm(SquaredError()), {"X": X, "y": y}, memo)
    centred = BoundLoss(DataTerm(SquaredError(), fit_intercept=True), {"X": X, "y": y}, memo)
    point = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert float(plain.value_and_grad(point)[0]) != float(centred.value_and_grad(point)[0])


def test_a_loss_whose_equality_is_not_a_bool_is_never_confused():
    from dataclasses import dataclass

    @dataclass
    class Shifted:  # a user's loss with its own derivatives and a tensor field: == is elementwise
        shift: torch.Tensor

        def __call__(self, theta, X):
            return 0.5 * (X @ theta - self.shift).square().sum()

        def value_and_grad(self, theta, X):
            r = X @ theta - self.shift
            return 0.5 * r.square().sum(), X.T @ r

    memo, X = Evaluations(), torch.eye(2, dtype=torch.float64)
    one = BoundLoss(Shifted(torch.ones(2, dtype=torch.float64)), {"X": X}, memo)
    two = BoundLoss(Shifted(2 * torch.ones(2, dtype=torch.float64)), {"X": X}, memo)
    theta = torch.zeros(2, dtype=torch.float64)
    assert float(one.value_and_grad(theta)[0]) == 1.0 and float(two.value_and_grad(theta)[0]) == 4.0


def test_a_path_evaluates_the_full_design_about_once_a_point():
    """Before the shared evaluations a point of a 50-point path (500×2000) cost ~10 full products."""
    generated = make_lasso(n=200, d=1200, nonzeros=10, seed=3)
    X, y = generated.data["X"], generated.data["y"]
    problem = lasso(X, y, 1.0)
    problem.loss = CountingTerm(SquaredError())  # (each point's at_strength builds its own plain term)
    problem.at_strength = lambda lam: _counting(lasso(X, y, lam))
    grid = problem.strength_max() * np.geomspace(1, 0.05, 12)
    CountingTerm.calls = 0
    path = symopt.path(problem, grid)
    assert set(path.statuses) == {"optimal"}
    assert CountingTerm.calls <= 2.5 * len(grid)  # 27 here; 47 when each point evaluates for itself
    cold = [symopt.solve(lasso(X, y, lam)) for lam in grid]
    assert [r.objective for r in path] == pytest.approx([r.objective for r in cold], rel=1e-9)


def _counting(problem):
    problem.loss = CountingTerm(SquaredError())
    return problem


@pytest.mark.parametrize("fit_intercept, ridge", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_the_gram_block_is_the_column_product_curvature(fit_intercept, ridge):
    X, _ = load_diabetes(return_X_y=True)
    X = torch.as_tensor(X)
    y = torch.linspace(0, 1, X.shape[0], dtype=torch.float64)
    term = DataTerm(SquaredError(), fit_intercept=fit_intercept, ridge=ridge)
    mask = torch.tensor([True, False, True, True, False, False, True, False, False, True])
    theta = torch.linspace(-1, 1, 10, dtype=torch.float64)
    from_gram = term.curvature(theta, mask, X, y)
    assert getattr(X, f"_symopt_gram_{int(fit_intercept)}", None) is not None
    wide = torch.cat([X, torch.zeros(X.shape[0], 300, dtype=torch.float64)], 1)  # too wide to keep a Gram
    from_columns = term.curvature(torch.cat([theta, torch.zeros(300, dtype=torch.float64)]),
                                  torch.cat([mask, torch.zeros(300, dtype=torch.bool)]), wide, y)
    assert getattr(wide, f"_symopt_gram_{int(fit_intercept)}", None) is None
    assert torch.allclose(from_gram, from_columns, rtol=1e-12, atol=1e-14)
    weights = torch.rand(X.shape[0], dtype=torch.float64)
    weighted = term.curvature(theta, mask, X, y, weights / weights.sum())  # not the unweighted Gram
    assert not torch.allclose(weighted, from_gram)


def test_a_warm_start_on_its_face_is_certified_on_the_full_problem():
    generated = make_lasso(n=150, d=1100, nonzeros=8, seed=5)
    lam = 0.2 * generated.strength_max()
    first = symopt.solve(generated.at_strength(lam), working_set=True)
    nearby = symopt.solve(generated.at_strength(0.95 * lam), start=first.x, working_set=True)
    assert nearby.status == "optimal" and "no working set" in nearby.message
    assert nearby.objective == pytest.approx(symopt.solve(generated.at_strength(0.95 * lam)).objective, rel=1e-10)


def test_logistic_paths_share_their_evaluations_too():
    X, y = load_diabetes(return_X_y=True)
    labels = (y > np.median(y)).astype(float)
    X = (X - X.mean(0)) / X.std(0)
    path = symopt.path(logistic_l1(X, labels, 1.0, fit_intercept=True), n_strengths=10, eps=1e-2)
    cold = [symopt.solve(r.problem) for r in path]
    assert [r.objective for r in path] == pytest.approx([r.objective for r in cold], rel=1e-9)


def _zero_evaluations(monkeypatch):
    """A list that grows by one for every analytic evaluation of a data term at θ = 0."""
    at_zero = []
    original = DataTerm.value_and_grad

    def counted(self, theta, *args, **kwargs):
        if not bool(theta.any()):
            at_zero.append(theta.numel())
        return original(self, theta, *args, **kwargs)

    monkeypatch.setattr(DataTerm, "value_and_grad", counted)
    return at_zero


@pytest.mark.parametrize("d", [1500, Evaluations.LIMIT + 500])
def test_a_solve_evaluates_the_start_once(monkeypatch, d):
    """The λ_max check's ∇loss(0) is the descent's start and its tolerance's scale: one product with X
    and one with Xᵀ a call, not one per binding of the data (each a pass over a 5000 × 10000 design
    on a large solve), θ = 0 remembered at any size; a second call evaluates afresh."""
    generated = make_lasso(n=30, d=d, nonzeros=3, seed=1)
    at_zero = _zero_evaluations(monkeypatch)
    first = symopt.solve(generated, working_set=False)
    assert first.status == "optimal" and at_zero == [d]
    symopt.solve(generated, working_set=False)
    assert at_zero == [d, d]
