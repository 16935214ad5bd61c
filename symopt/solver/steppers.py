"""How the descent steps: L-BFGS with a strong-Wolfe line search, or Nesterov acceleration with a
backtracked Lipschitz step. Each ``make(params, closure, inner, history_size)`` returns
``step(iterations=None)``, which runs ``inner`` iterations (or ``iterations``) and returns a message
when no step size decreases the objective (or None); a NaN / Inf objective or gradient raises
`NonFinite`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._clock import warm_up


def lbfgs_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    warm_up()  # (the process's first torch optimizer imports torch._dynamo: left out of the solve's clock)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=inner, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

    def step(iterations: int | None = None) -> None:
        opt.param_groups[0]["max_iter"] = inner if iterations is None else iterations
        opt.step(closure)

    return step


def momentum_stepper(params, closure, inner: int, history_size: int) -> Callable[[], None]:
    """Nesterov acceleration with a backtracked step 1/L (sufficient decrease), L allowed to shrink
    again each step, and function-value restart (O'Donoghue & Candès)."""
    params = list(params)
    state = {"x": [p.detach().clone() for p in params], "t": 1.0, "L": 1.0, "f_x": math.inf}

    def load(values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)

    def step(iterations: int | None = None) -> str | None:
        """``inner`` iterations (or ``iterations``); returns a message if the step size collapsed (the
        caller judges it)."""
        collapsed = None
        for _ in range(inner if iterations is None else iterations):
            f_y = float(closure().detach())  # at the current (extrapolated) point y, fills .grad
            y = [p.detach().clone() for p in params]
            grads = [p.grad.detach().clone() for p in params]
            gsq = sum(float(g.square().sum()) for g in grads)
            if not (math.isfinite(f_y) and math.isfinite(gsq)):
                load(state["x"])
                raise NonFinite(f"the {'objective' if not math.isfinite(f_y) else 'gradient'} is NaN or Inf "
                                 "at the extrapolated point")
            L = state["L"]
            decreased = False  # at the precision floor rounding lets some trial decrease; a wrong gradient never
            while True:
                x_new = [yi - gi / L for yi, gi in zip(y, grads)]
                load(x_new)
                with torch.no_grad():
                    f_new = float(closure())
                decreased = decreased or f_new < f_y
                if f_new <= f_y - 0.5 * gsq / L and (decreased or gsq == 0.0):
                    break
                if L > 1e30:  # no step decreases f: the precision floor, or a gradient that does not describe f
                    if not decreased:
                        collapsed = f"step size collapsed (1/L < 1e-30) at objective {f_y:.6g}"
                    break
                L *= 2.0
            t = state["t"] if f_new <= state["f_x"] else 1.0  # restart when the objective rises
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            load([xn + (t - 1) / t_new * (xn - xo) for xn, xo in zip(x_new, state["x"])])
            state.update(x=x_new, t=t_new, L=L / 1.5, f_x=f_new)
        load(state["x"])  # leave the parameters at the last accepted iterate, not the extrapolation
        return collapsed

    return step


STEPPERS = {"lbfgs": lbfgs_stepper, "momentum": momentum_stepper}


class NonFinite(RuntimeError):
    """Raised by a stepper that meets a NaN or Inf objective or gradient."""
