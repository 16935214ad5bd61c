"""DCS on data it did not generate, end to end, against the tool a user would otherwise call.

    python -m benchmarks.users_data [--repeats 3] [--quick] [--large-only] [--positive-only] [--groups-only]
                                    [--paths-only] [--reduced-rank-only] [--completion-only]
                                    [--completion-sweep] [--logistic-sweep] [--group-sweep] [--wide-group-sweep]
                                    [--drawn-group-sweep [SEED]] [--drawn-options-sweep [SEED]]
                                    [--drawn-raw-scales-sweep [SEED]] [--sparse-only] [--sparse-sweep]
                                    [--large-answer-sweep] [--summary]

Every row times a *whole call* as a user makes it (``symopt.solve`` / ``symopt.path`` /
``symopt.estimators.LassoCV`` against scikit-learn's ``Lasso`` / ``lasso_path`` / ``LassoCV`` and
skglm), median of ``--repeats`` runs after one warm-up call, the same thread count for all. The
peers run at their default tolerance, which on these problems already reaches a relative objective
gap ≤ 1e-6 (the column ``peer gap``: the peer's objective minus DCS's, over DCS's, where DCS is at its
default KKT tolerance 1e-6); where a peer's default stops above that (its gap > 1e-6), the row also times it
at the largest tolerance, a tenth of its default or a hundredth or ..., that reaches it (the last two
columns); scikit-learn gets a Fortran-ordered ``X``, as its coordinate descent expects. Data:
scikit-learn's shipped diabetes and breast_cancer (raw and standardised columns),
and one generated 500×2000 design for the path (the issue's size); ``LassoCV`` (30 α, 5 folds) on
diabetes, raw breast_cancer, raw digits (its label as the target) and two of scikit-learn's
``make_regression`` designs (300×50 with correlated columns, 100×200). The non-negative Lasso
(``positive=True``) runs on raw diabetes and a generated 1000×5000 design (working sets) against
scikit-learn's ``Lasso(positive=True)``. The group lasso runs on standardised digits (16 groups of
4 pixels) and breast_cancer (10 groups of 3 features) against skglm's ``GroupLasso``, the multi-task
Lasso on linnerud and on digits' one-hot labels against scikit-learn's ``MultiTaskLasso``. Completion runs against
accelerated SoftImpute (``symopt.baselines.softimpute``) on generated matrices, digits and a sample
image, and (``--completion-sweep``, not in the default run: a few minutes) on fifteen more generated
ones of other shapes, ranks and observed fractions; logistic-L1 (``--logistic-sweep``, not in the default
run) on wine, digits, raw breast_cancer and six generated designs against skglm; the group lasso
(``--group-sweep``, not in the default run) on eight data sets against skglm, and
(``--wide-group-sweep``, not in the default run: a few minutes) on 28 data sets with more columns than
rows against skglm; with ``--drawn-group-sweep SEED`` and ``--drawn-options-sweep SEED`` (not in the
default run) on problems drawn from a seed: wide group designs, and the Lasso, elastic net and
logistic-L1 with drawn options (intercept, sample weights, ``l1_ratio``, ``positive``), and with
``--drawn-raw-scales-sweep SEED`` regressions on columns of scales 1e-3..1e3 at 1e-7..1e-4 λ_max; with
``--sparse-only`` the Lasso on a sparse CSR 10000×100000 design (density 1e-3) against scikit-learn, with
``--sparse-sweep`` the Lasso and logistic-L1 on eight more generated CSR designs (4e4 to 1e6 stored entries), and
with ``--large-answer-sweep`` Lassos and logistic-L1 whose answers hold more than 1024 columns; nuclear-norm
(reduced-rank) regression of digits' one-hot labels on its raw and standardised pixels against cvxpy.

``--summary`` runs the default rows, the sparse row and every sweep (the drawn ones at their default seeds), then
prints one line per family and kind of data (shipped with scikit-learn, or generated): the geometric mean and range of
DCS's time over the peer's, the rows where DCS is faster, the rows whose peer stops short of the optimum at every
tolerance tried (no time at equal accuracy), and the rows outside issue 22's rule (within 3× of the peer at the
tolerance that reaches the optimum, or within 20 ms where the peer needs under 2 ms); the last two listed one by one.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time
import warnings

import numpy as np
import torch

import symopt
from symopt.cli import machine_name
from symopt.problems import lasso, logistic_l1
from symopt.problems.design import forget_kept


def _median_time(call, repeats: int, data: dict | None = None):
    """The median of ``repeats`` timed calls after one warm-up (imports, torch's one-time set-up: also in
    --quick, a first call's imports are not the solver's time). ``data``: a problem's data, whose
    tensors drop what symopt kept on them (a small design's Gram, a CSR transpose) before each
    call, outside the timing: each timed solve pays what a user's first solve on that data pays."""
    # (a pause first: the threads of the library that ran last, OpenBLAS's after numpy's or skglm's
    # products, OpenMP's after torch's, spin for a while after their work, and here they shared the two
    # cores with this call's: the first DCS row after make_regression had built 25 designs took 29 ms,
    # 4 ms after a pause of 2 s)
    time.sleep(0.2)
    call()
    times, value = [], None
    for _ in range(repeats):
        for tensor in (data or {}).values():
            forget_kept(tensor)
        start = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def _data():
    from sklearn.datasets import load_breast_cancer, load_diabetes

    Xd, yd = load_diabetes(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xs = (Xc - Xc.mean(0)) / Xc.std(0)
    return {"diabetes": (Xd, yd), "cancer raw": (Xc, yc.astype(float)), "cancer std": (Xs, yc.astype(float))}


# A peer "reaches" the optimum where its objective is within REACHED (relative) of DCS's; where its default
# tolerance stops short, the row also times it at the largest tolerance (its default over powers of 10) that
# reaches it: the brief's "default or calibrated tolerance that just reaches the target accuracy".
REACHED = 1e-6
_CALIBRATION_STEPS = 6


def _against(label: str, problem, peer_name: str, fit, repeats: int, coef=lambda model: model.coef_,
             calibrate=None) -> tuple:
    """One row: ``symopt.solve(problem)`` against ``fit()``, the peer's whole call (its warnings
    silenced), each the median of ``repeats`` whole calls; the gap is the peer's objective (at
    ``coef(model)``) minus DCS's, relative to DCS's. With ``calibrate`` (``tol ↦`` the peer fitted at that
    tolerance), a row whose gap exceeds ``REACHED`` gets a seventh entry: ``(seconds, tol)`` of the peer at
    the largest tolerance a tenth, a hundredth, ... of its default that reaches it (None where none of
    ``_CALIBRATION_STEPS`` does)."""
    t_dcs, result = _median_time(lambda: symopt.solve(problem), repeats, problem.data)

    def quiet(call):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()

    t_peer, model = _median_time(lambda: quiet(fit), repeats)

    def gap_of(fitted) -> float:
        return (problem.objective(torch.as_tensor(coef(fitted))) - result.objective) / abs(result.objective)

    gap = gap_of(model)
    row = (label, result.status, t_dcs, peer_name, t_peer, gap)
    if calibrate is None or gap <= REACHED:
        return row
    tol = float(model.get_params()["tol"])
    for _ in range(_CALIBRATION_STEPS):
        tol /= 10
        if gap_of(quiet(lambda: calibrate(tol))) <= REACHED:
            seconds, _ = _median_time(lambda: quiet(lambda: calibrate(tol)), repeats)
            return row + ((seconds, tol),)
    return row + (None,)


def _against_sklearn_lasso(label: str, X, y, fraction: float, repeats: int, *, fit_intercept: bool,
                           positive: bool = False) -> tuple:
    """One row: ``lasso(X, y)`` at ``fraction`` of its λ_max by DCS and by scikit-learn's ``Lasso`` with the
    same options, both given the same Fortran-ordered X (the layout scikit-learn's coordinate descent
    reads, and the one symopt's working sets gather columns of fastest) or the same scipy sparse X (its sparse
    coordinate descent; symopt keeps it sparse, torch CSR), whole calls."""
    import scipy.sparse
    from sklearn.linear_model import Lasso

    sparse = scipy.sparse.issparse(X)
    Xf = X if sparse else np.asfortranarray(X)
    problem = lasso(Xf, y, 1.0, fit_intercept=fit_intercept, positive=positive)
    lam = fraction * problem.strength_max()
    peer = ("sklearn Lasso(positive=True)" if positive else "sklearn Lasso") + (" (sparse X)" if sparse else "")
    return _against(label, problem.at_strength(lam), peer,
                    lambda: Lasso(alpha=lam, fit_intercept=fit_intercept, positive=positive).fit(Xf, y), repeats,
                    calibrate=lambda tol: Lasso(alpha=lam, fit_intercept=fit_intercept, positive=positive, tol=tol,
                                                max_iter=100_000).fit(Xf, y))


def single_solves(repeats: int, quick: bool = False) -> list[tuple]:
    rows = []
    for name, (X, y) in list(_data().items())[: 1 if quick else None]:
        for fraction in (0.1,) if quick else (0.1, 0.01):
            rows.append(_against_sklearn_lasso(f"Lasso+intercept, {name}, {fraction:g} λmax", X, y, fraction,
                                               repeats, fit_intercept=True))
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        return rows
    if quick:  # skglm compiles its numba kernels on first use (~20 s): not in a smoke test
        return rows
    X, y = _data()["cancer std"]
    return rows + [_against_skglm_logistic(f"logistic-L1+intercept, cancer std, {fraction:g} λmax", X, y, fraction,
                                           repeats) for fraction in (0.1, 0.01)]


def _against_skglm_logistic(label: str, X, y, fraction: float, repeats: int, fit_intercept: bool = True) -> tuple:
    """One row: logistic-L1 (with an intercept or not) at ``fraction`` of its λ_max by DCS and by skglm's
    ``SparseLogisticRegression`` given the same X (dense, or scipy sparse as it is), at its default tolerance
    and, where that stops short, a calibrated one; whole calls."""
    import scipy.sparse
    import skglm

    problem = logistic_l1(X, y, 1.0, fit_intercept=fit_intercept)
    lam = fraction * problem.strength_max()
    peer = "skglm SparseLogReg" + (" (sparse X)" if scipy.sparse.issparse(X) else "")
    return _against(label, problem.at_strength(lam), peer,
                    lambda: skglm.SparseLogisticRegression(alpha=lam, fit_intercept=fit_intercept).fit(X, y), repeats,
                    coef=lambda model: model.coef_.reshape(-1),
                    calibrate=lambda tol: skglm.SparseLogisticRegression(alpha=lam, fit_intercept=fit_intercept,
                                                                         tol=tol, max_iter=1000).fit(X, y))


def _standardised(X):
    """Columns centred and scaled to unit variance (a constant column only centred)."""
    spread = X.std(0)
    return (X - X.mean(0)) / np.where(spread > 0, spread, 1.0)


def logistic_sweep(repeats: int) -> list[tuple]:
    """Logistic-L1 with an intercept against skglm's ``SparseLogisticRegression`` (its default
    tolerance) on data the rest of the suite does not use, at 0.3, 0.1, 0.03 and 0.01 λ_max: wine
    (class 0 against the rest on raw columns, class 1 on standardised ones), digits (odd labels on raw
    pixels, labels above 4 on standardised ones), raw breast_cancer, and scikit-learn's
    ``make_classification`` designs from 200×50 to 20000×100 (tall, wide-ish, few and many informative
    columns). A solver change that helps the suite's one logistic row must hold here too. Needs
    skglm (an optional benchmark dependency)."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--logistic-sweep compares against skglm: pip install skglm")
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification

    Xw, yw = load_wine(return_X_y=True)
    Xd, yd = load_digits(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    cases = [("wine raw, class 0", Xw, yw == 0), ("wine std, class 1", _standardised(Xw), yw == 1),
             ("digits raw, odd", Xd, yd % 2 == 1), ("digits std, above 4", _standardised(Xd), yd > 4),
             ("cancer raw", Xc, yc == 1)]
    for seed, (n, d, informative) in enumerate([(200, 50, 5), (1000, 100, 10), (500, 300, 20), (2000, 40, 8),
                                                (2000, 500, 20), (20000, 100, 20)]):
        X, y = make_classification(n_samples=n, n_features=d, n_informative=informative, n_redundant=informative,
                                   random_state=seed, flip_y=0.05)
        cases.append((f"make_classification {n}×{d}", X, y == 1))
    return [_against_skglm_logistic(f"logistic-L1+intercept, {name}, {fraction:g} λmax", X, y.astype(float), fraction,
                                    repeats)
            for name, X, y in cases for fraction in (0.3, 0.1, 0.03, 0.01)]


def group_sweep(repeats: int) -> list[tuple]:
    """The group lasso (no intercept, the target centred) against skglm's ``GroupLasso`` (its default
    tolerance) at 0.3, 0.1, 0.03 and 0.01 λ_max, on groups of consecutive columns: standardised
    breast_cancer (10 of 3), standardised digits (16 of 4), raw diabetes (5 of 2), standardised wine's
    first 12 columns (4 of 3), and scikit-learn's ``make_regression`` designs 200×60 (20 of 3), 500×200
    (40 of 5), 100×300 (100 of 3) and 100×1000 (200 of 5: more columns than rows). The sweep that
    measured the group polish's joins together (benchmarks/RESULTS.md, twentieth session); a solver change to a group
    norm must hold here. Needs skglm (an optional benchmark dependency)."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--group-sweep compares against skglm: pip install skglm")
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine, make_regression

    Xc, yc = load_breast_cancer(return_X_y=True)
    Xd, yd = load_digits(return_X_y=True)
    Xb, yb = load_diabetes(return_X_y=True)
    Xw, yw = load_wine(return_X_y=True)
    cases = [("breast_cancer std, 10 groups of 3", _standardised(Xc), yc, 3),
             ("digits std, 16 groups of 4", _standardised(Xd), yd, 4),
             ("diabetes raw, 5 groups of 2", Xb, yb, 2),
             ("wine std (12 columns), 4 groups of 3", _standardised(Xw)[:, :12], yw, 3)]
    for seed, (n, d, size, informative) in enumerate([(200, 60, 3, 15), (500, 200, 5, 30), (100, 300, 3, 10),
                                                      (100, 1000, 5, 20)]):
        X, y = make_regression(n, d, n_informative=informative, noise=5.0 if n > d else 1.0, random_state=seed)
        cases.append((f"make_regression {n}×{d}, {d // size} groups of {size}", X, y, size))
    return _group_rows(cases, repeats)



