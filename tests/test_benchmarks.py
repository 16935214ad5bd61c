"""The benchmark harness runs (a smoke test at the smallest size; benchmarks are not timed here)."""

from benchmarks import cvxpy_limits, families, floor
from symopt.problems import make_lasso
from symopt.result import Result
import torch


def test_time_to_accuracy_reads_the_history():
    r = Result(x=torch.zeros(1), objective=1.0, violation=0.0, kkt_residual=0.0, iterations=3, seconds=3.0,
               history=[(1.0, 2.0, 0.0), (2.0, 1.0 + 1e-7, 0.0), (3.0, 1.0, 0.0)])
    assert families.time_to_accuracy(r, best=1.0) == 2.0
    assert families.time_to_accuracy(r, best=0.5) is None
    no_history = Result(x=torch.zeros(1), objective=1.0, violation=0.0, kkt_residual=0.0, iterations=1, seconds=4.0)
    assert families.time_to_accuracy(no_history, best=1.0) == 4.0


def test_families_quick_lasso(capsys):
    rows = families.main(["--quick", "--families", "lasso", "--slow", "0"])
    solvers = {r["solver"] for r in rows if not r["skipped"]}
    assert {"dcs", "proximal", "sklearn[Lasso]", "skglm[Lasso]", "cvxpy[CLARABEL]"} <= solvers
    dcs = next(r for r in rows if r["solver"] == "dcs")
    assert dcs["to_target"] is not None and dcs["same"] and dcs["gap"] <= 1e-6
    assert "÷ DCS" in capsys.readouterr().out


def test_floor_quick(capsys):
    out = floor.main(["--quick"])
    assert out["floor"] > 0 and out["evaluation"] > 0
    printed = capsys.readouterr().out
    assert "two mat-vecs (floor)" in printed and "DCS evaluation, compiled" in printed


def test_cvxpy_is_stopped_at_its_wall_clock_limit():
    status, objective, seconds = cvxpy_limits.cvxpy_with_limit(make_lasso, dict(n=20, d=10, nonzeros=2),
                                                               "CLARABEL", {}, limit=0.2, memory_gb=8)
    assert status == "not finished in 0 s" and objective is None and seconds < 30
