r"""Layer 3 — the face polish of a norm whose atoms are entries or groups of them: proximal Newton,
its quadratic models solved by active sets.

For $\min_θ ℓ(θ) + λ\,\mathrm{norm}(θ)$ with the ℓ1 norm (the Lasso, logistic-L1, the elastic net;
with $θ ≥ 0$ the non-negative Lasso) or a group norm $\sum_g c_g ‖θ_g‖_2$ over groups of coordinates
(the group lasso), near a point whose structure DCS has roughly found, each outer iteration

1. takes the candidates $C$: the point's non-zero atoms and the zero ones whose pull exceeds λ
   (`Constraint.dual_atoms`), and the loss's value, gradient $g$ and curvature $H$ on $C$'s entries
   (`DataTerm.curvature`: with a profiled intercept, its Schur complement);
2. solves the quadratic model $\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + λ\,\mathrm{norm}(x)$
   over $C$ (`solve_l1_quadratic`: feature-sign search, Lee, Battle, Raina & Ng 2006;
   `solve_group_quadratic`: an active set on groups, Newton on their face);
3. steps to its solution, backtracked on the true objective (proximal Newton: Lee, Sun & Saunders
   2014; glmnet's and skglm's outer loop), and stops when the KKT residual is below the target.

On least squares the model is the objective, and one outer iteration lands on the optimum (a model
solved by products, beyond a thousand entries, is solved inexactly and takes a few: see
``INEXACT_PRODUCTS_MODEL``). The
point of the split is where the work goes: a 5-iteration DCS point on standardised breast_cancer
has 28 of its 30 atoms alive where the optimum has 5, and each atom that leaves is one step of the
active set. Taken on the true objective, each step cost a curvature and one to four evaluations of
the loss over the data (a logistic evaluation solves for its intercept); on the model it costs a few
operations on a 30 × 30 matrix, and the data are read once per outer iteration. A group could not
leave the old face polish at all (its norm is not linear on the face): the descent dropped it, an
outer iteration at a time. Whatever it returns, the caller certifies by the KKT residual of the full
problem."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import lapack
from torch import Tensor

from .constraints import Constraint
from .l1_model import (as_array, block_factor, cholesky_lower, eigen_step, newton_step, one_blas_thread,
                       principal_block, solve_l1_quadratic)
from .l1_products import solve_l1_quadratic_by_products

# `optimality`'s face polish solves faces of at most NEWTON_FACE free coordinates by Newton's method
# first (the Hessian by autograd, vectorised): one step is exact on a quadratic face (least squares),
# a few on the log-loss, where L-BFGS took ~20 evaluations (measured: a 50-point Lasso path 500×2000
# spent half its time in face polishes).
NEWTON_FACE = 256
# An ℓ1 model of more than L1_FACE entries is solved by the products of its curvature where the loss offers
# them (`DataTerm.curvature_product`, `symopt.l1_products`): orthant-wise Newton–CG, whose products cost the
# design's stored entries on the model's columns. Before, such a model was declined and the descent went on:
# the sparse CSR 10000 × 100000 design at 0.01 λ_max (~4700 columns alive) took 4.4–6 s, 44× scikit-learn's
# sparse coordinate descent; with it (and the sparse curvature of `symopt.problems.design.weighted_gram`) 0.22–0.34 s
# (benchmarks/RESULTS.md, twenty-ninth session).
_L1_BY_PRODUCTS = True
# A products model is solved to INEXACT_PRODUCTS_MODEL times the KKT residual of the point it is taken at
# (inexact proximal Newton's forcing term; Lee, Sun & Saunders 2014), not to a hundredth of the caller's target
# alone: a log-loss model changes at the next outer iteration, and a least-squares model on the candidates is
# followed by one on the zeros it pulls; their exact solves were most of the time (~96 products a model). The
# outer iterations go on until the full problem's residual is below the target, so the answer is certified as
# before (on least squares no longer in one outer iteration). Measured, one process, alternated: logistic-L1
# sparse 6000 × 4000 at 0.01 λ_max 0.42 → 0.29 s, 8000 × 6000 at 0.005 0.92 → 0.39 s, dense 5000 × 2000 with an
# intercept at 0.003 λ_max 22 → 7.3 s (skglm 11–12 s there; a tenth of the residual read 0.30 / 0.47 / 8.4 s);
# then on least squares (the Lasso's products models had stayed exact): Gaussian 3000 × 2500 0.45 → 0.29–0.32 s,
# AR(1) 2500 × 2000 0.51 → 0.24–0.27 s, sparse 3000 × 10000 0.28 → 0.20 s, the 10000 × 100000 0.23 →
# 0.22 s, the same objectives (benchmarks/RESULTS.md, twenty-ninth session).
INEXACT_PRODUCTS_MODEL = 0.3
# A products model asked for at least SINGLE_PRODUCTS_FROM of its gradient's largest entry takes its products with a
# dense design in float32 (`DataTerm.curvature_product`'s ``single``): they read the design's columns twice and are
# bound by memory, and float32 halves it, its rounding (~1e-7) far below what such a model asks. Nearer the target
# the products stay float64; the step is taken on the true objective and certified in float64 either way. Measured:
# a dense 5000 × 2000 logistic-L1 with an intercept at 0.003 λ_max 8.4 → 5.9–6.5 s (every products model in
# float32: 5.2–5.5 s), the same objective and residual (benchmarks/RESULTS.md, twenty-ninth session).
SINGLE_PRODUCTS_FROM = 1e-4
# An ℓ1 model takes at most L1_FACE entries: its Hessian comes from the data term and its active set
# keeps a Cholesky factor that grows and shrinks with the face, so a model of ~400 entries (a
# non-negative Lasso 1000×5000 at 0.05 λ_max) costs a few milliseconds where, above the former limit
# of 256, the face solves by L-BFGS and the descent took 0.4 s.
L1_FACE = 1024
# A model of more than PRODUCTS_FROM entries (and at most L1_FACE) goes by products first where the loss offers
# them, on a budget of k / GRAM_PER_PRODUCT products for its k entries: forming its dense curvature costs what ~k/20
# products do (a Gram of 3000 × 932 columns 48 ms, a product 1.1 ms; 3000 × 450 12 against 0.29 ms, measured),
# and on well-conditioned columns a model takes 5-30. Over budget (correlated columns: digits' degree-2 features,
# whose models took thousands of products each), the model is formed densely, and so are the rest of the call's.
PRODUCTS_FROM = 256
GRAM_PER_PRODUCT = 16
# ... and k / GRAM_PER_HOST_PRODUCT where the products run by SciPy on NumPy arrays (a CPU CSR design's columns of few
# stored entries: `symopt.problems.design.host_columns`): there a product costs 10-60 µs and a dense model of 450-850
# entries 3-35 ms, its Gram and factorisation (~100-600 products). Found on logistic-L1, CSR 1000 × 5000 at 0.01
# λ_max: a model of 851 entries ran out at 53 products of the 54 it needed, and the dense models after it took 70 ms
# of a 175 ms solve. Measured in one process, alternated, the sparse sweep's 32 rows: that row 1.62× faster, 500 ×
# 20000 at 0.1 λ_max 1.35×, the others within 0.94-1.06× (their paths traced identical, or no model in this range).
GRAM_PER_HOST_PRODUCT = 4
# ... and a settled least-squares model (the last one, solved to a hundredth of the target: see ``settled`` in
# `proximal_newton`) on SETTLED_BUDGET times that: it asks ~1000 times less than its start's residual where the
# others ask 0.3 times, and the dense model it would fall back on costs the Gram and a factorisation from scratch
# with the products' work thrown away. Found on a sparse Lasso 1000 × 5000 at 0.01 λ_max: its settled model of 601
# entries ran out at 37 products of the 40 it needed, and the dense model then took 20 ms (a product: 0.09 ms).
# Measured in one process, alternated (benchmarks/RESULTS.md, thirty-sixth session): that row 0.87×, the sparse
# sweep's other Lasso rows and the large-answer sweep's dense ones unchanged (their settled models fit the budget,
# or their first products model was over it and the rest are dense).
SETTLED_BUDGET = 4
# A products model of a loss that is not quadratic (the log-loss) adds DAMPING · (its residual / the first model's)
# times H's diagonal to its curvature (Levenberg–Marquardt's damping, shrinking as the residual falls: the last
# models are Newton's): at small λ a logistic-L1's curvature on thousands of candidates is nearly singular (its
# well-classified samples weigh ~0) and its conjugate gradients crawled (~260 products a model on a sparse
# 3000 × 10000 design); the damped system is better conditioned. Measured on 18 logistic-L1 problems (the
# sparse sweep's 16, the large-answer sweep's sparse and digits rows; benchmarks/RESULTS.md, thirtieth session):
# 0.39-1.0× the time undamped on 17 (0.38 → 0.15 s, 1.70 → 0.87 s), 1.2× on one (29 → 35 ms); 0.1 and 1 tried.
# Where the residual is below λ, its share of λ bounds μ as well (`_damping`): a call that starts near its optimum
# (the certifier's finish) has a tiny first residual, μ stayed ~DAMPING for all its models, and the residual fell by
# ~0.7 a model (7-12 models where Newton's take 2-3); the sparse sweep's 16 logistic rows 0.80-1.05× the time, 0.92×
# summed, paired.
DAMPING = 0.3
# A group model takes at most GROUP_FACE entries: a ten-target Lasso on digits has 400-640 (its rows ×
# targets), and below this limit its polish dropped the rows that the face solve could not (7 outer
# iterations → 1, 0.45-0.55 s → 0.16 s).
GROUP_FACE = 1024
# The group model's active set joins one zero group a round (a round is two Newton steps on the face and
# the leaving test, ~0.5 ms on 30-60 coordinates), and Newton crawls where a group on the face heads
# to 0 (its norm's curvature w/‖x_G‖ grows without bound). Where at least JOINS_TOGETHER zero groups
# are pulled off zero at the start, accelerated proximal-gradient steps on the model (FISTA: each a
# product with H and a group shrinkage, ~35 µs) go first: they join and leave every group together, and
# the active set then starts on (nearly) the right face. Measured on the group lasso on real columns
# (breast_cancer, digits, diabetes, wine) and make_regression designs, 0.3 to 0.01 λ_max, with the
# check from θ = 0 in `symopt.solver.descent` (benchmarks/RESULTS.md, twentieth session): 0.33–1.11×
# the time, the same optima; with fewer pulled groups (linnerud's multi-task Lasso: 2 of 3) the
# steps cost more than the rounds they save (2.2 → 4.4 ms in a trial without the threshold).
# The steps stop once the set of non-zero groups has held for as many of them as one Newton step on
# that face costs (`_prefix_window`, at least PREFIX_CHECK), or after PREFIX_STEPS. The fixed span of
# PREFIX_CHECK steps stopped them on a pause of a set still shrinking: from a descent's dense point on a
# design with more columns than rows (make_regression 100×300 in groups of 3 at 0.01 λ_max: 83 groups
# alive, 47 at the optimum) they stopped at 52, and the active set took the last five off one a
# round at 1.6 ms each, where 60–100 more steps of 35 µs had all but one of them. Measured against the
# fixed span (benchmarks/RESULTS.md, twenty-second session; the group lasso at 0.3–0.01 λ_max on the
# group sweep's data sets, 5 more wide ones and the multi-task Lasso, then on 11 and 10 data sets not
# seen while choosing): 0.91, 0.88 and 0.95× the time in the geometric means, 0.34–0.6× at small λ
# where the optimum's face is large, at most 1.24× slower on a row (200×1200 at 0.1 λ_max); the same
# optima. The longest run was 261 steps.
# The steps go first from a dense start too (at least half the groups alive, on more than
# LEAVES_TOGETHER coordinates), where the active set would take groups off one a round: a descent's
# point on a design with more columns than rows holds most groups (make_regression 30×150 in groups of 3
# at 0.01 λ_max: 50 alive, 16 at the optimum; 81 Newton rounds, 145 ms → 15 rounds, 17 ms). On smaller
# faces a round is cheap and the steps cost more than they save (breast_cancer, digits and diabetes
# from θ = 0, whose second model starts on the optimum's face: 1.3–1.5× slower with them). Measured
# (benchmarks/RESULTS.md, twenty-second session; the three design sets of the wide group sweep, whole
# processes alternated): 0.98, 0.90 and 1.01× the time in the geometric means, 0.16–0.42× on the five
# rows where the crawl was (30×150 at 0.01 λ_max 149 → 23 ms, 80×560 at 0.01 224 → 61 ms, 50×250 at
# 0.1–0.01, 200×2000 at 0.03 282 → 109 ms), 1.1–1.16× in process on five rows where it was not.
# A set that has held for that window is taken as the face only where the model fell over the window by
# at most SETTLED_SHARE of its fall since the start (checked again each window while it holds; a product
# with H a check): from θ = 0 on a model of more columns than rows nearly every group joins at the first
# steps and the set holds for a while before the groups leave one by one (standardised digits' rows
# 200-229 in 32 groups of 2 at 0.01 λ_max: all 32 held for 20 steps while the model fell from -2.8 to -3.5
# of -3.64; the optimum has 20; 51 Newton rounds → 11, 55 → 15 ms). A start whose own set holds (a
# descent's point, a polish's second model) is on its face already: the hold alone ends its steps.
# Counted on the wide group sweep's 112 rows (with EXACT_GROUP_MODEL): 740 → 605 Newton rounds for 12004 →
# 12313 products with H, the same optima; timed with it in benchmarks/RESULTS.md (twenty-third session).
JOINS_TOGETHER = 4
LEAVES_TOGETHER = 96
PREFIX_STEPS = 400
PREFIX_CHECK = 4
SETTLED_SHARE = 0.01
# A group model of a least-squares loss is the loss itself: it is solved to EXACT_GROUP_MODEL × the outer
# tolerance (a millionth of the caller's target), not a hundredth of it, because the certifier polishes
# again any point whose residual is above a millionth of its target (`symopt.solver.certifier`): a model
# that stopped at its hundredth came back for a second model, a Hessian and its joins, where one or two
# more Newton steps on the same face finish it (Newton converges quadratically there). Counted on the
# wide group sweep's 112 rows: 179 → 128 models, 782 → 605 Newton rounds; on the group sweep and the
# multi-task Lasso (36 rows) 50 → 36 models; the same optima (benchmarks/RESULTS.md, twenty-third session).
EXACT_GROUP_MODEL = 1e-5
# A group model whose groups' scales (the root mean diagonal of their blocks of H) spread by more than
# SCALE_SPREAD is solved in coordinates that give each block a unit mean diagonal
# (`solve_group_quadratic_scaled`): its proximal-gradient steps are 1/L of the largest block, and on
# columns of raw scales they crawled (raw breast_cancer in groups of 3 at 1e-3 λ_max: 191 Newton rounds,
# 263 ms → 5 rounds, 8.5 ms; a random 30 × 81 design of column scales 1e-3 to 1e3 at 1e-4 λ_max: 58 s →
# 0.17 s). Not below it: on columns of one scale (the wide group sweep's 28 data sets) the scaling only
# moved each active set's path, and one of its 112 rows crawled instead (50 × 250 at 0.01 λ_max: 17 → 187
# rounds); with the spread no row of the sweeps changed (benchmarks/RESULTS.md, twenty-third session).
SCALE_SPREAD = 10.0
# The group model's active set returns after STALLED_ROUNDS rounds in a row whose Newton steps were blocked
# and whose proximal-gradient step left the model where it was (its fixed point to rounding): with the
# tolerance above, a finish polish asked 1e-18 of a model whose residual stays at 3e-16 on a singular face,
# and it ran the round limit (a 22 × 9 design with duplicated columns: 1006 rounds, 1 s → 11 ms). Counted
# on the sweeps: the same models and rounds, one product more a blocked round.
STALLED_ROUNDS = 3
# ... and after FISTA_AFTER_BLOCKED such rounds in a row (blocked Newton steps, no group leaving, the smallest
# group's drop refused, each followed by one proximal-gradient step of 1/L) the next goes on as the joins'
# accelerated steps from the current point, until its set of groups holds (`_fista_steps`): where Newton
# crawls on a face whose optimum puts a group at 0 but no group's zero is optimal with the others fixed,
# single steps of 1/L took 170 rounds (a model of 164 coordinates on 60 rows, make_regression 60×400 in
# groups of 4 at 0.01 λ_max, 131 ms in that model → 4 rounds, 5 ms). From the first blocked round on, the
# steps cost more than they saved (standardised digits at 0.01 λ_max, make_regression 100×300 at 0.3:
# 1.4-2×); from the third, the wide group sweeps read 0.9× (benchmarks/RESULTS.md, twenty-sixth session).
FISTA_AFTER_BLOCKED = 2
# A group model from θ = 0 whose loss's curvature resolves fewer coordinates than θ has (fewer rows than
# columns: `DataTerm.resolved_coordinates`) takes the strongest pulled groups that fit in PULLED_PER_ROW
# coordinates per resolved one and WIDE_FROM_ZERO in all (at least the strongest group), where every pulled
# group would make a model singular on most of its face; the next outer iterations take the others
# (`_candidates`). With it the descent's check from θ = 0 (`symopt.solver.descent`) reaches designs whose
# pulled groups do not fit: make_regression 60×300 of effective rank 15 in groups of 3 at 0.1 λ_max, 294
# coordinates pulled on 60 rows, 17 → 4.4 ms (benchmarks/RESULTS.md, twenty-sixth session).
PULLED_PER_ROW = 4
WIDE_FROM_ZERO = 512
# A least-squares model on ℓ1 takes every column where they all fit in its cap (`_candidates`: at most 32
# more than the non-zeros), not only those ∇loss pulls at its point: the model is then the problem itself
# and one model lands on the optimum, where the pulled columns alone left out a column that the first
# model's answer pulled (raw diabetes with an intercept at 0.1 λ_max: 9 of 10 columns pulled at θ = 0, a
# second model for the tenth). Measured on 96 small solves (diabetes, breast_cancer raw and standardised,
# wine, two generated designs of 20 and 30 columns; with and without an intercept and positivity; 0.3 to
# 1e-3 λ_max): 0.975× the time in the geometric mean, rows 0.70–1.09×, the same optima
# (benchmarks/RESULTS.md, twenty-fourth session).
_ALL_CANDIDATES = True
# ... and, away from θ = 0, on a design of at most PRODUCTS_FROM columns and at least as many rows that count
# (`DataTerm.resolved_coordinates`; a ridge counts as all of them), every column whether or not they fit in the
# cap: such a model is dense, not singular by its shape, and again the problem itself, so it lands on the optimum
# in one model. Where it does not apply (more columns, or fewer rows) a least-squares model within PRODUCTS_FROM
# entries fills its room (the non-zeros and L1_ROOM) with the strongest zeros whether or not ∇loss pulls them yet.
# Why: at small λ on columns of raw scales the models grew by a few entries each, every model's answer pulling
# zeros its own candidates had left out (a 251 × 483 Lasso with an intercept at 0.0016 λ_max: supports 32, 95, 145,
# 148, 152, 153, 153, seven models where skglm-class solvers take 2.4 ms). Measured on the four drawn option and
# raw-scale sweeps of seeds 1213 and 2718 and, not chosen on, seed 99's two and the single-solve, positive, wide-
# Lasso, large-answer and sparse sweeps, the settings' order rotated: it changes the models of 176 of 365 rows,
# 0.89× the time summed over them (0.91× in the geometric mean), rows 0.51–1.34×: small λ up to twice as fast,
# some 2–6 ms solves at 0.01–0.3 λ_max 1.1–1.3× slower (benchmarks/RESULTS.md, fifty-second session).
_EVERY_COLUMN = True
# ... and "at least as many rows" is at least EVERY_COLUMN_ROW_SHARE of the columns: a model of every column that
# the rows leave singular by at most a quarter of its columns. Why: on designs of a few rows fewer than columns at
# small λ the answer holds most of the rows' worth of columns, and the models grew to it 32 → 96 → 160 → 183 (a
# 232 × 248 Lasso on raw scales at 4.7e-5 λ_max: four models, 3.5× scikit-learn), where one model of every column
# lands on it (the ℓ1 active set solves a singular face through its null space: `symopt.l1_model`). Measured in
# one process, the order of the settings rotated with a control copy, on the drawn option and raw-scale sweeps of
# seeds 4711, 1213, 99, 2718, 9999, 555 and 73 and the wide-Lasso sweep: 0.85× the time summed over the 35 rows it
# changes of 386 (0.57–1.03×), and on seeds 99/2718/9999 0.83× over 19 (one 2.3 ms row 1.11×); a share of a half
# lost 1.38× on a 133 × 243 Lasso at 2.3e-7 λ_max (benchmarks/RESULTS.md, fifty-fourth session).
EVERY_COLUMN_ROW_SHARE = 0.75
# ... and at θ = 0 too, where the rows resolve every column and ∇loss(0) pulls more than the first model's room
# (L1_ROOM): its models would be the pulled L1_ROOM, then every column, and the first of the two is skipped (the
# model of every column on a design of as many rows is the problem itself: one model). Not where the rows resolve
# fewer: from θ = 0 a singular model's active set walked far more steps than from the first model's answer (a
# 178 × 224 Lasso at 1.2e-5 λ_max 1.59×, 126 × 156 at 6.8e-5 1.20×); not where the pulled columns fit the room,
# whose first model is often the last (a 4117 × 251 Lasso at 0.15 λ_max: 21 columns pulled, the Gram of all
# 251 columns 3.6–4.7× the time). Measured in one process, the order rotated with a control copy, on 150 drawn
# Lassos of 33–256 columns and 0.75–20× as many rows (Gaussian, AR(1), raw-scale; 1e-5..0.5 λ_max) and the
# option, raw-scale and wide-Lasso sweeps of seeds 4711 and 1213: 0.82× the time summed over the 148 rows it
# changes of 361 (geometric mean 0.76×, rows 0.55–1.05×) (benchmarks/RESULTS.md, fifty-fourth session).
_EVERY_COLUMN_FROM_ZERO = True
# ... and on more than PRODUCTS_FROM and at most EVERY_COLUMN_UP_TO columns (rows resolving the same share of them),
# every column away from θ = 0 where the model would be full (more zeros pulled than its room), the last model kept
# at least L1_ROOM non-zeros, and those with the pulled zeros are at least EVERY_COLUMN_IN_PLAY of the columns; that
# model is formed densely (other models of more than PRODUCTS_FROM entries go by the curvature's products first).
# Why: at small λ on designs past 256 columns the models grew 32 → 96 → 224 → 480 → …, those past 256 entries by
# the products, for an answer of most of the columns (a 297 × 295 AR(1) Lasso at 3.1e-5 λ_max: 59 ms; a 10515 × 559
# at 0.0013 λ_max: nine models, 650 ms), where one dense model of every column lands on it. Each condition avoids a
# measured loss: through the products such a model lost (1.10× in the geometric mean, rows 0.55–4.7×: the
# ill-conditioned curvature spent the products' budget, then was formed anyway); from θ = 0, or after a model that was
# not full, the dense Gram of every column lost where the answer is small (an 8373 × 327 elastic net at 0.43 λ_max
# 6.0×); after a first model that kept fewer than L1_ROOM, or with fewer than 0.7 of the columns in play, on tall
# designs at 0.004–0.09 λ_max (1.2–2.1×; past 384 columns a half in play still lost up to 1.75×). Measured in one
# process, the order rotated with a control copy, on drawn Lassos and elastic nets of 257–768 columns and 0.3–40× as
# many rows (Gaussian, AR(1), factor, raw scales; weights, intercepts; 1e-7..0.5 λ_max) and the option, raw-scale,
# wide-Lasso and large-answer sweeps; on seeds drawn after the rule was fixed 0.56× the time summed over the 56 rows
# it changes (geometric mean 0.61×, rows 0.31–1.03×), the same optima (benchmarks/RESULTS.md, fifty-fifth session).
EVERY_COLUMN_UP_TO = 768
EVERY_COLUMN_IN_PLAY = 0.7
# ... and only where the last model's answer kept at least EVERY_COLUMN_KEPT of its entries: a model that grows toward
# a large answer keeps nearly all it took (80-100% on the drawn designs above), while on correlated columns a model
# that dropped many of its entries was followed by many pulled zeros and a small answer. Found on designs not drawn
# here, the degree-2 polynomial features of scikit-learn's breast_cancer (569 × 495) and the degree-3 ones of
# diabetes (442 × 285), standardised, at 1e-4..0.3 λ_max (36 of 128 rows changed by the rule): the rows where the last
# model kept 56-65% read 0.80-1.96× (breast_cancer at 0.003 λ_max: models (32, 64, 495) for an answer of 84), those
# where it kept 79-100% 0.46-0.80×. On the drawn held-out rows above the last model had kept at least 0.75 in 71 of 75
# (benchmarks/RESULTS.md, fifty-fifth session).
EVERY_COLUMN_KEPT = 0.75
# An ℓ1 model takes at most L1_ROOM zero entries beyond θ's non-zeros (the strongest pulls; `_candidates`):
# from θ = 0 at most L1_ROOM in all, which `symopt.solver.descent` weighs against the rows (WIDE_L1_ROWS).
L1_ROOM = 32
# Logistic-L1 with enough rows (its first model cannot be singular by shape) on more than
# `symopt.solver.descent.DENSE_FROM_ZERO` columns where ∇loss(0) pulls most columns off
# zero is probed from θ = 0 (`symopt.solver.descent.DENSE_PROBE`): the polish's first model, on the L1_ROOM
# strongest pulls, is solved, and where it kept (nearly) every one of them the answer likely holds most of the pulled
# columns (columns of little correlation: a sparse 2776 × 394 design, 382 alive at the optimum), which the
# descent's 20 iterations reach in fewer curvatures than models that grow from 32 (11 outer iterations
# against 5: 1.2-1.7× slower from θ = 0); where it dropped some of them the pulls were shared by correlated
# columns (AR(1) and factor designs, 7-320 alive of 108-578: 0.29-0.84× the time from θ = 0) and the polish
# goes on from there. "Every one" is at least DENSE_KEPT of them: AR(1) designs whose first model kept 30-31 of 32
# held 181-282 columns at the optimum (1.07-1.29× slower from θ = 0), those that kept 6-29 held 7-190.
DENSE_KEPT = 15 / 16
# A least-squares group model takes every group where its zero groups fit in the room the pulled ones have
# (`_candidates`: half the non-zero groups and 8), for the reason of _ALL_CANDIDATES: a descent's point on a
# design of fewer rows than columns left one group out of the first model, whose answer then pulled three
# more (make_regression 200×600 of effective rank 66 in groups of 5 at 0.01 λ_max: three models of 400-600
# coordinates, 82 → 52 ms as one; 200×1200 in groups of 6 at 0.01: 170 → 114 ms). Measured in one process,
# alternated, on the wide group sweep's 112 rows and 240 drawn from three seeds (benchmarks/RESULTS.md,
# twenty-seventh session): it changes the candidates on 7 rows, 0.63-1.03× there, and none on the group
# sweep, the raw-column sweep and the multi-task Lasso.
_ALL_GROUPS = True
# A least-squares group model's first model away from θ = 0 in a call also takes the strongest zero groups its
# pulled ones leave room for (`_group_filled`: up to a quarter of the non-zero groups and 4, pulled or not, while
# the model holds at most GROUP_FILL_COORDINATES coordinates). Why: on designs wider than their rows the groups
# that belong to the answer join one model at a time, each pulled only once the last model's answer has moved
# the residual (make_regression 60×300 of effective rank 15 in groups of 3 at 0.03 λ_max: models of 87, 90 and
# 93 coordinates, one group joining each, 2-3 ms apiece); taken in at once they cost one model. Only the first:
# a point that has had its filled model is near its answer's face, and filling again on faces wider than the
# rows made the group model crawl (30×240 in groups of 2 at 0.01 λ_max: 2× the time). Not on a path's points
# (`proximal_newton`'s ``from_neighbour``), whose first model is most often the last. Measured in one process,
# the order of the settings rotated with a control copy, on the wide, drawn (seeds 1213, 2718, 4242), group,
# raw-column and multi-task sweeps: 0.96× the time summed over the 128 rows it changes, rows 0.70-1.13×; on
# three seeds it was not chosen on (9999, 555, 73) 0.95×, rows 0.50-1.09× (benchmarks/RESULTS.md, fifty-third
# session). A room of half the non-zero groups and 8 gained as much but lost up to 1.23×; without the cap on
# coordinates, models of 900 coordinates grew further and lost up to 1.7×.
_GROUP_FILL = True
GROUP_FILL_COORDINATES = 384
_OUTER = 30  # proximal Newton iterations at most (quadratic convergence: 1 on least squares, 3-8 on the log-loss)
_BACKTRACKS = 30
_ARMIJO = 1e-4
# Where the group model's Newton step on a face is cut back by its line search, the groups it carries past 0 (those
# whose point z_j + d_j faces away from z_j: z_jᵀ(z_j + d_j) ≤ 0, the group analogue of an entry changing sign) are
# set to 0 and the others take the full step, if that lowers the model more than the cut step (`_face_newton_steps`).
# Why: a group on its way to 0 has a norm curvature w/‖z_j‖ the step's model underrates, and the halved steps
# crawled toward its kink, one face round after another (a 30 × 90 design in groups of 2 at 0.03 λ_max: 22 Newton
# rounds → 8). The ℓ1 model's projected steps are the same idea (`symopt.l1_model`). Measured in one process, the
# settings' order rotated with a control copy, over the 190 rows of eleven group sweeps whose rounds change (wide,
# drawn seeds 1213, 2718, 31337, 4242, 9999, 555, 73, group, raw-column, multi-task): 0.88× and 0.91× the time
# summed on the two halves, rows 0.46–1.31× (benchmarks/RESULTS.md, fifty-third session). Also trying it where
# the line search finds no lower point at all, or going on to the next round at once after such a step (without
# the blocked round's proximal step): the same within noise (0.876× and 0.882× against 0.880× and 0.883×), not kept.
_PROJECTED_GROUP_STEP = True


def solve_group_quadratic(hessian: Tensor, grad: Tensor, start: Tensor, groups: Tensor, weights: Tensor,
                          tol: float = 0.0, max_rounds: int | None = None,
                          row_block: tuple[Tensor, int] | None = None) -> Tensor:
    r"""$\arg\min_x g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0) + \sum_j w_j ‖x_{G_j}‖_2$ (the
    group lasso's model; ``groups[i]`` is coordinate i's group j, ``weights[j]`` its $w_j = λ c_j$) by
    an active set on groups. On the face of the non-zero groups the objective is smooth, and damped
    Newton solves it (the norm's Hessian in closed form, $w_j (I - u u^\top)/‖x_{G_j}‖$ with
    $u = x_{G_j}/‖x_{G_j}‖$, backtracked on the model, or where it was cut back, the groups the full step
    carries past 0 set to 0 if that is lower; along a direction of zero curvature, doubled
    to the kink where a group reaches 0). Every few Newton steps the non-zero groups whose zeros are
    optimal with the others fixed ($‖∇_{G_j} - H_{G_j G_j} x_{G_j}‖ ≤ w_j$) leave together; where
    Newton's step is blocked (a group on its way to 0 makes the face ill-conditioned) a
    proximal-gradient step on the model goes on; at the face's optimum the zero group that violates
    most ($‖∇_{G_j}‖ > w_j$) joins at a proximal-gradient step from 0 on its block; none: the optimum
    (to ``tol``). Where at least ``JOINS_TOGETHER`` zero groups are pulled off zero at the start,
    accelerated proximal-gradient steps on the model go first (`_groups_join_together`): every group
    joins or leaves in them together, and the active set starts near the optimum's face. At most
    ``max_rounds`` rounds (default ``max(1000, 20·groups + 60)``); the last point is returned.

    ``row_block = (B, T)`` says that $H = B ⊗ I_T$: the coordinates are the rows of a matrix with T
    columns, row by row, each row one group, and the targets do not interact (the multi-task
    Lasso's least squares). A Newton step on r rows then solves $(B + S) D - S\,\mathrm{diag}(c)\,U = -R$
    ($S$ the rows' $w_j/‖x_j‖$, $U$ their unit rows, $c_j = u_j^\top d_j$) by one r × r Cholesky
    factorisation and one r × r solve for $c$, instead of factoring the rT × rT matrix (64 × 64 against
    640 × 640 for ten targets on digits).

    Examples:
        >>> import torch
        >>> H, g = torch.eye(3, dtype=torch.float64), torch.tensor([-3.0, -4.0, 0.5], dtype=torch.float64)
        >>> groups, w = torch.tensor([0, 0, 1]), torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> [round(v, 6) for v in solve_group_quadratic(H, g, torch.zeros(3, dtype=torch.float64), groups, w, 1e-12).tolist()]
        [2.4, 3.2, 0.0]
    """
    with one_blas_thread():  # (NumPy: a round is a few small operators; see symopt.l1_model)
        x = _group_rounds(as_array(hessian), as_array(grad), as_array(start), groups.numpy(), as_array(weights), tol,
                          max_rounds, None if row_block is None else (as_array(row_block[0]), row_block[1]))
    return torch.from_numpy(x).to(start.dtype)


def _group_rounds(hessian: np.ndarray, grad: np.ndarray, start: np.ndarray, groups: np.ndarray, weights: np.ndarray,
                  tol: float, max_rounds: int | None, row_block: tuple[np.ndarray, int] | None) -> np.ndarray:
    """`solve_group_quadratic` on arrays (``row_block``'s B an array)."""
    count = weights.size
    same = groups[:, None] == groups[None, :]
    matrix, tasks = (hessian, None) if row_block is None else row_block  # (the products' H or B)
    if row_block is None:
        within = hessian * same  # H's diagonal blocks: H_{GG} x_G for every group in one product
    else:  # (with H = B ⊗ I_T each row's block is B_jj I_T)
        within = np.repeat(np.diagonal(matrix), tasks)

    def model(z: np.ndarray) -> float:
        return _array_group_model(matrix, tasks, grad, start, z, groups, weights)

    # (at least 1000: on rank-deficient models with a few groups, property tests found the proximal
    # steps that follow a blocked Newton step needing 200-1000 rounds; a round of a few groups is cheap)
    limit = max(1000, 20 * count + 60) if max_rounds is None else max_rounds
    # (lipschitz: H's largest eigenvalue where the joins computed it; else None until a proximal step needs it)
    x, lipschitz = _groups_join_together(hessian, grad, start, groups, weights, row_block)
    stalled = 0  # blocked rounds in a row whose proximal step left the model where it was
    blocked = 0  # blocked rounds in a row that took a proximal-gradient step (see FISTA_AFTER_BLOCKED)
    for _ in range(limit):
        norms = _array_group_sizes(x, groups, count)
        alive = norms > 0
        settled = True
        if alive.any():
            # two Newton steps, then the leaving test: a group on its way to 0 makes the face
            # ill-conditioned (its norm's curvature is w/‖x_G‖), and Newton alone would crawl there.
            # Two, not three: on the suite's group and multi-task rows (breast_cancer, digits) the
            # third step was mostly such a crawl (Newton steps 13/13/23/18 → 10/12/12/12 at the same
            # optima); one a round took more rounds and a second outer iteration on three of six.
            x, settled = _face_newton_steps(hessian, grad, start, x, alive[groups], groups, weights, same, tol, 2,
                                            row_block)
            norms = _array_group_sizes(x, groups, count)
            alive = norms > 0
        gradient = grad + _array_product(matrix, x - start, tasks)
        # each group's gradient with it set to 0, the others fixed
        at_zero = gradient - (within @ x if tasks is None else within * x)
        pull = _array_group_sizes(at_zero, groups, count)
        with np.errstate(divide="ignore", invalid="ignore"):  # (a zero weight: never leaves by this test)
            leaving = alive & (pull / weights <= 1.0)
        if leaving.any():  # their zeros are optimal, each with the others fixed: they leave together
            x = np.where(leaving[groups], 0.0, x)
            blocked = 0
            continue
        if not settled:
            # Newton's step is blocked, most often by a group on its way to 0 (its norm's curvature
            # w/‖x_G‖ grows without bound): the smallest group is set to 0 where that lowers the
            # model (a property test found 3 groups taking 219 rounds of proximal steps to drop one);
            # else a proximal-gradient step on the model (step 1/L) goes on
            smallest = int(np.where(alive, norms, math.inf).argmin())
            dropped = np.where(groups == smallest, 0.0, x)
            level = model(x)
            if model(dropped) < level:
                x = dropped
                continue
            if lipschitz is None:
                lipschitz = _largest_eigenvalue(matrix)  # (B ⊗ I_T has B's eigenvalues)
            blocked += 1
            accelerated = None
            if blocked > FISTA_AFTER_BLOCKED:  # (a crawl: accelerated steps until the set holds)
                accelerated, after, _ = _fista_steps(matrix, tasks, grad, start, groups, weights, lipschitz, alive,
                                                     begin=x)
            if accelerated is not None and after < level:
                x = accelerated
            else:  # (FISTA is not monotone: where its steps did not lower the model, one step of 1/L)
                ahead = x - gradient / lipschitz
                sizes = _array_group_sizes(ahead, groups, count)
                shrink = np.maximum(1 - (weights / lipschitz) / np.maximum(sizes, 1e-300), 0.0)
                x = ahead * shrink[groups]
            # Proximal-gradient steps (descent steps) that no longer lower the model, blocked Newton
            # between them, STALLED_ROUNDS in a row: x is the model's fixed point to rounding, the optimum
            # as far as the model resolves it. A ``tol`` below that (a finish polish asks 1e-18 of a
            # model whose residual stays at 3e-16) ran the round limit: 1000 rounds, 1 s.
            stalled = 0 if model(x) < level else stalled + 1
            if stalled >= STALLED_ROUNDS:
                return x
            continue
        blocked = 0
        excess = np.where(alive, -math.inf, pull - weights)
        j = int(excess.argmax())
        if not float(excess[j]) > tol:
            return x
        members = groups == j
        block = hessian[np.ix_(members, members)]
        top = float(np.linalg.eigvalsh(block)[-1]) if block.size else 1.0
        # the proximal-gradient step from 0 on the block: a descent step off zero (x is this call's own
        # array: every step above returns a new one)
        x[members] = -(float(excess[j]) / max(top, 1e-300)) * at_zero[members] / float(pull[j])
    return x


def _group_model_solution(hessian: Tensor, grad: Tensor, start: Tensor, groups: Tensor, weights: Tensor, tol: float,
                          row_block: tuple[Tensor, int] | None) -> Tensor:
    r"""The group model's solution: where every group is one coordinate with a positive weight the model is
    the weighted ℓ1 one, $\sum_j w_j |x_j|$, solved as `solve_l1_quadratic` after $x_j = u_j / w_j$ (λ = 1,
    $H' = W^{-1} H W^{-1}$; its violations asked to ``tol`` / max w, so that x's are within ``tol``):
    that active set steps along a singular face's null space to the exact kink and keeps its Cholesky
    factor, where the group model's crawled (a correlated 46 × 97 design in groups of 1 at 1e-4 λ_max:
    4.3 s → 0.05 s, measured); else `solve_group_quadratic_scaled`."""
    if row_block is None and groups.numel() == weights.numel() and bool((weights > 0).all()):
        per = (1.0 / weights)[groups]
        u = solve_l1_quadratic(*_in_coordinates(per, hessian, grad, start), 1.0, False, tol / float(weights.max()))
        return u * per
    return solve_group_quadratic_scaled(hessian, grad, start, groups, weights, tol, row_block=row_block)


def _in_coordinates(per: Tensor, hessian: Tensor, grad: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(H', g', u_0)``: a quadratic model $g^\top (x - x_0) + \tfrac12 (x - x_0)^\top H (x - x_0)$ in the
    coordinates $u = x / \mathrm{per}$ (x = per ⊙ u): $H' = PHP$, $g' = P g$, $u_0 = x_0 / \mathrm{per}$."""
    return hessian * per[:, None] * per[None, :], grad * per, start / per


def solve_group_quadratic_scaled(hessian: Tensor, grad: Tensor, start: Tensor, groups: Tensor, weights: Tensor,
                                 tol: float = 0.0, row_block: tuple[Tensor, int] | None = None) -> Tensor:
    r"""`solve_group_quadratic` after the change of variables $x_{G_j} = u_{G_j} / s_j$ that gives every group's
    diagonal block of H a unit mean diagonal ($s_j^2$ the mean of $H_{ii}$ over $i ∈ G_j$; with ``row_block``
    $B_{jj}$): the model in $u$ is again a group lasso's, with $H' = S^{-1} H S^{-1}$, $g' = S^{-1} g$ and
    weights $w_j / s_j$ (a scalar per group keeps each group's norm a norm of that group), and the
    same optimum mapped back. Its proximal-gradient steps (1/L) and its Newton steps then see columns of
    one scale: on columns of raw scales from 1e-3 to 1e3 (a 15 × 86 design in groups of 2 at 1e-4
    λ_max) the model took 3895 rounds and 6 s unscaled, its proximal steps crawling at 1/L of the largest
    column, and 0.04 s scaled. ``tol`` is asked of $u$'s residual times $\min_j 1/s_j$, so that x's
    residual ($S$ times $u$'s) is within ``tol`` too. A group whose block is 0 (constant columns) keeps
    its scale. Where the scales spread by at most ``SCALE_SPREAD`` the model is solved as it is.

    Examples:
        >>> import torch
        >>> H = torch.diag(torch.tensor([1e6, 1e6, 1e-4], dtype=torch.float64))
        >>> g, groups = torch.tensor([-3e6, -4e6, -1e-4], dtype=torch.float64), torch.tensor([0, 0, 1])
        >>> w = torch.tensor([1e3, 1e-6], dtype=torch.float64)
        >>> x = solve_group_quadratic_scaled(H, g, torch.zeros(3, dtype=torch.float64), groups, w, 1e-12)
        >>> [round(v, 6) for v in x.tolist()]     # (the group lasso's closed form on a diagonal H)
        [2.9994, 3.9992, 0.99]
    """
    if row_block is None:
        diagonal = hessian.diagonal()
        sizes = torch.zeros(weights.numel(), dtype=hessian.dtype).index_add_(0, groups, torch.ones_like(diagonal))
        means = torch.zeros(weights.numel(), dtype=hessian.dtype).index_add_(0, groups, diagonal) / sizes.clamp_min(1)
    else:  # (each group a row of the block B: its diagonal block is B_jj I_T)
        means = row_block[0].diagonal().clone()
    scales = torch.where(means > 0, means, torch.ones_like(means)).sqrt()
    if not float(scales.max()) > SCALE_SPREAD * float(scales.min()):
        return solve_group_quadratic(hessian, grad, start, groups, weights, tol, row_block=row_block)
    per = (1.0 / scales)[groups]
    scaled_block = None if row_block is None else (row_block[0] / scales[:, None] / scales[None, :], row_block[1])
    u = solve_group_quadratic(*_in_coordinates(per, hessian, grad, start), groups, weights / scales,
                              tol * float(per.min()), row_block=scaled_block)
    return u * per


def _groups_join_together(hessian: np.ndarray, grad: np.ndarray, start: np.ndarray, groups: np.ndarray,
                          weights: np.ndarray,
                          row_block: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, float | None]:
    r"""``(x, L)``: the group model's point after accelerated proximal-gradient steps from its ``start`` (FISTA,
    Beck & Teboulle 2009: $x_{k+1} = \mathrm{prox}_{ψ/L}(y_k - ∇q(y_k)/L)$, each group shrunk by
    $\max(0, 1 - w_j / (L ‖·‖))$, and $y$ extrapolated with FISTA's momentum), where at least
    ``JOINS_TOGETHER`` zero groups are pulled off zero at the start ($‖g_{G_j}‖ > w_j$: the model's
    gradient there is ``grad``), or where the start is dense (at least half the groups and
    ``JOINS_TOGETHER`` alive, on more than ``LEAVES_TOGETHER`` coordinates: those that must go then leave
    together); else a copy of the start and L None (not computed). The steps stop once
    the set of non-zero groups has been the same for `_prefix_window` steps (what one Newton step on its
    face costs in these steps, at least ``PREFIX_CHECK``; not before step 2 · ``PREFIX_CHECK``) and the
    model fell over them by at most ``SETTLED_SHARE`` of its fall since the start (checked again every
    window while the set holds), or after ``PREFIX_STEPS``; their last point is kept only where the
    model is lower there than at the start (FISTA is not monotone). L is H's largest eigenvalue
    (`_largest_eigenvalue`), returned for the active set's own proximal steps. The point returned is a
    new array."""
    count = weights.size
    alive = _array_group_sizes(start, groups, count) > 0
    pulled = int(((~alive) & (_array_group_sizes(grad, groups, count) > weights)).sum())
    if pulled < JOINS_TOGETHER and not (  # (a dense start: asked only where too few zero groups are pulled)
            int(alive.sum()) >= max(JOINS_TOGETHER, count // 2) and int(alive[groups].sum()) > LEAVES_TOGETHER):
        return start.copy(), None
    matrix, tasks = (hessian, None) if row_block is None else row_block
    lipschitz = _largest_eigenvalue(matrix)
    point, level, first = _fista_steps(matrix, tasks, grad, start, groups, weights, lipschitz, alive)
    if level < first:
        return point, lipschitz  # (a product of the last step: not the start)
    return start.copy(), lipschitz


def _fista_steps(hessian: np.ndarray, tasks: int | None, grad: np.ndarray, start: np.ndarray, groups: np.ndarray,
                 weights: np.ndarray, lipschitz: float, alive: np.ndarray,
                 begin: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """`_groups_join_together`'s steps on arrays: ``(their last point, the model there, the model where they
    began)``, from ``begin`` (default: the model's centre ``start``; ``alive``: its non-zero groups);
    ``tasks``: H is the row block B of $B ⊗ I_T$ (T = ``tasks``), else None."""
    count = weights.size

    def model(x):
        return _array_group_model(hessian, tasks, grad, start, x, groups, weights)

    origin = start if begin is None else begin
    ahead, point, momentum = origin.copy(), origin, 1.0
    shrunk = weights / lipschitz
    # steps the set of non-zero groups has been the same; what it must hold for; held at the next check
    held, window, due = 0, None, 0
    # (the model where the steps begin: at the centre d = 0, only the norms)
    first = float(weights @ _array_group_sizes(start, groups, count)) if begin is None else model(begin)
    # where the set appeared, then the model's value at its last check; None while the start's own set
    # holds (a start on its face: a descent's point, a polish's second model), which the hold alone ends
    anchor: np.ndarray | float | None = None
    for step in range(PREFIX_STEPS):
        moved = ahead - (grad + _array_product(hessian, ahead - start, tasks)) / lipschitz
        shrink = np.maximum(1 - shrunk / np.maximum(_array_group_sizes(moved, groups, count), 1e-300), 0.0)
        following = moved * shrink[groups]
        after = (1 + math.sqrt(1 + 4 * momentum * momentum)) / 2
        ahead = following + ((momentum - 1) / after) * (following - point)
        point, momentum = following, after
        now = shrink > 0
        if not np.array_equal(now, alive):
            alive, held, window, anchor = now, 0, None, following
            continue
        held += 1
        if step >= 2 * PREFIX_CHECK - 1 and held >= PREFIX_CHECK:
            if window is None:  # (once per set: it does not change while the set holds)
                window = due = _prefix_window(now, groups, hessian.shape[0] * (tasks or 1),
                                              None if tasks is None else (hessian, tasks))
            if held >= due:
                # (a set that held is final only where the model has all but stopped falling on it:
                # see SETTLED_SHARE)
                level = model(point)
                if isinstance(anchor, np.ndarray):
                    anchor = model(anchor)
                if anchor is None or anchor - level <= SETTLED_SHARE * (first - level):
                    return point, level, first
                anchor, due = level, held + window
    return point, model(point), first


def _array_product(matrix: np.ndarray, v: np.ndarray, tasks: int | None) -> np.ndarray:
    r"""$H v$ (``matrix`` = H); with ``tasks`` ($H = B ⊗ I_T$, ``matrix`` = B, see `solve_group_quadratic`)
    $B V$ on v's rows: for ten targets on digits a 64 × 64 product instead of a 640 × 640 one (the
    model's products with H were a fifth of a multi-task Lasso's polish, measured)."""
    return matrix @ v if tasks is None else (matrix @ v.reshape(-1, tasks)).reshape(-1)


def _array_group_sizes(x: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    r"""$‖x_{G_j}‖_2$ for each of the ``count`` groups (``groups[i]``: coordinate i's group)."""
    return np.sqrt(np.bincount(groups, weights=x * x, minlength=count))


def _array_group_model(matrix: np.ndarray, tasks: int | None, grad: np.ndarray, start: np.ndarray, x: np.ndarray,
                       groups: np.ndarray, weights: np.ndarray) -> float:
    r"""The group model $g^\top d + \tfrac12 d^\top H d + \sum_j w_j ‖x_{G_j}‖_2$, $d = x - x_0$ (``matrix``,
    ``tasks`` as in `_array_product`)."""
    d = x - start
    return float(d @ (grad + 0.5 * _array_product(matrix, d, tasks))) + \
        float(weights @ _array_group_sizes(x, groups, weights.size))


def _prefix_window(alive: np.ndarray, groups: np.ndarray, size: int, row_block: tuple[np.ndarray, int] | None) -> int:
    r"""How long the set ``alive`` of non-zero groups must hold before the proximal-gradient steps stop:
    the steps that cost one Newton step on its face, a Cholesky factorisation of $k^3/3$ flops ($k$ its
    coordinates; with ``row_block`` its rows, a Newton step of `_row_block_step`) against a product
    with H of $2m^2$ ($m$ = ``size`` coordinates; $2 r^2 T$ with the row block's r rows and T
    targets), and at least ``PREFIX_CHECK``. Large faces on a model of few rows are where a stop too
    early costs most: each group the active set then takes off is a round of two such steps."""
    if row_block is None:
        face, cost = int(alive[groups].sum()), 2.0 * size * size
    else:
        rows, tasks = row_block[0].shape[0], row_block[1]
        face, cost = int(alive.sum()), 2.0 * rows * rows * tasks
    return max(PREFIX_CHECK, int(face ** 3 / 3 / cost))


def _group_model(hessian: Tensor, grad: Tensor, start: Tensor, x: Tensor, groups: Tensor, weights: Tensor,
                 row_block: tuple[Tensor, int] | None = None) -> float:
    r"""`_array_group_model` for tensors (``row_block = (B, T)`` for $H = B ⊗ I_T$)."""
    matrix, tasks = (hessian, None) if row_block is None else row_block
    return _array_group_model(as_array(matrix), tasks, as_array(grad), as_array(start), as_array(x), groups.numpy(),
                              as_array(weights))


def _group_sizes(x: Tensor, groups: Tensor, count: int) -> Tensor:
    r"""$‖x_{G_j}‖_2$ for each of the ``count`` groups (``groups[i]``: coordinate i's group)."""
    return torch.zeros(count, dtype=x.dtype).index_add_(0, groups, x * x).sqrt_()


_EXACT_EIGENVALUE = 96  # up to this size `_largest_eigenvalue` asks LAPACK


def _largest_eigenvalue(matrix: np.ndarray, steps: int = 30) -> float:
    """An upper estimate of a PSD matrix's largest eigenvalue: up to ``_EXACT_EIGENVALUE`` coordinates
    the exact one; beyond, 30 power iterations from a fixed start, times 1.1 (the proximal step 1/L
    must not be too long), at most its Gershgorin bound. A full eigendecomposition of the 640 × 640
    model of a ten-target Lasso was a tenth of the solve."""
    if matrix.shape[0] <= _EXACT_EIGENVALUE:
        # exact and cheaper here: 0.16 ms for eigvalsh at 64 coordinates against 0.46 ms for the 30
        # products and their host reads (eigvalsh 0.57 ms against 0.29 ms at 128, measured with torch)
        return max(float(np.linalg.eigvalsh(matrix)[-1]), 1e-300)
    bound = float(np.abs(matrix).sum(1).max())
    if not bound > 0:
        return 1e-300
    v = np.full(matrix.shape[0], 1.0 / math.sqrt(matrix.shape[0]))
    estimate = 0.0
    for _ in range(steps):
        w = matrix @ v
        size = float(np.linalg.norm(w))
        if not size > 0:
            break
        estimate, v = size, w / size
    return min(1.1 * estimate, bound) if estimate > 0 else bound


def _face_newton_steps(hessian: np.ndarray, grad: np.ndarray, start: np.ndarray, x: np.ndarray, free: np.ndarray,
                       groups: np.ndarray, weights: np.ndarray, same: np.ndarray, tol: float, steps: int,
                       row_block: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, bool]:
    """Damped Newton on the face of the non-zero groups (``free``: their coordinates) of the group
    lasso's model: ``(x with the face's coordinates moved, settled)``, settled when the face's gradient
    is below ``tol`` or a step lowers the model only by its rounding (the others untouched). A step the line
    search cut back is replaced by the full step with the groups it carries past 0 set to 0 where that lowers
    the model more (`_PROJECTED_GROUP_STEP`); those groups then leave the face. With
    ``row_block`` (see `solve_group_quadratic`) the steps use $H = B ⊗ I_T$ (`_row_block_step`)."""
    face = np.flatnonzero(free)
    ids = groups[face]
    count = weights.size
    face_block = _face_row_block(face, row_block)
    dense: tuple[np.ndarray, tuple] | None = None  # (H on the face, its same-group pairs), built when needed
    matrix, tasks = (hessian, None) if row_block is None else row_block  # (the products' H or B)

    def product(v):
        return _array_product(matrix, v, tasks)

    def sizes(z):  # the face's groups' norms
        return _array_group_sizes(z, ids, count)

    def full_at(z):
        full = x.copy()
        full[face] = z
        return full

    def value(z) -> float:  # the model with the face at z (the other groups are 0)
        return _array_group_model(matrix, tasks, grad, start, full_at(z), groups, weights)

    z = x[face].copy()
    current = value(z)
    settled = False
    for _ in range(steps):
        gradient = (grad + product(full_at(z) - start))[face]
        norms = sizes(z)
        if (norms[ids] <= 0).any():
            break  # a group reached 0 on the way: the caller's active set decides
        unit = z / norms[ids]
        with np.errstate(divide="ignore", invalid="ignore"):  # (the groups off the face have norm 0: unread)
            scale = (weights / norms)[ids]
        residual = gradient + weights[ids] * unit
        if float(np.linalg.norm(residual)) <= tol:
            settled = True
            break
        step = None if face_block is None else _row_block_step(face_block, scale, unit, residual)
        level = False
        if step is None:
            # H + the norm's Hessian w_j (I - u u^T) / ‖z_j‖ on each group's block: written into a copy
            # of H on the diagonal and the same-group pairs only (dense products with the pattern were
            # most of a step on the 640-coordinate face of a ten-target Lasso)
            if dense is None:
                dense = (principal_block(hessian, face), np.nonzero(principal_block(same, face)))
            block, pairs = dense  # (pairs: (i, j) of the face in one group)
            curvature = block.copy()
            curvature[np.diag_indices_from(curvature)] += scale
            np.add.at(curvature, pairs, -(scale[pairs[0]] * unit[pairs[0]] * unit[pairs[1]]))
            step, level = _face_step(curvature, residual, tol)
        slope = float(step @ residual)
        if not slope < 0:
            break  # no descent direction from the face's curvature: the caller's proximal step goes on
        # The model along z + t·step: its smooth part is the quadratic current_smooth + t a + t² b / 2 (a
        # from the gradient at z, b = stepᵀ H step, one product with H), so a trial costs the groups'
        # norms, not a product with H each (a tenth of a ten-target Lasso's solve went to those)
        spread = np.zeros_like(x)
        spread[face] = step
        a, b = float(step @ gradient), float(spread @ product(spread))
        norm_now = float(weights @ sizes(z))

        def line(t: float) -> float:
            return current + t * a + 0.5 * t * t * b + float(weights @ sizes(z + t * step)) - norm_now

        t = 1.0
        if level:
            # Along a direction of zero curvature the model is linear until a group's norm reaches 0
            # (a singular H: more columns than the data tell apart): doubled while it keeps falling,
            # to that kink, where the leaving test takes the group off the face
            ahead = line(1.0)
            for _ in range(60):
                further = line(2 * t)
                if not further < ahead:
                    break
                t, ahead = 2 * t, further
        rounding = 4 * np.finfo(z.dtype).eps * max(abs(current), 1e-300)
        for _ in range(40):
            trial = z + t * step
            trial_value = line(t)
            # (or the full Newton step within the model's rounding: near the face's optimum it lowers the
            # model by about r²/curvature, below rounding from a residual of ~1e-10 on, while it still
            # squares the residual; Armijo's test there reads rounding alone, and its backtracking left
            # breast_cancer in groups of 3 at 0.3 λ_max at a residual of 1e-10 against a tolerance of
            # 1e-12, for a second model the certifier asked)
            if trial_value <= current + _ARMIJO * t * slope or (
                    t == 1.0 and not level and trial_value <= current + rounding):
                break
            t *= 0.5
        else:
            break  # no Newton step lowers the model (a group passing 0 on the way): not settled
        if t < 1.0 and not level and _PROJECTED_GROUP_STEP:
            # The full step was cut back, most often by groups it carries past 0 (see _PROJECTED_GROUP_STEP):
            # those groups at 0 and the others at the full step, where that lowers the model more
            target = z + step
            facing = np.bincount(ids, weights=z * target, minlength=count) <= 0.0  # (per group: zᵀ(z + step) ≤ 0)
            if facing[ids].any():
                projected = np.where(facing[ids], 0.0, target)
                projected_value = value(projected)
                if projected_value < trial_value:
                    z, current = projected, projected_value
                    break  # (groups left the face: the caller's active set goes on from there)
        if current - trial_value <= rounding:
            z, current = trial, trial_value
            if t == 1.0 and not level:
                continue  # (the next step's check reads the residual the full step left)
            # The model no longer falls beyond its rounding. Settled only where the face's gradient is
            # small too: on a rank-one model a damped step along a nearly flat direction also fell by
            # rounding alone with a face residual of 4e-3 (a property test's draw), and the caller's
            # proximal step is what moves on from there.
            settled = float(np.linalg.norm(residual)) <= max(tol, 1e-9 * (1.0 + float(np.abs(grad).max())))
            break
        z, current = trial, trial_value
    return full_at(z), settled


def _face_step(block: np.ndarray, residual: np.ndarray, tol: float) -> tuple[np.ndarray, bool]:
    """``(step, level)`` on a face: Newton's $-H^{-1} r$ by Cholesky where the block is clearly positive
    definite (its pivots above 1e-10 of their diagonal entries, `block_factor`: a quarter of the time
    of the eigendecomposition on 40-120 coordinates, measured), else `eigen_step`'s. A block positive
    definite only by rounding (a group model of 42 coordinates on 9 rows) gave a Newton step of 6e15
    along its near-null space, which the line search took, and the model's iterates then grew to 1e154
    (a stress test; the eigendecomposition sees that space as flat)."""
    factor = block_factor(block, block)
    step = None if factor is None else newton_step(factor, residual)
    if step is not None:
        return step, False
    return eigen_step(block, residual, tol)[:2]


def _face_row_block(face: np.ndarray, row_block: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int] | None:
    """``(B on the face's rows, T)`` where the face is whole rows of T coordinates each (as a group
    model's face of row groups is), else None."""
    if row_block is None:
        return None
    block, tasks = row_block
    if face.size == 0 or face.size % tasks:
        return None
    rows = face.reshape(-1, tasks)
    first = rows[:, :1]
    if not ((first % tasks == 0).all() and np.array_equal(rows - first, np.broadcast_to(np.arange(tasks), rows.shape))):
        return None
    index = first[:, 0] // tasks
    return block[np.ix_(index, index)], tasks


def _row_block_step(face_block: tuple[np.ndarray, int], scale: np.ndarray, unit: np.ndarray,
                    residual: np.ndarray) -> np.ndarray | None:
    r"""Newton's step $-(B ⊗ I_T + \mathrm{blockdiag}_j\, s_j (I - u_j u_j^\top))^{-1} r$ on r whole rows, or
    None where $B + S$ is not positive definite or the step does not solve the system to 1e-6 of
    ``r`` (a singular face: the caller then factors the whole face, which handles it). With $M = B + S$: $D = M^{-1}(-R) + M^{-1} S\,\mathrm{diag}(c)\,U$, and
    $c_j = u_j^\top d_j$ solves $(I - (M^{-1} S) ∘ (U U^\top))\,c = \mathrm{rowdot}(M^{-1}(-R), U)$."""
    block, tasks = face_block
    rows = block.shape[0]
    s = scale.reshape(rows, tasks)[:, 0]  # (the norm's curvature is one number per row)
    U, R = unit.reshape(rows, tasks), residual.reshape(rows, tasks)
    factor, info = cholesky_lower(block + np.diag(s))
    if info:
        return None
    free_part = lapack.dpotrs(factor.T, -R, lower=0)[0]
    coupling = lapack.dpotrs(factor.T, np.diag(s), lower=0)[0]  # M⁻¹ S
    system = np.eye(rows) - coupling * (U @ U.T)
    try:
        c = np.linalg.solve(system, (free_part * U).sum(1))
    except np.linalg.LinAlgError:
        return None
    D = free_part + coupling @ (c[:, None] * U)
    # The system is solved only as well as it is conditioned (singular where B is and a row's unit
    # direction is free of S: one target, or a flat row): the step is checked on the operator itself,
    # cheap in this form, and the caller factors the whole face where it falls short.
    applied = block @ D + s[:, None] * (D - (D * U).sum(1, keepdims=True) * U)
    if not float(np.linalg.norm(applied + R)) <= 1e-6 * float(np.linalg.norm(R)):
        return None
    return D.reshape(-1)


def _candidates(constraint: Constraint, theta: Tensor, grad: Tensor, lam: float, limit: int,
                ids: Tensor | None = None, every: bool = False, first_room: int | None = None,
                every_column: bool = False, fill: bool = False, every_column_at_zero: bool = False,
                every_column_when_full: bool = False, last_size: int | None = None) -> Tensor | None:
    """The entries a quadratic model is taken on: θ's non-zero atoms and the zero atoms whose pull
    exceeds λ, at most ``alive + L1_ROOM`` of those for entries (ℓ1) and ``alive // 2 + 8`` for groups (the
    strongest pulls: the next outer iteration takes the others), every pulled group at θ = 0 (with
    ``first_room``, the strongest whose entries fit in it, at least one: see ``PULLED_PER_ROW``); with
    ``every`` (a least-squares loss, see ``_ALL_CANDIDATES`` and ``_ALL_GROUPS``) every entry where all fit
    in that cap (every group where the zero ones fit in it and θ is not 0); for entries, with ``every`` and θ
    not 0, every entry where ``every_column`` (see ``_EVERY_COLUMN``; at θ = 0 where ``every_column_at_zero`` and
    more entries are pulled than the room, see ``_EVERY_COLUMN_FROM_ZERO``; where ``every_column_when_full``, past
    ``PRODUCTS_FROM`` entries, where more are pulled than the room, enough are in play and the non-zeros are most
    of the last model's ``last_size`` entries: ``EVERY_COLUMN_UP_TO``),
    else with ``fill`` a room within ``PRODUCTS_FROM`` filled with the strongest zeros, pulled or not; for groups,
    with ``every`` and ``fill`` and θ not 0, the pulled groups topped up with the strongest others
    (`_group_filled`); None when their entries are more than ``limit``. ``ids`` maps θ's flat entries to their
    atoms (`Constraint.atom_ids`; None: every entry is an atom).

    The cap keeps a model from taking in atoms that belong at zero, each a column of its curvature
    and, in the group model's active set (one group joins at a time), a step: from a working set's
    zero start (100 candidates, all pulled) that was 86 steps. At θ = 0 the group model's
    proximal-gradient steps take its pulled groups in together (`JOINS_TOGETHER`), so there the cap
    only cost outer iterations (a 500×200 design in 40 groups: 0.45× the time without it, measured
    with the check from θ = 0 in `symopt.solver.descent`). The ℓ1 model's active set takes its
    violators in together, so there the cap only bounds the curvature, and a structure of ~400
    atoms (a non-negative Lasso 1000×5000) is reached in five outer iterations, not eight
    (0.21-0.24 s → 0.18-0.21 s, paired). A DCS point after a few iterations, or a path's previous
    point, has few pulled atoms (0 or 1 on the small real problems of `benchmarks.small_solves`)."""
    alive = (constraint.atoms(theta) > 0).reshape(-1)
    excess = (constraint.dual_atoms(grad).reshape(-1) - lam).masked_fill(alive, 0.0)
    pulled = excess > 0
    count = int(alive.sum())
    # (from θ = 0 every pulled group: they join together, see JOINS_TOGETHER)
    room = count + L1_ROOM if ids is None else (count // 2 + 8 if count else pulled.numel())
    if ids is not None and not count and first_room is not None:
        sizes = torch.bincount(ids.reshape(-1), minlength=pulled.numel())
        if int(sizes[pulled].sum()) > first_room:
            order = torch.argsort(excess, descending=True)  # (the pulled groups first: excess > 0)
            fits = (torch.cumsum(sizes[order], 0) <= first_room) & pulled[order]
            fits[0] = bool(pulled[order[0]])
            pulled = torch.zeros_like(pulled)
            pulled[order[fits]] = True
    pulled_count = int(pulled.sum())
    over_room = pulled_count > room
    if over_room and every and ids is None and not count and every_column_at_zero:
        return torch.ones_like(theta, dtype=torch.bool)  # (every column: at most PRODUCTS_FROM, see _every_column)
    if (over_room and every and ids is None and every_column_when_full and last_size is not None
            and count >= max(L1_ROOM, EVERY_COLUMN_KEPT * last_size)
            and count + pulled_count >= EVERY_COLUMN_IN_PLAY * theta.numel()):
        return torch.ones_like(theta, dtype=torch.bool)  # (at most EVERY_COLUMN_UP_TO: see there)
    if over_room:
        pulled = torch.zeros_like(pulled)
        pulled[torch.topk(excess, room).indices] = True
    if every and ids is None and pulled.numel() <= room:
        pulled = torch.ones_like(pulled)
    if every and ids is not None and count and _ALL_GROUPS and pulled.numel() - count <= room:
        pulled = ~alive  # (every group: see _ALL_GROUPS)
    elif every and fill and ids is not None and count and _GROUP_FILL:
        pulled = _group_filled(pulled, alive, excess, ids, count)
    chosen = alive | pulled
    if every and ids is None and count and _EVERY_COLUMN and (every_column or fill):
        chosen = _filled(chosen, excess, count, every_column)
    entries = chosen if ids is None else chosen[ids]
    return entries.view_as(theta) if int(entries.sum()) <= limit else None


def _group_filled(pulled: Tensor, alive: Tensor, excess: Tensor, ids: Tensor, count: int) -> Tensor:
    """The zero groups a least-squares group model away from θ = 0 takes (``count`` non-zero groups ``alive``;
    ``excess``: each zero group's pull minus its weight): the ``pulled`` ones, topped up with the strongest of
    the others to a quarter of ``count`` and 4 in all, as long as the model holds at most
    ``GROUP_FILL_COORDINATES`` coordinates (see ``_GROUP_FILL``)."""
    taken = alive | pulled
    sizes = torch.bincount(ids.reshape(-1), minlength=pulled.numel())
    used = int(sizes[taken].sum())
    room = count // 4 + 4 - int(pulled.sum())
    if room <= 0 or used >= GROUP_FILL_COORDINATES:
        return pulled
    order = torch.argsort(excess.masked_fill(taken, -math.inf), descending=True)[:room]
    order = order[~taken[order]]  # (fewer zero groups than the room: the taken ones sort last)
    fits = used + torch.cumsum(sizes[order], 0) <= GROUP_FILL_COORDINATES
    pulled = pulled.clone()
    pulled[order[fits]] = True
    return pulled


def _filled(chosen: Tensor, excess: Tensor, count: int, every_column: bool) -> Tensor:
    """A least-squares ℓ1 model's candidates away from θ = 0 (``count`` non-zeros; ``excess``: each zero's pull
    minus λ, 0 at the non-zeros): every entry where ``every_column``, else, where the room of ``count +
    L1_ROOM`` entries stays a dense model's (at most ``PRODUCTS_FROM``), ``chosen`` topped up to it with the
    strongest zeros it left out (see ``_EVERY_COLUMN``)."""
    if every_column:
        return torch.ones_like(chosen)
    if count + L1_ROOM > PRODUCTS_FROM:
        return chosen
    room = min(count + L1_ROOM - int(chosen.sum()), int((~chosen).sum()))  # (no more than the zeros left out)
    if room <= 0:
        return chosen
    chosen = chosen.clone()
    chosen[torch.topk(excess.masked_fill(chosen, -math.inf), room).indices] = True
    return chosen


def proximal_newton(loss, constraint: Constraint, point: Tensor, target: float,
                    probe: bool = False, from_neighbour: bool = False) -> Tensor | None:
    r"""θ after proximal Newton from ``point`` (see the module docstring), or None where it does not
    apply: a kind whose norm is neither ℓ1 on entries (`Constraint.entry_signs`) nor a norm of
    coordinate groups (`Constraint.atom_ids`, its atoms $c_g‖θ_g‖_2$), a loss without its own
    ``value_and_grad`` and ``curvature``, or more candidate entries at the start than
    ``L1_FACE`` (ℓ1) or ``GROUP_FACE`` (groups). Stops when the KKT residual is below a tenth
    of ``target``, when a model's step no longer lowers the objective, or after ``_OUTER`` iterations.

    Args:
        loss: the bound loss (``value_and_grad``, ``curvature``).
        constraint: the kind and its λ.
        point: the start (a snapped point: its zeros exact).
        target: the absolute KKT residual the caller certifies against.
        probe: from θ = 0 under an ℓ1 norm, None after the first model where that model was full (more
            entries pulled than its ``L1_ROOM``) and kept at least ``DENSE_KEPT`` of them: a sign that the answer holds
            most of what ∇loss(0) pulls, which the descent reaches in fewer curvatures (see
            ``DENSE_PROBE``).
        from_neighbour: ``point`` is a neighbouring problem's optimum (a path's previous point), whose models
            take only the zeros ∇loss pulls (``_EVERY_COLUMN`` does not apply): there the first model is most
            often the last, and every column or a filled room only made it larger (a 50-λ path on a 500 × 2000
            Lasso: 1.35× the time, measured).
    """
    norm = _norm_it_takes(loss, constraint, point)
    if norm is None:
        return None
    signs, ids = norm
    lam, nonnegative = float(constraint.strength), signs == "nonnegative"
    loss_is_quadratic = bool(getattr(loss, "quadratic", False))
    theta = point.detach().clone()
    value, grad = loss.value_and_grad(theta)
    objective = float(value) + lam * float(constraint.induced_norm(theta))
    tolerance = 0.1 * target
    first_room = _first_group_room(loss, theta.numel()) if ids is not None and loss_is_quadratic else None
    # (an ℓ1 model beyond L1_FACE entries goes by the curvature's products where the loss offers them)
    by_products_offered = _L1_BY_PRODUCTS and ids is None and getattr(loss, "curvature_product", None) is not None
    face_limit = GROUP_FACE if ids is not None else theta.numel() if by_products_offered else L1_FACE
    every_column = ids is None and loss_is_quadratic and not from_neighbour and _every_column(
        loss, theta.numel(), face_limit)
    every_column_at_zero = _EVERY_COLUMN_FROM_ZERO and every_column and _every_column(
        loss, theta.numel(), face_limit, share=1.0)
    every_column_when_full = (ids is None and loss_is_quadratic and not from_neighbour and not every_column
                              and _every_column(loss, theta.numel(), face_limit, up_to=EVERY_COLUMN_UP_TO))
    kept = None  # a least-squares products model's (candidates, single, operator)
    products_lost = False  # a model within L1_FACE ran over its products' budget
    first_residual = None
    # After a damped step (t < 1) the last model's solution on its candidates, the next model's first iterate:
    # θ then holds the union of the old and the new non-zeros, and a model started there walks most of
    # them back off one step at a time, where the last solution is most often its new optimum's face (see
    # `_first_iterate`). None after a full step, where θ is that solution.
    last_model = None
    last_size = None  # (the last model's entries: how many of them its answer kept, see EVERY_COLUMN_KEPT)
    group_filled = False  # (whether a group model away from θ = 0 has been taken)
    for outer in range(_OUTER):
        # (the caller polishes a point above its target: the first check would only confirm it)
        residual = constraint.kkt_residual(theta, grad) if outer else None
        if outer and residual <= tolerance:
            break
        # (a group model fills its room on the call's first model away from θ = 0 alone: see _GROUP_FILL)
        fill = not from_neighbour and (ids is None or not group_filled)
        candidates = _candidates(constraint, theta, grad, lam, face_limit, ids,
                                 every=loss_is_quadratic and _ALL_CANDIDATES, first_room=first_room,
                                 every_column=every_column, fill=fill, every_column_at_zero=every_column_at_zero,
                                 every_column_when_full=every_column_when_full, last_size=last_size)
        group_filled = group_filled or (ids is not None and bool(theta.any()))
        if candidates is None:
            return None if outer == 0 else theta  # (what the iterations so far reached: the caller certifies it)
        if not bool(candidates.any()):
            return theta  # θ = 0, and no zero is pulled off it: optimal
        size = last_size = int(candidates.sum())
        # (a model within L1_FACE goes by products too from PRODUCTS_FROM entries, on a budget: see there)
        # (a model of every column on a design EVERY_COLUMN_UP_TO covers is formed densely: see there)
        dense_every_column = every_column_when_full and size == theta.numel()
        by_products = signs is not None and (size > L1_FACE or (
            by_products_offered and size > PRODUCTS_FROM and not products_lost and not dense_every_column))
        row_block = None
        if signs is None:
            groups, weights = _local_groups(constraint, theta, candidates, ids, lam)
            row_block = _row_block(loss, theta, candidates, groups)
        on_candidates, pulls = theta[candidates], grad[candidates]  # (on θ's device: a products model's)
        # (on the CPU in float64: k ≤ L1_FACE numbers, and each step reads a few of them back)
        start = on_candidates.to("cpu", torch.float64)
        local = pulls.to("cpu", torch.float64)
        x = None
        if by_products:
            if residual is None:  # (the first outer iteration's, not measured above)
                residual = constraint.kkt_residual(theta, grad)
            # A least-squares model on the candidates of the last one (none joined: the set has settled) is the
            # problem itself on them: solved exactly, it is the last model (measured: a Gaussian 3000 × 2500 Lasso
            # took six more models of the same 1137 entries, each to 0.3 of the last residual)
            # (and so is one whose candidates were all the last model's, some of them left: none joined. A
            # sparse 6000 × 4000 Lasso's model of 567 entries after one of 569 was one more inexact model
            # before the settled one; the sweep's sparse Lassos at 0.01 λ_max 0.92–0.99× the time, paired)
            same = kept is not None and torch.equal(candidates, kept[0])
            settled = loss_is_quadratic and kept is not None and (same or not bool((candidates & ~kept[0]).any()))
            model_tol = 0.01 * tolerance if settled else max(0.01 * tolerance, INEXACT_PRODUCTS_MODEL * residual)
            single = model_tol >= SINGLE_PRODUCTS_FROM * float(pulls.abs().max())
            # (and its products are the last model's where the curvature is constant: the same columns)
            operator = (kept[2] if settled and same and kept[1] == single
                        else loss.curvature_product(theta, candidates, single=single))
            if operator is None and size > L1_FACE:
                return None
            if loss_is_quadratic:
                kept = (candidates, single, operator)
            per_product = (GRAM_PER_HOST_PRODUCT if operator is not None and hasattr(operator[0], "on_arrays")
                           else GRAM_PER_PRODUCT)
            budget = (None if size > L1_FACE
                      else max(1, int(size / per_product)) * (SETTLED_BUDGET if settled else 1))
            if operator is not None:
                product, diagonal = operator
                if not loss_is_quadratic and DAMPING:
                    first_residual = residual if first_residual is None else first_residual
                    product, diagonal = _damped(product, diagonal, _damping(residual, first_residual, lam))
                x = solve_l1_quadratic_by_products(product, diagonal, pulls, on_candidates, lam, nonnegative, model_tol,
                                                   max_products=budget,
                                                   initial=_first_iterate(last_model, candidates, on_candidates))
            if x is None:  # (over budget: this problem's curvature is ill-conditioned, formed from now on)
                products_lost = True
            else:
                x = x.to("cpu", torch.float64)
        if x is None:
            # (with several least-squares targets the curvature is the rows' block once per target: formed
            # from it, not computed again)
            hessian = (loss.curvature(theta, candidates) if row_block is None
                       else torch.kron(row_block[0], torch.eye(row_block[1], dtype=row_block[0].dtype)))
            if hessian is None:
                return None
            # The model's own tolerance: far below the caller's, so that on least squares (where it is
            # exact) one outer iteration is the last.
            if signs is not None:
                x = solve_l1_quadratic(hessian.to("cpu", torch.float64), local, start, lam, nonnegative,
                                       0.01 * tolerance, initial=_first_iterate(last_model, candidates, start))
            else:
                x = _group_model_solution(hessian.to("cpu", torch.float64), local, start, groups, weights,
                                          (EXACT_GROUP_MODEL if loss_is_quadratic else 0.01) * tolerance, row_block)
        if probe and outer == 0 and signs is not None and not bool(start.any()) and _kept_a_full_model(
                constraint, grad, lam, candidates, x):
            return None  # (see DENSE_PROBE)
        move = x - start
        if signs is not None:  # (the ℓ1 norm: its change on the candidates directly)
            change = lam * (float(x.abs().sum()) - float(start.abs().sum()))
        else:
            change = _group_norm(x, groups, weights) - _group_norm(start, groups, weights)
        decrease = float(local @ move) + change
        if not decrease < 0:
            break  # the model sees no descent: the point is its optimum to the model's resolution
        direction = move.to(theta.device, theta.dtype)
        full = x.to(theta.device, theta.dtype)
        rounding = 8 * torch.finfo(theta.dtype).eps * max(abs(objective), 1e-300)
        if -decrease <= rounding:
            # The model's decrease is below what the objective can resolve (raw breast_cancer's
            # logistic-L1 at a KKT residual of 1e-7: 1e-17 against an objective of 0.22): Armijo's test
            # only sees rounding there, and backtracked to t = 2e-6 six times. The model's step is
            # taken if the objective does not rise beyond rounding, and the polish ends.
            trial, _, trial_objective = _replaced(loss, constraint, theta, candidates, full)
            if trial_objective <= objective + rounding:
                theta = trial
            break
        t, accepted = 1.0, False
        for _ in range(_BACKTRACKS):
            # (the full step writes the model's solution itself: its zeros exact, not 0 to rounding)
            trial, trial_grad, trial_objective = _replaced(loss, constraint, theta, candidates,
                                                            full if t == 1.0 else theta[candidates] + t * direction)
            if trial_objective <= objective + _ARMIJO * t * decrease:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        last_model = (candidates, x) if t < 1.0 and signs is not None else None
        theta, grad, objective = trial, trial_grad, trial_objective
    return theta


def _first_iterate(last_model: tuple[Tensor, Tensor] | None, candidates: Tensor, like: Tensor) -> Tensor | None:
    r"""The ℓ1 model's first iterate on ``candidates`` (a mask shaped like θ), as ``like`` (its device and dtype):
    the last model's solution ``last_model = (its candidates, x)`` there (0 on the candidates it did not hold), or
    None (θ itself) without one.

    Why: a model is the same problem from any first iterate (its expansion point stays θ), and after a
    damped step $θ + t(x - θ)$ the point's non-zeros are the union of θ's and x's. From there a dense model
    on more non-zeros than the data has rows walks its singular face's null space off one coordinate a step:
    logistic-L1 on a 500 × 20000 CSR design at 0.01 λ_max took 111 such steps from a point of 611 non-zeros
    (~60 ms) where the last solution's 438-coordinate face is positive definite (none); a products model
    started there spent ~50 ms against ~20 (3000 × 10000 at 0.01 λ_max)."""
    if last_model is None:
        return None
    spread = torch.zeros(candidates.shape, dtype=like.dtype, device=like.device)
    spread[last_model[0].to(like.device)] = last_model[1].to(like.device, like.dtype)
    return spread[candidates.to(like.device)]


def _damping(residual: float, first_residual: float, lam: float) -> float:
    """μ of a products model of the log-loss (see ``DAMPING``): ``DAMPING`` times the residual's share of this call's
    first products model's, and of λ where the residual is already below λ."""
    return DAMPING * min(1.0, residual / first_residual, residual / lam)


def _damped(product, diagonal: Tensor, mu: float):
    """``(v ↦ Hv + μ D v, (1 + μ) D)`` for the products ``v ↦ Hv`` and diagonal D of H (see ``DAMPING``); on NumPy
    arrays too where the products offer that (``product.on_arrays``)."""
    def damped(v: Tensor) -> Tensor:
        return product(v) + mu * diagonal * v

    offered = getattr(product, "on_arrays", None)
    if offered is not None and diagonal.device.type == "cpu":
        host_diagonal = mu * diagonal.numpy()
        damped.on_arrays = lambda v: offered(v) + host_diagonal * v
    return damped, (1 + mu) * diagonal


def _kept_a_full_model(constraint: Constraint, grad: Tensor, lam: float, candidates: Tensor, x: Tensor) -> bool:
    """Whether an ℓ1 model from θ = 0 was full (``L1_ROOM`` entries taken of more pulled) and its solution ``x``
    kept at least ``DENSE_KEPT`` of them (see ``DENSE_PROBE``)."""
    taken = int(candidates.sum())
    pulled = int((constraint.dual_atoms(grad) > lam).sum())
    return taken == L1_ROOM < pulled and int((x != 0).sum()) >= DENSE_KEPT * taken


def _norm_it_takes(loss, constraint: Constraint, point: Tensor) -> tuple[str | None, Tensor | None] | None:
    """``(entry signs, atom ids)`` of the norm `proximal_newton` takes at ``point`` — signs for ℓ1 on entries
    (`Constraint.entry_signs`), else the coordinate groups' ids (`Constraint.atom_ids`) — or None where it
    does not apply: another norm, or a loss without its own ``value_and_grad`` and ``curvature``."""
    if getattr(loss, "value_and_grad", None) is None or getattr(loss, "curvature", None) is None:
        return None
    signs = constraint.entry_signs()
    ids = None if signs is not None else constraint.atom_ids(point.numel(), point.device)
    return None if signs is None and ids is None else (signs, ids)


def declines_only_for_size(loss, constraint: Constraint, point: Tensor) -> bool:
    """Whether `proximal_newton` returns None with this loss and kind only where its first model's candidates
    exceed ``GROUP_FACE``: a norm of coordinate groups it takes (`_norm_it_takes`) with a least-squares loss
    (the group and multi-task Lasso). Its caller then knows the descent has not found the structure yet (see
    `symopt.optimality.polish_on_face`)."""
    norm = _norm_it_takes(loss, constraint, point)
    return norm is not None and norm[0] is None and bool(getattr(loss, "quadratic", False))


def _every_column(loss, coordinates: int, limit: int, share: float | None = None, up_to: int | None = None) -> bool:
    """Whether a least-squares ℓ1 model away from θ = 0 takes every one of θ's ``coordinates`` (see
    ``_EVERY_COLUMN``): at most ``up_to`` (and ``limit``) of them, and the loss's curvature resolves at
    least ``share`` of them (default ``EVERY_COLUMN_ROW_SHARE``; 1 asks whether it resolves them all, the rule
    at θ = 0, ``_EVERY_COLUMN_FROM_ZERO``), or does not say."""
    if not _EVERY_COLUMN or coordinates > min(PRODUCTS_FROM if up_to is None else up_to, limit):
        return False
    resolved = _resolved_coordinates(loss)
    return resolved is None or resolved >= (EVERY_COLUMN_ROW_SHARE if share is None else share) * coordinates


def _resolved_coordinates(loss) -> float | None:
    """The rank ``loss``'s curvature can have at most (`BoundLoss.resolved_coordinates`), or None where it does
    not say."""
    asks = getattr(loss, "resolved_coordinates", None)
    return asks() if asks is not None else None


def _first_group_room(loss, coordinates: int) -> int | None:
    """The entries a group model from θ = 0 may take (see ``PULLED_PER_ROW``): ``PULLED_PER_ROW`` per
    coordinate the loss's curvature resolves and ``WIDE_FROM_ZERO`` in all, where it resolves fewer than
    θ's ``coordinates``; None (every pulled group) where it resolves them all or does not say."""
    resolved = _resolved_coordinates(loss)
    if resolved is None or not resolved < coordinates:
        return None
    return int(min(PULLED_PER_ROW * resolved, WIDE_FROM_ZERO))


def _row_block(loss, theta: Tensor, candidates: Tensor, groups: Tensor) -> tuple[Tensor, int] | None:
    """``(B, T)`` with the loss's curvature on the candidates $B ⊗ I_T$ (`DataTerm.target_block`: several
    least-squares targets), where the candidates are whole rows of θ and each row is one group; else None."""
    answer = getattr(loss, "target_block", None)
    if answer is None or theta.dim() != 2:
        return None
    tasks = theta.shape[1]
    if groups.numel() % tasks or not torch.equal(groups.view(-1, tasks),
                                                   groups.view(-1, tasks)[:, :1].expand(-1, tasks)):
        return None
    block = answer(theta, candidates)
    return None if block is None else (block.to("cpu", torch.float64), tasks)


def _replaced(loss, constraint: Constraint, theta: Tensor, candidates: Tensor, values: Tensor):
    """``(θ', ∇loss(θ'), objective at θ')``, θ' being θ with ``values`` on the candidate entries."""
    trial = theta.clone()
    trial[candidates] = values
    value, grad = loss.value_and_grad(trial)
    return trial, grad, float(value) + float(constraint.strength) * float(constraint.induced_norm(trial))


def _local_groups(constraint: Constraint, theta: Tensor, candidates: Tensor, ids: Tensor,
                  lam: float) -> tuple[Tensor, Tensor]:
    """``(groups, weights)`` of the candidate entries for `solve_group_quadratic`: each entry's group
    numbered from 0 in the candidates' order, and per group $λ c_g$, with $c_g$ read from the
    constraint's atoms of a unit vector in that group (its atoms are $c_g ‖θ_g‖_2$)."""
    chosen = ids[candidates.reshape(-1)]
    unique, local = torch.unique(chosen, return_inverse=True)
    probe = torch.zeros(theta.numel(), dtype=theta.dtype, device=theta.device)
    member = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long, device=ids.device)  # an entry of each group
    member.scatter_reduce_(0, ids, torch.arange(ids.numel(), device=ids.device), reduce="amax", include_self=True)
    probe[member[unique]] = 1.0
    weights = constraint.atoms(probe.view_as(theta)).reshape(-1)[unique]
    return local.cpu(), (lam * weights).to("cpu", torch.float64)


def _group_norm(x: Tensor, groups: Tensor, weights: Tensor) -> float:
    r"""$\sum_j w_j ‖x_{G_j}‖_2$."""
    return float((weights * _group_sizes(x, groups, weights.numel())).sum())
