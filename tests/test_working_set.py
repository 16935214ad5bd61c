"""Working sets (`symopt.solver.working_set`): DCS on column subsets of X reaches the full problem's optimum,
certified by the full KKT residual; restrictions are the problem on a subset; warm starts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symopt
from symopt.solver import working_set
from symopt.baselines import solve_cvxpy
from symopt.problems import (group_lasso, lasso, logistic_l1, make_group_lasso, make_lasso, make_logistic_l1,
                             make_matrix_completion)
from symopt.problems.design import columns


def _support(x: torch.Tensor) -> set:
    return set(torch.nonzero(x.reshape(-1)).reshape(-1).tolist())


@pytest.mark.parametrize("make", [
    lambda: make_lasso(n=150, d=1200, nonzeros=8),
    lambda: make_lasso(n=150, d=1200, nonzeros=8, x_density=0.05),
    lambda: make_group_lasso(n=150, d=1200, group_size=6, active_groups=4),
    lambda: make_logistic_l1(n=300, d=1000, nonzeros=6),
], ids=["lasso", "lasso-sparse-x", "group-lasso", "logistic"])
def test_working_sets_reach_the_full_optimum(make):
    problem = make()
    ws, full = symopt.solve(problem, working_set=True), symopt.solve(problem, working_set=False)
    assert ws.status == full.status == "optimal"
    assert "working sets" in ws.message
    assert ws.objective == pytest.approx(full.objective, rel=1e-9)
    assert _support(ws.x) == _support(full.x)
    assert ws.kkt_residual <= 1e-6 * float(_gradient_at_zero(problem).norm())


@pytest.mark.slow
def test_working_sets_match_cvxpy():
    problem = make_lasso(n=100, d=1000, nonzeros=5)
    ws, reference = symopt.solve(problem, working_set=True), solve_cvxpy(problem)
    assert ws.objective == pytest.approx(reference.objective, rel=1e-7)


def test_the_working_set_grows_until_the_full_kkt_holds(monkeypatch):
    monkeypatch.setattr(working_set, "FIRST_SIZE", 2)  # far fewer than the ~30 atoms of the solution
    problem = make_lasso(n=200, d=1500, nonzeros=30, fraction=0.05)
    ws, full = symopt.solve(problem, working_set=True), symopt.solve(problem, working_set=False)
    assert ws.status == "optimal" and ws.iterations >= 3  # rounds: 2, 4, 8, ... atoms
    assert ws.objective == pytest.approx(full.objective, rel=1e-9)
    times = [t for t, _, _ in ws.history]
    assert times == sorted(times)


def test_list_groups_are_restricted_as_groups():
    base = make_group_lasso(n=120, d=1200, group_size=4, active_groups=3)
    rng = np.random.default_rng(0)
    perm = rng.permutation(1200)
    groups = [perm[i:i + 4].tolist() for i in range(0, 1200, 4)]  # scattered index groups
    problem = group_lasso(base.data["X"], base.data["y"], groups, strength=base.meta["strength"])
    ws, full = symopt.solve(problem, working_set=True), symopt.solve(problem, working_set=False)
    assert ws.status == full.status == "optimal"
    assert ws.objective == pytest.approx(full.objective, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 59), min_size=1, max_size=60, unique=True), st.booleans())
def test_a_restriction_is_the_problem_on_the_subset(chosen, sparse):
    """loss_W(θ_W) = loss(θ with θ_W in place and 0 elsewhere), for dense and CSR designs."""
    g = torch.Generator().manual_seed(len(chosen))
    X = torch.randn(25, 60, generator=g, dtype=torch.float64)
    X = X * (torch.rand(25, 60, generator=g) < 0.3)
    y = torch.randn(25, generator=g, dtype=torch.float64)
    problem = lasso(X.to_sparse_csr() if sparse else X, y, 0.1)
    index = torch.tensor(sorted(chosen))
    sub = problem.restrict(index)
    theta_w = torch.randn(len(index), generator=g, dtype=torch.float64)
    theta = torch.zeros(60, dtype=torch.float64)
    theta[index] = theta_w
    assert float(sub.loss(theta_w, **sub.data)) == pytest.approx(float(problem.loss(theta, **problem.data)), rel=1e-12)
    torch.testing.assert_close(columns(problem.data["X"], index).to_dense(), X[:, index])


def test_warm_start():
    problem = make_lasso(n=100, d=300, nonzeros=5)
    cold = symopt.solve(problem, working_set=False)
    warm = symopt.solve(problem, working_set=False, start=cold.x)
    assert warm.status == "optimal" and warm.iterations == 1
    assert warm.objective == pytest.approx(cold.objective, rel=1e-10)


def _nonnegative(generated):
    return lasso(generated.data["X"], generated.data["y"], 0.1 * generated.strength_max(), positive=True)


@pytest.mark.parametrize("make, atoms, on", [
    (lambda: make_logistic_l1(n=50, d=1000), 1000, True),
    (lambda: make_logistic_l1(n=50, d=999), 999, False),
    (lambda: make_group_lasso(n=50, d=1000, group_size=5), 200, False),    # 1000 entries, but 200 groups
    (lambda: make_group_lasso(n=50, d=2000, group_size=2), 1000, True),
    # least squares under ℓ1 from 5000 columns: below, its check from θ = 0 is faster
    (lambda: make_lasso(n=50, d=5000, nonzeros=3), 5000, True),
    (lambda: make_lasso(n=50, d=4999, nonzeros=3), 4999, False),
    (lambda: make_lasso(n=50, d=1000, nonzeros=3), 1000, False),
    (lambda: _nonnegative(make_lasso(n=50, d=5000, nonzeros=3)), 5000, True),
], ids=["logistic-1000", "logistic-999", "groups-200", "groups-1000", "lasso-5000", "lasso-4999", "lasso-1000",
        "positive-5000"])
def test_the_default_counts_atoms_not_entries(make, atoms, on):
    problem = make()
    assert working_set.atom_count(problem.constraint(), problem.shape[0]) == atoms
    assert ("working sets" in symopt.solve(problem).message) == on


def _sparse_logistic(n: int, d: int, density: float):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    generator = np.random.default_rng(3)
    X = scipy_sparse.random(n, d, density=density, format="csr", random_state=generator,
                            data_rvs=generator.standard_normal)
    truth = np.zeros(d)
    truth[:5] = 3.0
    y = (X @ truth + 0.3 * generator.standard_normal(n) > 0).astype(float)
    problem = logistic_l1(X, y, 1.0)
    return problem.at_strength(0.05 * problem.strength_max())


@pytest.mark.parametrize("make", [lambda: make_lasso(n=200, d=6000, nonzeros=5, x_density=0.01),
                                  lambda: _sparse_logistic(n=300, d=1500, density=0.02)],
                         ids=["lasso", "logistic"])
def test_an_l1_problem_on_a_sparse_design_takes_working_sets_only_from_many_stored_entries(monkeypatch, make):
    # A CSR design's products cost its stored entries: below _SPARSE_L1_(LEAST_SQUARES_)WORKING_SETS_FROM_ENTRIES
    # the default solves without working sets (however many columns), from there with them; the same optimum
    from symopt.solver import dcs

    problem = make()
    assert problem.data["X"].layout == torch.sparse_csr
    below = symopt.solve(problem)
    assert below.status == "optimal" and "working sets" not in below.message
    for name in ("_SPARSE_L1_LEAST_SQUARES_WORKING_SETS_FROM_ENTRIES", "_SPARSE_L1_WORKING_SETS_FROM_ENTRIES"):
        monkeypatch.setattr(dcs, name, 1000)
    above = symopt.solve(problem)
    assert above.status == "optimal" and "working sets" in above.message
    assert below.objective == pytest.approx(above.objective, rel=1e-9)
    assert _support(below.x) == _support(above.x)


def test_bad_options_are_named_and_change_nothing():
    problem = make_lasso(n=50, d=40, nonzeros=3)
    with pytest.raises(TypeError, match="working_set must be True, False or None"):
        symopt.solve(problem, working_set="yes")
    with pytest.raises(ValueError, match="working_set=True needs a problem that can restrict itself"):
        symopt.solve(make_matrix_completion(m=20, n=20, rank=2), working_set=True)
    with pytest.raises(ValueError, match=r"start has shape \(3,\)"):
        symopt.solve(problem, start=torch.zeros(3))
    with pytest.raises(TypeError, match="start must be a tensor"):
        symopt.solve(problem, start=[0.0] * 40)
    with pytest.raises(ValueError, match="finite"):
        symopt.solve(problem, start=torch.full((40,), float("nan")))
    budget = make_lasso(n=50, d=1200, nonzeros=3)
    budget = lasso(budget.data["X"], budget.data["y"], max_nonzero=3)
    assert not working_set.applies(budget, budget.constraint())  # budgets search the path on the full problem


def _gradient_at_zero(problem):
    zero = torch.zeros(problem.shape, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(problem.loss(zero, **problem.data), zero)
    return grad


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_multitask_lasso_is_solved_on_working_sets_of_features(fit_intercept):
    """The multi-task Lasso's rows are index groups of T consecutive entries, so a wide problem
    (3000 features × 4 tasks) runs on working sets of whole rows and reaches scikit-learn's
    MultiTaskLasso optimum and the full solve's."""
    import re

    import numpy as np
    from sklearn.linear_model import MultiTaskLasso

    from symopt.problems import multitask_lasso

    g = torch.Generator().manual_seed(0)
    X = torch.randn(150, 3000, generator=g, dtype=torch.float64)
    Y = X[:, :10] @ torch.randn(10, 4, generator=g, dtype=torch.float64)
    Y = Y + 0.1 * torch.randn(150, 4, generator=g, dtype=torch.float64)
    problem = multitask_lasso(X, Y, 1.0, fit_intercept=fit_intercept)
    problem = problem.at_strength(0.1 * problem.strength_max())
    ours = symopt.solve(problem)
    full = symopt.solve(problem, working_set=False)
    assert ours.status == "optimal" and "working sets" in ours.message and "working sets" not in full.message
    reference = MultiTaskLasso(alpha=problem.meta["strength"], fit_intercept=fit_intercept, tol=1e-12,
                               max_iter=100_000).fit(np.asfortranarray(X.numpy()), Y.numpy())
    theirs = problem.objective(torch.as_tensor(reference.coef_.T))
    assert abs(ours.objective - theirs) <= 1e-8 * abs(theirs)
    assert abs(ours.objective - full.objective) <= 1e-8 * abs(full.objective)
    rows = set(torch.nonzero(ours.x.norm(dim=1)).reshape(-1).tolist())
    assert rows == set(np.flatnonzero(np.linalg.norm(reference.coef_, axis=0)).tolist())
    last, total = map(int, re.search(r"last (\d+) of (\d+) coordinates", ours.message).groups())
    assert total == 12_000 and last % 4 == 0 and last <= 2_000  # whole rows, a small share of them


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_the_nonnegative_lasso_is_solved_on_working_sets(fit_intercept):
    """lasso(positive=True) with 2000 columns on working sets (asked for: by default they start at 5000
    columns for least squares; an entry enters when its pull upward, (−∂ℓ/∂θ_i)⁺, exceeds λ; one
    pulled downward never does) reaches scikit-learn's Lasso(positive=True) and the full solve's
    optimum, with the same support."""
    from sklearn.linear_model import Lasso

    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 2000, generator=g, dtype=torch.float64)
    w = torch.zeros(2000, dtype=torch.float64)
    w[:10], w[10:20] = 1.0 + torch.rand(10, generator=g, dtype=torch.float64), -1.0  # half of them negative
    y = X @ w + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    problem = lasso(X, y, 1.0, positive=True, fit_intercept=fit_intercept)
    problem = problem.at_strength(0.05 * problem.strength_max())
    ours, full = symopt.solve(problem, working_set=True), symopt.solve(problem)
    assert ours.status == full.status == "optimal"
    assert "working sets" in ours.message and "working sets" not in full.message
    reference = Lasso(alpha=problem.meta["strength"], positive=True, fit_intercept=fit_intercept, tol=1e-12,
                      max_iter=100_000).fit(np.asfortranarray(X.numpy()), y.numpy())
    theirs = problem.objective(torch.as_tensor(reference.coef_))
    assert abs(ours.objective - theirs) <= 1e-8 * abs(theirs)
    assert abs(ours.objective - full.objective) <= 1e-9 * abs(full.objective)
    assert _support(ours.x) == set(np.flatnonzero(reference.coef_).tolist()) == _support(full.x)
    assert bool((ours.x >= 0).all())



