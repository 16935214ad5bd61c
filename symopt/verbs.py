"""One-line verbs: ``symopt.sparse(module, "weight", strength=...)`` etc.

Each builds the constraint object and calls :func:`symopt.constrain`; they return its
:class:`~symopt.attach.Handle`. Names may be dotted (``"encoder.0.weight"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .attach import Handle, constrain
from .constraints import FixedZeros, GroupSparse, LowRank, Sparse, Subspace, Tied


def sparse(module: nn.Module, name: str, strength: float | None = None, **kwargs) -> Handle:
    """Elementwise sparsity, ``w = u ⊙ v``, induced penalty ``λ‖w‖₁`` (see :class:`Sparse`).

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 2)
        >>> symopt.sparse(lin, "weight", strength=1e-3).kind
        'sparse'
    """
    return constrain(module, name, Sparse(strength, **kwargs))


def group_sparse(module: nn.Module, name: str, dim: int | None = None, strength: float | None = None,
                 **kwargs) -> Handle:
    """Group sparsity over the slices along ``dim`` (default 0) or over index ``groups=``, induced penalty
    ``λΣ_g‖w_g‖₂`` (see :class:`GroupSparse`).

    Example:
        >>> import torch, symopt
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> symopt.group_sparse(conv, "weight", dim=0, strength=1e-3).constraint.group_norms(conv.weight).shape
        torch.Size([8])
    """
    return constrain(module, name, GroupSparse(dim, strength, **kwargs))


def low_rank(module: nn.Module, name: str, strength: float | None = None, max_rank: int | None = None,
             **kwargs) -> Handle:
    """Low rank, ``W = U Vᵀ``, induced penalty ``λ‖W‖_*`` (see :class:`LowRank`).

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(6, 4)
        >>> symopt.low_rank(lin, "weight", strength=1e-3).members[0].factors[0].shape
        torch.Size([4, 4])
    """
    return constrain(module, name, LowRank(strength, max_rank, **kwargs))


def subspace(module: nn.Module, name: str, A, strength: float | str = "auto", **kwargs) -> Handle:
    """Linear constraint ``A·vec(θ) = 0``, exact penalty ``λ‖Oᵀθ‖₁`` (see :class:`Subspace`).

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> h = symopt.subspace(lin, "weight", torch.tensor([[1.0, 1.0]]), strength=1.0)
        >>> h.constraint.basis.shape      # one constrained direction, (1, 1)/√2
        torch.Size([2, 1])
    """
    return constrain(module, name, Subspace(A, strength, **kwargs))


def fixed_zeros(module: nn.Module, name: str, mask, strength: float | str = "auto", **kwargs) -> Handle:
    """``θ[mask] = 0``, exact penalty ``λ‖θ[mask]‖₁`` (see :class:`FixedZeros`).

    Example:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(2, 2)
        >>> symopt.fixed_zeros(lin, "weight", torch.eye(2, dtype=torch.bool)).kind
        'fixed_zeros'
    """
    return constrain(module, name, FixedZeros(mask, strength, **kwargs))


def tie(model: nn.Module, names: Sequence[str], strength: float | str = "auto", **kwargs) -> Handle:
    """``θ_1 = … = θ_k`` for the dotted ``names`` in ``model``, penalty ``λΣ_j‖θ_j − m‖₁`` (see :class:`Tied`).

    Example:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        >>> symopt.tie(net, ["0.bias", "1.bias"], strength=1.0).name
        '0.bias, 1.bias'
    """
    if isinstance(names, str):
        raise TypeError("tie: pass a list of at least two parameter names, e.g. ['enc.weight', 'dec.weight']")
    return constrain(model, list(names), Tied(strength, **kwargs))
