"""Time to solution per problem family and size: DCS vs cvxpy, scikit-learn, projected and geoopt.

    python -m benchmarks.families [--device cuda] [--repeats 3] [--families lasso,hard_rank] [--quick]

For each family and size: every applicable solver runs ``--repeats`` times after one warm-up run;
the table shows the median seconds, the relative objective gap to the best solver, and the ratios
``other / DCS`` (> 1: DCS is faster). cvxpy is skipped above ``--cvxpy-max`` variables (it takes
minutes there). Same process, same machine, float64.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from symopt.cli import machine_name
from symopt.comparison import SOLVERS
from symopt.problems import (make_equality_ls, make_group_lasso, make_lasso, make_logistic_l1,
                             make_low_rank_regression, make_matrix_completion, make_tied_least_squares)
from symopt.result import NotApplicable

FAMILIES = {
    "lasso": (make_lasso, [dict(n=200, d=1000, nonzeros=10), dict(n=1000, d=5000, nonzeros=50)]),
    "group_lasso": (make_group_lasso, [dict(n=200, d=1000, group_size=5), dict(n=1000, d=5000, group_size=5)]),
    "logistic_l1": (make_logistic_l1, [dict(n=500, d=200), dict(n=2000, d=1000)]),
    "equality_ls": (make_equality_ls, [dict(n=500, d=200, constraints=20), dict(n=2000, d=1000, constraints=100)]),
    "tied_ls": (make_tied_least_squares, [dict(tasks=3, n=200, d=100), dict(tasks=4, n=1000, d=500)]),
    "matrix_completion": (make_matrix_completion, [dict(m=50, n=40), dict(m=200, n=200, rank=5, observed=0.3)]),
    "hard_rank": (make_low_rank_regression, [dict(n=300, p=40, q=30, hard_rank=3),
                                             dict(n=2000, p=200, q=100, rank=5, hard_rank=5)]),
}


def _numel(problem) -> int:
    return int(torch.Size(problem.shape).numel())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--quick", action="store_true", help="first size only")
    parser.add_argument("--cvxpy-max", type=int, default=2000, help="skip cvxpy above this many variables")
    args = parser.parse_args(argv)
    print(f"time to solution — torch {torch.__version__}, {machine_name(args.device)}; DCS/projected/geoopt on "
          f"{args.device}; median of {args.repeats} after a warm-up\n")
    header = f"{'problem':<34} {'solver':<28} {'seconds':>9} {'rel. gap':>9} {'÷ DCS':>7}"
    print(header)
    print("-" * len(header))
    for family in args.families.split(","):
        make, sizes = FAMILIES[family]
        for kwargs in sizes[:1] if args.quick else sizes:
            problem = make(**kwargs)
            timings = {}
            for name, run in SOLVERS.items():
                if name == "cvxpy" and _numel(problem) > args.cvxpy_max:
                    timings[name] = None
                    continue
                try:
                    run(problem, args.device, torch.float64)  # warm-up (and applicability)
                except (NotApplicable, ImportError):
                    continue
                results, seconds = [], []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    results.append(run(problem, args.device, torch.float64))
                    seconds.append(time.perf_counter() - start)
                timings[name] = (statistics.median(seconds), results[-1])
            done = [v for v in timings.values() if v is not None]
            best = min(r.objective for _, r in done)
            dcs = timings["dcs"][0]
            for name, value in timings.items():
                if value is None:
                    print(f"{problem.name:<34} {name:<28} {'skipped':>9} (over --cvxpy-max variables)")
                    continue
                sec, r = value
                gap = (r.objective - best) / max(1.0, abs(best))
                print(f"{problem.name:<34} {r.solver + ('' if r.status == 'optimal' else ' (' + r.status + ')'):<28} "
                      f"{sec:>9.3f} {gap:>9.1e} {sec / dcs:>7.2f}")
        print()


if __name__ == "__main__":
    main()
