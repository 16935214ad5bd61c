"""Time to accuracy per problem family and size: DCS vs cvxpy, scikit-learn / skglm, projected
(proximal / FISTA) and geoopt.

    python -m benchmarks.families [--device cuda] [--dtype float32] [--repeats 3] [--families lasso,hard_rank]
                                  [--quick] [--large | --large-only] [--solvers dcs,projected]
                                  [--figures docs/figures/benchmarks] [--replot]

For each family and size, every applicable solver runs once as a warm-up, then ``--repeats`` times
(a solver whose warm-up took over ``--slow`` seconds is not repeated: its warm-up is the measurement,
marked ``n=1``). Per solver the table shows

* ``to 1e-6``: median seconds until the objective is within a relative gap of 1e-6 of the best
  objective any solver found (read off the solver's own iteration history; solvers without one,
  cvxpy and scikit-learn, count their total time if their final answer is within 1e-6, else "—");
* ``total``: median seconds of the whole call (including the solver's own stopping test);
* ``rel. gap`` of its final answer, ``same``: whether its support / rank equals the best solver's;
* ``÷ DCS``: its time to 1e-6 divided by DCS's (> 1: DCS is faster).

One process, one machine; float64, or DCS in float32 with ``--dtype float32``. A PNG per family plots time to 1e-6 against the number of
variables for each solver.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time

import torch

from symopt._format import readable_log_axes
from symopt.cli import machine_name
from symopt.baselines import solve_skglm
from symopt.comparison import SOLVERS as COMPARE_SOLVERS
from symopt.comparison import structure_of
from symopt.problems import (make_equality_ls, make_group_lasso, make_lasso, make_logistic_l1,
                             make_low_rank_regression, make_matrix_completion)
from symopt.result import NotApplicable

TARGET = 1e-6
# symopt compare's solvers plus skglm (whose group lasso is the "sklearn" row's, so that row is dropped there)
SOLVERS = dict(COMPARE_SOLVERS, skglm=lambda problem, device, dtype: solve_skglm(problem))

# (builder, default sizes, extra sizes with --large). The first size is the --quick one.
FAMILIES = {
    "lasso": (make_lasso, [dict(n=200, d=1000, nonzeros=10), dict(n=1000, d=5000, nonzeros=50),
                           dict(n=5000, d=10000, nonzeros=100)],
              [dict(n=5000, d=100_000, nonzeros=100)]),
    # sparse X (torch CSR), about 20 stored entries per column
    "lasso_sparse_x": (make_lasso, [dict(n=2000, d=20_000, nonzeros=20, x_density=1e-2)],
                       [dict(n=10_000, d=1_000_000, nonzeros=100, x_density=2e-3)]),
    "group_lasso": (make_group_lasso, [dict(n=200, d=1000, group_size=5), dict(n=1000, d=5000, group_size=5),
                                       dict(n=5000, d=10000, group_size=10, active_groups=10)],
                    [dict(n=5000, d=100_000, group_size=10, active_groups=10)]),
    "logistic_l1": (make_logistic_l1, [dict(n=500, d=200), dict(n=2000, d=1000)], [dict(n=5000, d=10000)]),
    "equality_ls": (make_equality_ls, [dict(n=500, d=200, constraints=20), dict(n=2000, d=1000, constraints=100)],
                    [dict(n=5000, d=5000, constraints=500)]),
    "matrix_completion": (make_matrix_completion, [dict(m=30, n=30, rank=3, observed=0.3),
                                                   dict(m=50, n=50, rank=3, observed=0.3),
                                                   dict(m=200, n=200, rank=5, observed=0.3)],
                          [dict(m=1000, n=1000, rank=5, observed=0.3), dict(m=2000, n=2000, rank=5, observed=0.3)]),
    "hard_rank": (make_low_rank_regression, [dict(n=300, p=40, q=30, hard_rank=3),
                                             dict(n=2000, p=200, q=100, rank=5, hard_rank=5)],
                  [dict(n=5000, p=1000, q=500, rank=5, hard_rank=5)]),
}


def numel(problem) -> int:
    return int(torch.Size(problem.shape).numel())


def relative_gap(objective: float, best: float) -> float:
    return (objective - best) / max(1.0, abs(best))


def time_to_accuracy(result, best: float, target: float = TARGET) -> float | None:
    """Seconds until the result's history first reaches ``target`` relative gap; a solver without a
    history counts its total time if its answer is within ``target`` (None: never reached)."""
    for seconds, objective, _ in result.history:
        if relative_gap(objective, best) <= target:
            return seconds
    if not result.history and relative_gap(result.objective, best) <= target:
        return result.seconds
    return None


# (solver, family) pairs already run in this process. A first call can include one-time work that
# is not the solve: skglm compiles its numba kernels per datafit and penalty (14–16 s, measured on
# logistic_l1 500×200 and group_lasso 200×1000/5 when the numba cache was cold).
_CALLED: set[tuple[str, object]] = set()


def measure(problem, name: str, device: str, repeats: int, slow: float, dtype: torch.dtype = torch.float64):
    """Warm-up then ``repeats`` runs; returns (results, wall seconds per run) or None if n/a. A solver
    whose warm-up took longer than ``slow`` is measured once (n=1): by its warm-up, unless that was
    its first call on this family in the process, which is then run again and not counted."""
    run = SOLVERS[name]
    key = (name, problem.meta.get("family"))
    start = time.perf_counter()
    try:
        first = run(problem, device, dtype)
    except (NotApplicable, ImportError):
        return None
    warm = time.perf_counter() - start
    if warm > slow and key not in _CALLED:
        _CALLED.add(key)
        start = time.perf_counter()
        first = run(problem, device, dtype)
        warm = time.perf_counter() - start
    _CALLED.add(key)
    if warm > slow:
        return [first], [warm]
    results, seconds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        results.append(run(problem, device, dtype))
        seconds.append(time.perf_counter() - start)
    return results, seconds


def data_size(problem) -> int:
    return sum(int(v.numel()) for v in problem.data.values())


def bench_problem(problem, device: str, repeats: int, slow: float, cvxpy_max: int,
                  cvxpy_max_data: float = math.inf, solvers=None, dtype: torch.dtype = torch.float64) -> list[dict]:
    """Every applicable solver on ``problem``; DCS runs in ``dtype`` (its certificate and polish stay
    float64), the baselines in float64."""
    measured = {}
    for name in solvers or SOLVERS:
        if name == "sklearn" and problem.meta.get("family") == "group_lasso":
            continue
        if name == "cvxpy" and (numel(problem) > cvxpy_max or data_size(problem) > cvxpy_max_data):
            measured[name] = "skipped"
            continue
        found = measure(problem, name, device, repeats, slow, dtype if name == "dcs" else torch.float64)
        if found is not None:
            measured[name] = found
    done = {k: v for k, v in measured.items() if v != "skipped"}
    feasible = [r for results, _ in done.values() for r in results if r.violation <= 1e-6]
    best = min(r.objective for r in feasible)
    best_x = min(feasible, key=lambda r: r.objective).x
    _, best_key = structure_of(problem, best_x)
    rows = []
    for name, value in measured.items():
        if value == "skipped":
            rows.append(dict(problem=problem.name, size=numel(problem), solver=name, skipped=True))
            continue
        results, seconds = value
        reached = [time_to_accuracy(r, best) for r in results]
        final = results[-1]
        structure, key = structure_of(problem, final.x)
        rows.append(dict(
            problem=problem.name, size=numel(problem), solver=final.solver, status=final.status,
            to_target=statistics.median(reached) if all(t is not None for t in reached) else None,
            total=statistics.median(seconds), runs=len(seconds), gap=relative_gap(final.objective, best),
            same=None if best_key is None else key == best_key, structure=structure, skipped=False,
        ))
    dcs = next(r for r in rows if r["solver"] == "dcs")
    for r in rows:
        if not r["skipped"]:
            r["ratio"] = (r["to_target"] / dcs["to_target"]) if r["to_target"] and dcs["to_target"] else None
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        if r["skipped"]:
            print(f"{r['problem']:<36} {r['solver']:<26} {'skipped (over --cvxpy-max / --cvxpy-max-data)':>48}")
            continue
        to = "—" if r["to_target"] is None else f"{r['to_target']:.3f}"
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        same = {True: "yes", False: "NO", None: "-"}[r["same"]]
        label = r["solver"] + ("" if r["status"] == "optimal" else f" ({r['status']})")
        runs = "" if r["runs"] > 1 else " n=1"
        print(f"{r['problem']:<36} {label:<26} {to:>9} {r['total']:>9.3f}{runs:<4} {r['gap']:>9.1e} {same:>5} "
              f"{ratio:>7}")


def plot(family: str, rows: list[dict], folder: pathlib.Path, machine: str) -> pathlib.Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for solver in dict.fromkeys(r["solver"] for r in rows if not r["skipped"]):
        points = [(r["size"], r["to_target"]) for r in rows if r["solver"] == solver and r.get("to_target")]
        if points:
            ax.plot(*zip(*points), marker="o", label=solver)
    ax.set(xscale="log", yscale="log", xlabel="variables", ylabel=f"seconds to rel. gap {TARGET:g}",
           title=f"{family} — {machine}")
    readable_log_axes(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / f"{family}.png"
    fig.savefig(path, dpi=200)  # 2× for page-width display
    plt.close(fig)
    # What the figure shows, so that it can be redrawn (--replot) without rerunning the benchmark.
    kept = [{k: r.get(k) for k in ("solver", "size", "to_target", "skipped")} for r in rows]
    (folder / f"{family}.json").write_text(json.dumps({"machine": machine, "rows": kept}, indent=1))
    return path


def replot(folder: pathlib.Path) -> list[pathlib.Path]:
    """Redraw every figure in ``folder`` from the JSON its run saved next to it."""
    return [plot(data.stem, saved["rows"], folder, saved["machine"])
            for data in sorted(folder.glob("*.json")) for saved in [json.loads(data.read_text())]]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.families")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--quick", action="store_true", help="smallest size only, one repeat (a smoke test)")
    parser.add_argument("--large", action="store_true", help="add the large sizes (d = 1e5, 2000×2000 completion)")
    parser.add_argument("--cvxpy-max", type=int, default=50_000, help="skip cvxpy above this many variables")
    parser.add_argument("--cvxpy-max-data", type=float, default=2e6,
                        help="skip cvxpy above this many data entries (Lasso 5000×10000 did not finish in 330 s)")
    parser.add_argument("--slow", type=float, default=20.0, help="do not repeat a solver whose warm-up took longer")
    parser.add_argument("--figures", default=None, help="folder for one PNG per family (default: no plots)")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma list (dcs always runs)")
    parser.add_argument("--large-only", action="store_true", help="only the large sizes (implies --large)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="DCS's precision (float32: the GPU's fast path; certificate and polish in float64)")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figures in --figures from the JSON a run saved there")
    args = parser.parse_args(argv)
    if args.replot:
        if not args.figures:
            parser.error("--replot needs --figures FOLDER")
        replot(pathlib.Path(args.figures))
        return []
    solvers = ["dcs"] + [s for s in args.solvers.split(",") if s != "dcs"]
    if any(s not in SOLVERS for s in solvers):
        parser.error(f"unknown solvers {[s for s in solvers if s not in SOLVERS]}; choose from {list(SOLVERS)}")
    unknown = [f for f in args.families.split(",") if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    repeats = 1 if args.quick else args.repeats
    if args.quick:  # a smoke test: no minute-long cvxpy runs
        args.cvxpy_max = min(args.cvxpy_max, 1000)
    machine = machine_name(args.device)
    print(f"time to relative gap {TARGET:g} — torch {torch.__version__}, {machine}; DCS / projected / geoopt on "
          f"{args.device}; DCS in {args.dtype}, the baselines in float64; median of {repeats} after a warm-up\n")
    header = (f"{'problem':<36} {'solver':<26} {'to 1e-6':>9} {'total':>9}{'':<4} {'rel. gap':>9} {'same':>5} "
              f"{'÷ DCS':>7}")
    print(header)
    print("-" * len(header))
    everything = []
    for family in args.families.split(","):
        make, sizes, large = FAMILIES[family]
        chosen = sizes[:1] if args.quick else large if args.large_only else sizes + (large if args.large else [])
        rows = []
        for kwargs in chosen:
            found = bench_problem(make(**kwargs), args.device, repeats, args.slow, args.cvxpy_max,
                                  args.cvxpy_max_data, solvers, getattr(torch, args.dtype))
            print_rows(found)
            rows += found
        print()
        if args.figures:
            plot(family, rows, pathlib.Path(args.figures), machine)
        everything += [dict(r, family=family) for r in rows]
    return everything


if __name__ == "__main__":
    main()