@pytest.mark.parametrize("working", [True, False], ids=["working-sets", "plain"])
def test_a_solve_copies_the_design_to_its_device_and_dtype_once(monkeypatch, working):
    """The λ_max check before any descent moves the data to the solver's device in float64; the working
    sets and a float64 descent reuse that copy rather than making another (on a GPU each is the whole
    design over PCIe: 400 MB for 5000 × 10000; here float32 data solved in float64, a copy on the CPU)."""
    base = make_lasso(n=120, d=1100, nonzeros=6)
    problem = lasso(base.data["X"].float(), base.data["y"].float(), base.constraint().strength)
    copies = []
    real = type(problem).data_on

    def counting(self, device=None, dtype=None):
        moved = real(self, device, dtype)
        if self is problem and moved["X"] is not problem.data["X"]:
            copies.append(moved["X"])
        return moved

    monkeypatch.setattr(type(problem), "data_on", counting)
    result = symopt.solve(problem, working_set=working)
    assert result.status == "optimal" and ("working sets" in result.message) == working
    assert len(copies) >= 2 and all(copy is copies[0] for copy in copies)  # asked for more than once, made once
    grid = problem.strength_max() * torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    points = []
    monkeypatch.setattr(type(problem), "data_on", lambda self, device=None, dtype=None: (
        points.append(real(self, device, dtype)["X"]), real(self, device, dtype))[1])
    path = symopt.path(problem, grid, working_set=working)
    assert set(path.statuses) == {"optimal"}
    made = [x for x in points if x.dtype == torch.float64 and x.shape == problem.data["X"].shape]
    assert len(made) >= 2 and all(x is made[0] for x in made)  # every point's solve on one float64 copy
