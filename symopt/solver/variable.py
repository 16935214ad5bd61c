"""The solver's variable: a module holding θ, constrained with the same parametrizations as the
training API (so the solver is not a second implementation of the maths)."""

from __future__ import annotations

import torch
from torch import nn

from ..attach import constrain, list_constraints
from ..constraints import Constraint


class Variable(nn.Module):
    """Holds the problem's variable. A constraint that acts across tensors (``multi_tensor``: a tie)
    has a variable ``(k, ...)`` of k parameters, and ``theta`` stacks them."""

    def __init__(self, shape, device, dtype, constraint: Constraint):
        super().__init__()
        self.copies = shape[0] if constraint.multi_tensor else 0
        if self.copies:
            for j in range(self.copies):
                self.register_parameter(f"copy{j}", nn.Parameter(torch.zeros(shape[1:], device=device, dtype=dtype)))
            constrain(self, [f"copy{j}" for j in range(self.copies)], constraint)
        else:
            self.value = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
            constrain(self, "value", constraint)
        # Handles are views (they look their factors up by name), so one lookup serves every evaluation:
        # symopt.penalty(self) would search the module tree each time (a fifth of a small problem's evaluation).
        self._handles = list_constraints(self)

    def decay(self) -> torch.Tensor:
        r"""The factors' decay $(λ/2)·\sum ‖\mathrm{factor}‖^2$: [`symopt.penalty`][symopt.penalty] of this holder."""
        return sum(h.penalty() for h in self._handles)

    @property
    def theta(self) -> torch.Tensor:
        if self.copies:
            return torch.stack([getattr(self, f"copy{j}") for j in range(self.copies)])
        return self.value

    def load(self, theta: torch.Tensor) -> None:
        """Set θ (a copy, in the holder's dtype): ``right_inverse`` splits it into factors and gives
        every zero a live factor."""
        dtype = next(self.parameters()).dtype
        with torch.no_grad():
            values = theta.to(dtype=dtype, copy=True)
            if self.copies:
                for j in range(self.copies):
                    setattr(self, f"copy{j}", values[j])
            else:
                self.value = values