# The wide designs of the twenty-second session (benchmarks/RESULTS.md): (rows, columns, group size, informative
# columns, effective rank or None, noise, make_regression's seed). The first six (with digits' first 40 rows)
# chose the group model's joins and the check from θ = 0 on them, the next eleven checked the joins, the last
# eight checked both.
WIDE_DESIGNS = [(100, 300, 3, 10, None, 1.0, 2), (100, 1000, 5, 20, None, 1.0, 3), (50, 200, 4, 8, None, 1.0, 5),
                (200, 2000, 5, 20, None, 1.0, 6), (40, 120, 2, 6, None, 1.0, 7), (150, 400, 4, 12, None, 1.0, 8),
                (80, 240, 2, 8, None, 1.0, 100), (120, 480, 3, 12, None, 1.0, 101), (30, 150, 3, 5, None, 1.0, 102),
                (100, 500, 5, 15, None, 1.0, 103), (200, 1200, 6, 30, None, 1.0, 104), (60, 400, 4, 10, None, 1.0, 105),
                (50, 350, 5, 10, None, 1.0, 106), (80, 560, 4, 12, None, 1.0, 107), (100, 400, 4, 10, 20, 1.0, 108),
                (60, 300, 3, 10, 15, 1.0, 109), (100, 800, 4, 20, 30, 1.0, 110),
                (70, 210, 3, 6, None, 1.0, 500), (90, 360, 4, 12, None, 5.0, 501), (40, 160, 2, 8, None, 1.0, 502),
                (120, 600, 5, 20, None, 1.0, 503), (150, 450, 3, 15, 40, 1.0, 504), (50, 250, 5, 10, None, 10.0, 505),
                (250, 800, 4, 25, None, 1.0, 506), (60, 180, 6, 12, 20, 1.0, 507)]


