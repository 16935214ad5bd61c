"""The two descent loops of ``symopt.solve``, paired on the same problems: the lean loop
(``method="auto"``: `symopt.solver.flat`, compact L-BFGS on one flat vector, the loss's own
gradient) against torch's L-BFGS through the registered parametrization (``method="lbfgs"``).

    python -m benchmarks.loops [--repeats 3] [--quick] [--tiny-lambda] [--wide]

Whole calls, medians of ``--repeats`` after one warm-up, the two loops alternating within each
repeat (so drifts of the machine hit both). Real data (scikit-learn's diabetes, breast_cancer raw
and standardised, digits, its china.jpg sample) and generated families at the sizes of
``benchmarks.families``. Each row also gives both objectives' relative difference: the loops solve
the same problem to the same KKT tolerance, so it must stay at the tolerance's level.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import symopt
from symopt.cli import machine_name


def _cases(quick: bool):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_sample_image

    from symopt.problems import (group_lasso, lasso, logistic_l1, make_group_lasso, make_lasso, make_logistic_l1,
                                 make_matrix_completion, matrix_completion)

    Xd, yd = load_diabetes(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    yc = yc.astype(float)
    Xs = (Xc - Xc.mean(0)) / Xc.std(0)

    def at(problem, fraction):
        return problem.at_strength(fraction * problem.strength_max())

    cases = []
    for name, X, y in (("diabetes", Xd, yd), ("cancer raw", Xc, yc), ("cancer std", Xs, yc)):
        for fraction in (0.1,) if quick else (0.1, 0.01):
            cases.append((f"Lasso+intercept, {name}, {fraction:g} λmax", at(lasso(X, y, 1.0, fit_intercept=True),
                                                                              fraction)))
    if quick:
        return cases
    for name, X in (("cancer raw", Xc), ("cancer std", Xs)):
        for fraction in (0.1, 0.01):
            cases.append((f"logistic-L1+intercept, {name}, {fraction:g} λmax",
                          at(logistic_l1(X, yc, 1.0, fit_intercept=True), fraction)))
    cases.append(("group lasso, cancer std, groups of 3, 0.05 λmax", at(group_lasso(Xs, yc, 3, 1.0), 0.05)))
    cases += [("generated Lasso 200×1000", make_lasso(n=200, d=1000, nonzeros=10)),
              ("generated Lasso 1000×5000 (working sets)", make_lasso(n=1000, d=5000, nonzeros=20)),
              ("generated logistic-L1 500×200", make_logistic_l1(n=500, d=200)),
              ("generated group lasso 500×1000, groups of 5", make_group_lasso(n=500, d=1000, group_size=5)),
              ("generated completion 200×200 rank 5", make_matrix_completion(m=200, n=200, rank=5, observed=0.3)),
              ("generated completion 1000×1000 rank 10",
               make_matrix_completion(m=1000, n=1000, rank=10, observed=0.3))]
    generator = torch.Generator().manual_seed(0)
    digits = torch.as_tensor(load_digits().data, dtype=torch.float64)
    image = torch.tensor(load_sample_image("china.jpg"), dtype=torch.float64).mean(-1)[::2, ::2] / 255
    for name, M in (("digits 1797×64", digits), ("china.jpg gray 214×320", image)):
        mask = torch.rand(M.shape, generator=generator, dtype=torch.float64) < 0.5
        lam_max = float(torch.linalg.matrix_norm(torch.where(mask, M, 0.0), ord=2))
        cases.append((f"completion, {name}, 50% observed, 0.1 λmax", matrix_completion(M, mask, 0.1 * lam_max)))
    return cases


def tiny_lambda() -> None:
    """The issue's n ≪ d case: a generated 40×120 Lasso at 1e-2, 1e-4 and 1e-6 λ_max, where the
    zeros arrive at a rate ∝ λ; one run per loop (torch's takes up to 500 outer iterations), against
    cvxpy's objective."""
    from symopt.baselines import solve_cvxpy
    from symopt.problems import lasso, make_lasso

    base = make_lasso(n=40, d=120, nonzeros=10, seed=0)
    problem = lasso(base.data["X"], base.data["y"], 1.0)
    symopt.solve(problem.at_strength(0.5 * problem.strength_max()))  # warm-up
    print("\n| λ / λmax | loop | status | s | outer iterations | non-zeros | objective − cvxpy's | cvxpy s |")
    print("|---|---|---|---|---|---|---|---|")
    for fraction in (1e-2, 1e-4, 1e-6):
        at = problem.at_strength(fraction * problem.strength_max())
        reference = solve_cvxpy(at)
        for method in ("auto", "lbfgs"):
            start = time.perf_counter()
            result = symopt.solve(at, method=method, max_iter=500)
            seconds = time.perf_counter() - start
            print(f"| {fraction:g} | {'lean' if method == 'auto' else 'torch L-BFGS'} | {result.status} | {seconds:.2f} | "
                  f"{result.iterations} | {int((result.x != 0).sum())} | {result.objective - reference.objective:+.1e} | "
                  f"{reference.seconds:.2f} |", flush=True)


def wide_small_lambda(repeats: int) -> None:
    """Lasso designs with n ≪ d at a small λ, where DCS's first point has more non-zeros than rows
    and the ℓ1 model of proximal Newton starts on a singular face: whole calls of ``symopt.solve``
    (median of ``repeats`` after one warm-up) against scikit-learn's ``Lasso`` with a calibrated
    tolerance: its default (1e-4) stops 1e-4 to 0.2 above the optimum here (its test scales with
    ‖y‖², and at a small λ the objective is a small part of it), so the tolerance is divided by 10
    until its objective is within 1e-6 (relative) of DCS's, as the peer's user would have to."""
    import warnings

    import numpy as np
    from sklearn.linear_model import Lasso

    from symopt.problems import lasso, make_lasso

    from .users_data import _median_time  # (a warm-up call, then the median of whole calls)

    print("\n| design | λ / λmax | DCS s | status | non-zeros | sklearn tol | sklearn s | DCS / sklearn | "
          "sklearn objective − DCS's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, fraction in ((100, 400, 1e-3), (300, 600, 1e-4), (200, 2000, 1e-3), (50, 500, 1e-3),
                           (100, 1000, 1e-4), (40, 120, 1e-4)):
        base = make_lasso(n=n, d=d, nonzeros=10, seed=0)
        X, y = base.data["X"], base.data["y"]
        problem = lasso(X, y, 1.0)
        lam = fraction * problem.strength_max()
        problem = problem.at_strength(lam)
        Xf, target = np.asfortranarray(X.numpy()), y.numpy()
        result = symopt.solve(problem)

        def peer(tol):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (a ConvergenceWarning at max_iter: the gap column shows it)
                return Lasso(alpha=lam, fit_intercept=False, tol=tol, max_iter=1_000_000).fit(Xf, target)

        tol = 1e-4
        while True:
            gap = (problem.objective(torch.as_tensor(peer(tol).coef_)) - result.objective) / abs(result.objective)
            if gap <= 1e-6 or tol <= 1e-12:
                break
            tol /= 10
        t_dcs, result = _median_time(lambda: symopt.solve(problem), repeats)
        t_peer, model = _median_time(lambda: peer(tol), repeats)
        gap = problem.objective(torch.as_tensor(model.coef_)) - result.objective
        print(f"| {n}×{d} | {fraction:g} | {t_dcs:.3f} | {result.status} | {int((result.x != 0).sum())} | "
              f"{tol:g} | {t_peer:.3f} | {t_dcs / t_peer:.1f}× | "
              f"{gap / abs(result.objective):+.1e} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loops")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: three small cases, one repeat")
    parser.add_argument("--tiny-lambda", action="store_true", help="only the 40×120 Lasso at tiny λ (one run each)")
    parser.add_argument("--wide", action="store_true", help="only Lasso designs with n ≪ d at a small λ, against sklearn")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    print(f"machine: {machine_name('cpu')}, torch threads {torch.get_num_threads()}; medians of {repeats} runs\n")
    if args.tiny_lambda:
        tiny_lambda()
        return
    if args.wide:
        wide_small_lambda(repeats)
        return
    print("| problem | lean s (iters) | torch L-BFGS s (iters) | lean / torch | statuses | objective diff |")
    print("|---|---|---|---|---|---|")
    for name, problem in _cases(args.quick):
        results, times = {}, {"auto": [], "lbfgs": []}
        for method in times:  # warm-up
            symopt.solve(problem, method=method)
        for _ in range(repeats):
            for method in times:
                start = time.perf_counter()
                results[method] = symopt.solve(problem, method=method)
                times[method].append(time.perf_counter() - start)
        lean, plain = results["auto"], results["lbfgs"]
        t_lean, t_plain = statistics.median(times["auto"]), statistics.median(times["lbfgs"])
        diff = (lean.objective - plain.objective) / max(abs(plain.objective), 1e-300)
        print(f"| {name} | {t_lean:.4f} ({lean.iterations}) | {t_plain:.4f} ({plain.iterations}) | "
              f"{t_lean / t_plain:.2f}× | {lean.status}, {plain.status} | {diff:+.1e} |", flush=True)


if __name__ == "__main__":
    main()
