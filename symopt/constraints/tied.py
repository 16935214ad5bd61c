"""Tied tensors ``θ_1 = … = θ_k``: the first copy is the anchor, ``θ_j = θ_1 + u_j ⊙ v_j`` for j ≥ 2.

Symmetry: for each later copy, ``(u_j, v_j) → (−u_j, −v_j)``; fixed subspace ``δ_j = u_j ⊙ v_j = 0``
for all j ≥ 2, i.e. every copy equals the anchor. Penalty: ``λ Σ_{j≥2} ‖θ_j − θ_1‖₁`` (for k = 2 this
is ``λ‖θ_1 − θ_2‖₁ = λ min_m Σ_j ‖θ_j − m‖₁``), exact once ``λ ≥ max_{j≥2} ‖∇_{θ_j} ℓ(θ*)‖_∞`` at the
tied optimum θ*.

Why an anchor and not a free centre ``m`` with ``θ_j = m + u_j ⊙ v_j`` for every copy: the centre
costs a whole extra tensor and one factor pair more. The anchored tie holds ``2k − 1`` tensors for k
copies (1.5× the tied parameters for two, always below 2×) where the centred one held ``2k + 1``
(2.5× for two), and saves a fused multiply-add per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Constraint, Example, GroupMember, hadamard_balance, split_product


class Tied(Constraint):
    r"""Ties k ≥ 2 tensors of one shape, dtype and device (register with [`symopt.tie`][symopt.tie]).

    This object is the *group*. The first tensor named is the anchor: its parametrization
    (`TiedAnchor`) stores its value as is, undecayed, and that value
    is the centre every other copy is tied to. Each later tensor gets a `TiedMember` parametrization
    ``θ_j = θ_1 + u_j ⊙ v_j`` whose factors are decayed. The methods below act on the members'
    values, anchor first, as a sequence or stacked along a new first axis (``project`` returns
    them stacked).

    Args:
        strength: λ (> 0), or ``"auto"`` (default): ``margin ×`` the largest running estimate of
            ``‖∂ℓ/∂θ_j‖_∞`` over the later copies j ≥ 2, the multipliers of the anchored penalty
            (the anchor's own gradient is not one: see `dual_norm`).
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        >>> _ = symopt.tie(net, ["0.weight", "1.weight"], strength=1.0)
        >>> group = net[1].parametrizations.weight[0].group
        >>> group.center is net[0].parametrizations.weight.original0  # the anchor's own tensor
        True
        >>> [p.shape for p in net[1].parametrizations.weight.parameters()]  # u_2, v_2
        [torch.Size([3, 3]), torch.Size([3, 3])]
    """

    kind = "tied"
    linear = True
    multi_tensor = True

    @classmethod
    def example(cls) -> Example:
        return Example(lambda: cls(1.0), ((3, 4), (3, 4), (3, 4)))

    def __init__(self, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0) -> None:
        super().__init__(strength, seed=seed, margin=margin)
        # The members' ParametrizationLists, anchor first (set by symopt.tie as it registers them).
        # A plain list, not submodules: each member holds the group, so registering them would make
        # a cycle in the module tree.
        self.copies: list[nn.Module] = []

    @property
    def center(self) -> Tensor:
        """The anchor's stored tensor ``θ_1``, which every other copy is tied to."""
        if not self.copies:
            raise RuntimeError("Tied: no tensor is registered yet; use symopt.tie(model, [names])")
        return self.copies[0].original0

    def validate_members(self, tensors: Sequence[Tensor], names: Sequence[str]) -> None:
        if len(tensors) < 2:
            raise ValueError(f"Tied: needs at least two tensors to tie, got {list(names)}")
        if len(set(names)) != len(names) or len({id(t) for t in tensors}) != len(tensors):
            raise ValueError(f"Tied: a tensor cannot be tied with itself; got {list(names)}")
        first, name0 = tensors[0], names[0]
        for t, name in zip(tensors[1:], names[1:]):
            for what in ("shape", "dtype", "device"):
                if getattr(t, what) != getattr(first, what):
                    raise ValueError(
                        f"Tied: '{name}' has {what} {getattr(t, what)} but '{name0}' has "
                        f"{getattr(first, what)}; tied tensors must agree in shape, dtype and device"
                    )

    def prepare(self, count: int, device: torch.device) -> None:
        """Start a tie of ``count`` copies: no copy bound yet; with ``"auto"``, one running
        multiplier estimate per copy."""
        self.copies = []
        self.policy.resize(count, device)

    def member(self, index: int) -> TiedMember:
        """The parametrization of copy ``index``: the anchor for 0."""
        return TiedAnchor(self, 0) if index == 0 else TiedMember(self, index)

    def bind(self, copy: nn.Module) -> None:
        """Record the ParametrizationList of the next copy (in the order of the names)."""
        self.copies.append(copy)

    def move_center(self, value: Tensor) -> None:
        """Make ``value`` the anchor's new value while every other copy keeps its own: each
        ``δ_j = θ_j − θ_1`` shifts by the old minus the new anchor and is split into factors again."""
        if len(self.copies) < 2:
            return  # registration: no other copy yet
        with torch.no_grad():
            shift = self.center - value
            for copy in self.copies[1:]:
                u, v = copy.original0, copy.original1
                new_u, new_v = split_product(torch.addcmul(shift, u, v), self.factorizer)
                u.copy_(new_u)
                v.copy_(new_v)

    def project(self, values: Sequence[Tensor], tol: float = 0.0) -> Tensor:
        """Orthogonal projection onto the tie set: every copy replaced by the mean (stacked)."""
        stacked = torch.stack(list(values))
        return stacked.mean(0).expand_as(stacked).clone()

    def violation(self, values: Sequence[Tensor], tol: float = 0.0) -> float:
        stacked = torch.stack(list(values))
        return float((stacked - stacked.mean(0)).norm())

    def infeasibility(self, values: Sequence[Tensor]) -> float:
        """Distance of the copies (a sequence, or stacked) to the tie set."""
        return self.violation(values)

    def induced_norm(self, values: Sequence[Tensor]) -> Tensor:
        """``Σ_{j≥2} ‖θ_j − θ_1‖₁`` (values anchor first)."""
        stacked = torch.stack(list(values))
        return (stacked[1:] - stacked[0]).abs().sum()

    def dual_norm(self, grads: Sequence[Tensor]) -> Tensor:
        """``max_{j≥2} ‖g_j‖_∞`` (grads anchor first): the multipliers of the anchored penalty. At a
        tied optimum the KKT conditions read ``g_j = −λ s_j`` with ``|s_j| ≤ 1`` for every later copy,
        and ``g_1 = −Σ_{j≥2} g_j`` for the anchor, which the sum over the copies settles."""
        return torch.stack([g.abs().amax() for g in list(grads)[1:]]).amax()

    def prox(self, values: Sequence[Tensor], step: float) -> Tensor:
        return self.project(values)

    def kkt_residual(self, values: Sequence[Tensor], grads: Sequence[Tensor], tol: float = 0.0,
                     quick: bool = False) -> float:
        """Norm of the gradient projected onto the tie set: ``√k·‖mean_j g_j‖``."""
        return float(torch.stack(list(grads)).mean(0).norm()) * len(grads) ** 0.5

    def structure(self, values: Sequence[Tensor], tol: float = 0.0) -> str:
        return f"{len(values)} copies"


class TiedMember(GroupMember):
    """Parametrization of a later tied tensor: ``θ_j = θ_1 + u_j ⊙ v_j``; decays ``u_j, v_j``.

    Its λ, strength policy and random stream are the group's (`Tied`): one λ for the whole tie."""

    kind = "tied"
    linear = True
    decayed: tuple[int, ...] = (0, 1)

    def dual_norm(self, grad: Tensor) -> Tensor:
        """This copy's multiplier: ``‖g_j‖_∞`` (see `Tied.dual_norm`)."""
        return grad.abs().amax()

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return torch.addcmul(self.group.center, u, v)  # one fused kernel, no u ⊙ v temporary

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        return split_product(value - self.group.center, self.factorizer)

    def balance(self, u: Tensor, v: Tensor) -> float:
        return hadamard_balance(u, v)

    def extra_repr(self) -> str:
        return f"copy {self.index}"


class TiedAnchor(TiedMember):
    """Parametrization of the first tied tensor: stores ``θ_1`` itself (no factors, no decay); the
    other copies read it as their centre. Assigning it a new value leaves the other copies as they
    are (`Tied.move_center`)."""

    decayed = ()

    @property
    def watching(self) -> bool:  # the multipliers are the later copies' gradients (Tied.dual_norm)
        return False

    def forward(self, center: Tensor) -> Tensor:
        # A view, not the parameter itself: the value is then its own autograd node, so ∂ℓ/∂θ_1
        # (symopt.certify) is the anchor's own gradient, not the sum over the copies that read the
        # centre.
        return center.view_as(center)

    def right_inverse(self, value: Tensor) -> tuple[Tensor]:
        self.group.move_center(value)
        return (value.detach().clone(),)

    def extra_repr(self) -> str:
        return "copy 0 (anchor)"