def wide_group_sweep(repeats: int) -> list[tuple]:
    """The group lasso with more columns than rows against skglm's ``GroupLasso`` (its default tolerance) at
    0.3, 0.1, 0.03 and 0.01 λ_max: scikit-learn's ``make_regression`` designs of `WIDE_DESIGNS` (40×120 to
    200×2000, groups of 2 to 6 consecutive columns, five of low effective rank) and four slices of shipped data
    (standardised digits' first 40 rows in groups of 4, rows 200–229 in groups of 2; standardised
    breast_cancer's rows 100–111 in groups of 3). Where a group model from θ = 0 and the descent first trade
    places (``symopt.solver.descent.PULLED_PER_ROW``). Needs skglm."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--wide-group-sweep compares against skglm: pip install skglm")
    from sklearn.datasets import load_breast_cancer, load_digits, make_regression

    Xd, yd = load_digits(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    cases = [("digits std, rows 0–39, 16 groups of 4", _standardised(Xd)[:40], yd[:40], 4),
             ("digits std, rows 200–229, 32 groups of 2", _standardised(Xd)[200:230], yd[200:230], 2),
             ("breast_cancer std, rows 100–111, 10 groups of 3", _standardised(Xc)[100:112], yc[100:112], 3)]
    for n, d, size, informative, rank, noise, seed in WIDE_DESIGNS:
        X, y = make_regression(n, d, n_informative=informative, noise=noise, random_state=seed, effective_rank=rank)
        low = f", effective rank {rank}" if rank else ""
        cases.append((f"make_regression {n}×{d}{low}, {d // size} groups of {size}", X, y, size))
    return _group_rows(cases, repeats)


def drawn_group_sweep(repeats: int, seed: int) -> list[tuple]:
    """The group lasso with more columns than rows on designs drawn from ``seed`` (designs no rule was chosen
    on: a fresh seed gives a fresh set), against skglm's ``GroupLasso`` at 0.3, 0.1, 0.03 and 0.01 λ_max:
    sixteen ``make_regression`` designs with 30–200 rows and 2–8 times as many columns, groups of 2–6,
    full rank or an effective rank of a half to a quarter of the rows, and four slices of standardised digits
    (60 columns) and breast_cancer of 15–40 rows. Needs skglm."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--drawn-group-sweep compares against skglm: pip install skglm")
    from sklearn.datasets import load_breast_cancer, load_digits, make_regression

    rng = np.random.default_rng(seed)
    cases = []
    for index in range(16):
        n = int(rng.choice([30, 40, 60, 80, 100, 150, 200]))
        size = int(rng.choice([2, 3, 4, 5, 6]))
        d = n * int(rng.choice([2, 3, 4, 6, 8]))
        d -= d % size
        informative = max(3, n // int(rng.choice([4, 6, 10])))
        rank = None if rng.random() < 0.6 else max(5, n // int(rng.choice([2, 3, 4])))
        noise = float(rng.choice([0.5, 1.0, 5.0]))
        X, y = make_regression(n, d, n_informative=informative, noise=noise, random_state=seed + index,
                               effective_rank=rank)
        low = f", effective rank {rank}" if rank else ""
        cases.append((f"drawn make_regression {n}×{d}{low}, {d // size} groups of {size}", X, y, size))
    Xd, yd = load_digits(return_X_y=True)
    Xd = _standardised(Xd[:, Xd.std(0) > 0])[:, :60]
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xc = _standardised(Xc)
    for X, y, name, rows, size in ((Xd, yd, "digits std (60 columns)", 40, 3), (Xd, yd, "digits std (60 columns)", 25, 2),
                                   (Xc, yc, "breast_cancer std", 15, 2), (Xc, yc, "breast_cancer std", 20, 5)):
        first = int(rng.integers(0, len(y) - rows))
        cases.append((f"{name}, rows {first}–{first + rows - 1}, {X.shape[1] // size} groups of {size}",
                       X[first:first + rows, : X.shape[1] - X.shape[1] % size], y[first:first + rows], size))
    return _group_rows(cases, repeats)


def _drawn_design(rng: np.random.Generator, shipped: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """One design drawn for `drawn_options_sweep`: ``(name, X, y)``, a shipped data set (raw or
    standardised, all its rows or a random subset of them), an AR(1) design of correlated columns, or
    columns whose scales spread over six decades."""
    kind = str(rng.choice(["diabetes", "breast_cancer", "wine", "digits", "correlated", "scaled"]))
    if kind in shipped:
        X, y = shipped[kind]
        if rng.random() < 0.5:
            rows = np.sort(rng.choice(len(y), int(rng.integers(40, len(y))), replace=False))
            X, y = X[rows], y[rows]
        standardised = rng.random() < 0.5
        if standardised:
            X = _standardised(X)
        return f"{kind} {'std' if standardised else 'raw'} {X.shape[0]}×{X.shape[1]}", X, y.astype(float)
    n, d = int(rng.integers(50, 400)), int(rng.integers(20, 500))
    if kind == "correlated":
        rho = float(rng.uniform(0.5, 0.99))
        noise = rng.standard_normal((n, d))
        X = np.empty((n, d))
        X[:, 0] = noise[:, 0]
        for j in range(1, d):
            X[:, j] = rho * X[:, j - 1] + math.sqrt(1 - rho * rho) * noise[:, j]
        name = f"AR(1) ρ={rho:.2f} {n}×{d}"
    else:
        X = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, size=d) + 10.0 ** rng.uniform(-2, 2, size=d)
        name = f"scales 1e-3..1e3 {n}×{d}"
    return name, X, _planted_target(rng, X, 10, 0.05)


def _planted_target(rng: np.random.Generator, X: np.ndarray, nonzeros: int, least_noise: float) -> np.ndarray:
    """``X @ truth + noise``: ``truth`` with ``nonzeros`` entries (at most X's columns) at drawn columns, each
    of about one unit of the target per column standard deviation; the noise Gaussian with a standard
    deviation drawn from ``least_noise`` to 1."""
    truth = np.zeros(X.shape[1])
    support = rng.choice(X.shape[1], min(X.shape[1], nonzeros), replace=False)
    truth[support] = rng.standard_normal(support.size) / X[:, support].std(0)
    return X @ truth + rng.uniform(least_noise, 1.0) * rng.standard_normal(X.shape[0])


def _against_elastic_net(name: str, X, y, fraction: float, repeats: int, *, intercept: bool, ratio: float,
                         weights, positive: bool) -> tuple | None:
    """One row: ``lasso(X, y)`` with these options (the elastic net below ``l1_ratio`` 1) at ``fraction`` of its
    λ_max by DCS and by scikit-learn's ``ElasticNet`` (its default tolerance), both given the same Fortran-ordered
    X; None where ``positive=True`` leaves no column pulled up (θ = 0 for every λ)."""
    from sklearn.linear_model import ElasticNet

    Xf = np.asfortranarray(X)
    problem = lasso(Xf, y, 1.0, fit_intercept=intercept, sample_weight=weights, l1_ratio=ratio, positive=positive)
    if not problem.strength_max() > 0:
        return None
    lam = fraction * problem.strength_max()
    label = (f"{'elastic net' if ratio < 1 else 'Lasso'}, {name}, {'intercept' if intercept else 'no intercept'}, "
             f"l1_ratio {ratio:g}{', weights' if weights is not None else ''}{', positive' if positive else ''}, "
             f"{fraction:.2g} λmax")
    return _against(label, problem.at_strength(lam), "sklearn ElasticNet",
                    lambda: ElasticNet(alpha=lam, l1_ratio=ratio, fit_intercept=intercept,
                                       positive=positive).fit(Xf, y, sample_weight=weights), repeats,
                    calibrate=lambda tol: ElasticNet(alpha=lam, l1_ratio=ratio, fit_intercept=intercept, positive=positive,
                                                     tol=tol, max_iter=100_000).fit(Xf, y, sample_weight=weights))


def drawn_options_sweep(repeats: int, seed: int) -> list[tuple]:
    """The Lasso, the elastic net and logistic-L1 with the options users pass, on problems drawn from ``seed``
    (a fresh seed gives a fresh set): 30 regressions against scikit-learn's ``ElasticNet`` (``Lasso`` at
    ``l1_ratio=1``; its default tolerance, a Fortran-ordered X) with an intercept or not, sample weights or
    not, ``positive`` or not and ``l1_ratio`` 1, 0.9 or 0.5, and 15 classifications against skglm's
    ``SparseLogisticRegression`` (which takes no sample weights) with an intercept or not and those
    ``l1_ratio``; λ drawn log-uniformly from 1e-3 to 0.5 λ_max; designs from `_drawn_design`. Needs
    skglm."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--drawn-options-sweep compares against skglm: pip install skglm")
    import skglm
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine

    shipped = {name: loader(return_X_y=True) for name, loader in
               (("diabetes", load_diabetes), ("breast_cancer", load_breast_cancer), ("wine", load_wine),
                ("digits", load_digits))}
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(45):
        name, X, y = _drawn_design(rng, shipped)
        intercept, ratio = bool(rng.random() < 0.7), float(rng.choice([1.0, 1.0, 0.9, 0.5]))
        fraction = float(10.0 ** rng.uniform(-3, math.log10(0.5)))
        if index < 30:
            weights = rng.uniform(0.1, 3.0, size=len(y)) if rng.random() < 0.4 else None
            positive = bool(rng.random() < 0.25)
            row = _against_elastic_net(name, X, y, fraction, repeats, intercept=intercept, ratio=ratio,
                                       weights=weights, positive=positive)
            if row is not None:
                rows.append(row)
        else:
            labels = (y > np.median(y)).astype(float)
            if labels.min() == labels.max():
                continue
            problem = logistic_l1(X, labels, 1.0, fit_intercept=intercept, l1_ratio=ratio)
            lam = fraction * problem.strength_max()
            options = f"{'intercept' if intercept else 'no intercept'}, l1_ratio {ratio:g}"
            rows.append(_against(f"logistic, {name} (y above its median), {options}, {fraction:.2g} λmax",
                                 problem.at_strength(lam), "skglm SparseLogReg",
                                 lambda: skglm.SparseLogisticRegression(alpha=lam, l1_ratio=ratio,
                                                                        fit_intercept=intercept).fit(X, labels),
                                 repeats, coef=lambda model: model.coef_.reshape(-1),
                                 calibrate=lambda tol: skglm.SparseLogisticRegression(
                                     alpha=lam, l1_ratio=ratio, fit_intercept=intercept, tol=tol,
                                     max_iter=1000).fit(X, labels)))
    return rows


def drawn_raw_scales_sweep(repeats: int, seed: int) -> list[tuple]:
    """The Lasso and the elastic net on columns of scales 1e-3 to 1e3 at tiny strengths (1e-7 to 1e-4 λ_max,
    drawn log-uniformly) with drawn options (intercept, sample weights, ``positive``, ``l1_ratio`` 1 or 0.7),
    30 problems drawn from ``seed`` against scikit-learn's ``ElasticNet`` at its default tolerance (a
    Fortran-ordered X). At such λ the optimum holds entries of large columns ~1e-7 of its largest entry."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(30):
        n, d = int(rng.integers(40, 300)), int(rng.integers(10, 300))
        X = np.asfortranarray(rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, size=d))
        y = _planted_target(rng, X, 5, 0.01)
        intercept, ratio, positive = bool(rng.random() < 0.5), float(rng.choice([1.0, 0.7])), bool(rng.random() < 0.2)
        weights = rng.uniform(0.1, 3.0, n) if rng.random() < 0.3 else None
        fraction = float(10.0 ** rng.uniform(-7, -4))
        row = _against_elastic_net(f"scales 1e-3..1e3 {n}×{d}", X, y, fraction, repeats, intercept=intercept,
                                   ratio=ratio, weights=weights, positive=positive)
        if row is not None:
            rows.append(row)
    return rows


