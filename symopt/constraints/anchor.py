r"""syre's anchor: weight decay toward a fixed random point instead of zero (Ziyin, Xu, Chuang,
arXiv 2408.15495). The opposite of the other kinds: it *removes* symmetries.

$φ = θ_0 + ψ / √D$ with a fixed anchor $θ_0 \sim N(0, σ_0^2)$ and a fixed positive diagonal ``D``
($D_{ii} \sim U(1 - ε, 1 + ε)$; $D = I$ when ε = 0); the trainable factor $ψ$ is decayed, so the
decay $(λ/2)‖ψ‖^2$ equals $(λ/2) \sum D_{ii} (φ_i - θ_{0,i})^2$.

Why: a mirror plane of the loss (identical units, dead units, rotations between layers) is a fixed
subspace of a symmetry; plain decay pulls toward zero, which lies on every such plane, so the planes
absorb training ("collapse"). A random anchor lies on none of them with probability 1, and a random
``D`` breaks rotation-type symmetries that an isotropic pull would keep. Never use it on a tensor that
carries a DCS constraint: it destroys exactly the symmetry DCS builds.

Anchors and ``D`` are regenerated from ``(seed, stream)`` on the CPU, so only the seed and $σ_0$
are stored (buffers, in ``state_dict``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Constraint, require_floating


class Anchor(Constraint):
    r"""Decay toward a fixed random anchor (register with [`symopt.syre`][symopt.syre]).

    Args:
        strength: λ of the decay $(λ/2) \sum D_{ii} (φ_i - θ_{0,i})^2$ (> 0).
        sigma: std $σ_0$ of the anchor; ``None`` means 0.01 × the tensor's std at registration
            (0.01/√fan_in for a constant tensor).
        anisotropy: ε of $D_{ii} \sim U(1 - ε, 1 + ε)$, in [0, 1); 0 gives $D = I$.
        seed: the anchor's random seed.
        stream: a second key of the random stream (``syre`` derives it from the tensor's name, so
            each tensor gets its own anchor from one seed).

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(4, 3)
        >>> w0 = lin.weight.detach().clone()
        >>> _ = symopt.syre(lin, strength=1e-3, names=["weight"])
        >>> torch.allclose(lin.weight, w0)        # registration keeps the value
        True
    """

    kind = "syre"
    decayed = (0,)

    def __init__(self, strength: float, *, sigma: float | None = None, anisotropy: float = 0.0, seed: int = 0,
                 stream: int = 0) -> None:
        super().__init__(strength, seed=seed)
        if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                                  or not math.isfinite(sigma) or sigma < 0):
            raise ValueError(f"syre: sigma must be a finite number >= 0 (the anchor's std), got {sigma!r}")
        if isinstance(anisotropy, bool) or not isinstance(anisotropy, (int, float)) or not 0.0 <= anisotropy < 1.0:
            raise ValueError(f"syre: anisotropy must be in [0, 1) (D_ii ~ U(1-ε, 1+ε)), got {anisotropy!r}")
        self.anisotropy = float(anisotropy)
        self.stream = int(stream)
        self.register_buffer("sigma", torch.tensor(math.nan if sigma is None else float(sigma), dtype=torch.float64))
        self.register_buffer("anchor", None, persistent=False)
        self.register_buffer("inv_sqrt_d", None, persistent=False)

    def validate(self, tensor: Tensor, name: str) -> None:
        require_floating(tensor, name)
        if math.isnan(float(self.sigma)):
            spread = float(tensor.detach().double().std()) if tensor.numel() > 1 else 0.0
            fan_in = math.prod(tensor.shape[1:]) if tensor.dim() > 1 else tensor.numel()
            self.sigma.fill_(0.01 * (spread if spread > 0 else 1.0 / math.sqrt(max(fan_in, 1))))

    def _ensure(self, like: Tensor) -> None:
        """(Re)draw the anchor and D when missing or when the tensor moved (device / dtype)."""
        a = self.anchor
        if a is None or a.shape != like.shape or a.device != like.device or a.dtype != like.dtype:
            self._draw(like.shape, like.device, like.dtype)

    def _draw(self, shape, device, dtype) -> None:
        gen = torch.Generator().manual_seed((self.factorizer.seed * 1_000_003 + self.stream) % (2**63))
        anchor = torch.randn(tuple(shape), generator=gen, dtype=torch.float64) * float(self.sigma)
        eps = self.anisotropy
        d = torch.empty(tuple(shape), dtype=torch.float64).uniform_(1 - eps, 1 + eps, generator=gen)
        self.anchor = anchor.to(device=device, dtype=dtype)
        self.inv_sqrt_d = d.rsqrt().to(device=device, dtype=dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.anchor is not None:  # σ₀ may have changed: regenerate the anchor from the seed
            self._draw(self.anchor.shape, self.anchor.device, self.anchor.dtype)


    @property
    def weights(self) -> Tensor:
        """``D`` (the diagonal of the decay)."""
        return self.inv_sqrt_d.pow(-2)

    def forward(self, psi: Tensor) -> Tensor:
        self._ensure(psi)
        return self.anchor + psi * self.inv_sqrt_d

    def right_inverse(self, value: Tensor) -> tuple[Tensor]:
        self._ensure(value)
        return ((value - self.anchor) / self.inv_sqrt_d,)

    # -- the contract: no constraint set; the "norm" is the weighted distance to the anchor -----
    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return value

    def violation(self, value: Tensor, tol: float = 0.0) -> float:
        return 0.0

    def induced_norm(self, value: Tensor) -> Tensor:
        return 0.5 * (self.weights * (value - self.anchor).square()).sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return grad.abs().amax()

    def prox(self, value: Tensor, step: float) -> Tensor:
        shrink = step * self.strength * self.weights
        return (value + shrink * self.anchor) / (1 + shrink)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        return float((grad + self.strength * self.weights * (value - self.anchor)).norm())

    def balance(self, psi: Tensor) -> float:
        return 0.0

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        return f"anchor σ0={float(self.sigma):.2g}, ε={self.anisotropy:g}"

    def extra_repr(self) -> str:
        return f"strength={self.strength:g}, sigma={float(self.sigma):.3g}, anisotropy={self.anisotropy:g}"
