"""Where one solve spends its time, and how often it waits for the device (issue 22's GPU gap).

    python -m benchmarks.solve_profile [--device cuda] [--family lasso] [--n 5000 --d 10000]
                                       [--solvers dcs,projected] [--top 25]

On the H200 lent on 2026-12-04 the plain proximal method reached a 1e-6 gap 3-4× sooner than DCS on
Lasso / group lasso from 5000×10000 up (benchmarks/RESULTS.md, "On a GPU"), where DCS was 10-42× faster
than the CPU solvers. Which part of DCS costs it there — its small dense solves on the host, its
synchronisations (every ``float(tensor)`` of a device tensor waits for the device's queue), or its
kernels — was not measured. For each solver this prints, after one warm-up solve:

- the whole call's time and its status;
- the host synchronisations one solve makes (``torch.cuda.set_sync_debug_mode("warn")``: a warning per
  synchronising call, counted by the line of symopt's code that made it, the top ten) — CUDA only;
- torch.profiler's operators by self time (CPU, and CUDA kernels on a GPU), the ``top`` of each.

On a CPU (``--device cpu``) it runs the same (no synchronisations to count): a check of the script.
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import torch

from symopt.cli import machine_name
from symopt.comparison import SOLVERS
from symopt.problems import make_group_lasso, make_lasso

BUILDERS = {
    "lasso": lambda n, d: make_lasso(n=n, d=d, nonzeros=max(1, d // 100), seed=0),
    "group_lasso": lambda n, d: make_group_lasso(n=n, d=d, group_size=10, active_groups=10, seed=0),
}


def _synchronisations(solve) -> tuple[int, list[tuple[str, int]]]:
    """``(count, [(line, count), ...])``: the host synchronisations ``solve()`` makes, each attributed to
    the Python line that made it (CUDA's sync debug mode warns there)."""
    places: collections.Counter[str] = collections.Counter()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            solve()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for record in caught:
        if "synchroniz" not in str(record.message):
            continue
        places[f"{record.filename.rsplit('symopt/', 1)[-1]}:{record.lineno}"] += 1
    return sum(places.values()), places.most_common(10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--family", choices=sorted(BUILDERS), default="lasso")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=10000)
    parser.add_argument("--solvers", default="dcs,projected")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = BUILDERS[args.family](args.n, args.d)
    cuda = device.type == "cuda"
    print(f"{args.family} {args.n}×{args.d} on {machine_name(device)}, torch {torch.__version__}")
    for name in args.solvers.split(","):
        run = SOLVERS[name]

        def solve():
            result = run(problem, args.device, torch.float64)
            if cuda:
                torch.cuda.synchronize()
            return result

        solve()  # warm-up: kernels loaded, caches filled
        start = time.perf_counter()
        result = solve()
        seconds = time.perf_counter() - start
        print(f"\n== {name}: {seconds:.3f} s, status {result.status}, objective {result.objective:.12g}")
        if cuda:
            count, places = _synchronisations(solve)
            print(f"host synchronisations in one solve: {count}")
            for place, times in places:
                print(f"  {times:6d}  {place}")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            solve()
        for sort in (["self_cpu_time_total"] + (["self_cuda_time_total"] if cuda else [])):
            print(f"-- sorted by {sort}")
            print(prof.key_averages().table(sort_by=sort, row_limit=args.top))


if __name__ == "__main__":
    main()