def raw_group_sweep(repeats: int) -> list[tuple]:
    """The group lasso on columns of raw scales (no standardisation: breast_cancer's span 1e-3 to 1e3)
    against skglm's ``GroupLasso`` at 0.3, 0.1, 0.03 and 0.01 λ_max (`_group_rows`) and at 1e-3 λ_max:
    breast_cancer in 10 groups of 3, digits in 16 of 4, wine's first 12 columns in 4 of 3, and 20- to
    40-row slices of each (the rows where the group model is solved in scaled coordinates,
    ``symopt.proximal_newton.SCALE_SPREAD``). Needs skglm."""
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        raise SystemExit("--raw-group-sweep compares against skglm: pip install skglm")
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    Xc, yc = load_breast_cancer(return_X_y=True)
    Xd, yd = load_digits(return_X_y=True)
    Xw, yw = load_wine(return_X_y=True)
    cases = [("breast_cancer raw, 10 groups of 3", Xc, yc, 3), ("digits raw, 16 groups of 4", Xd, yd, 4),
             ("wine raw (12 columns), 4 groups of 3", Xw[:, :12], yw, 3),
             ("breast_cancer raw, rows 0–19, 10 groups of 3", Xc[:20], yc[:20], 3),
             ("digits raw, rows 0–39, 16 groups of 4", Xd[:40], yd[:40], 4),
             ("wine raw (12 columns), rows 50–69, 4 groups of 3", Xw[50:70, :12], yw[50:70], 3)]
    return _group_rows(cases, repeats, fractions=(0.3, 0.1, 0.03, 0.01, 1e-3))


# The wide Lasso designs of the twenty-third session (rows, columns, make_regression's seed): the first four
# chose the check from θ = 0 with few pulled entries a row (the group norms' `symopt.solver.descent.
# PULLED_PER_ROW`), the other five checked it; since the twenty-fourth the Lasso is checked from θ = 0 however
# many are pulled (`L1_FROM_ZERO`); 250×1000 and up go to working sets, which the rule does not reach.
WIDE_LASSO_DESIGNS = [(100, 300, 0), (50, 200, 2), (500, 500, 3), (200, 1000, 4),
                      (80, 240, 10), (150, 600, 11), (300, 300, 12), (40, 400, 13), (120, 200, 14)]


def wide_lasso_sweep(repeats: int) -> list[tuple]:
    """The Lasso with fewer rows than columns (or as many, with an intercept) against scikit-learn's
    ``Lasso`` (its default tolerance, a Fortran-ordered X) at 0.3, 0.1, 0.03 and 0.01 λ_max, with and
    without an intercept: scikit-learn's ``make_regression`` designs of `WIDE_LASSO_DESIGNS` (10
    informative columns, noise 1) and three slices of shipped data (standardised digits' rows 0–39 and
    100–163, standardised breast_cancer's rows 0–19)."""
    from sklearn.datasets import load_breast_cancer, load_digits, make_regression

    Xd, yd = load_digits(return_X_y=True)
    Xc, yc = load_breast_cancer(return_X_y=True)
    cases = [(f"make_regression {n}×{d}", *make_regression(n, d, n_informative=10, noise=1.0, random_state=seed))
             for n, d, seed in WIDE_LASSO_DESIGNS]
    cases += [("digits std, rows 0–39", _standardised(Xd)[:40], yd[:40].astype(float)),
              ("digits std, rows 100–163", _standardised(Xd)[100:164], yd[100:164].astype(float)),
              ("breast_cancer std, rows 0–19", _standardised(Xc)[:20], yc[:20].astype(float))]
    rows = []
    for name, X, y in cases:
        for intercept in (False, True):
            target = y if intercept else y - y.mean()
            for fraction in (0.3, 0.1, 0.03, 0.01):
                label = f"Lasso{'+intercept' if intercept else ''}, {name}, {fraction:g} λmax"
                rows.append(_against_sklearn_lasso(label, X, target, fraction, repeats, fit_intercept=intercept))
    return rows


