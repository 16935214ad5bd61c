"""The contract every constraint kind fulfils, and the helpers they share.

A constraint kind is a `torch.nn.Module` usable as a ``torch.nn.utils.parametrize``
parametrization: ``right_inverse(value)`` splits a tensor into *factors*, ``forward(*factors)``
rebuilds the tensor from them. The factorisation is chosen so that the loss gains a mirror
symmetry whose fixed subspace is the constraint set, and a weight decay ``(λ/2)‖factor‖²`` on the
``decayed`` factors induces a norm penalty ``λ·induced_norm(value)`` (Ziyin, ICML 2024).

Registration, discovery and state_dict hooks live in `symopt.attach`; this layer is maths only.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .auto import MultiplierEstimate, check_margin, watch_gradient
from .budget import RATE, BudgetController, budget_target, check_rate

# Fallback scale for the non-zero factor of an all-zero tensor: with u = 1, v = 0 the factored
# gradient on w = u·v has the same scale as on the unfactored tensor.
_UNIT_SCALE = 1.0
# Random imbalance |u|/|v| = exp(±_IMBALANCE): a sign-balanced start (u = ±v) is conserved by
# gradient flow and forbids sign changes, which gives wrong solutions (THEORY.md §4).
_IMBALANCE = 0.5


def check_strength(strength: object, owner: str) -> float:
    """Return ``strength`` as a float after checking it is a finite number > 0."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(
            f"{owner}: strength must be a positive real number, got {type(strength).__name__}; "
            "pass e.g. strength=1e-3"
        )
    value = float(strength)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(
            f"{owner}: strength must be finite and > 0, got {strength!r}; pass e.g. strength=1e-3 "
            "(strength is the λ of the induced penalty λ·‖·‖)"
        )
    return value


