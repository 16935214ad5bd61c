"""symopt.solve on the built-in families agrees with cvxpy; compare / CLI report it."""

import pytest
import torch

import symopt
from symopt.baselines import NotApplicable, solve_cvxpy, solve_geoopt, solve_proximal, solve_sklearn
from symopt.cli import main
from symopt.comparison import builtin_problems, compare
from symopt.problems import (equality_ls, lasso, logistic_l1, low_rank_regression, make_low_rank_regression,
                             matrix_completion, tied_least_squares)
from symopt import solve

pytest.importorskip("cvxpy")

CONVEX = ["lasso", "group_lasso", "logistic_l1", "equality_ls", "fixed_zeros_ls", "tied_ls", "matrix_completion",
          "low_rank_regression"]


def _pattern(problem, x):
    from symopt.comparison import structure_of
    return structure_of(problem, x)[1]


@pytest.mark.parametrize("name", CONVEX)
def test_dcs_and_projected_reach_cvxpy_optimum(name):
    """Objective to 1e-6 relative and solution to 1e-5 of cvxpy (whose own solution is accurate to
    ~1e-5 here: Clarabel at gap 1e-9), identical support / rank, feasible — for DCS and for the
    projected / proximal FISTA."""
    import warnings

    (problem,) = builtin_problems([name], quick=True, seed=1)
    dcs, projected = solve(problem, tol=1e-7), solve_proximal(problem, tol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal_inaccurate" at this tight gap is still a 1e-9 gap
        ref = solve_cvxpy(problem, tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    assert ref.status in ("optimal", "optimal_inaccurate")
    scale = max(1.0, float(ref.x.abs().max()))
    for result in (dcs, projected):
        assert result.status == "optimal", result.solver
        assert (result.objective - ref.objective) / max(1.0, abs(ref.objective)) <= 1e-6
        assert float((result.x - ref.x).abs().max()) <= 1e-5 * scale
        assert _pattern(problem, result.x) == _pattern(problem, ref.x)
        assert result.violation <= 1e-10
        assert result.iterations == len(result.history) and result.seconds > 0 and result.kkt_residual >= 0


def test_default_tolerance_reaches_gap_1e6_on_every_family():
    for problem in builtin_problems(quick=True, seed=2):
        dcs = solve(problem)
        assert dcs.status == "optimal", problem.name
        ref = solve_cvxpy(problem) if problem.cvxpy else solve_proximal(problem, tol=1e-10)
        assert (dcs.objective - ref.objective) / max(1.0, abs(ref.objective)) <= 1e-6, problem.name


def test_momentum_method_reaches_the_same_optimum(capsys):
    for problem in builtin_problems(quick=True, seed=3):
        a, b = solve(problem), solve(problem, method="momentum", max_iter=2000)
        assert b.status == "optimal" and b.solver == "dcs[momentum]", problem.name
        assert (b.objective - a.objective) / max(1.0, abs(a.objective)) <= 1e-6, problem.name
    solve(builtin_problems(["lasso"], quick=True)[0], progress=True)
    assert "[symopt.solve lasso 100x200] iter 1: objective" in capsys.readouterr().err


def test_hard_rank_geoopt_dcs_and_projected_match_truncated_svd():
    problem = make_low_rank_regression(n=100, p=15, q=10, rank=2, hard_rank=2, orthogonal=True)
    optimum = problem.objective(problem.meta["solution"])  # truncated SVD is optimal for XᵀX = n·I
    # geoopt's RiemannianAdam has converged (to 8e-10) by 1,000 iterations here; its default 10,000
    # only stops it at the same point 16 s later
    for result in (solve(problem), solve_proximal(problem), solve_geoopt(problem, max_iter=1000)):
        assert abs(result.objective - optimum) <= 1e-4 * max(1.0, abs(optimum)), result.solver
        assert int(torch.linalg.matrix_rank(result.x)) == 2
    with pytest.raises(NotApplicable, match="no convex twin"):
        solve_cvxpy(problem)


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


@pytest.mark.parametrize("name", ["lasso", "group_lasso", "logistic_l1"])
def test_baselines_agree_with_each_other(name):
    if name == "group_lasso":
        pytest.importorskip("skglm")
    (problem,) = builtin_problems([name], quick=True)
    a, b = solve_sklearn(problem), solve_proximal(problem, tol=1e-9)
    assert a.status == "optimal" and a.kkt_residual <= 1e-8
    assert abs(a.objective - b.objective) <= 1e-9 * abs(a.objective)


def test_sklearn_not_applicable():
    with pytest.raises(NotApplicable, match="no scikit-learn solver"):
        solve_sklearn(builtin_problems(["matrix_completion"], quick=True)[0])


def test_compare_quick_all_families_ok(tmp_path):
    rows = compare(builtin_problems(quick=True), solvers=["dcs", "cvxpy", "projected", "geoopt"])
    assert rows.ok
    assert {r.problem.split()[0] for r in rows} == {"lasso", "group_lasso", "logistic_l1", "equality_ls", "tied_ls",
                                                     "completion", "low_rank_regression", "hard_rank"}
    na = {(r.problem.split()[0], r.solver) for r in rows if r.result is None}
    assert ("hard_rank", "cvxpy") in na and ("lasso", "geoopt") in na
    assert ("hard_rank", "geoopt") not in na
    assert "n/a: no convex twin" in str(rows) and "| n/a: no convex twin |" in rows.to_markdown()
    entries = rows.to_dict()
    assert len(entries) == len(rows) and all("problem" in e and "applicable" in e for e in entries)
    pngs = rows.plot(tmp_path)
    assert len(pngs) == 9 and all(p.stat().st_size > 1000 for p in pngs)


def test_cli_compare(capsys, tmp_path):
    args = ["compare", "--quick", "--problems", "lasso,hard_rank", "--solvers", "dcs,projected,cvxpy",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "lasso 100x200" in out and "OK: DCS matches" in out and "n/a: no convex twin" in out
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.json").exists()
    assert len(list(tmp_path.glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        main(["compare", "--problems", "nope"])
    assert "unknown problem" in capsys.readouterr().err


def test_unreachable_tolerance_stops_as_stalled():
    """Below float64 resolution of the objective nothing can move: say so, do not spin. (1e-14 is
    reachable since the face polish takes Newton steps: the residual ends at ~7e-15·scale.)"""
    (problem,) = builtin_problems(["equality_ls"], quick=True)
    r = solve(problem, tol=1e-16, max_iter=500)
    assert r.status == "stalled" and r.iterations < 500 and "no progress" in r.message


@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=-1.0), "tol must be"), (dict(max_iter=0), "max_iter must be"), (dict(method="newton"), "unknown method"),
    (dict(dtype=torch.int64), "dtype must be"), (dict(device="gpu0"), "unknown device"),
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
    (lambda: equality_ls(torch.randn(5, 3), torch.randn(5)), "exactly one of A"),
    (lambda: equality_ls(torch.randn(5, 3), torch.randn(5), zeros=torch.ones(4, dtype=torch.bool)), "mask has shape"),
    (lambda: tied_least_squares(torch.randn(1, 5, 3), torch.randn(1, 5)), "k>=2"),
    (lambda: low_rank_regression(torch.randn(5, 3), torch.randn(5, 2), 0.1, rank=1), "exactly one of"),
    (lambda: low_rank_regression(torch.randn(5, 3), torch.randn(5, 2), rank=3), "max_rank=3 exceeds"),
])
def test_problem_builders_validate(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_problem_objective_of_truth_is_finite():
    for problem in builtin_problems(quick=True):
        x = torch.zeros(problem.shape, dtype=torch.float64)
        assert torch.isfinite(torch.tensor(problem.objective(x)))


def test_public_names_of_the_issue():
    from symopt import baselines
    from symopt.problems import make_lasso

    problem = make_lasso(n=40, d=60, nonzeros=3)
    assert baselines.cvxpy(problem).status == "optimal"
    assert baselines.projected(problem).status == "optimal"
    assert baselines.sklearn(problem).status == "optimal"
    with pytest.raises(NotApplicable):
        baselines.geoopt(problem)
    rows = symopt.compare(problem, solvers=["dcs", "cvxpy"])
    assert rows.ok and len(rows) == 2


def test_a_first_solve_reports_its_own_time_not_torchs_imports():
    """The first torch optimizer of a process imports torch._dynamo (seconds): solve pays it before its
    clock starts, so a fresh process's first result.seconds is the solve's (the README's snippet showed
    4.85 s for a 0.06 s solve)."""
    import subprocess
    import sys

    code = ("import sys, symopt; from symopt.problems import make_lasso; "
            "assert 'torch._dynamo' not in sys.modules; "
            "r = symopt.solve(make_lasso(n=100, d=300, nonzeros=5)); print(r.status, r.seconds)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, seconds = done.stdout.split()
    assert status == "optimal" and float(seconds) < 1.0


def test_a_stall_near_the_target_says_it_is_not_certified():
    # θ did not move with the residual within 1000× of the target: the stop names both causes it can
    # be (the objective's resolution, the problem's conditioning: a reduced-rank regression on raw
    # pixels stalled 3× above the target with its objective 6e-8 above cvxpy's) and that the point
    # is not certified; far above the target it blames the gradient instead
    from symopt.solver.stop import StopRule

    theta = torch.ones(3, dtype=torch.float64)
    status, message = StopRule(1e-6, 1e-5).finished(3e-5, 0.0, theta, theta.clone())
    assert status == "stalled"
    assert "conditioning" in message and "floating-point resolution" in message and "not certified" in message
    status, message = StopRule(1e-6, 1e-5).finished(1.0, 0.0, theta, theta.clone())
    assert status == "stalled" and "gradient may not describe" in message
