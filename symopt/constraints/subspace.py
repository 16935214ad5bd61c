r"""General linear subspace $A·\operatorname{vec}(θ) = 0$: $θ = (I - OO^\top)w + O(a ⊙ b)$.

``O`` is an orthonormal basis of rowspace(A) (rank-deficient rows are fine). Symmetry: per
constrained direction, $(a_i, b_i) → (-a_i, -b_i)$; fixed subspace $a = b = 0$, i.e.
$O^\top θ = 0$. Penalty: $λ‖O^\top θ‖_1$ — an *exact* penalty: when $λ ≥ ‖O^\top ∇ℓ(θ^*)‖_∞$ (the Lagrange
multipliers at the constrained optimum $θ^*$) the minimiser satisfies $O^\top θ = 0$ exactly.

With ``dim``, ``A`` acts on every slice $θ_s$ spanned by those axes (each row of a Linear weight,
each filter of a Conv), i.e. on $\operatorname{vec}(θ)$ through the block-diagonal ``I ⊗ A``, without forming it:
the basis is the slice's size, not the parameter's, and the same mirrors act per slice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Constraint, Example, hadamard_balance, require_floating, split_product


def orthonormal_rowspace(A: Tensor) -> Tensor:
    """Orthonormal basis ``O`` (d×k) of the row space of ``A`` (m×d), via SVD with a rank cut."""
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    cut = float(S.amax()) * max(A.shape) * torch.finfo(A.dtype).eps
    # a fresh dense tensor: a transposed view with a size-1 dim keeps odd strides, which DDP's buffer
    # broadcast rejects as overlapping memory
    return Vh[S > cut].mT.clone(memory_format=torch.contiguous_format)


class Subspace(Constraint):
    r"""The linear constraint $A·\operatorname{vec}(θ) = 0$ as a mirror symmetry with an exact ℓ₁ penalty.

    $θ = (I - OO^\top)w + O(a ⊙ b)$; ``w`` moves freely inside the subspace, the decay
    $(λ/2)(‖a‖^2 + ‖b‖^2)$ induces $λ‖O^\top θ‖_1$. Exact once $λ$ exceeds $‖O^\top ∇ℓ(θ^*)‖_∞$.

    Args:
        A: ``(m, numel)`` matrix (tensor or array; a 1-D array is one row) acting on
            ``θ.reshape(-1)``; with ``dim``, ``(m, slice size)`` acting on each slice. Finite, not all
            zero; dependent rows are fine.
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ a running estimate of the
            multipliers $‖O^\top ∂ℓ/∂θ‖_∞$ observed on each backward pass (see ``symopt.constraints.auto``).
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.
        total_steps: the optimizer steps until training ends: the set then *lands* at
            ``round(ramp[1] · total_steps)`` (the decayed factors go to 0, their mirror's fixed
            subspace, which is the set) and holds exactly from then on, whatever the optimizer.
        ramp: ``(start, end)`` fractions of ``total_steps``; the landing is at ``end`` (default 0.75).
        dim: ``None`` (default): ``A`` acts on the whole flattened parameter. An axis or a tuple of
            axes: ``A`` acts on $θ_s$, the slice over those axes (flattened in their order), for
            every index ``s`` of the other axes: $A·\operatorname{vec}(θ_s) = 0$ for all ``s``. ``dim=1`` on a
            Linear weight constrains each row, ``dim=(1, 2, 3)`` on a Conv2d weight each filter. The
            penalty is $λ\sum_s‖O^\top θ_s‖_1$; ``O`` is ``(slice size, k)`` and the factors ``a, b`` are
            ``(slices, k)``, so memory stays O(numel) (a dense ``I ⊗ A`` would be slices × larger).

    Attributes:
        basis: ``O``, the ``(numel, k)`` (with ``dim``: ``(slice size, k)``) orthonormal basis of
            rowspace(A) that defines the penalty (the ℓ₁ norm is taken in this basis).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 1, bias=False)
        >>> A = torch.tensor([[1.0, -1.0, 0.0]])          # w0 = w1
        >>> _ = symopt.constrain(lin, "weight", symopt.Subspace(A, strength=1.0))
        >>> lin.parametrizations.weight.original1.shape     # one constrained direction
        torch.Size([1])
        >>> wide = torch.nn.Linear(5, 3)                     # each row of the weight sums to zero
        >>> handle = symopt.constrain(wide, "weight", symopt.Subspace(torch.ones(1, 5), 1.0, dim=1))
        >>> handle.constraint.basis.shape, wide.parametrizations.weight.original1.shape
        (torch.Size([5, 1]), torch.Size([3, 1]))
        >>> projected = handle.constraint.project(wide.weight.detach())   # the nearest feasible weight
        >>> bool(projected.sum(dim=1).abs().max() < 1e-6)
        True
    """

    kind = "subspace"
    linear = True
    decayed = (1, 2)

    @classmethod
    def example(cls) -> Example:
        A = torch.tensor([[1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
        return Example(lambda: cls(A, 1.0, dim=1), ((4, 5),))

    def __init__(self, A, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0,
                 dim: int | tuple[int, ...] | None = None, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75)) -> None:
        super().__init__(strength, seed=seed, margin=margin, total_steps=total_steps, ramp=ramp)
        self.dim = _as_axes(dim)
        A = _as_matrix(A)
        self.num_columns = A.shape[1]
        self.register_buffer("basis", orthonormal_rowspace(A), persistent=False)

    def validate(self, tensor: Tensor, name: str) -> None:
        if self.dim is None:
            if tensor.numel() != self.num_columns:
                raise ValueError(
                    f"Subspace on '{name}': A has {self.num_columns} columns but the parameter has "
                    f"{tensor.numel()} entries (shape {tuple(tensor.shape)}); A must be (m, {tensor.numel()}) "
                    "and act on the parameter's reshape(-1), or pass dim= to constrain each slice"
                )
            return
        if tensor.dim() == 0:
            raise ValueError(f"Subspace on '{name}': a scalar parameter has no axes to slice; drop dim")
        for axis in self.dim:
            if not -tensor.dim() <= axis < tensor.dim():
                raise ValueError(
                    f"Subspace on '{name}': dim={axis} is out of range for a tensor of shape "
                    f"{tuple(tensor.shape)}; choose axes in [{-tensor.dim()}, {tensor.dim() - 1}]"
                )
        axes = [axis % tensor.dim() for axis in self.dim]
        if len(set(axes)) != len(axes):
            raise ValueError(f"Subspace on '{name}': dim={self.dim} names an axis twice; list each axis once")
        size = int(torch.Size([tensor.shape[axis] for axis in axes]).numel())
        if size != self.num_columns:
            raise ValueError(
                f"Subspace on '{name}': A has {self.num_columns} columns but a slice over dim={self.dim} of "
                f"the parameter (shape {tuple(tensor.shape)}) has {size} entries; A must be (m, {size})"
            )

    def _order(self, ndim: int) -> tuple[list[int], list[int]]:
        """(the other axes, the slice's axes), the order in which slices are laid out as rows."""
        axes = [axis % ndim for axis in self.dim]
        return [d for d in range(ndim) if d not in axes], axes

    def slices(self, value: Tensor) -> Tensor:
        r"""``value`` as a ``(slices, slice size)`` matrix, one row per constrained slice (a view when the
        slice's axes are the trailing ones); one row, the whole of $\operatorname{vec}(θ)$, without ``dim``."""
        if self.dim is None:
            return value.reshape(1, -1)
        rest, axes = self._order(value.dim())
        return value.permute(*rest, *axes).reshape(-1, self.num_columns)

    def _unslice(self, rows: Tensor, like: Tensor) -> Tensor:
        if self.dim is None:
            return rows.view_as(like)
        rest, axes = self._order(like.dim())
        order = rest + axes  # axis j of the rows' layout is axis order[j] of θ
        return rows.reshape([like.shape[d] for d in order]).permute(*[order.index(d) for d in range(like.dim())])

    def coordinates(self, value: Tensor) -> Tensor:
        r"""$O^\top \operatorname{vec}(θ)$ (with ``dim``: ``(slices, k)``, $O^\top \operatorname{vec}(θ_s)$ per row): the components that the
        constraint sets to zero."""
        z = self.slices(value) @ self.basis
        return z[0] if self.dim is None else z

    def forward(self, w: Tensor, a: Tensor, b: Tensor) -> Tensor:
        rows = self.slices(w)
        return self._unslice(rows + (a * b - rows @ self.basis) @ self.basis.mT, w)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b = split_product(self.coordinates(value), self.factorizer)
        return self.project(value), a, b

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        rows = self.slices(value)
        return self._unslice(rows - (rows @ self.basis) @ self.basis.mT, value)

    def induced_norm(self, value: Tensor) -> Tensor:
        return self.coordinates(value).abs().sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return self.coordinates(grad).abs().amax()

    def balance(self, w: Tensor, a: Tensor, b: Tensor) -> float:
        return hadamard_balance(a, b)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        if self.dim is None:
            return f"codim {self.basis.shape[1]}"
        return f"codim {self.basis.shape[1]} on each of {self.slices(value).shape[0]} slices"

    def extra_repr(self) -> str:
        where = "" if self.dim is None else f", dim={self.dim}"
        return f"codim={self.basis.shape[1]}{where}, {super().extra_repr()}"


def _as_axes(dim) -> tuple[int, ...] | None:
    """``dim`` as a tuple of ints (range and repeats are checked against the tensor in ``validate``)."""
    if dim is None:
        return None
    axes = (dim,) if isinstance(dim, int) and not isinstance(dim, bool) else dim
    if not isinstance(axes, (tuple, list)) or not axes or any(
            isinstance(a, bool) or not isinstance(a, int) for a in axes):
        raise TypeError(f"Subspace: dim must be None, an int axis or a non-empty tuple of int axes, got {dim!r}")
    return tuple(axes)


def _as_matrix(A) -> Tensor:
    if isinstance(A, np.ndarray):
        A = torch.from_numpy(A)
    if not isinstance(A, Tensor):
        raise TypeError(f"Subspace: A must be a torch.Tensor or numpy array, got {type(A).__name__}")
    require_floating(A, "A", what="constraint matrix")
    if A.dim() == 1:
        A = A.unsqueeze(0)
    if A.dim() != 2 or A.numel() == 0:
        raise ValueError(f"Subspace: A must be a non-empty (m, numel) matrix, got shape {tuple(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError("Subspace: A contains NaN or Inf; pass a finite constraint matrix")
    if not bool((A != 0).any()):
        raise ValueError("Subspace: A is all zeros, so it constrains nothing; pass at least one non-zero row")
    return A.detach().to(torch.float64)