_INTERNAL = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the location of the first caller outside symopt and torch (the user's line)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision used for factorisations (SVD, QR): at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class Factorizer:
    """Deterministic source of the random signs / imbalances used by ``right_inverse``.

    Stores a seed and a call counter (not a ``torch.Generator``) so constraints deepcopy and pickle;
    numbers are drawn on the CPU so a factorisation is the same on every device.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.calls = 0

    def generator(self) -> torch.Generator:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        return gen

    def signs_and_jitter(self, shape: torch.Size, like: Tensor) -> tuple[Tensor, Tensor]:
        """Random ±1 signs and log-uniform factors in ``[e^-0.5, e^0.5]``, shaped like ``shape``."""
        gen = self.generator()
        signs = torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8) * 2 - 1
        jitter = torch.empty(tuple(shape), dtype=torch.float64).uniform_(
            -_IMBALANCE, _IMBALANCE, generator=gen
        ).exp()
        return (
            signs.to(device=like.device, dtype=like.dtype),
            jitter.to(device=like.device, dtype=like.dtype),
        )


def zero_scale(magnitudes: Tensor) -> Tensor:
    """Scale given to the live factor of a zero entry: typical magnitude of the others, or 1."""
    nonzero = magnitudes[magnitudes > 0]
    if nonzero.numel() == 0:
        return magnitudes.new_tensor(_UNIT_SCALE)
    return nonzero.square().mean().sqrt()


def random_gate(magnitudes: Tensor, factorizer: Factorizer) -> Tensor:
    """Gate ``g`` for non-negative magnitudes ``m``: random sign, ``|g| = sqrt(m)·jitter``.

    The other factor is ``value / g``. Where ``m = 0`` the gate takes the typical scale instead,
    so the other factor is 0 but still receives gradient.
    """
    roots = magnitudes.sqrt()
    signs, jitter = factorizer.signs_and_jitter(magnitudes.shape, magnitudes)
    return signs * torch.where(magnitudes > 0, roots, zero_scale(roots)) * jitter


def split_product(value: Tensor, factorizer: Factorizer) -> tuple[Tensor, Tensor]:
    """Hadamard split ``value = u ⊙ v`` with independent (not sign-balanced) factors.

    Zero entries get ``u ≠ 0, v = 0``: the point is on the mirror plane but ``v`` has a non-zero
    gradient ``g·u``, so the entry can leave zero if the loss asks for it.
    """
    gate = random_gate(value.abs(), factorizer)
    return gate, value / gate


@dataclass(frozen=True)
class Face:
    """The face of the induced norm on which a point lies, in smooth coordinates.

    On the set of tensors with the same structure as the point (the same support and signs, the
    same alive groups, the same rank), the induced norm is smooth near the point, so
    ``loss(θ) + λ‖θ‖`` restricted to that set is a smooth problem in few variables: a quasi-Newton
    method solves it to rounding, where the factored descent converges only linearly (its zeros arrive
    geometrically). [`solve`][symopt.solve] uses it to finish; the KKT residual of the full problem
    then certifies the result.

    Attributes:
        start: the point's coordinates on the face (tensors, each free to move).
        embed: coordinates → θ (a tensor of the constrained shape).
        norm: coordinates → the induced norm of ``embed(*coordinates)``, smooth near ``start``.
        crossed: coordinates → bool mask (θ's shape) of the atoms that left the face through
            zero, where ``norm`` stops being the induced norm (Sparse: an entry whose sign
            flipped). The polish sets them to 0 and solves again on the smaller face. None: the
            kind's face norm stays exact (a group or a singular value shrinks to 0, it cannot flip).
    """

    start: tuple[Tensor, ...]
    embed: Callable[..., Tensor]
    norm: Callable[..., Tensor]
    crossed: Callable[..., Tensor] | None = None


def entering(excess: Tensor, alive: int) -> Tensor:
    """Which zero atoms a face admits, given ``excess`` (per atom: how far its optimality
    condition fails, ≤ 0 where it holds or the atom is alive): the worst violators, at most a quarter
    of the ``alive`` count and at least one (more means the structure itself is not found yet)."""
    flat = excess.reshape(-1)
    top = torch.topk(flat, min(max(1, alive // 4), flat.numel()))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[top.indices[top.values > 0]] = True
    return chosen.view_as(excess)


class Constraint(nn.Module):
    """Base class of the constraint kinds (a parametrization for ``torch.nn.utils.parametrize``).

    A kind writes the constrained tensor θ as a function of factors whose loss has a mirror
    symmetry ``R = I − 2nnᵀ`` with fixed subspace the constraint; the decay ``(λ/2)‖decayed
    factors‖²`` then induces the kind's norm penalty. Subclasses define:

    * ``kind`` — short name shown in reports;
    * ``linear`` — True when the constraint set is a linear subspace (then ``strength`` above the
      Lagrange multipliers makes the constraint hold exactly);
    * ``decayed`` — indices of the factors that carry the decay ``(λ/2)‖·‖²``;
    * ``validate(tensor, name)``, ``right_inverse(value)``, ``forward(*factors)``,
      ``project(value, tol)``, ``induced_norm(value)``, ``dual_norm(grad)``, ``balance(*factors)``,
      ``structure(value, tol)``.

    The base class provides ``penalty`` (the decay), ``violation``, ``snap``, ``prox``,
    ``kkt_residual`` and the machinery of ``strength="auto"`` (a multiplier estimate fed by a
    gradient hook) and of budgets (a controller that moves λ along the path).

    Args:
        strength: λ (> 0); ``"auto"`` for the linear kinds; None for the kind's default.
        seed: seed of the factor initialisation (random signs and imbalance: never balanced).
        margin: ``"auto"`` keeps ``λ = margin ×`` the multiplier estimate (> 1).
        slots: number of tensors one object covers (a tie's copies).
        budget: ``("count", k)`` or ``("density", f)``: the atom budget, for the kinds that take one.
        adapt_rate: fraction of the way log λ moves toward the budget's target per step.

    Examples:
        >>> import torch, symopt
        >>> c = symopt.Sparse(strength=0.5)
        >>> w = torch.tensor([3.0, -4.0])
        >>> float(c.induced_norm(w)), float(c.dual_norm(w)), c.linear
        (7.0, 4.0, False)
    """

    kind: ClassVar[str] = "constraint"
    linear: ClassVar[bool] = False
    decayed: ClassVar[tuple[int, ...]] = ()
    quick_kkt: ClassVar[bool] = False  # whether kkt_residual(quick=True) can differ from the exact residual

    def __init__(self, strength: float | str | None, *, seed: int = 0, margin: float = 1.5, slots: int = 1,
                 budget: tuple[str, float] | None = None, adapt_rate: float = RATE) -> None:
        super().__init__()
        owner = type(self).__name__
        self.auto = strength == "auto"
        if self.auto and not self.linear:
            raise ValueError(
                f"{owner}: strength='auto' applies to the exact-penalty kinds (Subspace, FixedZeros, Tied); "
                "give a number, e.g. strength=1e-3, or a budget (max_nonzero=, max_groups=, target_rank=)"
            )
        if strength is None and budget is None and not self.linear:
            strength = 1e-3  # the penalty kinds' default λ
        starts_unknown = strength is None and budget is not None
        self._strength = 0.0 if self.auto or starts_unknown else check_strength(strength, owner)
        self.margin = check_margin(margin, owner)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{owner}: seed must be an int, got {type(seed).__name__}")
        self.factorizer = Factorizer(int(seed))
        self.attached_to: str | None = None  # qualified name once registered (one tensor per object)
        # budget: ("count", k) or ("density", f); the count k is fixed by validate() once the shape is known
        self.budget_spec = budget
        self.budget: int | None = int(budget[1]) if budget is not None and budget[0] == "count" else None
        self.adaptive = budget is not None
        if self.adaptive:
            self.controller = BudgetController(self.budget or 0, None if starts_unknown else self._strength,
                                               check_rate(adapt_rate, owner))
        if self.auto:
            self.estimate = MultiplierEstimate(slots)
        if self.auto or self.adaptive:
            self.register_forward_hook(watch_gradient)

    @property
    def watching(self) -> bool:
        """Whether λ follows the gradients (``strength="auto"`` or a budget)."""
        return self.auto or self.adaptive

    @property
    def strength(self) -> float:
        """λ: the given number; with ``strength="auto"`` ``margin ×`` the multiplier estimate; with a
        budget the controller's λ (0 until the first backward pass if no starting strength was given)."""
        if self.auto:
            return self.margin * self.estimate.value()
        if self.adaptive:
            return self.controller.value()
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        """Fix λ: stops ``"auto"`` and budget adaptation (a budget still decides the final snap)."""
        self._strength = check_strength(value, type(self).__name__)
        self.auto = self.adaptive = False

    def multiplier(self) -> float | None:
        """The running multiplier estimate (``strength="auto"`` only)."""
        return self.estimate.value() if self.auto else None

    def observe(self, grad: Tensor, value: Tensor | None = None) -> None:
        """Called with ``∂ℓ/∂θ`` on each backward pass by the gradient hook: feeds the multiplier
        estimate of ``"auto"`` (dual norm of the gradient) or the budget controller."""
        if self.auto:
            self.estimate.observe(float(self.dual_norm(grad.detach())))
        elif self.adaptive and value is not None:
            self.controller.observe(budget_target(self.atoms, value, grad, self.budget, self.strength))

    # -- budgets --------------------------------------------------------------------------------
    def resolve_budget(self, atoms: int, name: str, unit: str) -> None:
        """Fix the budget's atom count for a tensor with ``atoms`` atoms (called by ``validate``)."""
        if self.budget_spec is None:
            return
        how, amount = self.budget_spec
        owner = type(self).__name__
        k = max(1, round(amount * atoms)) if how == "density" else int(amount)
        if k >= atoms:
            raise ValueError(
                f"{owner} on '{name}': a budget of {k} {unit} does not bind — the tensor has only {atoms}; "
                f"give fewer than {atoms}, or no budget"
            )
        self.budget = k
        self.controller.budget = k

    def atoms(self, value: Tensor) -> Tensor:  # pragma: no cover - budget kinds override
        """Sizes of the terms of the induced norm (|entries|, group norms, σ) as a 1-d tensor."""
        raise NotImplementedError

    def truncate(self, value: Tensor, k: int) -> Tensor:  # pragma: no cover - budget kinds override
        """``value`` with all but its ``k`` largest atoms set to zero."""
        raise NotImplementedError

    def snap(self, value: Tensor, tol: float = 0.0) -> Tensor:
        """``project(value, tol)``, then, with a budget, only its ``budget`` largest atoms kept."""
        out = self.project(value, tol)
        return out if self.budget is None else self.truncate(out, self.budget)

    # -- the contract ---------------------------------------------------------------------------
    def validate(self, tensor: Tensor, name: str) -> None:
        """Raise ``ValueError``/``TypeError`` if this constraint cannot act on ``tensor``."""

    def penalty(self, *factors: Tensor) -> Tensor:
        """Decay on the factors, ``(λ/2)·Σ_decayed ‖factor‖²``; at balanced factors it equals
        ``λ·induced_norm(forward(*factors))``."""
        total = sum(factors[i].square().sum() for i in self.decayed)
        return 0.5 * self.strength * total

    def violation(self, value: Tensor, tol: float = 0.0) -> float:
        """Euclidean distance from ``value`` to its snap (`snap`: atoms ``<= tol`` zeroed and,
        with a budget, all but the ``budget`` largest)."""
        return float((value - self.snap(value, tol)).norm())

    def prox(self, value: Tensor, step: float) -> Tensor:
        """``argmin_x ½‖x − value‖² + step·λ·induced_norm(x)``; the projection for linear kinds."""
        return self.project(value)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        """Distance of ``−grad`` (gradient of the smooth loss at ``value``) to ``λ·∂induced_norm``
        for the penalty kinds; for linear kinds, the norm of the gradient projected onto the
        constraint set (0 at the constrained optimum). 0 certifies optimality on convex losses.
        ``quick=True`` allows a cheaper estimate that may fall short of the exact residual (kinds
        with ``quick_kkt``: LowRank estimates the top singular values of a large normal part); only
        the exact residual certifies."""
        return float(self.project(grad).norm())

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face | None:
        """The [`Face`][symopt.constraints.base.Face] of the induced norm at ``value``, its atoms
        ``<= tol`` counted as zero; None where the kind has none to offer. A linear kind's face is its
        constraint set, where the penalty is 0: coordinates θ, embedded by the projection. With the
        loss gradient ``grad`` at ``value``, a kind may widen the face by the zero atoms whose
        optimality condition fails (Sparse: ``|g_i| > λ``), which the descent had not yet let in."""
        if not self.linear:
            return None
        return Face(start=(value,), embed=self.project, norm=lambda z: z.new_zeros(()))

    def induced_norm(self, value: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dual_norm(self, grad: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def balance(self, *factors: Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def structure(self, value: Tensor, tol: float = 0.0) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        if self.auto:
            return "strength=auto"
        if self.adaptive:
            return f"budget={self.budget}, strength={self.strength:g} (adapting)"
        return f"strength={self.strength:g}"


def hadamard_balance(u: Tensor, v: Tensor) -> float:
    """``Σ|u_i² − v_i²| / Σ(u_i² + v_i²)`` in [0, 1]: 0 at the balanced factorisation that the
    decay converges to (where the penalty equals the induced norm)."""
    usq, vsq = u.detach().square(), v.detach().square()
    denom = float((usq + vsq).sum())
    return float((usq - vsq).abs().sum()) / denom if denom > 0 else 0.0


def require_floating(tensor: Tensor, name: str, what: str = "parameter") -> None:
    if not torch.is_floating_point(tensor):
        raise TypeError(
            f"{what} '{name}' has dtype {tensor.dtype}; symopt constrains floating-point tensors: "
            f"convert it with .float() or .double() first"
        )