def large_answer_sweep(repeats: int) -> list[tuple]:
    """Lasso and logistic-L1 whose answers hold more columns than the dense ℓ1 model takes
    (``symopt.proximal_newton.L1_FACE``, 1024), where the polish solves its models by the curvature's products
    (``symopt.l1_products``): shipped digits' degree-2 features (1797 × 2144, standardised; its label as the
    target, or "digit ≥ 5" for the classification), a tall Gaussian design (3000 × 2500), correlated columns
    (AR(1), ρ = 0.6, 2500 × 2000) and sparse CSR designs (3000 × 10000 at density 1.3e-3; 6000 × 4000 at 5e-3,
    labels of a dense planted model) and a Gaussian 5000 × 2000 classification with an intercept, against
    scikit-learn's ``Lasso`` (a Fortran-ordered or the same CSR X) and skglm's ``SparseLogisticRegression``, each
    at its default tolerance and, where that stops short, at a calibrated one. Needs skglm for the
    classifications."""
    import scipy.sparse
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import PolynomialFeatures

    Xd, yd = load_digits(return_X_y=True)
    poly = _standardised(PolynomialFeatures(2, include_bias=False).fit_transform(Xd))
    poly = np.asfortranarray(poly[:, poly.std(0) > 0])
    rng = np.random.default_rng(29)
    tall = rng.standard_normal((3000, 2500))
    correlated = rng.standard_normal((2500, 2000))
    for j in range(1, 2000):
        correlated[:, j] = 0.6 * correlated[:, j - 1] + 0.8 * correlated[:, j]
    rows_, cols_ = rng.integers(0, 3000, 40_000), rng.integers(0, 10_000, 40_000)
    sparse = scipy.sparse.coo_matrix((rng.standard_normal(40_000), (rows_, cols_)), shape=(3000, 10_000)).tocsr()
    rows = []
    for name, X, y, fraction in (
            ("digits degree-2 std 1797×2144", poly, yd.astype(float), 0.003),
            ("digits degree-2 std 1797×2144", poly, yd.astype(float), 0.001),
            ("Gaussian 3000×2500", tall, _planted_target(rng, tall, 50, 1.0), 0.005),
            ("AR(1) ρ=0.6 2500×2000", correlated, _planted_target(rng, correlated, 50, 1.0), 0.003),
            ("sparse CSR 3000×10000", sparse, sparse @ _sparse_truth(rng, 10_000, 40) + 0.1 * rng.standard_normal(3000),
             0.003)):
        rows.append(_against_sklearn_lasso(f"Lasso, {name}, {fraction:g} λmax", X, y - y.mean(), fraction, repeats,
                                           fit_intercept=False))
    if importlib.util.find_spec("skglm") is None:  # pragma: no cover
        return rows
    n, d, stored = 6000, 4000, 120_000
    design = scipy.sparse.coo_matrix((rng.standard_normal(stored), (rng.integers(0, n, stored), rng.integers(0, d, stored))),
                                     shape=(n, d)).tocsr()
    labels = (design @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0).astype(float)
    gaussian = rng.standard_normal((5000, 2000))
    planted = (gaussian @ (rng.standard_normal(2000) * (rng.random(2000) < 0.5)) / 20
               + rng.standard_normal(5000) > 0).astype(float)
    for name, X, y, fraction, intercept in (
            ("sparse CSR 6000×4000", design, labels, 0.01, False),
            ("digits degree-2 std 1797×2144, digit ≥ 5", poly, (yd >= 5).astype(float), 0.003, False),
            ("Gaussian 5000×2000, intercept", np.asfortranarray(gaussian), planted, 0.003, True)):
        rows.append(_against_skglm_logistic(f"logistic-L1, {name}, {fraction:g} λmax", X, y, fraction, repeats,
                                            fit_intercept=intercept))
    return rows


# The sparse sweep's CSR designs (rows, columns, density): square-ish, wide, tall, from 4e4 to 1e6 stored entries.
SPARSE_DESIGNS = [(1000, 5000, 1e-2), (3000, 10000, 1.3e-3), (2000, 20000, 1e-2), (10000, 100000, 1e-3),
                  (5000, 50000, 2e-3), (20000, 5000, 1e-3), (500, 20000, 5e-3), (6000, 4000, 5e-3)]


def sparse_sweep(repeats: int) -> list[tuple]:
    """The Lasso and logistic-L1 on the generated CSR designs of `SPARSE_DESIGNS` (entries at uniformly drawn
    places, Gaussian values; 50 planted coefficients: the Lasso's target with noise 0.1, centred; the labels
    their sign with noise 0.5) at 0.1 and 0.01 λ_max, against scikit-learn's ``Lasso`` and skglm's
    ``SparseLogisticRegression`` given the same scipy CSR matrix, each at its default and, where that stops
    short, a calibrated tolerance. The designs where working sets were weighed for sparse designs
    (``symopt.solver.dcs._SPARSE_L1_WORKING_SETS_FROM_ENTRIES``). Needs skglm for the classifications."""
    import scipy.sparse

    rng = np.random.default_rng(30)
    has_skglm = importlib.util.find_spec("skglm") is not None
    rows = []
    for n, d, density in SPARSE_DESIGNS:
        stored = int(n * d * density)
        X = scipy.sparse.coo_matrix((rng.standard_normal(stored), (rng.integers(0, n, stored), rng.integers(0, d, stored))),
                                    shape=(n, d)).tocsr()
        signal = X @ _sparse_truth(rng, d, 50)
        y = signal + 0.1 * rng.standard_normal(n)
        labels = (signal + 0.5 * rng.standard_normal(n) > 0).astype(float)
        name = f"sparse CSR {n}×{d} ({stored:.0e} entries)"
        for fraction in (0.1, 0.01):
            rows.append(_against_sklearn_lasso(f"Lasso, {name}, {fraction:g} λmax", X, y - y.mean(), fraction, repeats,
                                               fit_intercept=False))
        if has_skglm:
            rows += [_against_skglm_logistic(f"logistic-L1, {name}, {fraction:g} λmax", X, labels, fraction, repeats,
                                             fit_intercept=False) for fraction in (0.1, 0.01)]
    return rows


def _sparse_truth(rng: np.random.Generator, columns: int, nonzeros: int) -> np.ndarray:
    truth = np.zeros(columns)
    truth[rng.choice(columns, nonzeros, replace=False)] = rng.standard_normal(nonzeros)
    return truth


def _group_rows(cases, repeats: int, fractions=(0.3, 0.1, 0.03, 0.01)) -> list[tuple]:
    """The group lasso (no intercept, the target centred) of each ``(name, X, y, group size)`` at
    ``fractions`` of λ_max against skglm's ``GroupLasso`` at its default tolerance."""
    from skglm import GroupLasso

    from symopt.problems import group_lasso

    rows = []
    for name, X, y, size in cases:
        target = y.astype(float) - y.mean()
        problem = group_lasso(X, target, size, 1.0)
        for fraction in fractions:
            lam = fraction * problem.strength_max()
            rows.append(_against(f"group lasso, {name}, {fraction:g} λmax", problem.at_strength(lam), "skglm GroupLasso",
                                 lambda: GroupLasso(groups=size, alpha=lam, fit_intercept=False).fit(X, target),
                                 repeats, calibrate=lambda tol: GroupLasso(groups=size, alpha=lam, fit_intercept=False,
                                                                           tol=tol, max_iter=1000).fit(X, target)))
    return rows


def positive(repeats: int, quick: bool) -> list[tuple]:
    """The non-negative Lasso (``lasso(positive=True)``) against scikit-learn's ``Lasso(positive=True)``:
    raw diabetes with an intercept (10 columns), and a generated 1000×5000 design whose true
    coefficients are half negative (working sets, on by default from 1000 columns)."""
    Xd, yd = _data()["diabetes"]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 5000, generator=g, dtype=torch.float64)
    w = torch.zeros(5000, dtype=torch.float64)
    w[:20], w[20:40] = 1.0 + torch.rand(20, generator=g, dtype=torch.float64), -1.0
    y = X @ w + 0.1 * torch.randn(1000, generator=g, dtype=torch.float64)
    cases = [("diabetes raw, intercept", Xd, yd, True, 0.1), ("diabetes raw, intercept", Xd, yd, True, 0.01)]
    if not quick:
        cases.append(("generated 1000×5000 (working sets)", X.numpy(), y.numpy(), False, 0.05))
    return [_against_sklearn_lasso(f"positive Lasso, {name}, {fraction:g} λmax", design, target, fraction, repeats,
                                   fit_intercept=intercept, positive=True)
            for name, design, target, intercept, fraction in cases[: 1 if quick else None]]


