"""Random group lasso and Lasso problems, timed one solve each: where does DCS stall?

Each draw (torch's generator seeded ``--seed``) is a design of 8-80 rows and 6-120 columns in groups of 1 to 4
consecutive columns, of one of four kinds in turn: Gaussian, duplicated columns (every second column a copy),
correlated (a random mixing times 0.1, plus 1e-3 of the Gaussian), and columns scaled by ``logspace(-3, 3)``
(raw scales). The target is the sum of the first three columns plus noise 0.1, centred. Each is solved at
0.999999, 0.3, 0.01 and 1e-4 λ_max. The table reports the total time, every status that is not optimal, and the
slowest solves: a solver change must not bring back a crawl (the twenty-third session's base took 463 s in all,
404 s on one raw-scale draw; benchmarks/RESULTS.md, "Group models on columns of raw scales").

Run: ``python -m benchmarks.stress`` (``--family lasso`` for the ℓ1 norm on the same designs; ``--draws N``).
"""
from __future__ import annotations

import argparse
import time

import torch

import symopt
from symopt.problems import group_lasso, lasso

KINDS = ("Gaussian", "duplicated columns", "correlated", "raw scales")
FRACTIONS = (0.999999, 0.3, 0.01, 1e-4)


def draws(count: int, seed: int = 0):
    """``(draw, kind, X, y, group size)`` for the first ``count`` designs of the seeded stream (see the module
    docstring); the stream is the one the twenty-third session's stress script drew."""
    gen = torch.Generator().manual_seed(seed)
    for draw in range(count):
        n = int(torch.randint(8, 80, (1,), generator=gen))
        d = int(torch.randint(6, 120, (1,), generator=gen))
        size = int(torch.randint(1, 5, (1,), generator=gen))
        d = max(size, d - d % size)
        X = torch.randn(n, d, generator=gen, dtype=torch.float64)
        kind = draw % 4
        if kind == 1:
            X[:, 1::2] = X[:, 0::2][:, : X[:, 1::2].shape[1]]
        if kind == 2:
            X = X @ torch.randn(d, d, generator=gen, dtype=torch.float64) * 0.1 + 1e-3 * X
        if kind == 3:
            X = X * torch.logspace(-3, 3, d, dtype=torch.float64)
        y = X[:, : min(3, d)].sum(1) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
        yield draw, KINDS[kind], X, y - y.mean(), size


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stress")
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=("group_lasso", "lasso"), default="group_lasso")
    parser.add_argument("--slowest", type=int, default=8, help="how many of the slowest solves to list")
    args = parser.parse_args(argv)
    rows = []
    began = time.perf_counter()
    for draw, kind, X, y, size in draws(args.draws, args.seed):
        problem = group_lasso(X, y, size, 1.0) if args.family == "group_lasso" else lasso(X, y, 1.0)
        for fraction in FRACTIONS:
            posed = problem.at_strength(fraction * problem.strength_max())
            start = time.perf_counter()
            result = symopt.solve(posed)
            rows.append((time.perf_counter() - start, draw, kind, tuple(X.shape), size, fraction, result.status))
    total = time.perf_counter() - began
    print(f"{args.family} on {args.draws} random designs × {len(FRACTIONS)} λ: {total:.1f} s in all "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for seconds, draw, kind, shape, size, fraction, status in rows:
        if status != "optimal":
            print(f"  NOT OPTIMAL: draw {draw} ({kind}, {shape[0]}×{shape[1]}, groups of {size}) "
                  f"at {fraction:g} λmax: {status}")
    print("slowest solves:")
    for seconds, draw, kind, shape, size, fraction, status in sorted(rows, reverse=True)[: args.slowest]:
        print(f"  {seconds:8.3f} s  draw {draw:3d}  {kind:18s} {shape[0]}×{shape[1]}, groups of {size}, "
              f"{fraction:g} λmax, {status}")
    return rows


if __name__ == "__main__":
    main()
