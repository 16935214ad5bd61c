"""Layer 5 — command line: ``symopt compare``."""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

import torch

from .comparison import BUILTIN, SIZES, SOLVERS, builtin_problems, compare


def machine_name(device=None) -> str:
    """The GPU's name for a CUDA device, else the CPU model and torch's thread count."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symopt", description="Differentiable constraints by symmetry (DCS).")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="DCS vs cvxpy / scikit-learn / projected / geoopt / SoftImpute on built-in problems",
                         description="Solve the built-in problems with DCS and every applicable baseline; print "
                                     "one table, write it as Markdown and JSON, and plot gap vs time per problem. "
                                     "Exit codes: 0 DCS agrees with the best solver on every problem, 1 it "
                                     "disagrees on one, 2 a usage error (bad argument, output folder not "
                                     "writable), found before anything is solved.")
    cmp.add_argument("--problems", "--problem", default=",".join(BUILTIN),
                     help=f"comma list from {','.join(BUILTIN)} (default: all)")
    cmp.add_argument("--solvers", default=",".join(SOLVERS), help=f"comma list from {','.join(SOLVERS)}")
    cmp.add_argument("--size", choices=SIZES, default="default", help="problem sizes (default: default)")
    cmp.add_argument("--quick", action="store_true", help="same as --size quick")
    cmp.add_argument("--device", default="cpu", help="device for DCS, projected, geoopt and softimpute: cpu or cuda")
    cmp.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                     help="precision of DCS, projected, geoopt and softimpute (objectives are compared in float64)")
    cmp.add_argument("--out", default="symopt-compare", help="folder for results.md, results.json and PNG plots")
    cmp.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    size = "quick" if args.quick else args.size
    out = pathlib.Path(args.out)
    try:  # before the comparison, which takes minutes: an output folder we cannot write is a usage error
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".symopt-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write there ({err.strerror or err}); choose a writable folder")
    try:
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        problems = builtin_problems(args.problems.split(","), seed=args.seed, size=size)
        solvers = args.solvers.split(",")
        print(f"symopt compare — torch {torch.__version__}, {machine_name(args.device)}, {args.dtype}, "
              f"size {size}\n", flush=True)
        rows = compare(problems, solvers=solvers, device=args.device, dtype=getattr(torch, args.dtype),
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    print(rows)
    print("\nrel. gap: (objective − best feasible objective) / max(1, |best|); same: support / rank equal to the"
          " best solver's; seconds: solve time only; n/a: the solver does not apply.")
    (out / "results.md").write_text(rows.to_markdown() + "\n")
    (out / "results.json").write_text(json.dumps(rows.to_dict(), indent=1) + "\n")
    try:
        plots = rows.plot(out)
        print(f"\nwrote {out}/results.md, results.json and {len(plots)} plots (gap vs time)")
    except ImportError as err:
        print(f"\nwrote {out}/results.md and results.json; no plots: {err}")
    if "dcs" in solvers and not rows.ok:
        print("\nFAIL: a DCS result is not within 1e-6 of the best objective or disagrees on the structure.")
        return 1
    if "dcs" in solvers:
        print("\nOK: DCS matches the best solver on every problem (relative gap ≤ 1e-6, same structure).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