def sparse_design(repeats: int) -> list[tuple]:
    """The issue's sparse row: a Lasso on a scipy CSR design of 10000 × 100000 at density 1e-3 (100 true
    non-zeros, noise 0.1), at 0.5, 0.1 and 0.01 λ_max, against scikit-learn's ``Lasso`` given the same CSR
    matrix (its sparse coordinate descent). symopt keeps it sparse (torch CSR) and solves on working sets."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    # (positions drawn with replacement, the rare repeats summed: scipy.sparse.random draws 10^6 of 10^9
    # positions without replacement, a minute here)
    rows, cols = rng.integers(0, 10000, 1_000_000), rng.integers(0, 100000, 1_000_000)
    X = scipy.sparse.coo_matrix((rng.standard_normal(1_000_000), (rows, cols)), shape=(10000, 100000)).tocsr()
    y = X @ _sparse_truth(rng, 100000, 100) + 0.1 * rng.standard_normal(10000)
    return [_against_sklearn_lasso(f"Lasso, sparse CSR 10000×100000 (density 1e-3), {fraction:g} λmax", X, y,
                                   fraction, repeats, fit_intercept=False) for fraction in (0.5, 0.1, 0.01)]


def groups(repeats: int, quick: bool) -> list[tuple]:
    """The group lasso on real columns against skglm's ``GroupLasso`` (its default tolerance):
    standardised digits in 16 groups of 4 consecutive pixels, standardised breast_cancer in 10 groups
    of 3 consecutive features, the target centred (neither fits an intercept)."""
    if quick:  # skglm compiles its numba kernels on first use (~20 s): not in a smoke test
        return []
    try:
        from skglm import GroupLasso
    except ImportError:  # pragma: no cover
        return []
    from sklearn.datasets import load_digits

    from symopt.problems import group_lasso

    X, y = load_digits(return_X_y=True)
    cases = [("digits std, 16 groups of 4", (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0), y, 4)]
    Xc, yc = _data()["cancer std"]
    cases.append(("cancer std, 10 groups of 3", Xc, yc, 3))
    rows = []
    for name, design, target, size in cases:
        target = target.astype(float) - target.mean()
        for fraction in (0.1, 0.01):
            problem = group_lasso(design, target, size, 1.0)
            lam = fraction * problem.strength_max()
            rows.append(_against(f"group lasso, {name}, {fraction:g} λmax", problem.at_strength(lam),
                                 "skglm GroupLasso",
                                 lambda: GroupLasso(groups=size, alpha=lam, fit_intercept=False).fit(design, target),
                                 repeats, calibrate=lambda tol: GroupLasso(groups=size, alpha=lam, fit_intercept=False,
                                                                           tol=tol, max_iter=1000).fit(design, target)))
    return rows


def multitask(repeats: int, quick: bool) -> list[tuple]:
    """The multi-task Lasso against scikit-learn's ``MultiTaskLasso`` (its default tolerance, a
    Fortran-ordered X): scikit-learn's linnerud (20 samples, 3 exercise features, 3 physiological
    targets) and standardised digits against its one-hot labels (10 targets), targets centred, no
    intercept."""
    from sklearn.datasets import load_digits, load_linnerud
    from sklearn.linear_model import MultiTaskLasso

    from symopt.problems import multitask_lasso

    X, labels = load_digits(return_X_y=True)
    Xl, Yl = load_linnerud(return_X_y=True)
    cases = [("linnerud, 3 targets", (Xl - Xl.mean(0)) / Xl.std(0), Yl),
             ("digits std, 10 one-hot targets", (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0),
              np.eye(10)[labels])]
    rows = []
    for name, design, targets in cases[: 1 if quick else None]:
        targets = targets - targets.mean(0)
        for fraction in (0.1,) if quick else (0.1, 0.01):
            problem = multitask_lasso(design, targets, 1.0)
            lam = fraction * problem.strength_max()
            Xf = np.asfortranarray(design)
            rows.append(_against(f"multi-task Lasso, {name}, {fraction:g} λmax", problem.at_strength(lam),
                                 "sklearn MultiTaskLasso",
                                 lambda: MultiTaskLasso(alpha=lam, fit_intercept=False).fit(Xf, targets), repeats,
                                 coef=lambda model: model.coef_.T.copy(),
                                 calibrate=lambda tol: MultiTaskLasso(alpha=lam, fit_intercept=False, tol=tol,
                                                                      max_iter=100_000).fit(Xf, targets)))
    return rows


def paths(repeats: int, quick: bool) -> list[tuple]:
    from sklearn.linear_model import LassoCV as SkLassoCV
    from sklearn.linear_model import lasso_path
    from sklearn.model_selection import KFold

    from symopt.estimators import LassoCV
    from symopt.problems import make_lasso

    n, d, k = (100, 400, 10) if quick else (500, 2000, 20)
    points, alphas, n_folds = (10, 5, 3) if quick else (50, 30, 5)
    generated = make_lasso(n=n, d=d, nonzeros=k, seed=0)
    X, y = generated.data["X"].numpy(), generated.data["y"].numpy()
    problem = lasso(X, y, 1.0)
    grid = problem.strength_max() * np.geomspace(1.0, 1e-2, points)
    t_dcs, path = _median_time(lambda: symopt.path(problem, grid), repeats, problem.data)
    Xf = np.asfortranarray(X)
    t_peer, (_, coefs, _) = _median_time(lambda: lasso_path(Xf, y, alphas=grid), repeats)
    gaps = [(result.problem.objective(torch.as_tensor(coefs[:, i])) - result.objective) / abs(result.objective)
            for i, result in enumerate(path)]
    statuses = ",".join(sorted(set(path.statuses)))
    rows = [(f"Lasso path, {points} λ, generated {n}×{d}", statuses, t_dcs, "sklearn lasso_path", t_peer, min(gaps))]
    folds = KFold(n_folds, shuffle=True, random_state=0)
    cases = ["diabetes"] if quick else ["diabetes", "cancer raw", "digits", "make_regression 300×50",
                                        "make_regression 100×200"]
    for name in cases:
        # (every case's folds are solved as one ℓ1 quadratic of their block-diagonal Gram: 5 folds × d ≤ 1024)
        Xd, yd = _digits() if name == "digits" else _regression(name) if name.startswith("make") else _data()[name]
        t_dcs, ours = _median_time(lambda: LassoCV(alphas=alphas, cv=folds).fit(Xd, yd), repeats)
        t_peer, theirs = _median_time(lambda: SkLassoCV(alphas=alphas, cv=folds).fit(np.asfortranarray(Xd), yd),
                                      repeats)
        same = "same α" if abs(ours.alpha_ - theirs.alpha_) <= 1e-9 * theirs.alpha_ else "different α"
        rows.append((f"LassoCV, {alphas} α × {n_folds} folds, {name}", same, t_dcs, "sklearn LassoCV", t_peer,
                     float("nan")))
    return rows


def _regression(name: str):
    """scikit-learn's ``make_regression``: 300×50 with correlated columns (effective rank 10), or 100×200
    (n ≪ d) with 10 informative columns; noise 1, seeded."""
    from sklearn.datasets import make_regression
    if name.endswith("300×50"):
        return make_regression(n_samples=300, n_features=50, n_informative=20, effective_rank=10, noise=1.0,
                               random_state=0)
    return make_regression(n_samples=100, n_features=200, n_informative=10, noise=1.0, random_state=0)


def reduced_rank(repeats: int, quick: bool) -> list[tuple]:
    """Nuclear-norm (reduced-rank) regression of digits' one-hot labels on its 64 pixels, raw and
    standardised, against cvxpy (there is no scikit-learn estimator for it; cvxpy's default conic
    solver, SCS, at its default tolerance). Raw pixels are ill-conditioned: some are always 0, so
    XᵀX is singular, and the others range over 0-16."""
    if quick:  # (each row is about a second of cvxpy and of DCS: not in a smoke test)
        return []
    import cvxpy as cp
    from sklearn.datasets import load_digits

    from symopt.problems import low_rank_regression

    digits = load_digits()
    X, Y = digits.data.astype(float), np.eye(10)[digits.target]
    Xs = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    rows = []
    for name, design in (("digits raw", X), ("digits standardised", Xs)):
        for lam in (0.1, 0.01):
            problem = low_rank_regression(torch.as_tensor(design), torch.as_tensor(Y), strength=lam)
            W = cp.Variable((design.shape[1], Y.shape[1]))
            peer = cp.Problem(cp.Minimize(0.5 / len(Y) * cp.sum_squares(design @ W - Y) + lam * cp.normNuc(W)))

            def fit(peer=peer, W=W):
                peer.solve()
                return W.value

            rows.append(_against(f"reduced-rank regression, {name}, λ = {lam:g}", problem, "cvxpy (SCS)", fit,
                                 repeats, coef=lambda value: value))
    return rows


def _digits():
    """scikit-learn's digits as a regression (the label as the target), raw pixels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X, y.astype(float)


