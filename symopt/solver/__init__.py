"""Layer 4 — the DCS solver: ``symopt.solve`` (module `dcs`) on a [`Problem`][symopt.Problem], in
pieces a reader can hold (`options`, `variable`, `steppers`, `certifier`, `stop`, `descent`, `path` for
budgets, `working_set`)."""

from .dcs import solve

__all__ = ["solve"]
