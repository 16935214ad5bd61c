"""The benchmark runner: every benchmark in one command.

    python -m benchmarks run [--device cuda] [--quick] [--large]
                             [--only families,floor,overhead,training_step,export,cvxpy_limits,geoopt_optimizers,users_data,loops]
                             [--figures docs/figures/benchmarks]

``--quick`` is the smoke test (seconds per benchmark, smallest sizes, one repeat): it checks the
harness runs, its figures mean nothing. Each benchmark prints its own table and the machine; copy
the output of a full run into ``benchmarks/RESULTS.md`` with the command and the date.
"""

from __future__ import annotations

import argparse
import sys

from . import cvxpy_limits, export, families, floor, geoopt_optimizers, loops, overhead, training_step, users_data

BENCHMARKS = ("families", "floor", "overhead", "training_step", "export", "cvxpy_limits", "geoopt_optimizers",
              "users_data", "loops")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks")
    run.add_argument("--device", default="cpu")
    run.add_argument("--quick", action="store_true", help="smoke test: smallest sizes, one repeat")
    run.add_argument("--large", action="store_true", help="families: add the large sizes")
    run.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list from {BENCHMARKS}")
    run.add_argument("--figures", default="docs/figures/benchmarks", help="folder for the families' PNGs")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {BENCHMARKS}")
    device = ["--device", args.device]
    quick = ["--quick"] if args.quick else []
    for name in chosen:
        print(f"\n=== {name} ===\n", flush=True)
        if name == "families":
            families.main(device + quick + (["--large"] if args.large else []) + ["--figures", args.figures])
        elif name == "floor":
            floor.main(device + quick)
        elif name == "overhead":
            for model in ("mlp", "cnn"):
                overhead.main(device + ["--model", model] + (["--repeats", "1", "--steps", "3"] if args.quick else []))
        elif name == "training_step":  # CPU: issue 20's two small models against the hand-written factorisation
            for model in ("mlp", "cnn"):
                training_step.main(["--model", model] + quick)
        elif name == "cvxpy_limits":
            cvxpy_limits.main(quick)
        elif name == "users_data":  # CPU: scikit-learn and skglm are CPU solvers
            users_data.main(quick)
        elif name == "loops":  # CPU: the lean loop against torch's L-BFGS, paired
            loops.main(quick)
        elif name == "geoopt_optimizers":  # CPU only: it checks the baseline's choice of optimizer
            geoopt_optimizers.main(quick)
        else:
            export.main(device + (["--repeats", "3", "--width", "128"] if args.quick else []))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
