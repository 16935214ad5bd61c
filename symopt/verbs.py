"""One-line verbs: ``symopt.sparse(module, "weight", strength=...)`` etc.

Each builds the constraint object and calls :func:`symopt.constrain`; they return its
:class:`~symopt.attach.Handle`. Names may be dotted (``"encoder.0.weight"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .attach import Handle, constrain
from .constraints import FixedZeros, GroupSparse, LowRank, Sparse, Subspace, Tied


def sparse(module: nn.Module, name: str, strength: float = 1e-3, **kwargs) -> Handle:
    """Elementwise sparsity, ``w = u ⊙ v``, induced penalty ``λ‖w‖₁`` (see :class:`Sparse`)."""
    return constrain(module, name, Sparse(strength, **kwargs))


def group_sparse(module: nn.Module, name: str, dim: int = 0, strength: float = 1e-3, **kwargs) -> Handle:
    """Group sparsity over the slices along ``dim``, induced penalty ``λΣ_g‖w_g‖₂`` (see :class:`GroupSparse`)."""
    return constrain(module, name, GroupSparse(dim, strength, **kwargs))


def low_rank(module: nn.Module, name: str, strength: float = 1e-3, max_rank: int | None = None, **kwargs) -> Handle:
    """Low rank, ``W = U Vᵀ``, induced penalty ``λ‖W‖_*`` (see :class:`LowRank`)."""
    return constrain(module, name, LowRank(strength, max_rank, **kwargs))


def subspace(module: nn.Module, name: str, A, strength: float = 1.0, **kwargs) -> Handle:
    """Linear constraint ``A·vec(θ) = 0``, exact penalty ``λ‖Oᵀθ‖₁`` (see :class:`Subspace`)."""
    return constrain(module, name, Subspace(A, strength, **kwargs))


def fixed_zeros(module: nn.Module, name: str, mask, strength: float = 1.0, **kwargs) -> Handle:
    """``θ[mask] = 0``, exact penalty ``λ‖θ[mask]‖₁`` (see :class:`FixedZeros`)."""
    return constrain(module, name, FixedZeros(mask, strength, **kwargs))


def tie(model: nn.Module, names: Sequence[str], strength: float = 1.0, **kwargs) -> Handle:
    """``θ_1 = … = θ_k`` for the dotted ``names`` in ``model``, penalty ``λΣ_j‖θ_j − m‖₁`` (see :class:`Tied`)."""
    if isinstance(names, str):
        raise TypeError("tie: pass a list of at least two parameter names, e.g. ['enc.weight', 'dec.weight']")
    return constrain(model, list(names), Tied(strength, **kwargs))