def completion(repeats: int, quick: bool, large: bool = False) -> list[tuple]:
    """Nuclear-norm completion against accelerated SoftImpute (warm-started randomized SVD), on two
    generated low-rank matrices and two real ones that are not low rank: scikit-learn's digits
    (1797 × 64 pixels) and its china.jpg sample image in grayscale, halved to 214 × 320. λ is a fraction
    of λ_max = ‖P_Ω M‖₂ (where W = 0 becomes optimal), so the rank it picks is the data's."""
    from sklearn.datasets import load_digits, load_sample_image

    from symopt.problems import make_matrix_completion

    cases = []
    sizes = ((200, 200, 5),) if quick else ((200, 200, 5), (1000, 1000, 10))
    if large:  # the other size; alone (--large-only), it takes a few minutes
        sizes = ((2000, 2000, 10),)
    for m, n, rank in sizes:
        M = make_matrix_completion(m=m, n=n, rank=rank, observed=1.0, seed=0).data["M"]
        cases.append((f"generated {m}×{n} rank {rank}", M, 0.3))
    if not (quick or large):
        cases.append(("digits 1797×64", torch.as_tensor(load_digits().data, dtype=torch.float64), 0.5))
        image = torch.tensor(load_sample_image("china.jpg"), dtype=torch.float64).mean(-1)[::2, ::2] / 255
        cases.append((f"china.jpg gray {image.shape[0]}×{image.shape[1]}", image, 0.5))
    return _completion_rows(cases, (0.1,) if quick else (0.1, 0.02), repeats)


def _completion_rows(cases, fractions, repeats: int) -> list[tuple]:
    """DCS against accelerated SoftImpute on each ``(name, M, observed fraction)`` of ``cases`` (its mask
    drawn from one generator seeded 0, case after case) at each fraction of λ_max = ‖P_Ω M‖₂."""
    from symopt.baselines.softimpute import solve_softimpute
    from symopt.problems import matrix_completion

    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, M, observed in cases:
        mask = torch.rand(M.shape, generator=generator, dtype=torch.float64) < observed
        lam_max = float(torch.linalg.matrix_norm(torch.where(mask, M, 0.0), ord=2))
        for fraction in fractions:
            problem = matrix_completion(M, mask, fraction * lam_max)
            t_dcs, result = _median_time(lambda: symopt.solve(problem), repeats, problem.data)
            t_peer, theirs = _median_time(lambda: solve_softimpute(problem), repeats)
            rank = int(torch.linalg.matrix_rank(result.x, rtol=1e-6))
            rows.append((f"completion, {name}, {observed:.0%} observed, {fraction:g} λmax (rank {rank})",
                         result.status, t_dcs, f"SoftImpute ({theirs.status})", t_peer,
                         (theirs.objective - result.objective) / abs(result.objective)))
    return rows


# (m, n, rank, observed fraction): tall and wide, low and high rank, 15-50% observed; seeded 1-5
SWEEP = ((300, 500, 20, 0.2), (500, 500, 5, 0.5), (1000, 1000, 10, 0.3), (1000, 600, 40, 0.4), (800, 800, 20, 0.15))


def completion_sweep(repeats: int) -> list[tuple]:
    """Completion of the five generated matrices of ``SWEEP`` at 0.1, 0.05 and 0.02 λ_max against
    accelerated SoftImpute: a solver change that helps the suite's four matrices must not be tuned
    to them (the polish of a point that fills the narrowed width was measured here first)."""
    from symopt.problems import make_matrix_completion

    cases = [(f"generated {m}×{n} rank {rank}",
              make_matrix_completion(m=m, n=n, rank=rank, observed=1.0, seed=seed).data["M"], observed)
             for seed, (m, n, rank, observed) in enumerate(SWEEP, start=1)]
    return _completion_rows(cases, (0.1, 0.05, 0.02), repeats)

# The sweeps, each a flag that runs it alone (the first given, in this order): (the call on ``repeats``, its help).
SWEEPS = {
    "--completion-sweep": (completion_sweep, "only completion of fifteen more generated matrices against SoftImpute"),
    "--logistic-sweep": (logistic_sweep,
                         "only logistic-L1 on eleven more data sets against skglm (wine, digits, generated)"),
    "--group-sweep": (group_sweep, "only the group lasso on eight data sets against skglm (breast_cancer, digits, "
                                   "diabetes, wine, generated)"),
    "--wide-group-sweep": (wide_group_sweep,
                           "only the group lasso on 28 data sets with more columns than rows against skglm"),
    "--raw-group-sweep": (raw_group_sweep,
                          "only the group lasso on raw columns (breast_cancer, digits, wine) against skglm"),
    "--wide-lasso-sweep": (wide_lasso_sweep,
                           "only the Lasso on 12 data sets with more columns than rows against scikit-learn"),
    "--sparse-sweep": (sparse_sweep, "only the Lasso and logistic-L1 on eight generated CSR designs (4e4 to 1e6 "
                                     "entries) against scikit-learn and skglm"),
    "--large-answer-sweep": (large_answer_sweep,
                             "only the Lasso and logistic-L1 whose answers hold more than 1024 columns against "
                             "scikit-learn and skglm (digits' degree-2 features, generated dense and sparse designs)"),
}


# The drawn sweeps' seeds where none is given (``--drawn-group-sweep`` and the others with no SEED, ``--summary``)
DRAWN_SEEDS = {"group": 4242, "options": 2027, "raw scales": 1000}

# The rule for a row (issue 22): DCS within RULE_RATIO × the peer's time (the peer at the tolerance that
# reaches the optimum, where its default stops short), or, where the peer needs under RULE_QUICK_PEER seconds,
# within RULE_QUICK_DCS seconds a solve.
RULE_RATIO, RULE_QUICK_PEER, RULE_QUICK_DCS = 3.0, 0.002, 0.020
# Words in a row's label that name a data set scikit-learn ships (real data, or features of it); every other row's
# data are generated (make_regression and friends, AR(1), Gaussian, sparse CSR, drawn scales).
REAL_DATA = ("diabetes", "cancer", "digits", "wine", "linnerud", "china")


def row_family(label: str) -> str:
    """The family a row's label names (its first words): the Lasso and the elastic net are one family, logistic-L1
    with or without an ℓ2 part another.

    Examples:
        >>> row_family("Lasso+intercept, diabetes, 0.1 λmax"), row_family("logistic, AR(1) 261×220, l1_ratio 0.5")
        ('Lasso / elastic net', 'logistic-L1')
    """
    head = label.split(",")[0].lower()
    for prefix, family in (("lasso path", "Lasso path"), ("lassocv", "LassoCV"),
                           ("positive lasso", "non-negative Lasso"), ("multi-task", "multi-task Lasso"),
                           ("group lasso", "group lasso"), ("completion", "completion"),
                           ("reduced-rank", "reduced-rank regression"), ("logistic", "logistic-L1")):
        if head.startswith(prefix):
            return family
    return "Lasso / elastic net"


def peer_seconds(row: tuple) -> float:
    """The peer's time a row is judged by: at the tolerance that reaches the optimum where the row has one, else at
    its default (also where no tolerance tried reached it)."""
    calibrated = row[6] if len(row) > 6 else None
    return calibrated[0] if calibrated else row[4]


def peer_stops_short(row: tuple) -> bool:
    """Whether no tolerance tried took the peer to the optimum (its objective stays above DCS's by more than
    ``REACHED`` relative): the row has no time at equal accuracy, and the issue's rule does not apply to it."""
    return len(row) > 6 and row[6] is None


