"""The DCS descent at the constraint's current λ: steps on the factors, a certificate after each outer
iteration, and the stop rule; narrow factors widened when the rank fills them."""

from __future__ import annotations

import math
import sys

import torch

from .._clock import solver_clock
from ..constraints import Constraint
from ..proximal_newton import GROUP_FACE, L1_ROOM, PULLED_PER_ROW, WIDE_FROM_ZERO, _resolved_coordinates
from .certifier import Certifier
from .flat import flat_stepper
from .options import Options
from .steppers import STEPPERS, NonFinite
from .stop import StopRule
from .variable import Variable


# A run's first outer iteration is EARLY_ITERATIONS long where θ has at most EARLY_ENTRIES atoms
# (entries, or a group norm's groups) and the loss gives its curvature (`Descent._early_check`).
# Measured (benchmarks/RESULTS.md): on diabetes, breast_cancer and wine (10–30 columns) the first check
# then certifies as before, in 0.4–0.9 of the time. With the active-set polish on the true objective,
# 64 columns (digits) and 200 (generated) cost more than they saved (4–56 Newton steps from a
# 5-iteration point); since proximal Newton (`symopt.proximal_newton`) drops atoms on its quadratic
# models, 64 columns gain too (digits Lasso and logistic-L1, raw and standardised, 0.15–1.0× in 3
# paired runs but for one row of 1.0–1.9×) while 200 columns with n = 100 still lose (a rough face of
# 200 atoms on a singular model: 0.1–0.25 s where 20 iterations took 12–22 ms). The multi-task Lasso on
# digits (64 rows of 10 targets: 64 atoms, 640 entries) gains too (traced: the descent 15 → 3 ms, the
# group polish from the rougher point 21–23 → 26–28 ms).
EARLY_ITERATIONS = 5
EARLY_ENTRIES = 64
# ... and none at all where the norm is ℓ1 on entries and the polish's first model cannot be singular
# by shape (`BoundLoss.determined`: at least as many rows as columns, or a ridge), or where the loss
# is a quadratic (least squares) on at most EARLY_ENTRIES atoms: the polish (proximal Newton) then
# starts from θ = 0, whose violators its ℓ1 active set takes in together (least squares is solved by
# its first model). Measured (benchmarks/RESULTS.md, fifteenth session; paired in one process,
# medians of 7 solves, 64 problems): logistic-L1 with intercept on wine, digits and breast_cancer (raw
# and standardised) 0.38–1.28× the time, make_classification designs 200×50 to 20000×100 0.18–1.00×
# (500×300 at 0.03 λ_max 129 → 23 ms), the Lasso 300×100 to 1000×500 0.17–0.51×; the same objectives.
# The losses (1.05–1.28×) are at 0.01–0.03 λ_max on 30–64 columns. Where columns outnumber rows the
# model at θ = 0 is singular on large faces: logistic-L1 40×120 at ≤ 0.01 λ_max took 1.4–2× longer
# from there (the descent's rough structure is the better start), and so did least squares of 120 or
# 200 columns on 40 or 100 rows at a tiny λ (twelfth session). Also slower from θ = 0: logistic-L1
# whose answer holds most columns (a sparse 3000×500 design with 369 and 469 of 500 alive: 101 → 136
# and 163 → 358 ms), where the face grows by at most its size + 32 atoms an outer iteration and each
# costs a curvature of 3000 rows. So a loss that is not a quadratic, on more than EARLY_ENTRIES atoms
# (since the fifty-fourth session DENSE_FROM_ZERO, below),
# starts there only where ∇loss(0) pulls at most PULLED_AT_ZERO of them off zero (403 and 490 of 500
# on that design; 325 of 500 on a 2000×500 whose answer holds 267: 150 → 66 ms from θ = 0).
QUADRATIC_EARLY_ITERATIONS = 0
PULLED_AT_ZERO = 0.75
# ... and where it pulls more, the check before any descent probes θ = 0 (`Certifier.certify`'s `probe`): the polish's
# first model (the L1_ROOM strongest pulls) is solved, and where it kept nearly every entry of that full model the
# polish declines and the descent runs as before; where it dropped some (pulls shared by correlated columns,
# whose answer is sparse) it goes on from θ = 0. Measured in one process, alternated, on 34 drawn logistic-L1
# problems of 76-3000 rows with most columns pulled (AR(1), factor and sparse designs; benchmarks/RESULTS.md,
# twenty-eighth session): see `proximal_newton`'s note on the probe.
DENSE_PROBE = True
# ... but not on at most DENSE_FROM_ZERO atoms (4 × L1_ROOM): there the polish goes on from θ = 0 whatever its first
# model kept. The probe's reason is the cost of growing a model to an answer that holds most columns; on so few,
# the models from θ = 0 hold every column by the third (32 → 96 → all) and each is a small dense one, where the
# descent's 20 iterations cost a fixed ~8 ms. Traced: an AR(1) ρ = 0.80 164 × 83 elastic-net logistic at 0.026
# λ_max (5.2× skglm; `--drawn-options-sweep 31415`) kept 30 of its probe's 32, so the descent ran 20 iterations;
# its answer holds 43 columns, and from θ = 0 seven small models reach it in half the time. Measured in one
# process, the order rotated with a control copy, medians of 5, on 240 drawn logistic-L1 problems of 65–256
# columns and 1–30× as many rows (AR(1), make_classification, factor and sparse designs, 1e-3..0.5 λ_max; 97
# of them probed): from θ = 0 on every one of them 0.60–0.62× the time summed up to 128 columns (rows 0.45–1.09×),
# 0.75× from 129 to 192 columns (up to 1.05×), but 0.84–0.89× above that with rows up to 1.56× (sparse designs
# of 220–245 columns whose answers hold nearly all of them: the probe's own case); held out, 0.65× over 15 rows.
# The fifty-second session set the same rule aside on a check of tall designs whose answers hold every column
# (3000 × 100 at 0.003 λ_max, 1.35–1.48× slower then); on today's models that check reads 0.64–0.77× (56 tall
# rows 0.74× summed, 0.44–1.14×) (benchmarks/RESULTS.md, fifty-fourth session).
DENSE_FROM_ZERO = 4 * L1_ROOM
# A norm of groups (the group lasso, the multi-task Lasso) under least squares with enough rows is
# checked before any descent too where the groups ∇loss(0) pulls off zero fit in one group model
# (`proximal_newton.GROUP_FACE` entries): the model's proximal-gradient steps take them in together
# (`proximal_newton.JOINS_TOGETHER`), where five L-BFGS iterations on the factors cost more and leave
# a point whose groups leave the model's face one at a time. This was "at most 8 groups" while the
# model joined one group a round (fifteenth session: linnerud's multi-task Lasso 0.23–0.51×, diabetes
# in 5 groups 0.50–0.66×; 10 groups and more mixed or slower). Measured with the joins together
# (benchmarks/RESULTS.md, twentieth session; paired, 0.3 to 0.01 λ_max): breast_cancer in 10 groups
# 0.41–0.78×, digits in 16 groups 0.59–0.92×, make_regression 200×60 and 500×200 in 20 and 40
# groups 0.33–0.76×, digits' multi-task Lasso 0.44–0.60×, linnerud's 0.97–1.13×; a generated
# 2000×2000 in 400 groups, whose pulled groups do not fit, keeps the descent (1.00×). With fewer rows
# than columns the model at θ = 0 is singular on large faces (a 100×1000 design in 200 groups, all
# pulled at 0.01 λ_max: 4.1 s from there against 0.2 s after the descent), so there only where at most
# PULLED_AT_ZERO of the groups were pulled, the rule logistic-L1 has (eleven wide designs from 20×90
# to 200×2000 at 0.5, 0.3 and 0.1 λ_max: 0.22–0.69× the time wherever it applied, 0.96–1.10×
# elsewhere; benchmarks/RESULTS.md, twentieth session); since the first group model there is capped
# (twenty-sixth session), at most CAPPED_PULLED_SHARE of them, which that share is within.
GROUPS_FROM_ZERO = GROUP_FACE
# ... and, with fewer rows than columns, also where the pulled groups hold at most PULLED_PER_ROW
# coordinates per row the curvature resolves (`DataTerm.resolved_coordinates`) and at most
# WIDE_FROM_ZERO in all: since the group model's joins run until its face holds
# (`proximal_newton._prefix_window`), its first model from θ = 0 finds the optimum's face on such
# designs sooner than the descent's 20 iterations on the factors, where the model stays small (its
# Gram and each proximal step grow with the square of the pulled coordinates). Measured
# (benchmarks/RESULTS.md, twenty-second session; make_regression designs from 30×150 to 200×2000 and
# 12- to 40-row slices of digits and breast_cancer, 0.3 to 0.01 λ_max; with the joins' change, against
# the session's base): 0.66, 0.79 and 0.76× the time in the geometric means of three sets of 10–13
# data sets, rows 0.16–1.4×.
# Above 4 a row mixed (a 100×1000 design in 200 groups of 5, 10 a row: 2.4–4× slower from θ = 0 at
# 0.3–0.03 λ_max); the total cap came from the third set (250×800 in groups of 4, 800 coordinates:
# 1.7–2× slower from θ = 0), and 150×450 in groups of 3 (450) stays 1.2–1.4× slower at 0.3–0.01.
# (PULLED_PER_ROW and WIDE_FROM_ZERO live in `symopt.proximal_newton`: they cap its first group model too.)
# Since the group model from θ = 0 takes only the strongest pulled groups that fit that cap, where more are
# pulled (`proximal_newton._first_group_room`), the check from θ = 0 also comes first wherever the cap is
# PULLED_PER_ROW coordinates a row (at most WIDE_FROM_ZERO / PULLED_PER_ROW rows that count), or at most
# CAPPED_PULLED_SHARE of the groups are pulled: the descent's 20 iterations on the factors were 10–15 ms
# of 14–17 ms solves (make_regression 60×300 of effective rank 15 at 0.1 λ_max 17 → 4.4 ms; 50×350 at 0.3
# 15 → 3.6 ms). Measured (benchmarks/RESULTS.md, twenty-sixth session, with the group model's accelerated
# steps after repeated blocked rounds): the wide group sweep's designs 0.88× the time in the geometric
# mean; 20 designs not seen while choosing 0.85× and 0.90× in two runs (rows 0.25–1.4×), and 20 drawn
# afterwards (`python -m benchmarks.users_data --drawn-group-sweep 31337`) 0.85× and 0.84×; wider
# designs with more rows, where the cap is WIDE_FROM_ZERO and nearly every group is pulled (200×1200 of
# effective rank 66 at 0.1–0.01 λ_max: 1.6–2.7× slower from θ = 0), keep the descent first.
CAPPED_PULLED_SHARE = 0.9
# The Lasso (least squares under ℓ1) with fewer rows that count than columns is checked from θ = 0 before
# any descent, however many entries ∇loss(0) pulls: its active set takes the pulled entries in together
# (the strongest `_candidates` allows a model, the others in the next), and the descent's 20 iterations
# were most of a wide solve. First (twenty-third session) with the group norms' PULLED_PER_ROW (make_
# regression 100×300 at 0.3 λ_max 11 → 2 ms; 500×500 with an intercept 15 → 2–4 ms; without their cap of
# WIDE_FROM_ZERO in all: 200×800 at 0.01 λ_max 71 → 6 ms); then without the rule on entries a row
# (twenty-fourth session, benchmarks/RESULTS.md: 40×400 at 0.1 λ_max, 7 pulled a row, 14 → 7 ms; the
# held-out designs 0.75× in the geometric mean, 30×300 at 0.03–0.01 λ_max 1.3–1.45× slower; with the ℓ1
# model's steps on NumPy, `symopt.l1_model`, from θ = 0 against the descent first on every wide design:
# 0.35× and 0.40× on the two sets). From 5000 columns working sets solve the Lasso, whose restricted
# problems the rule does not reach (`solver.dcs._L1_LEAST_SQUARES_WORKING_SETS_FROM`).
L1_FROM_ZERO = True
# An ℓ1 norm with fewer rows than columns and a loss that is not a quadratic (logistic-L1; least squares
# starts there anyway, L1_FROM_ZERO) is checked from θ = 0 too where its first model cannot be singular by
# shape: that model takes the strongest min(pulled, L1_ROOM) entries ∇loss(0) pulls
# (`proximal_newton._candidates`), and it starts there where those are at most WIDE_L1_ROWS of the rows
# that count (`BoundLoss.resolved_coordinates`). The descent's 20 iterations first left a rough point
# from which the polish crawled: a 62 × 478 logistic-L1 of raw column scales at 0.46 λ_max ran 69 atoms
# into a model whose Hessian was singular (a full step 3e7 long, 30 halvings refused; 48 ms against
# skglm's 1.7 ms), 3.7 ms from θ = 0. Measured in one process, alternated, on 92 logistic-L1 problems
# drawn from three seeds (make_classification, correlated, raw-scale and shipped designs of 20-180 rows,
# 0.003-0.7 λ_max; benchmarks/RESULTS.md, twenty-seventh session): 35 of them 0.04-0.8× the time, none
# slower than 1.04×, the same objectives.
WIDE_L1_ROWS = 0.5


