r"""Low rank: $W = U V^\top$ with $U ∈ R^{m×r}$, $V ∈ R^{n×r}$.

Symmetry: $(U, V) → (UQ, VQ)$ for orthogonal ``Q``; with the mirror $Q = I - 2nn^\top$ the fixed
subspace is $Un = Vn = 0$: one singular direction removed (rank drops by one).
Penalty: $\min_{UV^\top =W} (λ/2)(‖U‖^2_F + ‖V‖^2_F) = λ‖W‖_*$ (nuclear norm); a singular direction is
removed exactly when the gradient's operator norm on the removed directions is $≤ λ$.
Budget ``target_rank=r``: λ adapts to the point of the nuclear-norm path with rank r (``max_rank``
stays the factor width, a bound by construction; by default 4r where that is narrow).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import Constraint, Example, Face, working_dtype, zero_scale
from .warn import warn_user
from .budget import RATE, check_budget

_LAYOUTS = ("flatten", "batch")


class LowRank(Constraint):
    r"""Low rank through $W = U V^\top$; decay $(λ/2)(‖U‖^2 + ‖V‖^2)$ induces $λ‖W‖_*$.

    Matrix view of the tensor: 2-D as is; for more dims ``layout="flatten"`` (default, the conv
    convention) uses ``W.reshape(shape[0], -1)``, ``layout="batch"`` treats the last two dims as the
    matrix and the leading ones as a batch (one factorisation each).

    Args:
        strength: λ (> 0). Default 1e-3; with ``target_rank``, the starting λ (default: from the
            first gradient).
        max_rank: width ``r`` of the factors — a hard bound on the rank by construction; ``None``
            means ``min(m, n)`` (the penalty alone decides the rank). If the current value has a
            larger rank, registration keeps its best rank-``r`` approximation and warns. The default,
            ``"auto"``, is ``None`` except with ``target_rank=k``: then ``4k`` wherever factors of that
            width are thin ($4k(m + n) ≤ mn$, `default_width`; each matrix of a pooled budget of k
            too: `pooled_width`), else ``None``. A rank budget trains as
            well on factors of width 4k as at full width (benchmarks/RESULTS.md: from scratch and from
            a trained model) and a layer then never forms its weight between the budget's readings;
            pass ``max_rank=None`` for full-width factors that start from the exact value.
        layout: ``"flatten"`` or ``"batch"`` (see above).
        target_rank: budget ``r`` (≤ ``max_rank``): λ adapts during training until the rank is r;
            [`symopt.finalize`][symopt.finalize] keeps the r largest singular values. ``"flatten"`` layout only.
        adapt_rate: fraction of the way log λ moves toward the budget's target per optimizer step.
        total_steps: the steps until training ends: the budget then arrives on a schedule and lands
            exactly (see [`Constraint`][symopt.Constraint] and docs/hard-constraints.md).
        ramp: the schedule's ``(start, end)`` as fractions of ``total_steps``: the default (0.1, 0.75)
            trains from scratch; (0.0, 0.25) compresses a trained model (docs/hard-constraints.md).
        seed: seed of the factor initialisation.

    Examples:
        >>> import torch, symopt
        >>> lin = torch.nn.Linear(6, 4)
        >>> _ = symopt.constrain(lin, "weight", symopt.LowRank(strength=1e-2))
        >>> U, V = symopt.list_constraints(lin)[0].members[0].factors
        >>> tuple(U.shape), tuple(V.shape)
        ((4, 4), (6, 4))
    """

    kind = "low_rank"
    decayed = (0, 1)

    @classmethod
    def example(cls) -> Example:
        return Example(lambda: cls(0.3), ((4, 5),))

    def working_width(self, shape: tuple[int, ...]) -> tuple[int | None, int]:
        """Penalised low rank of one large matrix (no rank bound, no budget) starts with narrow
        factors: those of an m×n matrix cost O(mn·w) per evaluation instead of O(mn·min(m, n)), and
        the solution of a nuclear-norm problem has small rank. The narrow problem is the full one
        while the rank stays below the width; `symopt.solve` doubles it when the rank fills it."""
        if self.max_rank is not None or self.budget is not None:
            return None, 0
        if len(shape) != 2 and self.layout == "batch":
            return None, 0
        full = min(self._matrix_shape(tuple(shape)))
        return (_START_WIDTH if full >= _NARROW_FROM else None), full

    def fixed_rank(self, shape: tuple[int, ...]) -> int | None:
        return self.max_rank if len(shape) == 2 else None

    def structure_key(self, value: Tensor, tol: float) -> object:
        return int((torch.linalg.svdvals(self.matrix(value)) > tol).sum())

    def compressed_structure(self) -> str | None:
        return "factors"
    quick_kkt = True

    def __init__(
        self, strength: float | None = None, max_rank: int | str | None = "auto", *, layout: str = "flatten",
        target_rank: int | None = None, adapt_rate: float = RATE, seed: int = 0, total_steps: int | None = None,
        ramp: tuple[float, float] = (0.1, 0.75), land_on_the_way: bool | None = None,
    ) -> None:
        r = check_budget(target_rank, "target_rank", "LowRank")
        if r is not None and layout == "batch":
            raise ValueError("LowRank: target_rank needs layout='flatten' (one λ cannot set the rank of each "
                             "matrix of a batch); give a strength instead")
        if r is not None and max_rank is not None and isinstance(max_rank, int) and r > max_rank:
            raise ValueError(f"LowRank: target_rank={r} exceeds max_rank={max_rank} (the factor width); "
                             f"raise max_rank or lower target_rank")
        super().__init__(strength, seed=seed, budget=None if r is None else ("count", r), adapt_rate=adapt_rate,
                         total_steps=total_steps, ramp=ramp, land_on_the_way=land_on_the_way)
        if isinstance(max_rank, str) and max_rank != "auto":
            raise ValueError(f"LowRank: max_rank must be an int, None (full width) or 'auto', got {max_rank!r}")
        # "auto": the width a rank budget trains best and cheapest with, chosen from the shape in `validate`
        # (a budget of its own) or by a pool (`pooled_width`, the pool holding the budget); full width until
        # then. `width_chosen` says so in registration's warning.
        self.width_by_default = max_rank == "auto"
        self.width_chosen = False
        if self.width_by_default:
            max_rank = None
        if max_rank is not None:
            if isinstance(max_rank, bool) or not isinstance(max_rank, int):
                raise TypeError(f"LowRank: max_rank must be an int or None, got {type(max_rank).__name__}")
            if max_rank < 1:
                raise ValueError(f"LowRank: max_rank must be >= 1, got {max_rank}; use None for full width")
        if layout not in _LAYOUTS:
            raise ValueError(f"LowRank: layout must be one of {_LAYOUTS}, got {layout!r}")
        self.max_rank = max_rank
        self.layout = layout
        self.shape: tuple[int, ...] | None = None  # recorded by right_inverse
        # the budget's readings' bases (`top_dual_atoms`), one per reading: θ's and its proximal score's
        # leading singular vectors differ, and one basis shared by the two, each reading's subspace step
        # starting from the other matrix's, read their values 5e-3 and 9e-2 off (relative, a 512×512
        # test) where their own bases read 1e-6 and 4e-4. Saved in the state_dict once there are some
        # (not buffers: their size is known only at the first reading), so that a resumed run reads
        # the same singular values and ends bit-identical.
        self._tracked_ranges: dict[str, Tensor] = {}
        self._register_state_dict_hook(_save_tracked_ranges)
        self._register_load_state_dict_pre_hook(_load_tracked_ranges, with_module=True)

    def with_width(self, width: int | None) -> LowRank:
        """This constraint (same λ, layout and seed) with factors of ``width`` columns (None: full)."""
        narrow = copy.deepcopy(self)  # a copy of this object, so that a subclass stays itself
        narrow.max_rank, narrow.shape, narrow.attached_to, narrow.width_by_default = width, None, None, False
        return narrow

    def factor_shapes_hint(self, saved, current) -> str | None:
        """A checkpoint whose factors have another width r (the same rows): register with that
        ``max_rank``. A rank budget's default width changed to 4 × target_rank (``max_rank="auto"``,
        2026-12-04), so checkpoints of full-width budgets saved before need ``max_rank=None``."""
        if len(saved) != 2 or len(current) != 2 or any(a[:-1] != b[:-1] for a, b in zip(saved, current)):
            return None
        width, full = int(saved[0][-1]), min(int(current[0][-2]), int(current[1][-2]))
        asked = "None (full width)" if width >= full else str(width)
        return (f"the checkpoint's are {width} columns wide, this model's {int(current[0][-1])}: register it with "
                f"max_rank={asked} as when it was saved (a rank budget's factors are 4 × target_rank wide "
                f"by default since 2026-12-04, max_rank='auto')")

    def pooled_width(self, shape: tuple[int, ...], count: int) -> int | None:
        """A member of a pooled rank budget of ``count`` (``max_rank="auto"``): `default_width` for the
        whole count, which one matrix may take (4 × count where that is narrow)."""
        if not getattr(self, "width_by_default", False) or len(shape) < 2:
            return None
        return self.default_width(self._matrix_shape(tuple(shape)), count)

    @staticmethod
    def default_width(shape: tuple[int, int], target_rank: int) -> int | None:
        r"""The factor width ``max_rank="auto"`` gives a rank budget of ``target_rank`` k on an m × n
        matrix view: 4k where factors of that width are thin, $4k(m + n) ≤ mn$ (their two products cost
        less than the plain weight's for any batch: `thin_factors`), else None (full width, which costs
        no more to train there). Why 4k: on the digits MLP, trained from scratch and compressed from a
        trained model, width 4k was as accurate as full width at ranks 16 and 4 and width 2k was not
        (benchmarks/RESULTS.md, "Rank budgets on factors of width 4r"); the ramp needs room above the
        budget to choose its directions.

        Examples:
            >>> from symopt import LowRank
            >>> LowRank.default_width((512, 512), 16), LowRank.default_width((256, 64), 16)
            (64, None)
        """
        m, n = shape
        width = 4 * target_rank
        return width if width < min(m, n) and width * (m + n) <= m * n else None

    def _matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) == 2 or self.layout == "batch":
            return shape[-2], shape[-1]
        return shape[0], math.prod(shape[1:])

    def validate(self, tensor: Tensor, name: str) -> None:
        if tensor.dim() < 2:
            raise ValueError(
                f"LowRank on '{name}': needs a matrix, got a {tensor.dim()}-d tensor of shape "
                f"{tuple(tensor.shape)}; use Sparse or GroupSparse for vectors"
            )
        m, n = self._matrix_shape(tuple(tensor.shape))
        if getattr(self, "width_by_default", False) and self.budget_spec is not None:  # (per tensor: follows the shape)
            self.max_rank = self.default_width((m, n), self.budget_spec[1])
            self.width_chosen = self.max_rank is not None
        if self.max_rank is not None and self.max_rank > min(m, n):
            raise ValueError(
                f"LowRank on '{name}': max_rank={self.max_rank} exceeds min(m, n) = {min(m, n)} of "
                f"its {m}×{n} matrix view; choose max_rank <= {min(m, n)} or None"
            )
        # A rank budget counts what the factors can hold (`atom_count`: with max_rank, r singular values, not
        # min(m, n); a budget has layout="flatten"). A landing budget's schedule starts from this count (a
        # 512 × 512 layer at max_rank=64 started its ramp at 511, more atoms than the factors have, and its
        # first reading failed).
        self.resolve_budget(self.atom_count(tensor), name, "singular values (rank)",
                            holder="the tensor has" if self.max_rank is None
                            else f"factors of width max_rank={self.max_rank} hold")

    def matrix(self, value: Tensor) -> Tensor:
        """The matrix (or batch of matrices) view of ``value``."""
        if value.dim() == 2 or self.layout == "batch":
            return value
        return value.reshape(value.shape[0], -1)

    def forward(self, U: Tensor, V: Tensor) -> Tensor:
        return (U @ V.mT).reshape(self.shape)

    def thin_factors(self, factors, rows=None):
        r"""``(U, V)`` themselves where the two thin products cost less than forming θ and applying it; None
        otherwise (the layer forms θ). On θ's matrix view $m × n$ (``layout="flatten"``) with factors of
        width r, applied to ``rows`` rows of input (a batch's rows, a convolution's output positions), a
        forward and backward pass costs about $3·\mathrm{rows}·r(m + n)$ multiply-adds through the
        factors and $3(rmn + \mathrm{rows}·mn)$ with θ formed (its product, the layer's, and their
        gradients): thin where $\mathrm{rows}·r(m + n) ≤ rmn + \mathrm{rows}·mn$. With ``rows`` unknown,
        the bound that holds for any number of rows, $r(m + n) ≤ mn$ (narrow factors). An ``nn.Linear``
        then computes $(xV)U^\top$ and a convolution one with r output channels and kernel $V^\top$
        followed by a 1 × 1 one with U, never forming θ nor its gradient: a 512 × 512 Linear at r = 64,
        batch 256, forward and backward 2.9 ms with θ formed against 0.84 ms factored (a plain layer:
        2.0 ms); at full width (r = 512) 7.5 against 5.0 ms at batch 256, where a batch of 1024 forms θ
        (12.5 against 16.8 ms through the factors: the cost model's choice both times, measured on
        this 2-core CPU)."""
        U, V = factors
        if U.dim() != 2 or self.shape is None or (len(self.shape) != 2 and self.layout != "flatten"):
            return None
        m, n = self._matrix_shape(self.shape)
        r = U.shape[-1]
        thin = r * (m + n) <= m * n if rows is None else rows * r * (m + n) <= r * m * n + rows * m * n
        return (U, V) if thin else None

    def pullback(self, factors, grad: Tensor) -> tuple[Tensor, Tensor]:
        U, V = factors
        G = grad.reshape(U.shape[:-2] + (U.shape[-2], V.shape[-2]))  # θ's matrix view, as forward builds it
        return G @ V, G.mT @ U

    def right_inverse(self, value: Tensor) -> tuple[Tensor, Tensor]:
        self.shape = tuple(value.shape)
        mat = self.matrix(value).to(working_dtype(value.dtype))
        m, n = mat.shape[-2:]
        rank = self.max_rank or min(m, n)
        P, S, Qh = self._leading_svd(mat, rank)
        kept = S[..., :rank]
        # What the truncation drops, from the Frobenius norm (exact whichever SVD gave the leading part).
        dropped = (mat.square().sum() - kept.square().sum()).clamp_min(0).sqrt()
        if rank < min(m, n) and float(dropped) > 1e-6 * float(S.amax()):
            rel = float(dropped / mat.square().sum().sqrt())
            chosen = (f"; max_rank='auto' trains a rank budget on factors of width 4 × target_rank = {rank}: pass "
                      f"max_rank=None for full-width factors that keep the value exactly"
                      if getattr(self, "width_chosen", False) else "")
            warn_user(
                f"LowRank(max_rank={rank}): the value has rank > {rank}; keeping its best rank-{rank} "
                f"approximation (relative change {rel:.3g}){chosen}"
            )
        roots = kept.sqrt()
        # Zero singular values: U keeps a live column (scale of the others), V's column is 0, so
        # the direction gets gradient; otherwise a random per-direction imbalance (not balanced).
        tiny = float(S.amax()) * max(m, n) * torch.finfo(mat.dtype).eps
        signs, jitter = self.factorizer.signs_and_jitter(kept.shape, kept)
        live = torch.where(kept > tiny, roots, zero_scale(roots))
        u_scale = signs * live * jitter
        v_scale = torch.where(kept > tiny, kept / (live * jitter), torch.zeros_like(kept)) * signs
        U = P[..., :rank] * u_scale.unsqueeze(-2)
        V = Qh[..., :rank, :].mT * v_scale.unsqueeze(-2)
        return U.to(value.dtype).contiguous(), V.to(value.dtype).contiguous()

    def _leading_svd(self, mat: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
        r"""The ``rank`` leading singular triplets of a matrix view, for registration. A bound far below
        the size ($4(r + 8) ≤ \min(m, n)$) on a matrix of larger rank (a random init) takes a
        randomized SVD (``torch.svd_lowrank``, r + 8 columns, 4 power iterations; seeded inside a forked
        RNG, so the user's random stream is untouched) instead of the full one: 4096×4096 at r = 16 in
        well under a second instead of minutes. A value of rank ≤ r + 8 comes out exact (its range is
        found exactly); a larger rank keeps a best rank-r approximation accurate to the power
        iterations, not to rounding (registration warns that it truncates anyway)."""
        if mat.dim() != 2 or self.max_rank is None or 4 * (rank + 8) > min(mat.shape):
            return self._svd(mat)
        devices = [mat.device] if mat.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.factorizer.seed)
            U, S, V = torch.svd_lowrank(mat, q=rank + 8, niter=4)
        return U, S, V.mT

    def _svd(self, mat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Thin SVD of a value's matrix view; see [`thin_svd`][symopt.constraints.lowrank.thin_svd]."""
        return thin_svd(mat, self.max_rank)

    def _map_singular_values(self, value: Tensor, change) -> Tensor:
        """``value`` rebuilt from its SVD with the singular values replaced by ``change(S)``."""
        return self._mapped_with_svd(value, change)[0]

    def _mapped_with_svd(self, value: Tensor, change) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """``(value rebuilt with change(S), (P, change(S), Qh))``: the rebuilt value's own SVD comes along."""
        mat = self.matrix(value).to(working_dtype(value.dtype))
        P, S, Qh = self._svd(mat)
        S = change(S)
        return _rebuilt((P, S, Qh), value), (P, S, Qh)

    def singular_values(self, value: Tensor) -> Tensor:
        """θ's singular values (of each matrix of a batch): `thin_svd`'s where ``max_rank`` makes its
        range path apply, else `torch.linalg.svdvals` (values without vectors: 4.9 ms against 10.7 ms
        for the full SVD of a 256 × 256 float64 matrix, measured; a rank budget's early readings on
        factors of width 4k ask for k + 1 values, too many for the range path)."""
        mat = self.matrix(value).to(working_dtype(value.dtype))
        if thin_svd_applies(mat, self.max_rank):  # (one matrix, and a width narrow enough)
            return self._svd(mat)[1]
        return torch.linalg.svdvals(mat)

    def prox(self, value: Tensor, step: float) -> Tensor:
        r"""Singular-value soft-thresholding at $\mathrm{step}·λ$ (for one matrix without a rank bound, by
        `soft_threshold_singular_values`: no SVD)."""
        mat = self.matrix(value)
        if mat.dim() == 2 and self.max_rank is None:
            exact = mat.to(working_dtype(value.dtype))
            return soft_threshold_singular_values(exact, step * self.strength).reshape(value.shape).to(value.dtype)

        def shrink(S: Tensor) -> Tensor:
            S = (S - step * self.strength).clamp_min(0)
            if self.max_rank is not None:
                S[..., self.max_rank:] = 0
            return S

        return self._map_singular_values(value, shrink)

    def kkt_residual(self, value: Tensor, grad: Tensor, tol: float = 0.0, quick: bool = False) -> float:
        W = self.matrix(value).to(working_dtype(value.dtype))
        G = self.matrix(grad).to(W.dtype)
        cap = self.max_rank
        if W.dim() == 2:
            return _nuclear_kkt(W, G, self.strength, tol, cap, self._svd(W), quick)
        pairs = zip(W.reshape(-1, *W.shape[-2:]), G.reshape(-1, *G.shape[-2:]))
        return sum(_nuclear_kkt(w, g, self.strength, tol, cap) ** 2 for w, g in pairs) ** 0.5

    def project(self, value: Tensor, tol: float = 0.0) -> Tensor:
        return self._map_singular_values(value, _above(tol))

    def snapped_kkt(self, value: Tensor, tol: float, gradient_at, quick: bool = False) -> tuple[Tensor, float]:
        r"""The snap and its residual from one SVD: the snapped point $P\,Σ_{>tol}\,Q^\top$ has that
        decomposition already, which `kkt_residual` computed again (a certificate of digits' 1797 × 64
        completion took three decompositions of the same matrix)."""
        if self.matrix(value).dim() != 2:
            return super().snapped_kkt(value, tol, gradient_at, quick)
        return self.best_snapped_kkt(value, [tol], gradient_at, quick)

    def best_snapped_kkt(self, value: Tensor, tols: list[float], gradient_at, quick: bool = False) -> tuple[Tensor, float]:
        r"""The snaps at every tolerance from one SVD of ``value`` (each is a truncation of it), and the
        residual's expensive half only where it can decide: the residual is $\sqrt{t^2 + e^2}$, $t$ the
        tangent part (products with the kept directions) and $e$ the normal part's excess over λ (a
        randomized SVD or a Gram factorisation of the whole m × n normal part), so the snaps are taken in
        order of $t$ and stop once $t$ reaches the best residual. A 1000 × 1000 completion's check
        with three distinct snaps (rank 27, 15 and 10) took four SVDs and three excesses: now one
        and one (0.11 → 0.06 s, with the tangent part from two thin products, `_nuclear_parts`)."""
        mat = self.matrix(value)
        if mat.dim() != 2:
            return super().best_snapped_kkt(value, tols, gradient_at, quick)
        P, S, Qh = self._svd(mat.to(working_dtype(value.dtype)))
        snaps, alive = [], None
        for tol in tols:
            count = int((S > tol).sum())
            if count == alive:  # (the same point as the tolerance before)
                continue
            alive = count
            snapped = _above(tol)(S)
            point = _rebuilt((P, snapped, Qh), value)
            G = self.matrix(gradient_at(point)).to(P.dtype)
            tangent, normal = _nuclear_parts(G, self.strength, (P, snapped, Qh), tol, self.max_rank)
            snaps.append((tangent, normal, point))
        best = None
        for tangent, normal, point in sorted(snaps, key=lambda snap: snap[0]):
            if best is not None and math.sqrt(tangent) >= best[1]:
                break  # (this one and the rest cannot come out lower)
            residual = math.sqrt(tangent + _normal_excess(normal, self.strength, quick))
            if best is None or residual < best[1]:
                best = (point, residual)
        return best

    def finishes_by_prox(self, value: Tensor) -> bool:
        """A nuclear-norm point is finished by singular-value thresholding steps (its face admits no new
        direction: china.jpg completion at 0.02 λ_max waited 40 outer iterations for a 47th singular
        value of 1e-3), where each full SVD is cheap: one matrix, no rank bound (the prox of
        ``max_rank`` is a projection onto a non-convex set; and while the solver's factors are
        narrowed, its finish would solve the width-bounded problem: measured, it did, and the
        widening then threw that away), min(m, n) ≤ 512."""
        mat = self.matrix(value)
        return self.max_rank is None and mat.dim() == 2 and min(mat.shape) <= _PROX_FINISH_SIZE

    def face(self, value: Tensor, tol: float = 0.0, grad: Tensor | None = None) -> Face | None:
        r"""Rank-r matrices near $\mathrm{value} = P Σ Q^\top$, as $θ = A Σ^{-1} B^\top$ from $A = PΣ$, $B = QΣ$;
        with $A = Q_A R_A$ and $B = Q_B R_B$ (QR), $‖θ‖_* = ‖R_A Σ^{-1} R_B^\top‖_*$: an r×r SVD, smooth while
        the rank stays r. Its variational form (``Face.variational_norm``): for $a = A Σ^{-1/2}$,
        $b = B Σ^{-1/2}$ (so $θ = a b^\top$), $‖θ‖_* = \min_{a b^\top = θ} \tfrac12 (‖a‖^2 + ‖b‖^2)$, i.e.
        $\tfrac12 \sum_i (‖A_{:i}‖^2 + ‖B_{:i}‖^2) / σ_i$ minimised over the factors of θ: never below
        $‖θ‖_*$, equal to it at the start (balanced, $‖A_{:i}‖ = ‖B_{:i}‖ = σ_i$) and wherever
        $a^\top a = b^\top b$ (the symmetry DCS itself builds, on the face). None for a batch of matrices
        (each would have its own rank) or rank 0.

        Why both: the exact norm's two QR factorisations and SVD cost a third of each L-BFGS evaluation of
        the face solve with its backward (china.jpg completion at 0.1 λ_max, rank 3: 1.16 → 0.81 ms an
        evaluation under cProfile), where the quadratic form is a few elementwise operators; Newton on the
        face keeps the exact norm (with the quadratic form it took three Newton polishes where one
        certified a reduced-rank regression on raw digits at λ = 0.01, 2.7× the time)."""
        mat = self.matrix(value)
        if mat.dim() != 2:
            return None
        P, S, Qh = self._svd(mat)
        rank = int((S > tol).sum())
        if rank == 0:
            return None
        sigma = S[:rank]
        shape = value.shape

        def norm(A: Tensor, B: Tensor) -> Tensor:
            return torch.linalg.svdvals((torch.linalg.qr(A).R / sigma) @ torch.linalg.qr(B).R.mT).sum()

        def variational_norm(A: Tensor, B: Tensor) -> Tensor:
            return 0.5 * ((A.square().sum(0) + B.square().sum(0)) / sigma).sum()

        # Coordinates A = PΣ, B = QΣ with θ = A Σ⁻¹ Bᵀ: in A = P√Σ, B = Q√Σ the curvature of column i
        # is σ_i, so the face solve's conditioning was σ_max / σ_min; here every column's is 1.
        return Face(start=(P[:, :rank] * sigma, Qh[:rank].mT * sigma),
                    embed=lambda A, B: ((A / sigma) @ B.mT).reshape(shape), norm=norm,
                    variational_norm=variational_norm)

    def atoms(self, value: Tensor) -> Tensor:
        """The singular values; with ``max_rank`` r on one matrix the r leading ones (a value of r-column
        factors has no others), so that there are always `atom_count` of them whichever SVD ran
        (`thin_svd` returns r + 8, a full SVD min(m, n)): a landing's kept set and a pool's offsets
        are indexed by that count."""
        values = self.singular_values(value)
        if self.max_rank is not None and self.matrix(value).dim() == 2:
            values = values[: self.max_rank]
        return values.reshape(-1)

    def top_dual_atoms(self, point: Tensor, count: int, reading: str = "point") -> Tensor:
        r"""The ``count`` leading singular values. A budget asks for k + 1 of them at each reading, of θ
        and of $θ/t - ∇ℓ$, which has full rank: when ``count`` is well below the size
        ($4(\mathrm{count} + 8) ≤ \min(m, n)$) they come from a range of ``count + 8`` directions tracked
        across calls (`tracked_singular_values` in this module: one step of subspace iteration from
        the last call's basis, after a seeded randomized start)
        in $O(mn·\mathrm{count})$ instead of a full SVD's $O(mn\min(m, n))$. They are lower bounds; on
        the matrices a rank budget read while training the digits MLP the midpoint of the k-th and
        (k+1)-th was within 3e-7 of the exact one (median), where a fresh range finder with two power
        iterations each call was 7% off, at twice the cost. Each ``reading`` (θ, or its proximal score)
        tracks its own range.

        Where ``count`` is too large for that and ``max_rank`` r is at most half the smaller side less 8, θ's
        own reading (``"point"``, a value of this constraint: rank ≤ r) takes its values from a seeded
        range of r + 8 directions, which holds θ's range exactly (`values_of_low_rank`): at the start of a
        ramp a budget of k on factors of width 4k asks for 4k + 1 values (a 256 × 256 layer at k = 16:
        0.8 ms against 3.6 ms for `torch.linalg.svdvals`, measured)."""
        mat = self.matrix(point).to(working_dtype(point.dtype))
        if mat.dim() != 2 or 4 * (count + 8) > min(mat.shape):
            if mat.dim() == 2 and reading == "point" and self.max_rank is not None \
                    and 2 * (self.max_rank + 8) <= min(mat.shape):
                return values_of_low_rank(mat, self.max_rank, count, seed=self.factorizer.seed)
            return super().top_dual_atoms(point, count, reading)
        ranges = self.__dict__.setdefault("_tracked_ranges", {})  # (a constraint pickled before they existed)
        values, ranges[reading] = tracked_singular_values(mat, count, ranges.get(reading), seed=self.factorizer.seed)
        return values

    def land(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        """Balanced factors of the best rank-k part ($U = P√S$, $V = Q√S$ on the k leading singular
        triplets) and zero columns beyond: the rotation symmetry's fixed subspace for the dropped
        directions, which gradients do not leave."""
        U, V = factors
        k = int(keep.sum())
        P, S, Qh = torch.linalg.svd((U @ V.mT).to(working_dtype(U.dtype)), full_matrices=False)
        roots = S[:k].sqrt()
        U.zero_()
        V.zero_()
        U[:, :k] = (P[:, :k] * roots).to(U.dtype)
        V[:, :k] = (Qh[:k].mT * roots).to(V.dtype)

    def hold_landed(self, factors: tuple[Tensor, ...], keep: Tensor) -> None:
        U, V = factors  # the landing put the kept directions in the first k columns
        k = self.from_landing_mask(keep, "count", (), lambda: int(keep.sum()))  # (read to the host once per landing)
        U[:, k:] = 0.0
        V[:, k:] = 0.0

    # --- regrowth (`symopt.regrow`): a singular direction as one column pair of the factors ------------

    regrowth_every = 50  # a decision factorises r × r matrices (regrow's docstring has the measurement)

    @property
    def can_regrow(self) -> bool:
        """One matrix only: a batch of matrices (``layout="batch"`` on a tensor of more than two dims)
        would need a rotation and a pull per matrix."""
        return self.layout == "flatten" or self.shape is None or len(self.shape) == 2

    def atom_sizes(self, factors: tuple[Tensor, ...], value: Tensor, held: Tensor | None = None) -> Tensor:
        r"""$‖u_j‖·‖v_j‖$ per column (0 for held ones): the size of each column's rank-one term
        $u_j v_j^\top$, θ's singular values when the columns are aligned (after `isolate_small_atoms`,
        or registration's SVD start). Read for the largest atom; which directions are near zero is
        `isolate_small_atoms`' question."""
        U, V = factors
        dtype = working_dtype(U.dtype)
        sizes = U.to(dtype).norm(dim=0) * V.to(dtype).norm(dim=0)
        return sizes if held is None else sizes.masked_fill(held, 0.0)

    def largest_atom(self, factors: tuple[Tensor, ...], sizes: Tensor) -> float:
        r"""$σ_{\max}(UV^\top)$ by power iteration on the factors ($x ← V U^\top U V^\top x$, 16 steps from
        the ones vector, $O((m + n)r)$ each, no synchronisation: a lower bound, as accurate as the
        regrowth's relative thresholds need). A column's $‖u_j‖‖v_j‖$ is not an atom while the
        columns are mixed: on the digits MLP's randomly started 256 × 256 factors the largest was well
        below $σ_{\max}$, and "near zero", relative to it, caught too little."""
        U, V = factors
        dtype = working_dtype(U.dtype)
        U, V = U.to(dtype), V.to(dtype)
        x = torch.ones(V.shape[0], dtype=dtype, device=V.device)
        for _ in range(16):
            x = V @ (U.mT @ (U @ (V.mT @ x)))
            x = x / x.norm().clamp_min(torch.finfo(dtype).tiny)
        return max(float((U @ (V.mT @ x)).norm()), float(sizes.max()))

    def isolate_small_atoms(self, factors: tuple[Tensor, ...], held: Tensor, sizes: Tensor, small: float):
        r"""θ's singular directions of size ≤ ``small`` on the live (not held) columns $A, B$ of $(U, V)$,
        given columns of their own $J$, which a snap then zeroes (the mirror's fixed point).

        From the cores of $A = Q_A R_A$, $B = Q_B R_B$: $θ = Q_A (R_A R_B^\top) Q_B^\top$ and
        $R_A R_B^\top = X Σ Y^\top$, so θ's small left singular directions are $Q_A X_s$ ($σ ≤ s$). Two moves:

        1. $A ← A - Q_A X_s X_s^\top R_A$: θ loses exactly its small singular part (what the snap
           removes; the penalty falls), and $A$'s columns then have a null space $N$ of the same
           dimension (the smallest right singular vectors of $(I - X_s X_s^\top) R_A$). Where the
           factors are balanced ($A^\top A = B^\top B$, where the decay drives them) the small part is
           the product of whole directions $w$ of both factors, and zeroing their pairs after the
           rotation removes the same thing; where they are not (a small σ with its $u$ large and its
           $v$ tiny: registration's per-direction imbalance decays at $2·lr·λ$ a step), no rotation
           alone could isolate it: on the digits MLP at λ = 1e-3 an
           eigen-decomposition of $A^\top A + B^\top B$ caught a third of the singular values below
           1e-3 of the largest.
        2. A rotation $W$ of the live columns (the symmetry $(U, V) → (UW, VW)$): $W_{:,J} = N R_N$ and
           $W_{:,\bar J} = N^\perp R_B$, $J$ the columns on which $N$ weighs most and $R_N$, $R_B$ the
           orthogonal factors that bring $W$ closest to the identity (orthogonal Procrustes): $U$'s
           columns $J$ are then 0, and the snap zeroes $V$'s (θ unchanged).

        The move applies the rotation to factor-shaped first moments (a momentum, Adam's ``exp_avg``:
        running sums of $GV$, $G^\top U$, which rotate exactly as the factors do; their part along
        $Q_A X_s$ is the loss's pull on that direction through the live columns, and stays) and $W ∘ W$
        to second moments (``exp_avg_sq``: the mean
        squares of the rotated gradients without their cross terms, non-negative, exact for a
        permutation). Why the rotation nearest the identity: re-sorting every column by eigenvector
        at each decision mixed the bulk of nearly equal directions each time, and Adam then trained
        with averaged second moments (digits MLP, 5 seeds: 0.4 points of accuracy lost); a factor
        already aligned by an earlier decision moves by nearly nothing.

        First a test that settles most calls with two Cholesky factorisations: θ's r-th singular value
        is at least $σ_{\min}(A)σ_{\min}(B)$, so when $A^\top A - ρsI$ and $B^\top B - (s/ρ)I$ both have one
        ($s$ = ``small``, $ρ = ‖A‖_F/‖B‖_F$) no singular value is ≤ $s$. (A test on the geometric mean
        $A^\top A \# B^\top B$, tighter for unbalanced factors, is no bound here: its smallest eigenvalue is
        at least θ's smallest singular value, not at most; measured on random factors.)"""
        U, V = factors
        near = torch.zeros_like(held)
        dtype = working_dtype(U.dtype)
        live = (~held).nonzero().squeeze(1)
        if not live.numel():
            return near, None
        A, B = U[:, live].to(dtype), V[:, live].to(dtype)
        eye = torch.eye(live.numel(), dtype=dtype, device=A.device)
        ratio = float(A.norm()) / max(float(B.norm()), torch.finfo(dtype).tiny)
        if ratio > 0 and all(int(torch.linalg.cholesky_ex(F.mT @ F - level * eye).info) == 0
                             for F, level in ((A, small * ratio), (B, small / ratio))):
            return near, None  # every singular value of θ exceeds `small` (the docstring's test)
        Q_A, R_A = torch.linalg.qr(A)
        R_B = torch.linalg.qr(B).R
        X, S, _ = torch.linalg.svd(R_A @ R_B.mT)
        small_values = S <= small
        count = int(small_values.sum())
        if count == 0:
            return near, None
        X_s = X[:, small_values]
        left = Q_A @ X_s  # θ's small left singular directions
        _, _, Zh = torch.linalg.svd(R_A - X_s @ (X_s.mT @ R_A))
        null, rest = Zh[-count:].mT, Zh[:-count].mT  # A's null space after the removal, and the rest
        chosen = torch.zeros(live.numel(), dtype=torch.bool, device=A.device)
        chosen[torch.topk(null.square().sum(1), count).indices] = True
        W = torch.zeros_like(eye)
        W[:, chosen] = null @ _closest_rotation(null[chosen])
        if bool((~chosen).any()):
            W[:, ~chosen] = rest @ _closest_rotation(rest[~chosen])
        near[live[chosen]] = True

        def move(layer: tuple[Tensor, ...], squared: bool) -> None:
            turn = W.square() if squared else W
            for tensor in layer:
                tensor[:, live] = (tensor[:, live].to(turn.dtype) @ turn).to(tensor.dtype)

        U[:, live] = (A - left @ (left.mT @ A)).to(U.dtype)  # θ loses its small part (the snap's)
        move(factors, False)
        return near, move

    def _complement(self, factors: tuple[Tensor, ...], grad: Tensor, dead: Tensor) -> Tensor:
        r"""$(I - PP^\top)\,G\,(I - QQ^\top)$: the gradient's matrix view without the column and row spaces
        $P, Q$ of the columns outside ``dead`` (those the regrowth keeps alive). Its singular values
        are the pulls on θ's missing directions: zero is optimal for them while the largest is ≤ λ
        (the nuclear norm's subdifferential, `_nuclear_kkt`), and its leading singular pair is the
        rank-one direction in which a proximal step from zero grows."""
        U, V = factors
        dtype = working_dtype(U.dtype)
        G = self.matrix(grad).to(dtype)
        kept = ~dead
        if bool(kept.any()):
            P = torch.linalg.qr(U[:, kept].to(dtype)).Q
            Q = torch.linalg.qr(V[:, kept].to(dtype)).Q
            G = G - P @ (P.mT @ G)
            G = G - (G @ Q) @ Q.mT
        return G

    def _leading_pairs(self, mat: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``count`` leading singular triplets: a seeded randomized range (`leading_singular_values`'
        basis, two power steps; the user's random stream untouched) when ``count`` is well below the
        size, else the full SVD."""
        if 4 * (count + 8) > min(mat.shape):
            P, S, Qh = torch.linalg.svd(mat, full_matrices=False)
        else:
            basis = _seeded_range(mat, count + 8, self.factorizer.seed, 2)
            P, S, Qh = torch.linalg.svd(basis.mT @ mat, full_matrices=False)
            P = basis @ P
        return P[:, :count], S[:count], Qh[:count]

    def atom_pulls(self, factors: tuple[Tensor, ...], grad: Tensor, near: Tensor) -> Tensor:
        r"""The singular values of the gradient's part orthogonal to the live columns (`_complement`),
        ranked over the ``near`` columns: the largest to the largest near column (the one most likely
        to be that direction already), then down, held columns last. A column given a pull above λ is
        seeded with the matching singular pair (`seed_atoms`); the others are snapped. Only as many
        values as can exceed λ are computed (8, doubled while the last one does). Columns outside
        ``near``: 0 (not read)."""
        U, V = factors
        pulls = torch.zeros(U.shape[-1], dtype=working_dtype(U.dtype), device=U.device)
        slots = near.nonzero().squeeze(1)
        if not slots.numel():
            return pulls
        M = self._complement(factors, grad, near)
        count = min(8, slots.numel())
        while True:
            values = self._leading_pairs(M, count)[1]
            if count == slots.numel() or float(values[-1]) <= self.strength:
                break
            count = min(2 * count, slots.numel())
        sizes = (U[:, slots].to(pulls.dtype).norm(dim=0) * V[:, slots].to(pulls.dtype).norm(dim=0))
        order = slots[torch.argsort(sizes, descending=True, stable=True)]  # held columns (size 0) last
        pulls[order[:values.numel()]] = values
        return pulls

    def seed_atoms(self, factors: tuple[Tensor, ...], which: Tensor, grad: Tensor, size: Tensor) -> None:
        r"""Seed the columns in ``which`` with the leading singular pairs $(a_j, b_j)$ of $-M$, $M$ the
        gradient's part orthogonal to the other non-zero columns (`_complement`): $u_j = √s_j a_j$,
        $v_j = √s_j b_j$, so $u_j v_j^\top = s_j a_j b_j^\top$ with $⟨G, a_j b_j^\top⟩ = -σ_j < 0$ and
        balanced factors ($‖u_j‖ = ‖v_j‖$). The largest ``size`` gets the leading pair."""
        U, V = factors
        columns = which.nonzero().squeeze(1)
        if not columns.numel():
            return
        dead = which | ((U.norm(dim=0) == 0) & (V.norm(dim=0) == 0))
        left, _, right = self._leading_pairs(-self._complement(factors, grad, dead), columns.numel())
        chosen = size.reshape(-1)[columns]
        columns = columns[torch.argsort(chosen, descending=True, stable=True)]
        roots = torch.sort(chosen, descending=True, stable=True).values.to(left.dtype).sqrt()
        found = left.shape[-1]  # (never fewer than asked but on a matrix of rank below it: seed what exists)
        U[:, columns[:found]] = (left * roots[:found]).to(U.dtype)
        V[:, columns[:found]] = (right.mT * roots[:found]).to(V.dtype)

    def unresolved_entries(self, factors: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        r"""Keep $U_{ij}$ unless $|U_{ij}|\,\max_k |V_{kj}|$ is below the dtype's smallest normal number (every term
        $U_{ij} V_{kj}$ of θ it enters is), and $V_{kj}$ likewise against $\max_i |U_{ij}|$; both masks from the
        same factors, so θ's entries move by less than r such terms (r the factors' width: 3e-36 in float32 at
        r = 256, below the resolution of any entry above 5e-29). The entries that shrink so are rows: a hidden
        unit that no longer fires (its row of U has no loss gradient, only the decay) or an input that is always
        0 (its row of V), which the decay takes geometrically into the subnormals, where they stay (SGD's step
        rounds back to a few units of the smallest subnormal; Adam's stops once its first moment is flushed):
        the digits MLP under Adam at λ = 1e-3 on full-width factors had 2.4e4 subnormal factor entries after
        2000 steps and its step grew from 2 to 20 ms (benchmarks/RESULTS.md; with a threshold of a r-th of that
        number, 4600 stayed, between the two, and the step read 6 ms). A NaN is kept."""
        U, V = (factor.detach().abs() for factor in factors)
        tiny = torch.finfo(U.dtype).tiny
        largest_u, largest_v = U.amax(dim=-2, keepdim=True), V.amax(dim=-2, keepdim=True)
        return ~(U * largest_v < tiny), ~(V * largest_u < tiny)

    def hold_atoms(self, layer: tuple[Tensor, ...], keep: Tensor) -> None:
        """Zero the columns outside ``keep`` (in $U$, $V$, or any tensor shaped like them)."""
        for tensor in layer:
            tensor[:, ~keep] = 0.0

    def truncate(self, value: Tensor, k: int) -> Tensor:
        def keep_top(S: Tensor) -> Tensor:
            S = S.clone()
            S[..., k:] = 0
            return S

        return self._map_singular_values(value, keep_top)

    def induced_norm(self, value: Tensor) -> Tensor:
        return self.singular_values(value).sum()

    def dual_norm(self, grad: Tensor) -> Tensor:
        return torch.linalg.svdvals(self.matrix(grad).to(working_dtype(grad.dtype))).amax()  # full rank

    def dual_norm_exceeds(self, grad: Tensor, level: float) -> bool:
        r"""Whether $‖\mathrm{grad}‖_2 > \mathrm{level}$: on one large matrix, first from
        `leading_singular_values`' estimate of the top singular value (a lower bound: where it is above
        ``level`` that settles it); else, or where it is not, the full SVD. A completion problem below
        λ_max asked a full SVD of its 1000 × 1000 gradient before any descent (0.22 s of a 2.3 s solve;
        1.5 s at 2000 × 2000)."""
        mat = self.matrix(grad).to(working_dtype(grad.dtype))
        if mat.dim() == 2 and min(mat.shape) > 4 * _QUICK_TOP:
            # (a margin over rounding: with a dominant singular value the bound meets the norm to its
            # last bits, and one bit above the SVD's value at λ = λ_max exactly (`strength_max`
            # computes it so) would have refused θ = 0 there: the tests' spiked matrices did)
            if float(leading_singular_values(mat, 1, seed=self.factorizer.seed)[0]) > level * (1 + 1e-10):
                return True
        return float(self.dual_norm(grad)) > level

    def balance(self, U: Tensor, V: Tensor) -> float:
        U, V = U.detach(), V.detach()
        denom = float(U.square().sum() + V.square().sum())
        return float((U.mT @ U - V.mT @ V).norm()) / denom if denom > 0 else 0.0

    def _rounding(self, S: Tensor, value: Tensor) -> float:
        """σ_max·max(m, n)·eps of ``value``'s dtype: singular values below it are the rounding of the
        product $UV^\top$ in that precision, not rank (a float32 rank-8 product with σ_max ≈ 100 has
        "singular values" ≈ 1e-5 beyond the 8th)."""
        if not S.numel():
            return 0.0
        shape = self.matrix(value.detach()).shape
        eps = max(torch.finfo(S.dtype).eps, torch.finfo(value.dtype).eps)
        return float(S.amax()) * max(shape[-2:]) * eps

    def violation(self, value: Tensor, tol: float = 0.0) -> float:
        """With a budget, the distance to rank ≤ k counted above the rounding of the value's precision:
        a landed float32 rank-k product has trailing singular values of order σ_max·eps, which are not
        rank and must not make ``finalize`` refuse it. Without a budget, as every kind."""
        if self.budget is None:
            return super().violation(value, tol)
        return self.budget_distance(value, self.budget)

    def budget_distance(self, value: Tensor, k: int) -> float:
        """The distance to rank ≤ ``k``, counted above the rounding of the value's precision."""
        S = self.singular_values(value.detach())
        tail = S[..., k:]
        tail = torch.where(tail > self._rounding(S, value), tail, torch.zeros_like(tail))
        return float(tail.square().sum().sqrt())

    def atom_count(self, value: Tensor) -> int:
        """min(m, n) of the matrix view, or ``max_rank`` (no SVD); for a batch, the singular values of all its
        matrices."""
        m, n = self._matrix_shape(tuple(value.shape))
        batch = math.prod(value.shape[:-2]) if value.dim() > 2 and self.layout == "batch" else 1
        if batch == 1 and self.max_rank is not None:
            return min(m, n, self.max_rank)  # (what r-column factors hold: `atoms`)
        return batch * min(m, n)

    def alive(self, value: Tensor, tol: float = 0.0) -> int:
        """The numerical rank: singular values above ``tol`` and the rounding of the product in the
        value's precision (the largest over a batch)."""
        S = self.singular_values(value.detach())
        return int((S > max(tol, self._rounding(S, value))).sum(dim=-1).amax()) if S.numel() else 0

    def structure(self, value: Tensor, tol: float = 0.0) -> str:
        S = self.singular_values(value.detach())
        rank = self.alive(value, tol)
        budget = "" if self.budget is None else f", target {self.budget}"
        return f"rank {rank}/{S.shape[-1] if self.max_rank is None else self.max_rank}{budget}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_rank={self.max_rank}, layout={self.layout!r}"


_QUICK_TOP = 16  # singular values of the normal part estimated by kkt_residual(quick=True)
_PROX_FINISH_SIZE = 512  # finishes_by_prox up to this min(m, n): a full SVD a step (~10 ms at 214×320)


# Penalised low rank on a matrix with min(m, n) >= _NARROW_FROM starts with factors of width
# _START_WIDTH (see LowRank.working_width).
_NARROW_FROM, _START_WIDTH = 128, 16


def leading_singular_values(mat: Tensor, count: int, seed: int = 0, power: int = 2) -> Tensor:
    r"""The ``count`` leading singular values of a matrix by a randomized range finder (Halko, Martinsson
    & Tropp 2011): $Q$ from $(\mathrm{mat}\,\mathrm{mat}^\top)^{p}\,\mathrm{mat}\,Ω$, $Ω$ Gaussian with
    ``count + 8`` columns from a generator seeded with ``seed`` (the user's random stream is not
    touched), re-orthonormalised at each power step, then the singular values of $Q^\top \mathrm{mat}$.

    Each is a lower bound of the true one; with ``power`` steps the error falls as
    $(σ_{c+9}/σ_i)^{2p+1}$.

    Examples:
        >>> import torch
        >>> from symopt.constraints.lowrank import leading_singular_values
        >>> g = torch.Generator().manual_seed(0)
        >>> P = torch.linalg.qr(torch.randn(300, 200, generator=g, dtype=torch.float64)).Q
        >>> Q = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64)).Q
        >>> A = (P * 0.8 ** torch.arange(200.0, dtype=torch.float64)) @ Q.T     # σ_i = 0.8^i
        >>> estimate = leading_singular_values(A, 5)
        >>> bool(((estimate - 0.8 ** torch.arange(5.0, dtype=torch.float64)).abs() <= 1e-6).all())
        True
    """
    return torch.linalg.svdvals(_seeded_range(mat, count + 8, seed, power).mT @ mat)[:count]


def _seeded_range(mat: Tensor, width: int, seed: int, power: int) -> Tensor:
    """An orthonormal basis of ``mat``'s range found from a Gaussian $Ω$ of ``width`` columns (a generator
    seeded with ``seed``) and ``power`` re-orthonormalised power steps."""
    generator = torch.Generator(device=mat.device).manual_seed(seed)
    omega = torch.randn(mat.shape[1], width, generator=generator, device=mat.device, dtype=mat.dtype)
    Q = torch.linalg.qr(mat @ omega).Q
    for _ in range(power):
        Q = torch.linalg.qr(mat @ torch.linalg.qr(mat.mT @ Q).Q).Q
    return Q


def values_of_low_rank(mat: Tensor, rank: int, count: int, seed: int = 0) -> Tensor:
    r"""The ``count`` leading singular values of a matrix of rank at most ``rank`` (a value $UV^\top$ of
    ``rank``-column factors), largest first: those of $Q^\top \mathrm{mat}$, $Q$ an orthonormal basis of
    $\mathrm{mat}\,Ω$ with $Ω$ Gaussian of ``rank + 8`` columns from a generator seeded with ``seed``. That
    range is the matrix's own (with probability 1), so the values are its exact ones, to rounding, in
    $O(mn·\mathrm{rank})$; beyond ``rank + 8`` they are 0 (padded).

    Examples:
        >>> import torch
        >>> from symopt.constraints.lowrank import values_of_low_rank
        >>> g = torch.Generator().manual_seed(0)
        >>> U, V = torch.randn(200, 6, generator=g, dtype=torch.float64), torch.randn(150, 6, generator=g, dtype=torch.float64)
        >>> exact = torch.linalg.svdvals(U @ V.mT)[:20]
        >>> bool(torch.allclose(values_of_low_rank(U @ V.mT, 6, 20), exact, atol=1e-10 * float(exact[0])))
        True
    """
    values = _wide_svd(_seeded_range(mat, rank + 8, seed, 0).mT @ mat)[0]
    if values.numel() >= count:
        return values[:count]
    return torch.cat([values, values.new_zeros(count - values.numel())])


def tracked_singular_values(mat: Tensor, count: int, basis: Tensor | None = None,
                            seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""``(values, basis)``: the ``count`` leading singular values of ``mat`` (m × n) from its product with
    ``basis`` (n × p orthonormal columns, p ≥ ``count`` + 8), and the basis that starts the next call.

    Subspace iteration continued across calls: $Q = \mathrm{qr}(\mathrm{mat}\,B)$, the singular values
    of $Q^\top \mathrm{mat} = P S R^\top$ (the Rayleigh–Ritz values of the range found, lower bounds), and
    the next basis $R$ (its leading right singular vectors). A matrix that changes slowly between
    calls — the weights of a layer under training — keeps its leading subspace, so one step per call
    tracks it for two matrix products, where a fresh range finder needs power iterations each time.
    Without a usable ``basis`` (None, another size, device or dtype) the range starts from
    `leading_singular_values`'s seeded one; a basis wider than needed gives its leading columns.

    Examples:
        >>> import torch
        >>> from symopt.constraints.lowrank import tracked_singular_values
        >>> sigma = 0.9 ** torch.arange(80.0, dtype=torch.float64)
        >>> A = torch.cat([torch.diag(sigma), torch.zeros(20, 80, dtype=torch.float64)])   # 100 × 80, σ_i = 0.9^i
        >>> basis = None
        >>> for _ in range(5):                                    # the same matrix, read again
        ...     values, basis = tracked_singular_values(A, 5, basis)
        >>> bool(((values - 0.9 ** torch.arange(5.0, dtype=torch.float64)).abs() <= 1e-10).all())
        True
    """
    width = count + 8
    usable = (basis is not None and basis.dim() == 2 and basis.shape[0] == mat.shape[1]
              and basis.shape[1] >= width and basis.device == mat.device and basis.dtype == mat.dtype)
    # (without a basis: `leading_singular_values`'s seeded range, with its two power steps)
    Q = torch.linalg.qr(mat @ basis[:, :width]).Q if usable else _seeded_range(mat, width, seed, 2)
    values, right = _wide_svd(Q.mT @ mat)
    return values[:count], right


def _rebuilt(svd: tuple[Tensor, Tensor, Tensor], like: Tensor) -> Tensor:
    r"""$P\,\mathrm{diag}(S)\,Q^\top$ from ``svd = (P, S, Qh)``, in the shape and dtype of ``like``."""
    P, S, Qh = svd
    return ((P * S.unsqueeze(-2)) @ Qh).reshape(like.shape).to(like.dtype)


def _above(tol: float):
    """The snap of a spectrum: singular values above ``tol`` kept, the others 0."""
    return lambda S: torch.where(S > tol, S, torch.zeros_like(S))


_TRACKED = "tracked_range_"  # state_dict key of a reading's tracked range: this + the reading's name


def _save_tracked_ranges(module: LowRank, state_dict, prefix, _metadata) -> None:
    for reading, basis in getattr(module, "_tracked_ranges", {}).items():
        state_dict[prefix + _TRACKED + reading] = basis


def _load_tracked_ranges(module: LowRank, state_dict, prefix, *_args) -> None:
    # (a checkpoint without them, written before any reading or by an older version: the next readings
    # start from the seeded range, as a fresh run's do)
    module._tracked_ranges = {key[len(prefix + _TRACKED):]: state_dict.pop(key) for key in list(state_dict)
                              if key.startswith(prefix + _TRACKED) and "." not in key[len(prefix + _TRACKED):]}


def soft_threshold_singular_values(mat: Tensor, threshold: float) -> Tensor:
    r"""$P\,(Σ - τ)_+ Q^\top$ for $\mathrm{mat} = P Σ Q^\top$ and τ = ``threshold``, without an SVD: with
    the Gram matrix of the shorter side, $\mathrm{mat}^\top \mathrm{mat} = Q Σ^2 Q^\top$ (eigh, float64),
    it is $\mathrm{mat}\,Q\,\mathrm{diag}\big((1 - τ/σ)_+\big) Q^\top$ (for a wide matrix, the same from
    the left).

    Why: the nuclear norm's proximal step, each step of the completion's proximal finish, took a
    full SVD (3.5 ms for digits' 1797 × 64, against 0.9 ms for the Gram's eigh). The squaring
    costs digits only where they do not matter: an eigenvalue's error is ε‖mat‖², so σ is off by
    about $ε σ_{\max}^2 / σ$, 2.5e-13 relative at σ = σ_max/50; and within a cluster of nearly equal σ,
    where the eigenvectors are ill-determined, the factor $(1 - τ/σ)_+$ is nearly constant, so the map
    is not. The certificate that follows a proximal step reads a true SVD.

    Examples:
        >>> import torch
        >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)) @ torch.eye(3, 4, dtype=torch.float64)
        >>> [round(s, 12) for s in torch.linalg.svdvals(soft_threshold_singular_values(A, 0.8)).tolist()]   # (3, 1, 0.5) − 0.8, ≥ 0
        [2.2, 0.2, 0.0]
    """
    wide = mat.shape[-2] < mat.shape[-1]
    A = (mat.mT if wide else mat).to(torch.float64)
    squares, Q = torch.linalg.eigh(A.mT @ A)
    sigma = squares.clamp_min(0).sqrt()
    keep = sigma > threshold
    Q = Q[:, keep]
    factor = 1 - threshold / sigma[keep]
    shrunk = (A @ Q) @ (factor[:, None] * Q.mT)
    return (shrunk.mT if wide else shrunk).to(mat.dtype)


def _wide_svd(B: Tensor) -> tuple[Tensor, Tensor]:
    r"""The singular values of a wide ``B`` (p × n, p ≪ n), largest first, and an n × p basis of its row
    space in the same order, from the eigen-decomposition of the p × p Gram $BB^\top = P S^2 P^\top$ in
    float64: $R = B^\top P S^{-1}$. LAPACK's SVD of a 25 × 512 block took 0.5 ms and the Gram's 0.05 ms
    (measured here), and a rank budget asks for two such blocks at each reading. Values below
    $\sqrt{ε}·σ_{\max}$ of float64 lose digits to the squaring; a budget reads the k + 1 leading ones."""
    wide = B.to(torch.float64)
    squares, P = torch.linalg.eigh(wide @ wide.mT)
    values = squares.flip(-1).clamp_min(0).sqrt()
    P = P.flip(-1)
    floor = torch.finfo(torch.float64).tiny + float(values[0]) * torch.finfo(torch.float64).eps  # (p ≥ 1 rows)
    right = (wide.mT @ P) / values.clamp_min(floor)
    return values.to(B.dtype), right.to(B.dtype).contiguous()


def _closest_rotation(block: Tensor) -> Tensor:
    r"""The orthogonal $R$ that brings $E R$ closest to the identity's matching columns, given
    ``block`` $= E_{J,:}$ (square): the polar factor of $E_{J,:}^\top$ (orthogonal Procrustes)."""
    left, _, right_h = torch.linalg.svd(block.mT)
    return left @ right_h


def thin_svd_applies(mat: Tensor, width: int | None) -> bool:
    """Whether `thin_svd` takes its range path for ``mat`` and ``width`` (one matrix, ``width + 8`` at most
    a quarter of its smaller side); else it is a full SVD."""
    return mat.dim() == 2 and width is not None and 4 * (width + 8) <= min(mat.shape)


def thin_svd(mat: Tensor, width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""``torch.linalg.svd(mat, full_matrices=False)``, cheaper for a matrix of rank ≤ ``width``.

    A value of a ``LowRank(max_rank=r)`` is $U V^\top$ with r columns: when r is well below
    ``min(m, n)`` its SVD comes from its range: $Q = qr(\mathrm{mat} Ω)$ with a Gaussian $Ω$ of r + 8
    columns (the range exactly, with probability 1, when the rank is ≤ r + 8), then the SVD of the
    small $Q^\top \mathrm{mat}$: $O(mn·r)$ instead of $O(mn·\min(m, n))$ (2000×2000: 0.07 s instead of
    1.8 s, measured here). The range is checked ($‖\mathrm{mat} - QQ^\top \mathrm{mat}‖$ at rounding level): a matrix of
    larger rank, a gradient say, gets the full SVD. Only the r + 8 leading singular triplets are
    returned on the fast path; the others are 0.
    """
    if not thin_svd_applies(mat, width):
        return torch.linalg.svd(mat, full_matrices=False)
    generator = torch.Generator(device=mat.device).manual_seed(0)
    omega = torch.randn(mat.shape[1], width + 8, generator=generator, device=mat.device, dtype=mat.dtype)
    Q = torch.linalg.qr(mat @ omega).Q
    small = Q.mT @ mat
    floor = 100 * torch.finfo(mat.dtype).eps * math.sqrt(min(mat.shape))
    if float((mat - Q @ small).norm()) > floor * float(mat.norm()):
        return torch.linalg.svd(mat, full_matrices=False)
    P, S, Qh = torch.linalg.svd(small, full_matrices=False)
    return Q @ P, S, Qh


def _nuclear_kkt(W: Tensor, G: Tensor, lam: float, tol: float, cap: int | None = None,
                 svd: tuple[Tensor, Tensor, Tensor] | None = None, quick: bool = False) -> float:
    r"""Distance of $-G$ to $λ∂‖W‖_*$ for one matrix.

    $∂‖W‖_* = {P Q^\top + Z : P^\top Z = 0, ZQ = 0, ‖Z‖_2 ≤ 1}$ with $W = P \sum Q^\top$ (thin, σ > tol): the
    residual splits into a tangent part that must vanish and the excess over λ of the normal part's
    singular values. When the rank sits at the factor width ``cap`` the rank bound is active and the
    normal part is its multiplier: only the tangent part counts (stationarity on the rank-``cap``
    manifold). ``quick``: on a large matrix, the normal part's leading singular values by randomized
    subspace iteration (``torch.svd_lowrank``, 16 of them): never above the exact ones, so the
    residual can only come out smaller than the exact one (2000×2000: 0.05 s instead of 0.6 s).
    """
    svd = torch.linalg.svd(W, full_matrices=False) if svd is None else svd
    tangent, normal = _nuclear_parts(G, lam, svd, tol, cap)
    return math.sqrt(tangent + _normal_excess(normal, lam, quick))


def _nuclear_parts(G: Tensor, lam: float, svd: tuple[Tensor, Tensor, Tensor], tol: float,
                   cap: int | None) -> tuple[float, Callable[[], Tensor] | None]:
    r"""The two halves of `_nuclear_kkt`'s residual at $W = P Σ Q^\top$ (``svd``; σ ≤ ``tol`` counted as
    0): the squared tangent part of $R = G + λPQ^\top$, and the normal part $(I - PP^\top) G (I - QQ^\top)$
    on demand (None where the rank sits at ``cap``: the rank bound's multiplier, not a violation).

    The tangent part $PP^\top R + (I - PP^\top) R QQ^\top$ has squared norm $‖P^\top R‖^2 + ‖RQ - P(P^\top R Q)‖^2$
    (two orthogonal pieces, no cancellation): two products of G with the k kept directions, where
    forming the m × n normal part to subtract it took three times as long."""
    P, S, Qh = svd
    keep = S > tol
    P, Q = P[:, keep], Qh[keep].mT
    left = P.mT @ G + lam * Q.mT  # P^T R
    right = G @ Q + lam * P  # R Q
    tangent = float(left.square().sum() + (right - P @ (left @ Q)).square().sum())
    if cap is not None and int(keep.sum()) >= cap:
        return tangent, None  # (and no SVD to pay)

    def normal() -> Tensor:
        away = G - P @ (P.mT @ G)
        return away - (away @ Q) @ Q.mT

    return tangent, normal


def _normal_excess(normal: Callable[[], Tensor] | None, lam: float, quick: bool) -> float:
    """The squared excess over λ of the normal part's singular values (0 for None); ``quick`` on a large
    matrix: from its leading ones (see `_nuclear_kkt`)."""
    if normal is None:
        return 0.0
    matrix = normal()
    if quick and min(matrix.shape) > 4 * _QUICK_TOP:
        _, top, _ = torch.svd_lowrank(matrix, q=_QUICK_TOP, niter=4)
        excess = (top - lam).clamp_min(0)
    else:
        excess = _excess_singular_values(matrix, lam)
    return float(excess.square().sum())


def _excess_singular_values(mat: Tensor, lam: float) -> Tensor:
    r"""$(σ_i - λ)_+$ over the singular values of one matrix (the normal part of a nuclear-norm residual,
    which needs nothing else of them), in float64.

    At an answer every σ is at most λ, and that is one Cholesky factorisation of $λ^2 I - G$, G the
    smaller side's Gram: where it succeeds the excess is 0 (1000 × 1000: the Gram and its Cholesky
    against LAPACK's singular values, 0.5 s). Where it fails, the singular values: from the Gram's
    eigenvalues where one side is at least 1.25 times the other (digits' 1797 × 64: 0.6 ms against 4.4
    ms for LAPACK's SVD; china.jpg's 214 × 320: 7.7 against 14.8 ms, measured), else LAPACK's (a
    square Gram's eigenvalues saved little). The squaring costs digits only below
    $\sqrt{ε}\,σ_{\max}$, far under the λ they are compared with."""
    rows, cols = mat.shape
    wide = mat.to(torch.float64)
    gram = wide.mT @ wide if rows >= cols else wide @ wide.mT
    if lam > 0:
        margin = -gram
        margin.diagonal().add_(lam * lam)
        if int(torch.linalg.cholesky_ex(margin).info) == 0:
            return gram.new_zeros(0)
    if 4 * max(rows, cols) < 5 * min(rows, cols):
        values = torch.linalg.svdvals(wide)
    else:
        values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    return (values - lam).clamp_min(0)
