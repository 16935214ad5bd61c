"""The solver's clock: torch's one-time import (``torch._dynamo``, when the process builds its first
torch optimizer) is paid only by solves that build one, and is left out of their seconds."""

import subprocess
import sys
import time

import torch

import symopt
from symopt import _clock
from symopt.problems import make_matrix_completion


def test_the_one_time_import_is_left_out_of_the_solver_clock(monkeypatch):
    def slow_optimizer(*args, **kwargs):  # stands in for the first optimizer's import
        time.sleep(0.3)

    monkeypatch.setattr(_clock, "_WARM", False)
    monkeypatch.setattr(_clock, "_WARM_SECONDS", 0.0)
    monkeypatch.setattr(torch.optim, "SGD", slow_optimizer)
    before_wall, before = time.perf_counter(), _clock.solver_clock()
    _clock.warm_up()
    _clock.warm_up()  # once per process
    assert time.perf_counter() - before_wall >= 0.3
    assert _clock.solver_clock() - before < 0.05


def test_a_solve_that_builds_a_torch_optimizer_reports_its_own_seconds(monkeypatch):
    """A completion's face solve builds torch's L-BFGS: the import it triggers is not in its seconds."""
    def slow_optimizer(*args, **kwargs):
        time.sleep(0.5)

    monkeypatch.setattr(_clock, "_WARM", False)
    monkeypatch.setattr(_clock, "_WARM_SECONDS", 0.0)
    monkeypatch.setattr(torch.optim, "SGD", slow_optimizer)
    began = time.perf_counter()
    result = symopt.solve(make_matrix_completion(m=60, n=40, rank=3, seed=0))
    assert result.status == "optimal" and _clock._WARM  # (this solve did build one)
    assert time.perf_counter() - began >= 0.5 and result.seconds < time.perf_counter() - began - 0.45
    assert all(b[0] >= a[0] for a, b in zip(result.history, result.history[1:]))


def test_a_path_and_lasso_cv_never_pay_it():
    code = ("import sys, symopt; from symopt.problems import lasso; from symopt.estimators import LassoCV; "
            "from sklearn.datasets import load_diabetes; X, y = load_diabetes(return_X_y=True); "
            "p = symopt.path(lasso(X, y, 1.0, fit_intercept=True), n_strengths=10); LassoCV(alphas=5, cv=3).fit(X, y); "
            "print(sorted(set(p.statuses)), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['optimal'] False"
