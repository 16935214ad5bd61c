"""General linear subspace ``A·vec(θ) = 0``: ``θ = (I − OOᵀ)w + O(a ⊙ b)``.

``O`` is an orthonormal basis of rowspace(A) (rank-deficient rows are fine). Symmetry: per
constrained direction, ``(a_i, b_i) → (−a_i, −b_i)``; fixed subspace ``a = b = 0``, i.e.
``Oᵀθ = 0``. Penalty: ``λ‖Oᵀθ‖₁`` — an *exact* penalty: when ``λ ≥ ‖Oᵀ∇ℓ(θ*)‖_∞`` (the Lagrange
multipliers at the constrained optimum θ*) the minimiser satisfies ``Oᵀθ = 0`` exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Constraint, hadamard_balance, require_floating, split_product


def orthonormal_rowspace(A: Tensor) -> Tensor:
    """Orthonormal basis ``O`` (d×k) of the row space of ``A`` (m×d), via SVD with a rank cut."""
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    cut = float(S.amax()) * max(A.shape) * torch.finfo(A.dtype).eps
    # a fresh dense tensor: a transposed view with a size-1 dim keeps odd strides, which DDP's buffer
    # broadcast rejects as overlapping memory
    return Vh[S > cut].mT.clone(memory_format=torch.contiguous_format)


class Subspace(Constraint):
    r"""The linear constraint ``A·vec(θ) = 0`` as a mirror symmetry with an exact ℓ₁ penalty.

    ``θ = (I − OOᵀ)w + O(a ⊙ b)``; ``w`` moves freely inside the subspace, the decay
    ``(λ/2)(‖a‖² + ‖b‖²)`` induces ``λ‖Oᵀθ‖₁``. Exact once ``λ`` exceeds ``‖Oᵀ∇ℓ(θ*)‖_∞``.

    Args:
        A: ``(m, numel)`` matrix (tensor or array; a 1-D array is one row) acting on
            ``θ.reshape(-1)``. Finite, not all zero; dependent rows are fine.
        strength: λ (> 0), or ``"auto"`` (default): ``margin ×`` a running estimate of the
            multipliers ``‖Oᵀ∂ℓ/∂θ‖_∞`` observed on each backward pass (see ``symopt.constraints.auto``).
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.

    Attributes:
        basis: ``O``, the ``(numel, k)`` orthonormal basis of rowspace(A) that defines the penalty
            (the ℓ₁ norm is taken in this basis).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(3, 1, bias=False)
        >>> A = torch.tensor([[1.0, -1.0, 0.0]])          # w0 = w1
        >>> _ = symopt.constrain(lin, "weight", symopt.Subspace(A, strength=1.0))
        >>> lin.parametrizations.weight.original1.shape     # one constrained direction
        torch.Size([1])
    """

    kind = "subspace"
    linear = True
    decayed = (1, 2)

    def __init__(self, A, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0) -> None:
        super().__init__(strength, seed=seed, margin=margin)
        A = _as_matrix(A)
        self.num_columns = A.shape[1]
        self.register_buffer("basis", orthonormal_rowspace(A), persistent=False)

    def validate(self, tensor: Tensor, name: str) -> None:
        if tensor.numel() != self.num_columns:
            raise ValueError(
                f"Subspace on '{name}': A has {self.num_columns} columns but the parameter has "
                f"{tensor.numel()} entries (shape {tuple(tensor.shape)}); A must be (m, {tensor.numel()}) "
                "and act on the parameter's reshape(-1)"
            )

    def coordinates(self, value: Tensor) -> Tensor:
        """``Oᵀ vec(θ)``: the components that the constraint sets to zero."""
        return self.basis.mT @ value.reshape(-1)

    def forward(self, w: Tensor, a: Tensor, b: Tensor) -> Tensor:
        flat = w.reshape(-1)
        return (flat + self.basis @ (a * b - self.basis.mT @ flat)).view_as(w)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b = split_product(self.coordinates(value), self.factorizer)
        return self.project(value), a, b

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return value - (self.basis @ self.coordinates(value)).view_as(value)

    def induced_norm(self, value: Tensor) -> Tensor:
        return self.coordinates(value).abs().sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return self.coordinates(grad).abs().amax()

    def balance(self, w: Tensor, a: Tensor, b: Tensor) -> float:
        return hadamard_balance(a, b)

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        return f"codim {self.basis.shape[1]}"

    def extra_repr(self) -> str:
        return f"codim={self.basis.shape[1]}, {super().extra_repr()}"


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
