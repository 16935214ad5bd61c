"""The test behind every memo keyed by a point θ (an evaluation kept for the next ask, a predictor kept
on the design): the same point, exactly.

The data of a problem are never mutated (`symopt.problems.Problem`'s contract), so an answer computed
at θ holds for any tensor equal to θ; a near-equal one is another point.
"""

from __future__ import annotations

import torch
from torch import Tensor


def same_point(kept: Tensor, theta: Tensor) -> bool:
    """Whether ``kept`` and ``theta`` are the same point: shape, dtype, device and every entry equal.

    Examples:
        >>> import torch
        >>> theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> same_point(theta.clone(), theta), same_point(theta.float(), theta), same_point(theta + 1e-16, theta)
        (True, False, False)
    """
    return (kept.shape == theta.shape and kept.dtype == theta.dtype and kept.device == theta.device
            and torch.equal(kept, theta))
