"""Which geoopt optimizer is the fair Riemannian baseline for a hard rank? Each of geoopt's
optimizers on the hard-rank problems, timed to the KKT target DCS stops at.

    python -m benchmarks.geoopt_optimizers [--limit 60] [--quick]

The parametrisation is the baseline's (`symopt.baselines.solve_geoopt`): ``W = U diag(s) Vᵀ`` with
``U``, ``V`` on Stiefel manifolds, ``s`` Euclidean, the same random orthonormal start. Rows:

* ``RiemannianAdam``: `solve_geoopt` itself (learning rate 0.3, halved on plateaus; 10000 iterations,
  500 with ``--quick``);
* ``RiemannianLineSearch``: steepest descent or Polak–Ribière conjugate gradient, with Armijo
  backtracking or the strong-Wolfe search, each stopped after ``--limit`` seconds.

The KKT residual (on the rank-r manifold, relative to ‖∇loss(0)‖) is checked every 10 iterations; a
row reaching 1e-6 is ``optimal``. DCS (`symopt.solve`) is the reference row: ``rel. gap`` is to its
objective. One process, float64, CPU.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from symopt import solve
from symopt.baselines import solve_geoopt
from symopt.baselines.riemannian import rank_kkt, stiefel_start
from symopt.cli import machine_name
from symopt.optimality import gradient_scale
from symopt.problems import make_low_rank_regression

SIZES = [dict(n=300, p=40, q=30, hard_rank=3), dict(n=2000, p=200, q=100, rank=5, hard_rank=5)]
LINE_SEARCHES = [("armijo", "steepest"), ("armijo", "pr"), ("wolfe", "steepest"), ("wolfe", "pr")]
TOL = 1e-6


def _line_search(problem, loss, scale: float, method: str, cg: str, limit: float,
                 seed: int = 0) -> tuple[str, int, float, float, float]:
    """(status, iterations, seconds, relative KKT, objective) of RiemannianLineSearch."""
    import geoopt

    c = problem.constraint()
    U, V, s = stiefel_start(problem.shape, c.max_rank, seed, "cpu", torch.float64)  # solve_geoopt's start
    opt = geoopt.optim.RiemannianLineSearch([U, V, s], line_search_method=method, cg_method=cg)

    def closure():
        opt.zero_grad()
        objective = loss((U * s) @ V.mT)
        objective.backward()
        return objective.detach()  # scipy's Wolfe search converts the value to numpy

    start = time.perf_counter()
    # geoopt warns on every failed line search (it then leaves the point where it is)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, kkt, it = _iterate(opt, closure, U, V, s, c, loss, scale, limit, start)
    W = ((U * s) @ V.mT).detach()
    return status, it, time.perf_counter() - start, kkt, float(problem.objective(W))


def _iterate(opt, closure, U, V, s, c, loss, scale, limit, start) -> tuple[str, float, int]:
    status, kkt, it = "time limit", float("nan"), 0
    try:
        while time.perf_counter() - start < limit:
            it += 1
            opt.step(closure)
            if it % 10 == 0:
                kkt = rank_kkt(c, loss, ((U * s) @ V.mT).detach()) / scale
                if kkt <= TOL:
                    status = "optimal"
                    break
    except (RuntimeError, ValueError) as err:  # e.g. a non-finite trial point inside geoopt's projection
        status = f"failed: {type(err).__name__}"
    return status, kkt, it


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.geoopt_optimizers")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per line-search run")
    parser.add_argument("--quick", action="store_true", help="smoke test: the small size, 1 s per run")
    args = parser.parse_args(argv)
    sizes, limit = (SIZES[:1], 1.0) if args.quick else (SIZES, args.limit)
    print(f"geoopt optimizers on a hard rank — torch {torch.__version__}, {machine_name(torch.device('cpu'))}, "
          f"float64, target relative KKT {TOL:g}, line searches stopped after {limit:g} s\n")
    header = f"{'problem':<26}  {'solver':<44}  {'status':<22}  {'iters':>6}  {'seconds':>8}  {'rel. KKT':>8}  {'rel. gap':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for size in sizes:
        problem = make_low_rank_regression(**size)
        name = f"{size['n']}x{size['p']}x{size['q']}, r={size['hard_rank']}"
        data = problem.data_on(torch.device("cpu"), torch.float64)
        loss = lambda W: problem.loss(W, **data)  # noqa: E731
        scale = gradient_scale(loss, problem.shape, torch.device("cpu"), torch.float64)  # KKT residuals relative to it
        solve(problem)  # warm-up: the first torch optimizer in a process imports torch._dynamo
        start = time.perf_counter()
        dcs = solve(problem, tol=TOL)
        runs = [("dcs", dcs.status, dcs.iterations, time.perf_counter() - start, dcs.kkt_residual / scale,
                 dcs.objective)]
        adam = solve_geoopt(problem, tol=TOL, max_iter=500 if args.quick else 10_000)
        runs.append(("geoopt RiemannianAdam", adam.status, adam.iterations, adam.seconds,
                     adam.kkt_residual / scale, adam.objective))
        for method, cg in LINE_SEARCHES:
            runs.append((f"geoopt RiemannianLineSearch {method}/{cg}", *_line_search(problem, loss, scale, method, cg, limit)))
        for solver, status, iters, seconds, kkt, objective in runs:
            gap = (objective - dcs.objective) / max(1.0, abs(dcs.objective))
            print(f"{name:<26}  {solver:<44}  {status:<22}  {iters:>6}  {seconds:8.2f}  {kkt:8.1e}  {gap:8.1e}",
                  flush=True)
            rows.append(dict(problem=name, solver=solver, status=status, iterations=iters, seconds=seconds,
                             kkt=kkt, gap=gap))
    return rows


if __name__ == "__main__":
    main()
