"""The accelerated SoftImpute baseline solves nuclear-norm completion to the same optimum as cvxpy and
DCS, at low and at high rank, and says when it does not apply."""

import pytest
import torch

import symopt
from symopt.baselines import NotApplicable, solve_softimpute
from symopt.comparison import compare
from symopt.problems import make_lasso, make_matrix_completion, matrix_completion


def test_reaches_the_cvxpy_optimum_with_the_same_rank():
    pytest.importorskip("cvxpy")
    from symopt.baselines import solve_cvxpy

    problem = make_matrix_completion(m=30, n=20, rank=3, observed=0.5, strength=0.3, seed=1)
    ours, reference = solve_softimpute(problem), solve_cvxpy(problem)
    assert ours.status == "optimal"
    assert abs(ours.objective - reference.objective) <= 1e-6 * abs(reference.objective)
    assert float((ours.x - reference.x).abs().max()) < 1e-4 * float(reference.x.abs().max())
    rank = lambda x: int(torch.linalg.matrix_rank(x, rtol=1e-6))  # noqa: E731
    assert rank(ours.x) == rank(reference.x)


def test_a_high_rank_answer_widens_the_subspace():
    """A small λ on a full-rank matrix keeps most singular values: the working width (10 columns at
    the start) must double until it sees them all, or the answer would be a truncated SVT."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(40, 30, generator=g, dtype=torch.float64)
    mask = torch.rand(40, 30, generator=g) < 0.8
    problem = matrix_completion(M, mask, strength=0.05)
    ours, dcs = solve_softimpute(problem), symopt.solve(problem)
    assert ours.status == "optimal" and dcs.status == "optimal"
    rank = int(torch.linalg.matrix_rank(ours.x, rtol=1e-6))
    assert rank > 20 and rank == int(torch.linalg.matrix_rank(dcs.x, rtol=1e-6))
    assert abs(ours.objective - dcs.objective) <= 1e-7 * abs(dcs.objective)


def test_history_objective_is_at_the_problems_strength():
    """During continuation λ_t > λ, but the recorded objective is the problem's own: its last entry
    is the result's objective (up to the snap)."""
    problem = make_matrix_completion(m=30, n=20, rank=2, seed=2)
    result = solve_softimpute(problem)
    assert len(result.history) == result.iterations
    assert abs(result.history[-1][1] - result.objective) <= 1e-8 * abs(result.objective)


def test_float32_and_a_tight_tolerance():
    problem = make_matrix_completion(m=30, n=20, rank=2, seed=3)
    reference = symopt.solve(problem, tol=1e-9)
    tight = solve_softimpute(problem, tol=1e-9)
    assert tight.status == "optimal" and abs(tight.objective - reference.objective) <= 1e-10 * reference.objective
    single = solve_softimpute(problem, dtype=torch.float32, tol=1e-5)
    assert abs(single.objective - reference.objective) <= 1e-5 * reference.objective


def test_not_applicable_elsewhere_and_in_compare():
    with pytest.raises(NotApplicable, match="matrix completion only"):
        solve_softimpute(make_lasso(n=20, d=10, nonzeros=2))
    with pytest.raises(NotApplicable):
        solve_softimpute(matrix_completion(torch.eye(4, dtype=torch.float64), torch.ones(4, 4, dtype=torch.bool),
                                           target_rank=2))
    rows = compare([make_lasso(n=30, d=20, nonzeros=2), make_matrix_completion(m=20, n=15, rank=2)],
                   solvers=["dcs", "softimpute"])
    assert rows.ok
    applicable = {(r.problem.split()[0], r.result is not None) for r in rows if r.solver == "softimpute"}
    assert applicable == {("lasso", False), ("completion", True)}
