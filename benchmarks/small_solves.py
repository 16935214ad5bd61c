"""Whole ``symopt.solve`` calls on the small real rows of issue 22, for A/B runs between checkouts.

    python -m benchmarks.small_solves [--repeats 5]
    PYTHONPATH=/path/to/other/checkout python -m benchmarks.small_solves   # the same rows, other code

Rows: Lasso and logistic-L1 with an intercept on scikit-learn's diabetes and breast_cancer (raw and
standardised columns) at 0.1 and 0.01 λ_max, and the generated 40×120 Lasso at 1e-4 and 1e-6 λ_max
(n ≪ d at a tiny λ; one timed call each, ``max_iter=500``). Each time is the median of
``--repeats`` whole calls after one warm-up call, with the status and the outer iterations of the
last. Paired runs (A, B, A, B, ...: one process per run) keep the ratio meaningful on a drifting
machine; benchmarks/RESULTS.md has the figures and the command.
"""

from __future__ import annotations

import argparse
import statistics
import time

import symopt
from symopt.cli import machine_name


def rows():
    from sklearn.datasets import load_breast_cancer, load_diabetes

    from symopt.problems import lasso, logistic_l1, make_lasso

    X, y = load_breast_cancer(return_X_y=True)
    y = y.astype(float)
    standardised = (X - X.mean(0)) / X.std(0)
    Xd, yd = load_diabetes(return_X_y=True)
    out = []
    for family, make in (("Lasso", lasso), ("logistic-L1", logistic_l1)):
        for name, design, target in (("diabetes", Xd, yd), ("cancer raw", X, y), ("cancer std", standardised, y)):
            if make is logistic_l1 and name == "diabetes":
                continue  # (a regression target)
            for fraction in (0.1, 0.01):
                problem = make(design, target, 1.0, fit_intercept=True)
                out.append((f"{family}+intercept, {name}, {fraction:g} λmax",
                            problem.at_strength(fraction * problem.strength_max()), {}, None))
    generated = make_lasso(n=40, d=120, nonzeros=10, seed=0)
    for fraction in (1e-4, 1e-6):
        out.append((f"Lasso 40×120 (generated), {fraction:g} λmax",
                    generated.at_strength(fraction * generated.strength_max()), {"max_iter": 500}, 1))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"machine: {machine_name()}; symopt from {symopt.__file__}; medians of {args.repeats} whole calls\n")
    print("| problem | status | outer iterations | s |")
    print("|---|---|---|---|")
    for name, problem, options, repeats in rows():
        symopt.solve(problem, **options)  # warm-up: imports and caches are not the solver's time
        times = []
        for _ in range(repeats or args.repeats):
            start = time.perf_counter()
            result = symopt.solve(problem, **options)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {result.status} | {result.iterations} | {statistics.median(times):.4f} |", flush=True)


if __name__ == "__main__":
    main()
