"""DCS against cvxpy where cvxpy is slow: the two targets of the performance issue that need a
cvxpy run with a wall-clock limit.

    python -m benchmarks.cvxpy_limits [--limit 600] [--memory-gb 16] [--quick]

* Lasso 5000×10000 (≈100 non-zeros): cvxpy + Clarabel in a child process, stopped after
  ``--limit`` seconds (and capped at ``--memory-gb`` of address space, so a blow-up cannot take the
  machine down). If it does not finish, the ratio reported is a lower bound: limit ÷ DCS time.
* Nuclear-norm completion 200×200, 30% observed: cvxpy + SCS (``eps=1e-9``, the tightest it reaches
  in reasonable time) vs DCS, each timed to a relative gap of 1e-6 to the better objective.

DCS is timed as in ``benchmarks.families``: median of 3 after a warm-up, time read off its history.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from symopt import solve
from symopt.baselines import solve_cvxpy
from symopt.cli import machine_name
from symopt.problems import make_lasso, make_matrix_completion

from .families import relative_gap, time_to_accuracy


def _cvxpy_child(builder, kwargs, solver, options, memory_gb, queue) -> None:
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = solve_cvxpy(builder(**kwargs), solver=solver, **options)
        queue.put(("done", result.objective, result.seconds, result.status))
    except MemoryError:
        queue.put(("out of memory", None, None, None))
    except Exception as err:  # the solver's own failure is a result to report, not a crash
        queue.put((f"failed: {type(err).__name__}: {err}", None, None, None))


def cvxpy_with_limit(builder, kwargs, solver, options, limit: float, memory_gb: float):
    """(status, objective, seconds) of cvxpy in a child process stopped after ``limit`` seconds."""
    context = mp.get_context("spawn")  # fork after torch started its thread pool can deadlock the child
    queue = context.Queue()
    child = context.Process(target=_cvxpy_child,
                                           args=(builder, kwargs, solver, options, memory_gb, queue))
    start = time.perf_counter()
    child.start()
    child.join(limit)
    if child.is_alive():
        child.terminate()
        child.join()
        return f"not finished in {limit:.0f} s", None, time.perf_counter() - start
    if queue.empty():
        return f"child died (exit code {child.exitcode})", None, time.perf_counter() - start
    status, objective, seconds, cvx_status = queue.get()
    return (cvx_status if status == "done" else status), objective, seconds


def dcs_times(problem, best: float, repeats: int = 3):
    solve(problem)  # warm-up
    results = [solve(problem) for _ in range(repeats)]
    return results, statistics.median(time_to_accuracy(r, best) or float("nan") for r in results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cvxpy_limits")
    parser.add_argument("--limit", type=float, default=600.0, help="cvxpy's wall-clock limit in seconds")
    parser.add_argument("--memory-gb", type=float, default=16.0, help="cvxpy's address-space cap")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, 20 s limit")
    args = parser.parse_args(argv)
    lasso_size = dict(n=200, d=400, nonzeros=10) if args.quick else dict(n=5000, d=10000, nonzeros=100)
    completion_size = dict(m=30, n=30, rank=3, observed=0.3) if args.quick else dict(m=200, n=200, rank=5,
                                                                                       observed=0.3)
    limit = min(args.limit, 20.0) if args.quick else args.limit
    print(f"machine: {machine_name('cpu')}; torch {torch.__version__}; float64; cvxpy limit {limit:.0f} s")
    print(f"{'problem':<30} {'solver':<18} {'status':<28} {'to 1e-6 (s)':>12} {'total (s)':>10} {'rel. gap':>9}"
          f" {'cvxpy ÷ DCS':>12}")
    cases = [("lasso", make_lasso, lasso_size, "CLARABEL", {}),
             ("completion", make_matrix_completion, completion_size, "SCS", dict(eps=1e-9, max_iters=100_000))]
    for label, builder, size, solver, options in cases:
        problem = builder(**size)
        status, objective, seconds = cvxpy_with_limit(builder, size, solver, options, limit, args.memory_gb)
        reference = solve(problem, tol=1e-10)  # a tight DCS run as the reference when cvxpy has none
        best = min(o for o in (objective, reference.objective) if o is not None)
        results, dcs_to_target = dcs_times(problem, best)
        cvxpy_gap = None if objective is None else relative_gap(objective, best)
        cvxpy_to_target = seconds if cvxpy_gap is not None and cvxpy_gap <= 1e-6 else None
        ratio = (f"{cvxpy_to_target / dcs_to_target:.2f}" if cvxpy_to_target is not None
                 else f"> {seconds / dcs_to_target:.0f}" if objective is None else "never 1e-6")
        final = results[-1]
        print(f"{problem.name:<30} {'dcs':<18} {final.status:<28} {dcs_to_target:>12.3f}"
              f" {statistics.median(r.seconds for r in results):>10.3f} {relative_gap(final.objective, best):>9.1e}"
              f" {'':>12}")
        gap = "-" if cvxpy_gap is None else f"{cvxpy_gap:.1e}"
        print(f"{problem.name:<30} {'cvxpy[' + solver + ']':<18} {status[:28]:<28}"
              f" {'-' if cvxpy_to_target is None else f'{cvxpy_to_target:.3f}':>12} {seconds:>10.3f} {gap:>9}"
              f" {ratio:>12}", flush=True)


if __name__ == "__main__":
    main()
