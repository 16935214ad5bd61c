r"""N:M semi-structured sparsity: at most N non-zeros in every M consecutive entries of a row (2:4 is
the pattern NVIDIA GPUs accelerate).

Factors $w = u ⊙ v$ as [`Sparse`][symopt.Sparse]: the mirror $(u_i, v_i) → (-u_i, -v_i)$ fixes
$w_i = 0$, and the decay $(λ/2)(‖u‖^2 + ‖v‖^2)$ induces $λ‖w‖_1$. The set is not convex, so the
penalty alone cannot promise the pattern: its budget (N/M of the entries) moves λ along the Lasso path
until that many entries are alive, and at the end of the ramp (``total_steps``) the landing keeps the
N largest of every group and puts the others' factors on the mirror's fixed point, where no gradient
moves them. The Euclidean projection onto the set is the same rule (the N largest magnitudes of each
group), which is what [`symopt.finalize`][symopt.finalize] applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Example
from .budget import RATE, check_budget
from .strength import Fixed
from .sparse import Sparse


class NMSparse(Sparse):
    r"""At most ``n`` non-zeros in every group of ``m`` consecutive entries along the last axis.

    Args:
        n: non-zeros kept in every group, $0 < n < m$ (default 2).
        m: the group size: ``m`` consecutive entries along the last axis (default 4).
        strength: the starting λ of the budget (default: from the first gradient); a
            [`Fixed`][symopt.Fixed] λ turns the budget's adaptation off (then only
            [`symopt.finalize`][symopt.finalize]'s projection makes the pattern).
        adapt_rate: fraction of the way log λ moves toward the budget's target per optimizer step.
        total_steps: the optimizer steps until training ends: the pattern then lands exactly by the
            end of the ramp (strongly advised; without it, [`symopt.finalize`][symopt.finalize] refuses
            until the pattern holds, or snaps it with ``force=True``).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``.
        seed: seed of the factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(8, 2)
        >>> handle = symopt.constrain(lin, "weight", symopt.NMSparse(2, 4))
        >>> handle.constraint.budget                    # 2 of every 4 of the 16 entries
        8
        >>> symopt.NMSparse(2, 4).truncate(torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 0.0, 0.0, -1.5]]), 8)
        tensor([[ 0.0000, -3.0000,  2.0000,  0.0000,  1.0000,  0.0000,  0.0000, -1.5000]])
    """

    kind = "n_m_sparse"
    # the kept set is a pattern (N of every M), not the count's largest entries that the trimmed decay spares
    trims_decay = False

    @classmethod
    def example(cls) -> Example:
        # a fixed λ (not the budget's adaptive one): the suite checks the penalty against its prox
        return Example(lambda: cls(2, 4, strength=Fixed(0.3)), ((3, 8),))

    def __init__(self, n: int = 2, m: int = 4, strength: float | None = None, *, adapt_rate: float = RATE,
                 seed: int = 0, total_steps: int | None = None, ramp: tuple[float, float] = (0.1, 0.75)) -> None:
        n, m = check_budget(n, "n", "NMSparse"), check_budget(m, "m", "NMSparse")
        if n is None or m is None or n >= m:
            raise ValueError(f"NMSparse: need ints 0 < n < m (n of every m entries are kept), got n={n}, m={m}")
        # the budget is a density of n/m: λ moves along the Lasso path until that many entries live
        super().__init__(strength, density=n / m, adapt_rate=adapt_rate, seed=seed, total_steps=total_steps,
                         ramp=ramp)
        self.n, self.m = n, m

    def validate(self, tensor: Tensor, name: str) -> None:
        if tensor.dim() == 0 or tensor.shape[-1] % self.m:
            size = tensor.shape[-1] if tensor.dim() else 0
            raise ValueError(f"NMSparse on '{name}': its last axis has {size} entries, which must be a multiple "
                             f"of m={self.m}; the groups are m consecutive entries of a row")
        self.resolve_budget(tensor.numel(), name, "non-zeros")  # exactly n · numel / m

    def _groups(self, value: Tensor) -> Tensor:
        return value.reshape(-1, self.m)

    def keep_mask(self, atoms: Tensor) -> Tensor:
        """The ``n`` largest atoms of every group of ``m`` (flat bool mask)."""
        groups = self._groups(atoms)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.topk(self.n, dim=1).indices, True)
        return keep.reshape(-1)

    def truncate(self, value: Tensor, k: int) -> Tensor:
        """The projection onto the N:M set: the ``n`` largest magnitudes of every group kept (``k`` is
        the budget, which the pattern fixes)."""
        keep = self.keep_mask(value.abs().reshape(-1)).view_as(value)
        return torch.where(keep, value, torch.zeros_like(value))

    def snap(self, value: Tensor, tol: float = 0.0) -> Tensor:
        """Entries ``<= tol`` zeroed, then the pattern (whatever the budget: the pattern is the set)."""
        return self.truncate(self.project(value, tol), 0)

    def violation(self, value: Tensor, tol: float = 0.0) -> float:
        """Distance to the N:M set (tiny kept entries are inside it)."""
        return float((value - self.truncate(value, 0)).norm())

    def compressed_structure(self) -> str | None:
        return "semi_structured"

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        alive = (self._groups(value.detach().abs()) > tol).sum(dim=1)
        over = int((alive > self.n).sum())
        return (f"{self.n}:{self.m} — {over} of {alive.numel()} groups over {self.n} "
                f"(density {float(alive.sum()) / max(value.numel(), 1):.3g})")

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, {super().extra_repr()}"