def inside_rule(row: tuple) -> bool:
    """Whether a row is inside the issue's rule (see ``RULE_RATIO``; a row whose peer stops short, see
    `peer_stops_short`, is judged by the peer's default time).

    Examples:
        >>> quick = ("Lasso, x", "optimal", 0.012, "peer", 0.0015, 0.0)    # 8× a peer under 2 ms, within 20 ms
        >>> slow = ("Lasso, x", "optimal", 0.030, "peer", 0.005, 0.0)      # 6× a peer of 5 ms
        >>> inside_rule(quick), inside_rule(slow)
        (True, False)
    """
    peer = peer_seconds(row)
    return row[2] <= RULE_RATIO * peer or (peer < RULE_QUICK_PEER and row[2] <= RULE_QUICK_DCS)


def summary(rows: list[tuple]) -> list[str]:
    """Markdown lines: per family and kind of data (shipped or generated), the rows, the geometric mean and the range
    of DCS's time over the peer's (`peer_seconds`), the rows where DCS is faster, those whose peer stops short of the
    optimum at every tolerance tried (`peer_stops_short`: no rule applies), and those outside the issue's rule; the
    last two are then listed one by one."""
    groups: dict = {}
    for row in rows:
        kind = "shipped" if any(word in row[0].lower() for word in REAL_DATA) else "generated"
        groups.setdefault((row_family(row[0]), kind), []).append(row)
    lines = ["| family | data | rows | DCS / peer, geometric mean | range | DCS faster | peer stops short "
             "| outside the rule |", "|---|---|---|---|---|---|---|---|"]
    short, outside = [], []
    for (family, kind), members in sorted(groups.items()):
        ratios = [row[2] / peer_seconds(row) for row in members]
        stopped = [row for row in members if peer_stops_short(row)]
        missed = [row for row in members if not peer_stops_short(row) and not inside_rule(row)]
        short += stopped
        outside += missed
        mean = statistics.geometric_mean(ratios)
        lines.append(f"| {family} | {kind} | {len(members)} | {mean:.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× "
                     f"| {sum(r < 1 for r in ratios)} | {len(stopped)} | {len(missed)} |")
    statuses = sorted({row[1] for row in rows})
    lines.append(f"\n{len(rows)} rows; DCS statuses: {', '.join(statuses)}.")
    for title, listed in (("The peer stops short of the optimum (its objective above DCS's by the gap given; its "
                           "default time)", short), ("Outside the rule", outside)):
        if listed:
            lines.append(f"\n{title}:\n")
            lines += [f"- {row[0]}: {1e3 * row[2]:.1f} ms against {1e3 * peer_seconds(row):.1f} ms ({row[3]}"
                      + (f", gap {row[5]:+.1e})" if peer_stops_short(row) else ")") for row in listed]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.users_data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: one repeat, a small path")
    parser.add_argument("--large-only", action="store_true", help="only completion 2000×2000 against SoftImpute")
    parser.add_argument("--positive-only", action="store_true", help="only the non-negative Lasso rows")
    parser.add_argument("--groups-only", action="store_true", help="only the group and multi-task Lasso rows")
    parser.add_argument("--paths-only", action="store_true", help="only the path and LassoCV rows")
    parser.add_argument("--completion-only", action="store_true",
                        help="only the completion rows against SoftImpute (generated, digits, china.jpg)")
    for flag, (_, help_text) in SWEEPS.items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("--reduced-rank-only", action="store_true",
                        help="only the nuclear-norm regression rows against cvxpy")
    parser.add_argument("--sparse-only", action="store_true",
                        help="only the Lasso on a sparse CSR 10000×100000 design against scikit-learn")
    parser.add_argument("--drawn-group-sweep", type=int, nargs="?", const=DRAWN_SEEDS["group"], metavar="SEED",
                        help="only the group lasso on 20 wide designs drawn from SEED (default 4242) against skglm")
    parser.add_argument("--drawn-options-sweep", type=int, nargs="?", const=DRAWN_SEEDS["options"], metavar="SEED",
                        help="only the Lasso, elastic net and logistic-L1 with drawn options (intercept, sample weights, "
                             "l1_ratio, positive) on 45 problems drawn from SEED (default 2027) against scikit-learn and skglm")
    parser.add_argument("--drawn-raw-scales-sweep", type=int, nargs="?", const=DRAWN_SEEDS["raw scales"],
                        metavar="SEED",
                        help="only the Lasso and elastic net on columns of scales 1e-3..1e3 at 1e-7..1e-4 λmax, 30 "
                             "problems drawn from SEED (default 1000) against scikit-learn")
    parser.add_argument("--summary", action="store_true",
                        help="the default run and every sweep above (drawn ones at their default seeds), then a table "
                             "per family: DCS's time over the peer's, and the rows outside issue 22's rule (~15 min on "
                             "2 cores; it overrides the flags that choose rows)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    sweeps = [run for flag, (run, _) in SWEEPS.items() if vars(args)[flag[2:].replace("-", "_")]]
    print(f"machine: {machine_name('cpu')}, torch threads {torch.get_num_threads()}; medians of {repeats} runs\n")
    print(f"| problem | DCS status | DCS s | peer | peer s | DCS / peer | peer gap | peer s at gap ≤ {REACHED:g} (tol) "
          "| DCS / that |")
    print("|---|---|---|---|---|---|---|---|---|")
    if args.summary:
        rows = lambda: _every_row(repeats, args.quick)  # noqa: E731
    elif args.large_only:
        rows = lambda: completion(repeats, False, large=True)  # noqa: E731
    elif args.positive_only:
        rows = lambda: positive(repeats, args.quick)  # noqa: E731
    elif args.paths_only:
        rows = lambda: paths(repeats, args.quick)  # noqa: E731
    elif args.reduced_rank_only:
        rows = lambda: reduced_rank(repeats, args.quick)  # noqa: E731
    elif args.sparse_only:
        rows = lambda: sparse_design(repeats)  # noqa: E731
    elif args.drawn_group_sweep is not None:
        rows = lambda: drawn_group_sweep(repeats, args.drawn_group_sweep)  # noqa: E731
    elif args.drawn_options_sweep is not None:
        rows = lambda: drawn_options_sweep(repeats, args.drawn_options_sweep)  # noqa: E731
    elif args.drawn_raw_scales_sweep is not None:
        rows = lambda: drawn_raw_scales_sweep(repeats, args.drawn_raw_scales_sweep)  # noqa: E731
    elif sweeps:
        rows = lambda: sweeps[0](repeats)  # noqa: E731
    elif args.completion_only:
        rows = lambda: completion(repeats, args.quick)  # noqa: E731
    elif args.groups_only:
        rows = lambda: groups(repeats, args.quick) + multitask(repeats, args.quick)  # noqa: E731
    else:
        rows = lambda: _default_rows(repeats, args.quick)  # noqa: E731
    done = []
    for row in rows():
        done.append(row)
        name, status, t_dcs, peer, t_peer, gap = row[:6]
        calibrated = row[6] if len(row) > 6 else ()
        if calibrated is None:
            reached = f" not within {_CALIBRATION_STEPS} tenths | |"
        elif calibrated:
            reached = f" {calibrated[0]:.4f} ({calibrated[1]:.0e}) | {t_dcs / calibrated[0]:.1f}× |"
        else:
            reached = " | |"
        print(f"| {name} | {status} | {t_dcs:.4f} | {peer} | {t_peer:.4f} | {t_dcs / t_peer:.1f}× | {gap:+.1e} |"
              + reached, flush=True)
    if args.summary:
        print("\n" + "\n".join(summary(done)))


def _default_rows(repeats: int, quick: bool) -> list[tuple]:
    return (single_solves(repeats, quick) + positive(repeats, quick) + groups(repeats, quick)
            + multitask(repeats, quick) + paths(repeats, quick) + completion(repeats, quick)
            + reduced_rank(repeats, quick))


def _every_row(repeats: int, quick: bool):
    """The rows of the default run, then of every sweep (drawn ones at their default seeds), as they come."""
    yield from _default_rows(repeats, quick)
    if quick:  # (a smoke test of the summary: the default rows alone)
        return
    yield from sparse_design(repeats)
    for run, _ in SWEEPS.values():
        yield from run(repeats)
    yield from drawn_group_sweep(repeats, DRAWN_SEEDS["group"])
    yield from drawn_options_sweep(repeats, DRAWN_SEEDS["options"])
    yield from drawn_raw_scales_sweep(repeats, DRAWN_SEEDS["raw scales"])


if __name__ == "__main__":
    main()
