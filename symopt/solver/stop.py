"""When the descent stops, and with which status.

The certificate decides optimality (the KKT residual of the original problem, and the violation for
linear kinds); the `Watchdog` sees what a certificate cannot (an objective that keeps rising, iterates
that run off to infinity); the `StopRule` puts them in the order a reader can check: a step that
collapsed far from optimal means a wrong gradient, then the watchdog, then optimal, then stalled.
"""

from __future__ import annotations

import torch


WRONG_GRADIENT = "the gradient may not describe the objective (a non-smooth, noisy or wrongly differentiated loss?)"


class Watchdog:
    """What a KKT check cannot see: an objective that keeps rising (``patience`` outer iterations in a
    row) and iterates running off to infinity (‖θ‖ at least doubling ``patience // 2`` times in a row
    while the objective falls: the objective is unbounded below)."""

    def __init__(self, patience: int = 10) -> None:
        self.patience = patience
        self.rises = self.growths = 0
        self.last: tuple[float, float] | None = None

    def verdict(self, objective: float, norm: float) -> str | None:
        if self.last is not None:
            before, before_norm = self.last
            rising = objective > before + 1e-12 * max(1.0, abs(before))
            self.rises = self.rises + 1 if rising else 0
            running_off = objective < before and norm >= 2.0 * before_norm > 0
            self.growths = self.growths + 1 if running_off else 0
        self.last = (objective, norm)
        if self.rises >= self.patience:
            return f"the objective rose in each of the last {self.rises} iterations"
        if self.growths >= max(1, self.patience // 2):
            return (f"the objective falls without bound: ‖θ‖ doubled in each of the last {self.growths} "
                    "iterations (is the loss bounded below?)")
        return None



class StopRule:
    r"""The stopping decisions of one descent, at KKT target ``target`` ($\mathrm{tol} × ‖∇\mathrm{loss}(0)‖$).

    Args:
        tol: the relative tolerance (violation ≤ $\mathrm{tol} × \max(1, ‖θ‖)$ for linear kinds).
        target: the absolute KKT target.
    """

    def __init__(self, tol: float, target: float) -> None:
        self.tol, self.target = tol, target
        self.watchdog = Watchdog()

    def far(self, kkt: float) -> bool:
        """Far from optimal: a stuck descent then means a wrong gradient, not the precision floor."""
        return kkt > 1e3 * self.target

    def collapsed(self, collapsed: str | None, kkt: float) -> tuple[str, str] | None:
        """A stepper found no decreasing step while far from optimal: ``diverged``."""
        if collapsed and self.far(kkt):
            return "diverged", (f"{collapsed} with the KKT residual {kkt:.2g} far above the target: "
                                f"{WRONG_GRADIENT}")
        return None

    def diverging(self, objective: float, norm: float) -> str | None:
        """The watchdog's verdict on the sequence of objectives and norms."""
        return self.watchdog.verdict(objective, norm)

    def finished(self, kkt: float, violation: float, theta: torch.Tensor,
                 previous: torch.Tensor | None) -> tuple[str, str] | None:
        """``optimal`` when the certificate passes; ``stalled`` when the iterate did not move from
        ``previous`` (None: no step was asked for, as at a check before any descent)."""
        if kkt <= self.target and violation <= self.tol * max(1.0, float(theta.norm())):
            return "optimal", "KKT residual and violation below tolerance"
        if previous is not None and torch.equal(theta, previous):
            largest = float(theta.abs().max()) if theta.numel() else 0.0
            if self.far(kkt) and not largest < 1e-8 * torch.finfo(theta.dtype).max:
                # stuck at the end of the float range: the iterates ran off faster than the watchdog's
                # doublings could see (a line search that extrapolates 2^25 in one iteration)
                return "diverged", (f"the iterates ran off to max|θ| = {largest:.3g}, near the end of the float range, "
                                    "while the objective fell (is the loss bounded below?)")
            if self.far(kkt):
                return "stalled", (f"no progress although the KKT residual {kkt:.2g} is far above the target "
                                   f"{self.target:.2g}: the line search finds no decrease, so {WRONG_GRADIENT}")
            # (the objective's floating-point resolution, or a conditioning its steps cannot resolve:
            # a nuclear-norm regression on digits' raw pixels stalled 3× above the target with its
            # objective 6e-8 above cvxpy's, far above the resolution this message once blamed)
            return "stalled", (f"no progress: the descent no longer moves θ, with the KKT residual {kkt:.2g} "
                               f"above the target {self.target:.2g} (within 1000×): the objective's "
                               "floating-point resolution or the problem's conditioning; the point is "
                               "near-optimal, not certified")
        return None
