r"""The lean descent: DCS's factored objective on one flat vector, minimised by a compact L-BFGS.

On a small problem most of a solve was overhead, not arithmetic (measured on breast_cancer, 569×30:
an evaluation of the factored objective through the registered parametrization and autograd cost
0.32 ms, the loss's arithmetic 0.04 ms, and torch's L-BFGS spent 9,500 tensor operations on its
two-loop recursion over 100 history pairs). Here the same objective,

$$f(\mathrm{factors}) = \mathrm{loss}(c(\mathrm{factors})) + (λ/2)\sum_{\mathrm{decayed}} ‖\mathrm{factor}‖^2,$$

is evaluated on views of one flat tensor: θ by the constraint's ``forward``, $∇_θ \mathrm{loss}$ by the
loss's own ``value_and_grad`` when it has one (the GLM data terms do; else autograd on the loss
alone), and the factors' gradients by the constraint's ``pullback`` (the vector-Jacobian product
of ``forward``: $(g ⊙ v, g ⊙ u)$ for $u ⊙ v$) plus $λ·\mathrm{factor}$ for the decayed ones. The
L-BFGS direction uses the compact representation (Byrd, Nocedal & Schnabel 1994): a handful of
matrix products over the stacked history instead of a Python loop over it, and a weak-Wolfe line
search (bracketing with safeguarded cubic interpolation), which keeps every curvature pair
positive.

It is the same maths as the parametrized path (the same ``forward``, decay and loss), so the solver
uses it wherever it applies — a constraint on one tensor, whose λ stays fixed during the solve and
whose decay is the standard $(λ/2)‖\mathrm{decayed}‖^2$ — never by the constraint's kind.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attach import factors_of
from ..constraints import Constraint
from .steppers import NonFinite

_C1, _C2 = 1e-4, 0.9  # Armijo and (weak) curvature constants of the line search
_LINE_SEARCH_EVALUATIONS = 25


class FlatObjective:
    r"""$x ↦ (f(x), ∇f(x))$ for the factored objective, ``x`` all the factors in one flat tensor.

    Args:
        constraint: the registered parametrization (its ``forward``, ``pullback``, ``decayed``, λ).
        shapes: the factors' shapes, in ``forward``'s argument order.
        loss: $θ -> \mathrm{loss}$ (a closure over the data); its ``value_and_grad`` attribute, where it
            has one (a `symopt.problems.BoundLoss` of a data term), gives $(\mathrm{loss}, ∇\mathrm{loss})$
            without autograd.

    Examples:
        >>> import torch, symopt
        >>> from symopt.solver.flat import FlatObjective
        >>> c = symopt.Sparse(strength=0.5)
        >>> target = torch.tensor([1.0, -2.0], dtype=torch.float64)
        >>> f = FlatObjective(c, [(2,), (2,)], lambda w: 0.5 * (w - target).square().sum())
        >>> value, grad = f(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))  # u = v = 1: w = 1
        >>> float(value), grad.tolist()   # 0.5·9 + 0.25·4 = 5.5; ∂/∂u = (w − t)·v + λu
        (5.5, [0.5, 3.5, 0.5, 3.5])
    """

    def __init__(self, constraint: Constraint, shapes, loss) -> None:
        self.constraint, self.loss = constraint, loss
        self.value_and_grad = getattr(loss, "value_and_grad", None)
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.decayed = set(constraint.decayed)
        self.all_decayed = self.decayed == set(range(len(self.shapes)))

    def factors(self, x: Tensor) -> list[Tensor]:
        return [part.view(shape) for part, shape in zip(torch.split(x, self.sizes), self.shapes)]

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factors = self.factors(x)
        lam = self.constraint.strength
        with torch.no_grad():
            theta = self.constraint.forward(*factors)
            if self.value_and_grad is not None:
                value, grad = self.value_and_grad(theta)
            else:
                with torch.enable_grad():
                    probe = theta.detach().requires_grad_()
                    value = self.loss(probe)
                    (grad,) = torch.autograd.grad(value, probe)
                value = value.detach()
            parts = list(self.constraint.pullback(factors, grad))
            if self.all_decayed:  # (every factor decayed: the decay and its gradient on the flat x at once)
                flat = torch.cat([p.reshape(-1) for p in parts]).add_(x, alpha=lam)
                return value + 0.5 * lam * x.dot(x), flat
            decay = 0.0
            for i in self.decayed:
                parts[i] = parts[i] + lam * factors[i]
                decay = decay + factors[i].square().sum()
            objective = value + 0.5 * lam * decay
            return objective, torch.cat([p.reshape(-1) for p in parts])


class FlatLBFGS:
    r"""L-BFGS on a flat tensor with its memory kept across calls of `run` (the descent certifies
    between them), the direction from the compact representation

    $$H g = γ g + S^\top p - γ Y^\top r,\quad r = R^{-1} S g,\quad p = R^{-\top}((D + γ Y Y^\top) r - γ Y g),$$

    with $S, Y$ the stacked steps and gradient changes (rows), $R$ the upper triangle of $S Y^\top$,
    $D$ its diagonal and $γ = s^\top y / y^\top y$ of the newest pair.

    Args:
        objective: $x -> (f, ∇f)$.
        x: the start (copied).
        history_size: pairs kept.
    """

    def __init__(self, objective, x: Tensor, history_size: int) -> None:
        self.objective, self.memory = objective, max(1, int(history_size))
        self.x = x.detach().clone()
        self.f, self.g = objective(self.x)
        self.reset()

    def reset(self) -> None:
        # The pairs live in ring buffers (slot = where a pair was written); SY and YY are small and kept
        # in time order. Shifting the buffers themselves would copy history × n numbers every
        # iteration (completion of digits: 2 × 96 MB per iteration, measured 1.8× slower than torch).
        self.count, self.head = 0, 0
        self.Sb = self.Yb = None
        self.SY = self.x.new_zeros((0, 0))  # SY[i, j] = s_i · y_j for i ≤ j (0 below: unused), oldest first
        self.YY = self.x.new_zeros((0, 0))
        self._products = None  # (S g, Y g) in time order for the current g, carried from `remember`
        self._last = None  # (S g, Y g) of the last direction, in time order (see `remember`)

    def _slots(self) -> Tensor:
        """The slots of the stored pairs, oldest first."""
        if self.count < self.memory:
            return torch.arange(self.count, device=self.x.device)
        return (torch.arange(self.memory, device=self.x.device) + self.head) % self.memory

    def direction(self) -> Tensor:
        # Passes over the history (count × n numbers each, the cost at n ~ 1e5) are what an iteration
        # costs: two here (Sᵀp, Yᵀr) and two in `remember` (S y, Y y); S g and Y g come from the last
        # `remember` (S g_new = S g + S y). Before, the history was read seven times an iteration,
        # one of them for the lower triangle of SY, which the compact form never uses (digits
        # completion: 4 of its 5.6 s were these passes).
        g = self.g
        self._last = None
        if self.count == 0:
            return -g
        S, Y = self.Sb[:self.count], self.Yb[:self.count]
        wrapped = self.count == self.memory  # (before the ring fills, slot order is time order)
        slots = self._slots() if wrapped else None
        gamma = self.SY[-1, -1] / self.YY[-1, -1]
        R = self.SY.triu()
        if self._products is None:
            a, b = S @ g, Y @ g
            if wrapped:
                a, b = a[slots], b[slots]
        else:
            a, b = self._products
        r = torch.linalg.solve_triangular(R, a.unsqueeze(1), upper=True).squeeze(1)
        rhs = torch.diagonal(self.SY) * r + gamma * (self.YY @ r) - gamma * b
        p = torch.linalg.solve_triangular(R.mT, rhs.unsqueeze(1), upper=False).squeeze(1)
        if wrapped:  # back from time order to the buffers' slot order
            in_slots = torch.empty((2, self.count), dtype=g.dtype, device=g.device)
            in_slots[:, slots] = torch.stack([p, r])
            p, r = in_slots[0], in_slots[1]
        self._last = (a, b)
        return -(gamma * g + S.mT @ p - gamma * (Y.mT @ r))

    def remember(self, s: Tensor, y: Tensor, g_new: Tensor | None = None) -> None:
        """Keep the pair ``(s, y)``. With ``g_new`` (the gradient after the step, right after a
        `direction`), S g_new and Y g_new are carried to the next direction (S g + S y) instead of
        read again from the history."""
        last, old = self._last, self.count
        self._products = self._last = None
        sy = float(s @ y)
        if not sy > 1e-10 * float(s.norm()) * float(y.norm()) or not math.isfinite(sy):
            return  # no positive curvature along s (possible only after a failed line search): skip
        if self.Sb is None:
            self.Sb = s.new_empty((self.memory, s.numel()))
            self.Yb = s.new_empty((self.memory, s.numel()))
        full = old == self.memory
        kept = slice(1, None) if full else slice(None)
        if full:  # the oldest pair leaves
            self.SY, self.YY = self.SY[1:, 1:], self.YY[1:, 1:]
        self.Sb[self.head], self.Yb[self.head] = s, y
        self.head = (self.head + 1) % self.memory
        self.count = min(self.count + 1, self.memory)
        S, Y = self.Sb[:self.count], self.Yb[:self.count]
        column, yy = S @ y, Y @ y  # s_i·y_new, y_i·y_new (the new pair's own last)
        if self.count == self.memory:  # the ring is full: time order from slot order
            slots = self._slots()
            column, yy = column[slots], yy[slots]
        k = self.count
        SY = self.SY.new_zeros((k, k))  # (the new row, s_new·y_j for j < new, is below the diagonal: unused)
        SY[:-1, :-1], SY[:, -1] = self.SY, column
        YY = self.YY.new_empty((k, k))
        YY[:-1, :-1], YY[:, -1], YY[-1, :] = self.YY, yy, yy
        self.SY, self.YY = SY, YY
        if g_new is not None and last is not None and last[0].numel() == old:
            a, b = last  # S g_new = S g + S y; the new pair's own products: one dot each
            self._products = (torch.cat([a[kept] + column[:-1], (s @ g_new).reshape(1)]),
                              torch.cat([b[kept] + yy[:-1], (y @ g_new).reshape(1)]))

    def run(self, iterations: int) -> None:
        """Up to ``iterations`` L-BFGS iterations. When no step length decreases the objective,
        not even along $-∇f$ with the memory cleared (the precision floor, or a gradient that does
        not describe the objective), it returns early with ``x`` unchanged: the descent's stop rule
        sees no progress and says which of the two it is (``stalled``), as with torch's L-BFGS.
        Raises `NonFinite` when the objective is NaN or Inf at ``x`` or at every trial step."""
        self._products = None  # read S g, Y g afresh once a run: the carried sums' rounding stays bounded
        for _ in range(iterations):
            if not bool(torch.isfinite(self.g).all()) or not math.isfinite(float(self.f)):
                raise NonFinite("the objective or its gradient is NaN or Inf at the current iterate")
            found = None
            for fresh in (False, True):
                if fresh:
                    if self.count == 0:
                        break
                    self.reset()  # a stale memory: steepest descent before giving up
                d = self.direction()
                slope = float(d @ self.g)
                if not slope < 0 or not math.isfinite(slope):
                    continue
                first = self.count == 0
                t = min(1.0, 1.0 / max(float(self.g.abs().sum()), 1e-300)) if first else 1.0
                found = self._line_search(d, slope, t)
                if found is not None:
                    break
            if found is None:
                return None
            t, f_new, g_new = found
            s = t * d
            self.remember(s, g_new - self.g, g_new)
            self.x, self.f, self.g = self.x + s, f_new, g_new
        return None

    def _line_search(self, d: Tensor, slope: float, t: float):
        """Weak Wolfe by bracketing: ``(t, f, g)`` with sufficient decrease and curvature, or the
        lowest decreasing trial when the evaluations run out; None when no trial decreases f.
        A non-finite trial counts as too long a step."""
        f0 = float(self.f)
        lo, hi = 0.0, math.inf
        f_lo, slope_lo = f0, slope
        best, any_finite = None, False
        for _ in range(_LINE_SEARCH_EVALUATIONS):
            f_t, g_t = self.objective(self.x + t * d)
            value = float(f_t)
            finite = math.isfinite(value) and bool(torch.isfinite(g_t).all())
            slope_t = float(g_t @ d) if finite else math.nan
            any_finite = any_finite or finite
            if finite and value < f0 and (best is None or value < best[1]):
                best = (t, value, f_t, g_t)
            if not finite or value > f0 + _C1 * t * slope or value >= f_lo and lo > 0:
                hi, f_hi, slope_hi = t, value, slope_t
            elif slope_t < _C2 * slope:
                lo, f_lo, slope_lo = t, value, slope_t
            else:
                return t, f_t, g_t
            if math.isinf(hi):
                t = 2.0 * t if t < 1e10 else t
                continue
            t = _interpolate(lo, f_lo, slope_lo, hi, f_hi, slope_hi)
        if best is None:
            if any_finite:
                return None
            raise NonFinite("the objective or its gradient is NaN or Inf at every trial step of the line search")
        return best[0], best[2], best[3]


def _interpolate(lo: float, f_lo: float, slope_lo: float, hi: float, f_hi: float, slope_hi: float) -> float:
    """The minimiser of the cubic through the bracket's ends (values and slopes), kept in its middle
    80%; bisection when the cubic is unusable (a non-finite end)."""
    width = hi - lo
    t = 0.5 * (lo + hi)
    if all(math.isfinite(v) for v in (f_lo, slope_lo, f_hi, slope_hi)) and width > 0:
        d1 = slope_lo + slope_hi - 3 * (f_lo - f_hi) / (lo - hi)
        square = d1 * d1 - slope_lo * slope_hi
        if square >= 0:
            d2 = math.sqrt(square)
            cubic = hi - (hi - lo) * ((slope_hi + d2 - d1) / (slope_hi - slope_lo + 2 * d2))
            if math.isfinite(cubic):
                t = cubic
    return min(max(t, lo + 0.1 * width), hi - 0.1 * width)


# The pairs the lean loop keeps hold at most this many numbers per matrix (S, Y: 16 MB each in float64),
# and at least 10 pairs. Each iteration reads them four times, which at 100 pairs of 119k factor
# coordinates (digits completion, full-width factors) was most of the solve; 16 pairs took the same 7
# outer iterations in half the time (benchmarks/RESULTS.md). Below 20,000 coordinates (every Lasso,
# logistic and group lasso of the benchmarks) the solve's ``history_size`` (100) binds, as before.
HISTORY_NUMBERS = 2_000_000


def history_pairs(history_size: int, coordinates: int) -> int:
    """The pairs the lean loop keeps: ``history_size``, but no more than fit in ``HISTORY_NUMBERS`` numbers
    per matrix (and no fewer than 10 unless ``history_size`` asks for fewer).

    Examples:
        >>> history_pairs(100, 119_104), history_pairs(100, 60), history_pairs(5, 10**6)
        (16, 100, 5)
    """
    return min(history_size, max(10, HISTORY_NUMBERS // max(coordinates, 1)))


def flat_stepper(holder, loss, inner: int, history_size: int):
    """``step(iterations=None)`` for `Descent` (``inner`` iterations, or ``iterations``, of `FlatLBFGS`
    on ``holder``'s factors, its memory kept between calls), or None where the lean path does not apply: a constraint across
    several tensors (a tie), a chain of parametrizations, or a constraint that watches its
    gradients or lands on a schedule (its hooks run only through the registered module), or one with
    a decay of its own."""
    if holder.copies or "value" not in getattr(holder, "parametrizations", {}):
        return None
    chain = holder.parametrizations["value"]
    constraint = chain[0]
    # (every constraint has the gradient-watching forward hook; it acts only while ``watching``)
    if len(chain) != 1 or constraint.watching or constraint._forward_pre_hooks:
        return None
    if type(constraint).penalty is not Constraint.penalty:  # a decay of its own: its gradient is not λ·factor
        return None
    params = factors_of(chain)
    objective = FlatObjective(constraint, [p.shape for p in params], loss)
    state: dict = {"lbfgs": None, "written": None}

    def step(iterations: int | None = None) -> None:
        x = torch.cat([p.detach().reshape(-1) for p in params])
        lbfgs = state["lbfgs"]
        if lbfgs is None or not torch.equal(x, state["written"]):  # new factors (a refactor): new memory
            lbfgs = state["lbfgs"] = FlatLBFGS(objective, x, history_pairs(history_size, x.numel()))
        lbfgs.run(inner if iterations is None else iterations)
        with torch.no_grad():
            for p, part in zip(params, objective.factors(lbfgs.x)):
                p.copy_(part)
        state["written"] = lbfgs.x.clone()

    return step
