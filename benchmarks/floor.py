"""DCS's cost per objective-and-gradient evaluation against the physical floor: two mat-vecs with X.

    python -m benchmarks.floor [--device cuda] [--n 5000] [--d 10000] [--repeats 5] [--quick]

A Lasso iteration must read X twice (``Xw`` for the residual, ``Xᵀr`` for the gradient), so two
mat-vecs are the floor of any first-order or quasi-Newton method. Measured on one Lasso problem:

* ``two mat-vecs``: median time of ``X @ w`` then ``X.T @ r``;
* ``DCS evaluation``: median time of one closure of ``symopt.solve`` (loss + decay, forward and
  backward through the factors ``w = u ⊙ v``) — what every L-BFGS / line-search step pays;
* ``DCS evaluation, compiled``: the same closure with the loss through ``torch.compile`` (what
  ``symopt.solve(compile=True)`` does); its one-off compile time is printed below the table;
* ``DCS in solve``: a whole ``symopt.solve`` divided by the number of loss evaluations it made
  (KKT checks included), i.e. the real per-evaluation cost with the optimiser's own overhead.
  This solve is on the full problem (the counting wrapper has no ``restrict``, so no working sets);
  the default solve, with working sets (most evaluations on a few columns of X), is timed after it.

Ratios to the floor are printed; the issue's goal is ≤ 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import symopt
from symopt.cli import machine_name
from symopt.problems import Problem, make_lasso


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats: int, inner: int = 10) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="500×1000, 2 repeats (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats = 500, 1000, 2
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    problem = make_lasso(n=args.n, d=args.d, nonzeros=max(1, args.d // 100))
    X, y = problem.data["X"].to(device, dtype), problem.data["y"].to(device, dtype)
    w = torch.randn(args.d, device=device, dtype=dtype)

    def two_matvecs():
        r = X @ w - y
        return X.T @ r

    floor = median_seconds(two_matvecs, device, args.repeats)

    holder = torch.nn.Module()
    holder.w = torch.nn.Parameter(w.clone())
    symopt.sparse(holder, "w", strength=float(problem.meta["strength"]))

    def closure_of(loss_fn):
        """One evaluation as L-BFGS makes it: loss + decay, forward and backward through the factors."""
        def closure():
            holder.zero_grad(set_to_none=True)
            loss = loss_fn(holder.w, X=X, y=y) + symopt.penalty(holder)
            loss.backward()
            return loss
        return closure

    evaluation = median_seconds(closure_of(problem.loss), device, args.repeats)
    compiled_closure = closure_of(torch.compile(problem.loss))

    try:
        start = time.perf_counter()
        compiled_closure()
        _sync(device)
        compile_seconds = time.perf_counter() - start
        compiled = median_seconds(compiled_closure, device, args.repeats)
    except Exception as err:  # noqa: BLE001 - inductor needs a C++ compiler; report, do not fail the table
        compile_seconds, compiled = None, f"n/a: {type(err).__name__}: {str(err).splitlines()[0][:80]}"

    calls = {"n": 0}

    def counted(theta, **data):
        calls["n"] += 1
        return problem.loss(theta, **data)

    counting = Problem(problem.name, problem.shape, counted, problem.constraint, problem.data, meta=problem.meta)
    symopt.solve(counting, device=device, dtype=dtype)  # warm-up
    calls["n"] = 0
    result = symopt.solve(counting, device=device, dtype=dtype)
    per_call = result.seconds / calls["n"]
    symopt.solve(problem, device=device, dtype=dtype)  # warm-up
    default = symopt.solve(problem, device=device, dtype=dtype)

    print(f"Lasso {args.n}×{args.d}, {args.dtype}, {machine_name(device)}, torch {torch.__version__}\n")
    header = f"{'what':<34} {'ms':>9} {'÷ floor':>8}"
    print(header)
    print("-" * len(header))
    for label, seconds in (("two mat-vecs (floor)", floor), ("DCS evaluation (closure)", evaluation),
                           ("DCS evaluation, compiled", compiled),
                           (f"DCS in solve ({calls['n']} evaluations)", per_call)):
        if isinstance(seconds, str):
            print(f"{label:<34} {seconds}")
        else:
            print(f"{label:<34} {seconds * 1e3:>9.3f} {seconds / floor:>8.2f}")
    if compile_seconds is not None:
        print(f"\ntorch.compile of the loss: {compile_seconds:.1f} s once (first call)")
    print(f"\nsolve on the full problem: {result.status}, {result.iterations} outer iterations, {result.seconds:.3f} s")
    print(f"solve with working sets (the default): {default.status}, {default.seconds:.3f} s "
          f"({result.seconds / default.seconds:.1f}× faster; {default.message})")
    return {"floor": floor, "evaluation": evaluation, "compiled": compiled, "per_call": per_call, "solve": result.seconds,
            "working_sets": default.seconds}


if __name__ == "__main__":
    main()
