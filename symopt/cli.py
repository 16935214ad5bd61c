"""Layer 5 — command line: ``symopt compare``."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from .compare import BUILTIN, SOLVERS, builtin_problems, compare


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="symopt", description="Differentiable constraints by symmetry (DCS).")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="DCS vs cvxpy / scikit-learn / proximal solvers on built-in problems")
    cmp.add_argument("--problems", default=",".join(BUILTIN), help=f"comma list from {','.join(BUILTIN)}")
    cmp.add_argument("--solvers", default=",".join(SOLVERS), help=f"comma list from {','.join(SOLVERS)}")
    cmp.add_argument("--device", default=None, help="cpu (default) or cuda for DCS and the proximal solver")
    cmp.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    cmp.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        problems = builtin_problems(args.problems.split(","), quick=args.quick, seed=args.seed)
        if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        print(f"symopt compare — torch {torch.__version__}, {machine_name(args.device)}, float64\n")
        rows = compare(problems, solvers=args.solvers.split(","), device=args.device)
    except ValueError as err:
        parser.error(str(err))
    print(rows)
    print("\nrel. gap: (objective − best feasible objective) / max(1, |best|); same: support / rank equal to the"
          " best solver's; seconds: solve time only.")
    if not rows.ok:
        print("\nFAIL: a DCS result is not within 1e-6 of the best objective or disagrees on the structure.")
        return 1
    print("\nOK: DCS matches the best solver on every problem (relative gap ≤ 1e-6, same structure).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
