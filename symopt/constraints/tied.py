r"""Tied tensors $θ_1 = … = θ_k$: the first copy is the anchor, $θ_j = θ_1 + u_j ⊙ v_j$ for j ≥ 2.

Symmetry: for each later copy, $(u_j, v_j) → (-u_j, -v_j)$; fixed subspace $δ_j = u_j ⊙ v_j = 0$
for all j ≥ 2, i.e. every copy equals the anchor. Penalty: $λ \sum_{j≥2} ‖θ_j - θ_1‖_1$ (for k = 2 this
is $λ‖θ_1 - θ_2‖_1 = λ \min_m \sum_j ‖θ_j - m‖_1$), exact once $λ ≥ \max_{j≥2} ‖∇_{θ_j} ℓ(θ^*)‖_∞$ at the
tied optimum $θ^*$.

Why an anchor and not a free centre ``m`` with $θ_j = m + u_j ⊙ v_j$ for every copy: the centre
costs a whole extra tensor and one factor pair more. The anchored tie holds $2k - 1$ tensors for k
copies (1.5× the tied parameters for two, always below 2×) where the centred one held ``2k + 1``
(2.5× for two), and saves a fused multiply-add per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Constraint, Example, GroupMember, hadamard_balance, land_set_when_due, split_product


class Tied(Constraint):
    r"""Ties k ≥ 2 tensors of one shape, dtype and device (register with [`symopt.tie`][symopt.tie]).

    This object is the *group*. The first tensor named is the anchor: its parametrization
    (`TiedAnchor`) stores its value as is, undecayed, and that value
    is the centre every other copy is tied to. Each later tensor gets a `TiedMember` parametrization
    $θ_j = θ_1 + u_j ⊙ v_j$ whose factors are decayed. The methods below act on the members'
    values, anchor first, as a sequence or stacked along a new first axis (``project`` returns
    them stacked).

    A 2-d copy may hold the anchor's transpose ($\mathrm{decoder}.\mathrm{weight} = \mathrm{encoder}.\mathrm{weight}^\top$, an output head
    tied to an embedding): $θ_j = θ_1^\top + u_j ⊙ v_j$. Every method here works in the anchor's
    orientation and hands values back in each copy's own.

    Args:
        strength: λ (> 0), or ``"auto"`` (default): $\mathrm{margin} ×$ the largest running estimate of
            $‖∂ℓ/∂θ_j‖_∞$ over the later copies j ≥ 2, the multipliers of the anchored penalty
            (the anchor's own gradient is not one: see `dual_norm`).
        margin: safety factor of ``"auto"`` (> 1).
        seed: seed of the factor initialisation.
        transpose: None (default): a copy whose shape is the anchor's reversed (2-d, not square) is
            tied to the transpose; True: every later copy is (needed for square matrices); False:
            shapes must be equal.
        total_steps: the optimizer steps until training ends: the tie then *lands* at
            ``round(ramp[1] · total_steps)``: every later copy's factors go to 0, so the copies equal
            the anchor exactly, and stay so (`symopt.constraints.strength.Landing`). Without it the tie
            holds once training has converged with λ above the multipliers (Adam leaves copies apart).
        ramp: ``(start, end)`` fractions of ``total_steps``; a tie lands at ``end`` (default 0.75).

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

    def __init__(self, strength: float | str = "auto", *, margin: float = 1.5, seed: int = 0,
                 transpose: bool | None = None, total_steps: int | None = None,
                 ramp: tuple[float, float] = (0.1, 0.75)) -> None:
        super().__init__(strength, seed=seed, margin=margin, total_steps=total_steps, ramp=ramp)
        if transpose is not None and not isinstance(transpose, bool):
            raise TypeError(f"Tied: transpose must be None (decide from the shapes), True or False; got {transpose!r}")
        self.transpose = transpose
        # Per copy: whether it is tied to the anchor's transpose (decoder = encoderᵀ); set at registration.
        self.transposed: list[bool] = []
        # The members' ParametrizationLists, anchor first (set by symopt.tie as it registers them).
        # A plain list, not submodules: each member holds the group, so registering them would make
        # a cycle in the module tree.
        self.copies: list[nn.Module] = []

    @property
    def center(self) -> Tensor:
        """The anchor's stored tensor $θ_1$, which every other copy is tied to."""
        if not self.copies:
            raise RuntimeError("Tied: no tensor is registered yet; use symopt.tie(model, [names])")
        return self.copies[0].original0

    def validate_members(self, tensors: Sequence[Tensor], names: Sequence[str]) -> None:
        if len(tensors) < 2:
            raise ValueError(f"Tied: needs at least two tensors to tie, got {list(names)}")
        if len(set(names)) != len(names) or len({id(t) for t in tensors}) != len(tensors):
            raise ValueError(f"Tied: a tensor cannot be tied with itself; got {list(names)}")
        first, name0 = tensors[0], names[0]
        transposed = [False]
        for t, name in zip(tensors[1:], names[1:]):
            for what in ("dtype", "device"):
                if getattr(t, what) != getattr(first, what):
                    raise ValueError(
                        f"Tied: '{name}' has {what} {getattr(t, what)} but '{name0}' has "
                        f"{getattr(first, what)}; tied tensors must agree in shape, dtype and device"
                    )
            flipped = first.dim() == 2 and t.shape == first.shape[::-1]
            if self.transpose is True and not flipped:
                raise ValueError(f"Tied: transpose=True needs '{name}' to be the transpose of the 2-d '{name0}' "
                                 f"(shape {tuple(first.shape)[::-1]}), but it has shape {tuple(t.shape)}")
            if self.transpose is True or (self.transpose is None and t.shape != first.shape and flipped):
                transposed.append(True)
            elif t.shape == first.shape:
                transposed.append(False)
            else:
                orientations = f"{tuple(first.shape)} or its transpose" if first.dim() == 2 else tuple(first.shape)
                raise ValueError(
                    f"Tied: '{name}' has shape {tuple(t.shape)} but '{name0}' has shape {tuple(first.shape)}; "
                    f"tied tensors must have the anchor's shape {orientations}, and agree in dtype and device"
                )
        self.transposed = transposed

    def oriented(self, value: Tensor, index: int) -> Tensor:
        """``value`` (in the anchor's orientation) as copy ``index`` holds it (transposed or not)."""
        return value.transpose(0, 1) if self.transposed and self.transposed[index] else value

    def _aligned(self, values: Sequence[Tensor]) -> Tensor:
        """The copies in the anchor's orientation, stacked."""
        return torch.stack([self.oriented(v, i) for i, v in enumerate(values)])

    def _as_copies(self, stacked: Tensor):
        """Undo `_aligned`: stacked when every copy has the anchor's orientation, else a list."""
        if not any(self.transposed):
            return stacked
        return [self.oriented(v, i) for i, v in enumerate(stacked.unbind(0))]

    def prepare(self, count: int, device: torch.device) -> None:
        """Start a tie of ``count`` copies: no copy bound yet; with ``"auto"``, one running
        multiplier estimate per copy."""
        self.copies = []
        self.policy.resize(count, device)

    def member(self, index: int) -> TiedMember:
        """The parametrization of copy ``index``: the anchor for 0."""
        if index == 0:
            return TiedAnchor(self, 0)
        member = TiedMember(self, index)
        if self.policy.lands_set():  # each later copy zeroes its own u_j, v_j, as a single-tensor set does
            member.register_forward_pre_hook(land_set_when_due)
        return member

    def bind(self, copy: nn.Module) -> None:
        """Record the ParametrizationList of the next copy (in the order of the names)."""
        self.copies.append(copy)

    def move_center(self, value: Tensor) -> None:
        """Make ``value`` the anchor's new value while every other copy keeps its own: each
        $δ_j = θ_j - θ_1$ shifts by the old minus the new anchor and is split into factors again."""
        if len(self.copies) < 2:
            return  # registration: no other copy yet
        with torch.no_grad():
            shift = self.center - value
            for index, copy in enumerate(self.copies[1:], start=1):
                u, v = copy.original0, copy.original1
                new_u, new_v = split_product(torch.addcmul(self.oriented(shift, index), u, v), self.factorizer)
                u.copy_(new_u)
                v.copy_(new_v)

    def project(self, values: Sequence[Tensor], tol: float = 0.0):
        """Orthogonal projection onto the tie set: every copy replaced by the mean (stacked; a list
        when a copy is transposed)."""
        stacked = self._aligned(values)
        return self._as_copies(stacked.mean(0).expand_as(stacked).clone())

    def violation(self, values: Sequence[Tensor], tol: float = 0.0) -> float:
        stacked = self._aligned(values)
        return float((stacked - stacked.mean(0)).norm())

    def infeasibility(self, values: Sequence[Tensor]) -> float:
        """Distance of the copies (a sequence, or stacked) to the tie set."""
        return self.violation(values)

    def induced_norm(self, values: Sequence[Tensor]) -> Tensor:
        r"""$\sum_{j≥2} ‖θ_j - θ_1‖_1$ (values anchor first)."""
        stacked = self._aligned(values)
        return (stacked[1:] - stacked[0]).abs().sum()

    def dual_norm(self, grads: Sequence[Tensor]) -> Tensor:
        r"""$\max_{j≥2} ‖g_j‖_∞$ (grads anchor first): the multipliers of the anchored penalty. At a
        tied optimum the KKT conditions read $g_j = -λ s_j$ with $|s_j| ≤ 1$ for every later copy,
        and $g_1 = -\sum_{j≥2} g_j$ for the anchor, which the sum over the copies settles."""
        return torch.stack([g.abs().amax() for g in list(grads)[1:]]).amax()

    def prox(self, values: Sequence[Tensor], step: float) -> Tensor:
        return self.project(values)

    def kkt_residual(self, values: Sequence[Tensor], grads: Sequence[Tensor], tol: float = 0.0,
                     quick: bool = False) -> float:
        r"""Norm of the gradient projected onto the tie set: $√k·‖\operatorname{mean}_j g_j‖$."""
        return float(self._aligned(grads).mean(0).norm()) * len(grads) ** 0.5

    def structure(self, values: Sequence[Tensor], tol: float = 0.0) -> str:
        flipped = sum(self.transposed)
        return f"{len(values)} copies" + (f" ({flipped} transposed)" if flipped else "")

    def compressed_structure(self) -> str | None:
        return "shared"


class TiedMember(GroupMember):
    """Parametrization of a later tied tensor: $θ_j = θ_1 + u_j ⊙ v_j$; decays ``u_j, v_j``.

    Its λ, strength policy and random stream are the group's (`Tied`): one λ for the whole tie."""

    kind = "tied"
    linear = True
    decayed: tuple[int, ...] = (0, 1)

    def dual_norm(self, grad: Tensor) -> Tensor:
        r"""This copy's multiplier: $‖g_j‖_∞$ (see `Tied.dual_norm`)."""
        return grad.abs().amax()

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        # one fused kernel, no u ⊙ v temporary; a transposed copy reads the anchor's transpose (a view)
        return torch.addcmul(self.group.oriented(self.group.center, self.index), u, v)

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        return split_product(value - self.group.oriented(self.group.center, self.index), self.factorizer)

    def balance(self, u: Tensor, v: Tensor) -> float:
        return hadamard_balance(u, v)

    def extra_repr(self) -> str:
        return f"copy {self.index}"


class TiedAnchor(TiedMember):
    """Parametrization of the first tied tensor: stores $θ_1$ itself (no factors, no decay); the
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
