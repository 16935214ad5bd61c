"""symopt.solve on the built-in families agrees with cvxpy; compare / CLI report it."""

import pytest
import torch

import symopt
from symopt.baselines import solve_cvxpy, solve_proximal, solve_sklearn
from symopt.cli import main
from symopt.compare import builtin_problems, compare
from symopt.problems import equality_ls, lasso, logistic_l1, matrix_completion
from symopt.solve import solve

pytest.importorskip("cvxpy")

FAMILIES = ["lasso", "group_lasso", "logistic_l1", "equality_ls", "matrix_completion"]


@pytest.mark.parametrize("name", FAMILIES)
def test_solve_reaches_cvxpy_optimum(name):
    (problem,) = builtin_problems([name], quick=True, seed=1)
    dcs = solve(problem)
    ref = solve_cvxpy(problem)
    assert dcs.status == "optimal" and ref.status == "optimal"
    assert (dcs.objective - ref.objective) / max(1.0, abs(ref.objective)) <= 1e-6
    assert float((dcs.x - ref.x).abs().max()) <= 1e-3 * max(1.0, float(ref.x.abs().max()))
    assert dcs.violation <= 1e-10
    assert dcs.iterations == len(dcs.history) and dcs.seconds > 0 and dcs.kkt_residual >= 0


def test_equality_problem_is_exact_and_matches_closed_form():
    (problem,) = builtin_problems(["equality_ls"], quick=True)
    r = solve(problem, tol=1e-8)  # the default 1e-6 is an objective-gap target; x needs tighter
    assert r.status == "optimal"
    assert float((r.x - problem.meta["solution"]).abs().max()) <= 1e-6
    assert r.violation <= 1e-12


def test_float32_solve():
    (problem,) = builtin_problems(["lasso"], quick=True)
    r32, r64 = solve(problem, dtype=torch.float32, tol=1e-4), solve(problem)
    assert r32.status == "optimal"
    assert abs(r32.objective - r64.objective) / abs(r64.objective) <= 1e-5


def test_baselines_agree_with_each_other():
    (problem,) = builtin_problems(["lasso"], quick=True)
    a, b = solve_sklearn(problem), solve_proximal(problem)
    assert abs(a.objective - b.objective) <= 1e-9 * abs(a.objective)
    with pytest.raises(ValueError, match="sklearn has no solver"):
        solve_sklearn(builtin_problems(["matrix_completion"], quick=True)[0])


def test_compare_quick_all_families_ok():
    rows = compare(builtin_problems(quick=True), solvers=["dcs", "cvxpy", "proximal"])
    assert rows.ok
    assert {r.problem.split()[0] for r in rows} == {"lasso", "group_lasso", "logistic_l1", "equality_ls",
                                                     "completion"}
    assert "rel. gap" in str(rows)


def test_cli_compare(capsys):
    assert main(["compare", "--quick", "--problems", "lasso,equality_ls", "--solvers", "dcs,proximal"]) == 0
    out = capsys.readouterr().out
    assert "lasso 100x200" in out and "OK: DCS matches" in out
    with pytest.raises(SystemExit):
        main(["compare", "--problems", "nope"])
    assert "unknown problem" in capsys.readouterr().err


def test_unreachable_tolerance_stops_as_stalled():
    """Below float64 resolution of the objective L-BFGS cannot move: say so, do not spin."""
    (problem,) = builtin_problems(["equality_ls"], quick=True)
    r = solve(problem, tol=1e-14, max_iter=500)
    assert r.status == "stalled" and r.iterations < 500 and "no progress" in r.message


@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=-1.0), "tol must be"), (dict(max_iter=0), "max_iter must be"), (dict(method="newton"), "unknown method"),
])
def test_solve_bad_options(kwargs, match):
    (problem,) = builtin_problems(["lasso"], quick=True)
    with pytest.raises(ValueError, match=match):
        solve(problem, **kwargs)


@pytest.mark.parametrize("build,match", [
    (lambda: lasso(torch.randn(5, 3), torch.randn(4), 0.1), "X must be"),
    (lambda: lasso(torch.randn(5, 3), torch.randn(5), -0.1), "strength"),
    (lambda: lasso(torch.full((5, 3), float("nan")), torch.randn(5), 0.1), "NaN"),
    (lambda: logistic_l1(torch.randn(5, 3), torch.tensor([0.0, 1, 2, 0, 1]), 0.1), "labels"),
    (lambda: matrix_completion(torch.randn(3, 3), torch.zeros(3, 3, dtype=torch.bool), 0.1), "no observed"),
    (lambda: equality_ls(torch.randn(5, 3), torch.randn(5), torch.randn(2, 4)), "A has 4 columns"),
])
def test_problem_builders_validate(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_problem_objective_of_truth_is_finite():
    for problem in builtin_problems(quick=True):
        x = torch.zeros(problem.shape, dtype=torch.float64)
        assert torch.isfinite(torch.tensor(problem.objective(x)))
    assert symopt.Sparse  # the top-level API stays importable next to the problem layer