class Descent:
    r"""DCS on ``holder``'s factors, stopped on the KKT residual of the original problem.

    Args:
        problem: the problem (its ``value`` is the objective recorded in the history).
        holder: the `Variable` holding θ's factors, or None: made on first use (at the descent's
            dtype and ``grad0``'s device, ``start`` loaded), so a warm start that certifies as it is
            never registers a parametrization (a sixth of a warm-started solve in LassoCV on diabetes).
        constraint: the constraint registered on it (λ may change between runs: a budget search).
        loss, data: $θ -> \mathrm{loss}$ in the descent's dtype, and its data.
        options: the solve's options.
        grad0: ∇loss(0), whose norm scales the relative tolerance.
        exact: ``(loss, data)`` in float64 when the descent runs in float32 (certificates in float64).
        width, full: the narrowed factor width and the full one (see ``Constraint.working_width``);
            None and 0 for full-width factors.
        start: a warm start θ, or None (θ = 0).
    """

    def __init__(self, problem, holder: Variable | None, constraint: Constraint, loss, data, options: Options,
                 grad0: torch.Tensor, exact: tuple | None = None, width: int | None = None, full: int = 0,
                 start: torch.Tensor | None = None) -> None:
        self.problem, self._holder, self.constraint, self.loss, self.data = problem, holder, constraint, loss, data
        self.start = start
        self.options = options
        self.tol, self.progress = options.tol, options.progress
        self.grad0, self.dtype = grad0, grad0.dtype
        self.width, self.full = width, full
        self.scale = max(float(grad0.norm()), 1e-12)  # ‖∇loss(0)‖: the scale of relative KKT tolerances
        self.certifier = Certifier(loss, data, options.tol, options.tol * self.scale, options.inner, options.polish,
                                   exact)
        self.history: list = []
        self.point: torch.Tensor | None = None
        self.problem_size = math.prod(problem.shape)

    @property
    def holder(self) -> Variable:
        if self._holder is None:
            self._holder = Variable(self.problem.shape, self.grad0.device, self.dtype, self.constraint)
            if self.start is not None:
                self._holder.load(self.start.to(self.grad0.device))
        return self._holder

    @holder.setter
    def holder(self, value: Variable) -> None:
        self._holder = value

    def theta(self) -> torch.Tensor:
        """The current θ (detached): the warm start itself while no holder has been made."""
        if self._holder is None:
            start = self.start if self.start is not None else torch.zeros_like(self.grad0)
            return start.to(device=self.grad0.device, dtype=self.dtype)
        return self.holder.theta.detach()

    def closure(self):
        self.holder.zero_grad()
        objective = self.loss(self.holder.theta) + self.holder.decay()
        if torch.is_grad_enabled():
            objective.backward()
        return objective

    def _stepper(self):
        if self.options.method == "auto":  # the lean loop where it applies (symopt.solver.flat)
            lean = flat_stepper(self.holder, self.loss, self.options.inner, self.options.history_size)
            if lean is not None:
                return lean
        make = STEPPERS["lbfgs" if self.options.method == "auto" else self.options.method]
        return make(list(self.holder.parameters()), self.closure, self.options.inner, self.options.history_size)

    def _non_finite(self, theta: torch.Tensor) -> str | None:
        """Which of the iterate / its factors holds NaN or Inf, or None."""
        if not bool(torch.isfinite(theta).all()):
            return "the iterate holds"
        if self._holder is not None and not all(bool(torch.isfinite(p).all()) for p in self._holder.parameters()):
            return "the factors hold"
        return None

    def _broken(self, rule: StopRule, what: str) -> tuple[str, str]:
        """NaN / Inf met: ``diverged`` if the iterates were already running off to infinity (the
        overflow is the symptom), else ``nan``."""
        if rule.watchdog.growths:
            return "diverged", f"{what} after ‖θ‖ doubled while the objective fell (is the loss bounded below?){self._kept()}"
        return "nan", what + self._kept()

    def _kept(self) -> str:
        at = f"iteration {len(self.history)}" if self.history else "the start, θ = 0"
        return f"; x is the last finite certified point ({at})"

    def filled(self, point: torch.Tensor) -> bool:
        """Whether the rank of ``point`` fills a narrowed factor width (then ``widen`` acts)."""
        return self.width is not None and alive(self.constraint, point) >= self.width

    def widen(self, point: torch.Tensor) -> bool:
        """Double the factor width (up to full) and re-split ``point`` into the wider factors, if
        the rank fills the current width; returns whether it did. The KKT residual with the rank at
        the width only certifies the rank-bounded problem, so such a point is never accepted."""
        if not self.filled(point):
            return False
        wider = min(2 * self.width, self.full)
        self.width = wider if 4 * (wider + 8) <= self.full else None  # None: full width from now on
        self.constraint = self.constraint.with_width(self.width)
        self.holder = Variable(self.problem.shape, point.device, self.dtype, self.constraint)
        self.holder.load(point)
        return True

    def refactor(self) -> None:
        """Re-split the last certified point into factors. DCS zeros converge to $u = v = 0$, a
        stationary point: after λ decreases such an atom could not re-enter; ``right_inverse`` gives
        every zero a live factor again."""
        if self.point is not None and not self.holder.copies:
            self.holder.load(self.point)

    def _iterate(self, step, rule: StopRule, iteration: int, iterations: int | None = None, probe: bool = False):
        """One outer iteration: step (``iterations``, default the solve's ``inner``), then certify (``probe``:
        the certifier's, see ``DENSE_PROBE``);
        ``step`` None: no descent yet (a first check before any, the factors not made), θ as it is.
        ``(collapsed, theta, point, kkt, data, constraint)``, or a ``(status, message)`` verdict when
        NaN / Inf or a torch error stops it."""
        try:
            if step is None:  # the first check, before any descent and any factors: θ as it is
                collapsed, theta = None, self.theta()
            else:
                collapsed = step(iterations)
                theta = self.holder.theta.detach()
            broken = self._non_finite(theta)
            if broken:
                return self._broken(rule, f"iteration {iteration}: {broken} NaN or Inf")
            point, kkt, data, constraint = self.certifier.certify(theta, self.constraint, widens=self.filled,
                                                                  probe=probe)
        except NonFinite as err:
            return self._broken(rule, f"iteration {iteration}: {err}")
        except RuntimeError as err:  # e.g. a linear-algebra routine meeting NaN inside the loss
            return self._broken(rule, f"iteration {iteration}: torch raised {type(err).__name__}: {err}")
        return collapsed, theta, point, kkt, data, constraint

    def accept_start(self, start: float) -> tuple[str, str] | None:
        """Certify a warm start before any step: snap it, measure the KKT residual, and polish on
        its face (a smooth problem in its few free coordinates). Along a path the previous solution
        usually has the new solution's support, so the polish alone lands on the optimum, where a
        descent on the factors would spend its inner iterations first. ``("optimal", ...)`` when
        the certificate passes, else None (the descent runs, and the start is where it begins)."""
        theta = self.theta()
        if not bool(torch.isfinite(theta).all()):
            return None
        try:
            point, kkt, data, constraint = self.certifier.certify(theta, self.constraint)
        except RuntimeError:
            return None  # the descent meets the same error and reports it with its status
        self.certifier.start_run()
        target = self.tol * self.scale
        violation = self.constraint.infeasibility(point)
        if not (kkt <= target and violation <= self.tol * max(1.0, float(point.norm()))) or self.filled(point):
            return None
        objective = self.problem.value(point, data, constraint, self.certifier.certifying(self.constraint)[0])
        if not math.isfinite(objective):
            return None
        self.point = point
        self.history.append((solver_clock() - start, objective, kkt))
        return "optimal", "KKT residual and violation below tolerance at the warm start's face (polished, no descent)"

    def _early_check(self) -> tuple[int | None, bool]:
        """``(iterations, probe)``: the iterations of a run's first outer iteration when it should be shorter
        than ``inner`` (None: ``inner``), and whether its check probes θ = 0 for a dense answer (``DENSE_PROBE``:
        the certifier's ``probe``). Where θ is small (at most ``EARLY_ENTRIES`` atoms) and the loss gives
        its own curvature, the face polish (a Newton method on the face, proximal Newton for an
        ℓ1 or a group norm) finds the last atoms and their exact values once the descent has the rough
        structure; a few L-BFGS iterations give that, and the other ``inner`` ones before the first
        check were most of a small solve (diabetes Lasso: 20 iterations, then one Newton step
        certified). On wider θ the structure after a few iterations is too rough: the polish
        then drops atoms one active-set step at a time, which costs more than it saves. Under an ℓ1
        norm of entries none (0) where the polish's model from θ = 0 cannot be singular by shape
        (see ``QUADRATIC_EARLY_ITERATIONS`` and ``PULLED_AT_ZERO``; where more are pulled, a probe of θ = 0
        that hands over to the descent where its first model keeps its entries, ``DENSE_PROBE``, on more than
        ``DENSE_FROM_ZERO`` atoms; with fewer
        rows than columns ``WIDE_L1_ROWS``) and with least squares whatever its shape (``L1_FROM_ZERO``), and under a
        norm of groups with least squares where the entries of the groups ∇loss(0) pulls off zero are
        at most ``GROUPS_FROM_ZERO`` (with fewer rows than columns, the first group model capped to the
        strongest pulled groups, where it pulls at most ``PULLED_PER_ROW`` coordinates per row the
        curvature resolves and ``WIDE_FROM_ZERO`` in all, where those rows are few, or where it pulls
        at most ``CAPPED_PULLED_SHARE`` of the groups)."""
        if not self.options.polish or self.options.inner <= EARLY_ITERATIONS:
            return None, False
        if getattr(self.loss, "curvature", None) is None:
            return None, False
        # (atoms, not entries: a group's entries join and leave its face together, so a multi-task
        # Lasso of 64 rows × 10 targets has the structure of 64 columns)
        ids = self.constraint.atom_ids(self.problem_size, "cpu")
        atoms = self.problem_size if ids is None else int(ids.max()) + 1
        quadratic = getattr(self.loss, "quadratic", False)
        asks = getattr(self.loss, "determined", None)
        determined = asks is not None and asks()
        if self.constraint.entry_signs() is not None:
            # An ℓ1 norm of entries: the polish's active set takes the violators of θ = 0 in together, so
            # the first check comes before any descent where its first model cannot be singular by shape,
            # and on a small quadratic loss (its model is the objective: the first polish solves it).
            # See QUADRATIC_EARLY_ITERATIONS.
            # (least squares with fewer rows than columns too, however many entries are pulled: see
            # L1_FROM_ZERO)
            if (quadratic and (L1_FROM_ZERO or atoms <= EARLY_ENTRIES)) or (determined and (
                    quadratic or atoms <= DENSE_FROM_ZERO or self._pulled_at_zero() <= PULLED_AT_ZERO * atoms)):
                return QUADRATIC_EARLY_ITERATIONS, False
            # (most of more than DENSE_FROM_ZERO columns pulled: θ = 0 probed for a dense answer, see DENSE_PROBE)
            if determined and DENSE_PROBE:
                return QUADRATIC_EARLY_ITERATIONS, True
            # (any other loss with fewer rows than columns: where its first model's entries are few against
            # the rows, see WIDE_L1_ROWS)
            if not determined:
                first_model = min(self._pulled_at_zero(), L1_ROOM)
                if 0 < first_model <= WIDE_L1_ROWS * self._resolved_coordinates():
                    return QUADRATIC_EARLY_ITERATIONS, False
        elif ids is not None and quadratic:
            # A norm of groups with a quadratic loss: from θ = 0 its group model takes every pulled
            # group in together, where they fit in one model, and with fewer rows than columns (its first
            # model capped) where at most PULLED_PER_ROW coordinates per resolved row are pulled, where
            # those rows are few, or where at most CAPPED_PULLED_SHARE of the groups are pulled (see
            # GROUPS_FROM_ZERO, PULLED_PER_ROW and CAPPED_PULLED_SHARE)
            pulled = self._pulled_mask_at_zero()
            entries = int(pulled[ids.to(pulled.device)].sum())
            share = int(pulled.sum()) / atoms
            per_row = PULLED_PER_ROW * self._resolved_coordinates()
            if determined:
                if entries <= GROUPS_FROM_ZERO:
                    return QUADRATIC_EARLY_ITERATIONS, False
            elif entries <= min(per_row, WIDE_FROM_ZERO) or 0 < per_row <= WIDE_FROM_ZERO or share <= CAPPED_PULLED_SHARE:
                return QUADRATIC_EARLY_ITERATIONS, False
        if atoms > EARLY_ENTRIES:
            return None, False
        return EARLY_ITERATIONS, False

    def _resolved_coordinates(self) -> float:
        """The rank the loss's curvature can have at most (`BoundLoss.resolved_coordinates`; 0 where the
        loss does not say)."""
        answer = _resolved_coordinates(self.loss)
        return 0.0 if answer is None else answer

    def _pulled_mask_at_zero(self) -> torch.Tensor:
        """Which atoms ∇loss(0) pulls off zero (their dual atoms above λ), flat."""
        return (self.constraint.dual_atoms(self.grad0) > float(self.constraint.strength)).reshape(-1)

    def _pulled_at_zero(self) -> int:
        """How many atoms ∇loss(0) pulls off zero."""
        return int(self._pulled_mask_at_zero().sum())

    def run(self, budget: int, start: float) -> tuple[str, str]:
        """Up to ``budget`` outer iterations from the current factors (a fresh optimizer: λ may
        have changed since the last run). Returns ``(status, message)``."""
        # (a check before any descent takes θ as it is: the factors, their parametrization and the
        # stepper are made only when the descent runs; on a small logistic-L1 solve that the first
        # check certifies, making them was a tenth of the call)
        step = None
        previous = self.theta().clone()
        rule = StopRule(self.tol, self.tol * self.scale)
        self.certifier.start_run()
        early, probe = self._early_check()
        for _ in range(budget):
            iteration = len(self.history) + 1
            if step is None and not (early == 0 and self._holder is None):
                step = self._stepper()
            outcome = self._iterate(step, rule, iteration, early, probe=probe)
            stepped, early, probe = early != 0, None, False
            if len(outcome) == 2:
                return outcome
            collapsed, theta, point, kkt, data, constraint = outcome
            objective = self.problem.value(point, data, constraint, self.certifier.certifying(self.constraint)[0])
            if not (math.isfinite(objective) and math.isfinite(kkt)):
                return self._broken(rule, f"iteration {iteration}: the objective or its gradient is NaN or Inf")
            verdict = rule.collapsed(collapsed, kkt)
            if verdict:
                return verdict[0], f"iteration {iteration}: {verdict[1]}{self._kept()}"
            self.point = point
            violation = self.constraint.infeasibility(theta)
            self.history.append((solver_clock() - start, objective, kkt))
            trouble = rule.diverging(objective, float(theta.norm()))
            if trouble:
                return "diverged", f"iteration {iteration}: {trouble}{self._kept()}"
            if self.progress:
                print(f"[symopt.solve {self.problem.name}] iter {len(self.history)}: objective "
                      f"{objective:.10g}, KKT {kkt:.2e} (target {rule.target:.2e})", file=sys.stderr, flush=True)
            if self.widen(point):  # a fresh optimizer on the wider factors
                step = self._stepper()
                previous = self.holder.theta.detach().clone()
                continue
            # (a check before any descent has not moved θ: that is no stall, the descent starts now)
            verdict = rule.finished(kkt, violation, theta, previous if stepped else None)
            if verdict:
                return verdict
            previous = theta.clone()
        return "max_iter", f"KKT residual above {self.tol:g}·scale after {len(self.history)} iterations"


#: atoms of a certified point at most this many machine epsilons of its largest are rounding (`alive`)
ROUNDING_ATOMS = 1e3


def alive(constraint: Constraint, point: torch.Tensor) -> int:
    """Atoms of a certified point: its non-zero atoms, up to rounding (a low-rank matrix rebuilt from its
    snapped SVD has σ of ~1e-16 of its largest where it was snapped: ``ROUNDING_ATOMS`` machine epsilons
    of the largest atom count as zero). Not the snap's threshold, relative to the largest atom: the
    certified point keeps atoms below it that the optimum needs (proximal Newton's point, measured as it
    is: an entry of 1e-7 of the largest on a column of large scale), and counting them as zero sent a
    budget's search past every λ with its count (a Lasso on columns of scales 1e-2..1e2: "no λ with
    exactly 7 atoms within 40 rounds" at a λ where the path has 7)."""
    atoms = constraint.atoms(point)
    if atoms.numel() == 0:
        return 0
    cut = ROUNDING_ATOMS * torch.finfo(atoms.dtype).eps * float(atoms.max())
    return int((atoms > cut).sum())
