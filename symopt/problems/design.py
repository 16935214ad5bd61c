"""Products with a design matrix ``X`` that stay fast when ``X`` is sparse (torch CSR).

torch multiplies a CSR matrix by a vector at the speed of its stored entries, but ``X.t()`` of a
CSR matrix is a CSC view whose product runs ~100× slower on CPU (measured: 14 ms against 0.13 ms
for a 2000×20000 design with 4e5 entries). Autograd's backward of ``X @ θ`` is exactly that
product, ``Xᵀ r``. So for a CSR ``X`` the product goes through `matvec`, whose backward multiplies
by a CSR copy of ``Xᵀ``, built once per tensor and kept on it. A dense ``X`` is left to torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

_TRANSPOSE = "_symopt_csr_transpose"  # the cached CSR copy of Xᵀ, an attribute of X itself


def _csr_transpose(X: Tensor) -> Tensor:
    # Kept on the tensor, so it lives exactly as long as X; `Problem.data_on` makes a new tensor
    # for a new dtype or device, which gets its own copy. The data of a problem is never mutated.
    cached = getattr(X, _TRANSPOSE, None)
    if cached is None:
        cached = X.t().to_sparse_csr()
        setattr(X, _TRANSPOSE, cached)
    return cached


class _CsrProduct(torch.autograd.Function):
    """``X @ θ`` for a constant CSR ``X``; the gradient ``Xᵀ g`` uses the cached CSR transpose."""

    @staticmethod
    def forward(ctx, X: Tensor, theta: Tensor) -> Tensor:
        ctx.X = X
        return X @ theta

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, _csr_transpose(ctx.X) @ grad


def matvec(X: Tensor, theta: Tensor) -> Tensor:
    """``X @ θ`` (θ a vector or a matrix), differentiable in θ; for a CSR ``X`` its backward avoids
    torch's slow transposed-CSR product.

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64).to_sparse_csr()
        >>> theta = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        >>> matvec(X, theta).sum().backward()
        >>> theta.grad.tolist()                                   # Xᵀ 1 = column sums
        [1.0, 2.0]
    """
    if X.layout == torch.sparse_csr:
        return _CsrProduct.apply(X, theta)
    return X @ theta


def rmatvec(X: Tensor, r: Tensor) -> Tensor:
    """``Xᵀ r`` (not differentiated), through the cached CSR transpose for a CSR ``X``.

    Examples:
        >>> import torch
        >>> X = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64).to_sparse_csr()
        >>> rmatvec(X, torch.tensor([1.0, 3.0], dtype=torch.float64)).tolist()
        [3.0, 2.0]
    """
    if X.layout == torch.sparse_csr:
        return _csr_transpose(X) @ r
    return X.t() @ r
