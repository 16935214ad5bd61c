"""The options of `symopt.solve`, checked once (every error names the option and what it accepts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..problems import Problem

METHODS = ("auto", "lbfgs", "momentum")


@dataclass(frozen=True)
class Options:
    """Validated options of one solve (see [`symopt.solve`][symopt.solve] for their meaning)."""

    device: torch.device
    dtype: torch.dtype
    method: str
    tol: float
    max_iter: int
    progress: bool
    inner: int
    history_size: int
    max_rounds: int
    polish: bool
    compile: bool
    working_set: bool | None
    start: torch.Tensor | None

    @classmethod
    def check(cls, problem, *, device, dtype, method, tol, max_iter, progress, inner, history_size, max_rounds,
              polish, compile, working_set, start) -> Options:
        """The options, or a ``TypeError`` / ``ValueError`` naming the first bad one."""
        if not isinstance(problem, Problem):
            raise TypeError(f"solve: expected a symopt.problems.Problem (e.g. symopt.problems.lasso(X, y, 0.1)), "
                            f"got {type(problem).__name__}")
        if method not in METHODS:
            raise ValueError(f"solve: unknown method {method!r}; choose one of {METHODS}")
        if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
            raise ValueError(f"solve: tol must be a finite number > 0, got {tol!r}")
        counts = (("max_iter", max_iter), ("max_rounds", max_rounds), ("inner", inner), ("history_size", history_size))
        for label, count in counts:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"solve: {label} must be an int >= 1, got {count!r}")
        for label, flag in (("polish", polish), ("compile", compile)):
            if not isinstance(flag, bool):
                raise TypeError(f"solve: {label} must be True or False, got {type(flag).__name__}")
        if dtype is None:
            dtype = torch.float64
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"solve: dtype must be torch.float32 or torch.float64, got {dtype}")
        try:
            device = torch.device(device or "cpu")
        except RuntimeError as err:
            raise ValueError(f"solve: unknown device {device!r}") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("solve: device 'cuda' requested but CUDA is not available")
        if working_set is not None and not isinstance(working_set, bool):
            raise TypeError(f"solve: working_set must be True, False or None, got {type(working_set).__name__}")
        if start is not None:
            start = _checked_start(start, problem)
        return cls(device=device, dtype=dtype, method=method, tol=float(tol), max_iter=max_iter,
                   progress=bool(progress), inner=inner, history_size=history_size, max_rounds=max_rounds,
                   polish=polish, compile=compile, working_set=working_set, start=start)


def _checked_start(start, problem: Problem) -> torch.Tensor:
    if not isinstance(start, torch.Tensor):
        raise TypeError(f"solve: start must be a tensor of shape {tuple(problem.shape)}, got {type(start).__name__}")
    if tuple(start.shape) != tuple(problem.shape):
        raise ValueError(f"solve: start has shape {tuple(start.shape)}, but '{problem.name}' has θ of shape "
                         f"{tuple(problem.shape)}")
    if not torch.is_floating_point(start) or not bool(torch.isfinite(start).all()):
        raise ValueError("solve: start must hold finite floating-point values")
    return start.detach()
