"""The solver's clock: wall time less torch's one-time import of ``torch._dynamo``, which the first
torch optimizer of a process triggers (1.3–4 s on a 2-core CPU)."""

from __future__ import annotations

import time

import torch

_WARM = False
_WARM_SECONDS = 0.0  # what warm_up spent: left out of every solver_clock reading


def warm_up() -> None:
    """Build one throwaway torch optimizer, once per process, and leave its time out of `solver_clock`.

    Called just before symopt builds a torch optimizer (torch's L-BFGS in a descent or a face solve),
    and by [`symopt.compare`][symopt.compare] before any solver runs. A solve that builds none (the
    lean L-BFGS loop with a proximal-Newton polish, a path's points, LassoCV's folds) never pays the
    import: before, every process's first solve did (1.2–1.4 s of a 0.05 s path on diabetes).

    Examples:
        >>> from symopt._clock import solver_clock, warm_up
        >>> before = solver_clock(); warm_up(); solver_clock() - before < 0.5   # the import is not counted
        True
    """
    global _WARM, _WARM_SECONDS
    if not _WARM:
        began = time.perf_counter()
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        _WARM_SECONDS += time.perf_counter() - began
        _WARM = True


def solver_clock() -> float:
    """``time.perf_counter()`` less the time `warm_up` has spent, so that a solve's seconds and its
    history's times are its own work even when torch's one-time import happens during it."""
    return time.perf_counter() - _WARM_SECONDS
