"""Seeded generators of built-in problems with a planted sparse / low-rank truth."""

from __future__ import annotations

import warnings

import torch

from .base import Problem
from .design import rmatvec
from .families import (equality_ls, group_lasso, lasso, logistic_l1, low_rank_regression, matrix_completion,
                       tied_least_squares)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check(owner: str, counts: dict, at_most: dict | None = None, nonnegative: dict | None = None,
           fractions: dict | None = None) -> None:
    """Sizes are ints ≥ 1 (a count ≤ its bound), noises ≥ 0, fractions in (0, 1]; else a named ValueError."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")
    for name, (value, bound, what) in (at_most or {}).items():
        if value > bound:
            raise ValueError(f"{owner}: {name}={value} exceeds {what}={bound}")
    for name, value in (nonnegative or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{owner}: {name} must be a number >= 0, got {value!r}")
    for name, value in (fractions or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"{owner}: {name} must be in (0, 1], got {value!r}")


def _planted_regression(n, d, nonzeros, noise, seed, x_density=None):
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) if x_density is None else _sparse_design(n, d, x_density, g)
    truth = torch.zeros(d, dtype=torch.float64)
    support = torch.randperm(d, generator=g)[:nonzeros]
    truth[support] = torch.randn(nonzeros, generator=g, dtype=torch.float64).sign() * (
        1 + torch.rand(nonzeros, generator=g, dtype=torch.float64))
    return X, X @ truth + noise * torch.randn(n, generator=g, dtype=torch.float64), truth


def _sparse_design(n, d, density, g):
    r"""An n×d CSR matrix with about $\mathrm{density}·n·d$ N(0, 1) entries at uniform random positions
    (drawn as coordinates, so a 1e4×1e6 design never exists densely)."""
    count = max(1, round(density * n * d))
    rows = torch.randint(n, (count,), generator=g)
    cols = torch.randint(d, (count,), generator=g)
    values = torch.randn(count, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice, once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, d)).coalesce().to_sparse_csr()


def _lambda_max_fraction(X, y, fraction):
    """λ as a fraction of λ_max = ‖Xᵀy‖_∞/n, the smallest λ with the all-zero Lasso solution. For a
    CSR X, ``rmatvec`` builds the transpose that the problem's solves then reuse."""
    return fraction * float(rmatvec(X, y).abs().max()) / X.shape[0]


def make_lasso(n=200, d=500, nonzeros=10, noise=0.1, fraction=0.1, seed=0, x_density=None) -> Problem:
    r"""A [`lasso`][symopt.problems.lasso] with a planted sparse truth: $y = Xw° + \mathrm{noise}·ε$.

    ``X`` has i.i.d. N(0, 1) entries; ``w°`` has ``nonzeros`` entries of magnitude in [1, 2] and
    random sign; λ is $\mathrm{fraction} × λ_{\max}$ with $λ_{\max} = ‖X^\top y‖_∞/n$, the smallest λ whose
    solution is 0.

    Args:
        n: samples.
        d: features.
        nonzeros: size of the planted support (≤ d).
        noise: standard deviation of the noise.
        fraction: λ / λ_max, in (0, 1].
        seed: seed of the generator (same seed, same problem).
        x_density: None for a dense Gaussian X; a fraction in (0, 1] for a sparse (CSR) X with
            about that share of N(0, 1) entries (``n = 1e4, d = 1e6`` at 1e-4 is 1e6 stored entries).

    Returns:
        Problem: ``meta["truth"]`` holds ``w°``.

    Raises:
        ValueError: a size that is not a positive int, ``nonzeros > d``, negative noise, or a
            fraction or density outside (0, 1].

    Examples:
        >>> from symopt.problems import make_lasso
        >>> problem = make_lasso(n=50, d=30, nonzeros=4)
        >>> problem.name, int((problem.meta["truth"] != 0).sum())
        ('lasso 50x30', 4)
        >>> make_lasso(n=50, d=1000, x_density=0.01).data["X"].layout
        torch.sparse_csr
    """
    fractions = dict(fraction=fraction) if x_density is None else dict(fraction=fraction, x_density=x_density)
    _check("make_lasso", dict(n=n, d=d, nonzeros=nonzeros), dict(nonzeros=(nonzeros, d, "d")),
           dict(noise=noise), fractions)
    X, y, truth = _planted_regression(n, d, nonzeros, noise, seed, x_density)
    p = lasso(X, y, _lambda_max_fraction(X, y, fraction))
    p.meta["truth"] = truth
    return p


def make_group_lasso(n=200, d=400, group_size=4, active_groups=5, noise=0.1, fraction=0.1, seed=0) -> Problem:
    r"""A [`group_lasso`][symopt.problems.group_lasso] over consecutive groups with a planted group-sparse truth.

    ``active_groups`` of the ``d / group_size`` groups carry N(0, 1) weights; λ is
    $\mathrm{fraction} × λ_{\max}$ with $λ_{\max} = \max_g ‖X_g^\top y‖_2/n$.

    Args:
        n: samples.
        d: features (a multiple of ``group_size``).
        group_size: columns per group.
        active_groups: planted non-zero groups (≤ d / group_size).
        noise: standard deviation of the noise.
        fraction: λ / λ_max, in (0, 1].
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["truth"]`` holds the planted weights.

    Raises:
        ValueError: a size that is not a positive int, ``d`` not a multiple of ``group_size``, too
            many active groups, negative noise, or a fraction outside (0, 1].

    Examples:
        >>> from symopt.problems import make_group_lasso
        >>> problem = make_group_lasso(n=40, d=20, group_size=5, active_groups=1)
        >>> problem.name
        'group_lasso 40x20/5'
    """
    _check("make_group_lasso", dict(n=n, d=d, group_size=group_size, active_groups=active_groups),
           dict(active_groups=(active_groups, d // group_size, "the number of groups")), dict(noise=noise),
           dict(fraction=fraction))
    if d % group_size:
        raise ValueError(f"make_group_lasso: d={d} is not a multiple of group_size={group_size}")
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(d // group_size, group_size, dtype=torch.float64)
    active = torch.randperm(d // group_size, generator=g)[:active_groups]
    truth[active] = torch.randn(active_groups, group_size, generator=g, dtype=torch.float64)
    truth = truth.reshape(-1)
    y = X @ truth + noise * torch.randn(n, generator=g, dtype=torch.float64)
    lam_max = float((X.T @ y).reshape(-1, group_size).norm(dim=1).max()) / n
    p = group_lasso(X, y, group_size, fraction * lam_max)
    p.meta["truth"] = truth
    return p


def make_logistic_l1(n=300, d=100, nonzeros=5, fraction=0.1, seed=0) -> Problem:
    r"""A [`logistic_l1`][symopt.problems.logistic_l1] with labels drawn from a planted sparse logistic model.

    ``y_i ~ Bernoulli(σ(x_iᵀw°))`` with ``nonzeros`` entries of ``w°`` equal to 2; λ is
    $\mathrm{fraction} × λ_{\max}$, $λ_{\max} = ‖X^\top (y - \tfrac12 )‖_∞/n$.

    Args:
        n: samples.
        d: features.
        nonzeros: planted support size (≤ d).
        fraction: λ / λ_max, in (0, 1].
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["truth"]`` holds ``w°``.

    Raises:
        ValueError: a size that is not a positive int, ``nonzeros > d``, or a fraction outside
            (0, 1].

    Examples:
        >>> from symopt.problems import make_logistic_l1
        >>> sorted(make_logistic_l1(n=30, d=10, nonzeros=2).data["y"].unique().tolist())
        [0.0, 1.0]
    """
    _check("make_logistic_l1", dict(n=n, d=d, nonzeros=nonzeros), dict(nonzeros=(nonzeros, d, "d")),
           fractions=dict(fraction=fraction))
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    truth = torch.zeros(d, dtype=torch.float64)
    truth[torch.randperm(d, generator=g)[:nonzeros]] = 2.0
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(X @ truth)).to(torch.float64)
    lam_max = float((X.T @ (y - 0.5)).abs().max()) / n
    p = logistic_l1(X, y, fraction * lam_max)
    p.meta["truth"] = truth
    return p


def make_equality_ls(n=200, d=100, constraints=10, noise=0.1, margin=1.5, seed=0) -> Problem:
    r"""An [`equality_ls`][symopt.problems.equality_ls] with a random N(0, 1) constraint matrix ``A`` ($k × d$).

    The constrained optimum ``w*`` (least squares on the null space of ``A``) and its multipliers
    $O^\top ∇ℓ(w^*)$ are computed in closed form; $\mathrm{strength} = \mathrm{margin} × ‖O^\top ∇ℓ(w^*)‖_∞$, so the
    exact-penalty threshold is known.

    Args:
        n: samples.
        d: features.
        constraints: rows of ``A`` (< d).
        noise: standard deviation of the noise.
        margin: strength over the multiplier bound (> 1 for an exact answer).
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["solution"]`` is ``w*``, ``meta["multiplier_bound"]`` the threshold $λ^*$.

    Raises:
        ValueError: a size that is not a positive int, $\mathrm{constraints} ≥ d$, or negative noise /
            margin.

    Examples:
        >>> import symopt
        >>> from symopt.problems import make_equality_ls
        >>> problem = make_equality_ls(n=40, d=10, constraints=3)
        >>> result = symopt.solve(problem)
        >>> float((result.x - problem.meta["solution"]).abs().max()) < 1e-8
        True
    """
    _check("make_equality_ls", dict(n=n, d=d, constraints=constraints),
           dict(constraints=(constraints, d - 1, "d - 1")), dict(noise=noise, margin=margin))
    X, y, truth = _planted_regression(n, d, d, noise, seed)
    A = torch.randn(constraints, d, generator=_gen(seed + 1), dtype=torch.float64)
    from ..constraints.subspace import orthonormal_rowspace
    O = orthonormal_rowspace(A)
    N = torch.linalg.svd(A).Vh[A.shape[0]:].mT  # null-space basis
    coef = torch.linalg.lstsq(X @ N, y.unsqueeze(1)).solution.squeeze(1)
    w_star = N @ coef
    multipliers = O.mT @ (X.T @ (X @ w_star - y) / n)
    p = equality_ls(X, y, A, strength=margin * float(multipliers.abs().max()))
    p.meta.update(solution=w_star, multiplier_bound=float(multipliers.abs().max()))
    return p


def make_fixed_zeros_ls(n=200, d=100, zeros=20, noise=0.1, margin=1.5, seed=0) -> Problem:
    r"""Least squares with ``zeros`` random entries forced to 0 (non-zero in the truth): an
    [`equality_ls`][symopt.problems.equality_ls] with ``zeros=mask``.

    The constrained optimum (least squares on the free entries) and the multipliers
    $∇ℓ(w^*)[\mathrm{mask}]$ are computed in closed form; $\mathrm{strength} = \mathrm{margin} × ‖∇ℓ(w^*)[\mathrm{mask}]‖_∞$.

    Args:
        n: samples.
        d: features.
        zeros: entries forced to zero (< d).
        noise: standard deviation of the noise.
        margin: strength over the multiplier bound.
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["solution"]`` and ``meta["multiplier_bound"]`` as in
            [`make_equality_ls`][symopt.problems.make_equality_ls].

    Raises:
        ValueError: a size that is not a positive int, $\mathrm{zeros} ≥ d$, or negative noise / margin.

    Examples:
        >>> from symopt.problems import make_fixed_zeros_ls
        >>> problem = make_fixed_zeros_ls(n=40, d=10, zeros=3)
        >>> problem.name, int((problem.meta["solution"] == 0).sum())
        ('equality_ls 40x10, 3 zeros', 3)
    """
    _check("make_fixed_zeros_ls", dict(n=n, d=d, zeros=zeros), dict(zeros=(zeros, d - 1, "d - 1")),
           dict(noise=noise, margin=margin))
    X, y, _ = _planted_regression(n, d, d, noise, seed)
    mask = torch.zeros(d, dtype=torch.bool)
    mask[torch.randperm(d, generator=_gen(seed + 1))[:zeros]] = True
    free = (~mask).nonzero().squeeze(1)
    w_star = torch.zeros(d, dtype=torch.float64)
    w_star[free] = torch.linalg.lstsq(X[:, free], y.unsqueeze(1)).solution.squeeze(1)
    multipliers = (X.T @ (X @ w_star - y) / n)[mask]
    p = equality_ls(X, y, zeros=mask, strength=margin * float(multipliers.abs().max()))
    p.meta.update(solution=w_star, multiplier_bound=float(multipliers.abs().max()))
    return p


def make_tied_least_squares(tasks=3, n=100, d=30, noise=0.1, spread=0.3, margin=1.5, seed=0) -> Problem:
    r"""``tasks`` regressions whose true weights differ by ``spread``, tied to one shared weight: a
    [`tied_least_squares`][symopt.problems.tied_least_squares].

    The tied optimum is the pooled least-squares fit; $\mathrm{strength} = \mathrm{margin} × \max_j ‖∇_{w_j}ℓ(w^*)‖_∞$.

    Args:
        tasks: number of tasks (≥ 2).
        n: samples per task.
        d: features.
        noise: standard deviation of the noise.
        spread: standard deviation of each task's deviation from the shared weight.
        margin: strength over the multiplier bound.
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["solution"]`` is the pooled fit repeated per task.

    Raises:
        ValueError: a size that is not a positive int, fewer than 2 tasks, or negative noise /
            spread / margin.

    Examples:
        >>> from symopt.problems import make_tied_least_squares
        >>> make_tied_least_squares(tasks=2, n=20, d=5).shape
        (2, 5)
    """
    _check("make_tied_least_squares", dict(tasks=tasks, n=n, d=d),
           nonnegative=dict(noise=noise, spread=spread, margin=margin))
    if tasks < 2:
        raise ValueError(f"make_tied_least_squares: tasks must be >= 2 (a tie needs two copies), got {tasks}")
    g = _gen(seed)
    X = torch.randn(tasks, n, d, generator=g, dtype=torch.float64)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    truth = base + spread * torch.randn(tasks, d, generator=g, dtype=torch.float64)
    y = torch.einsum("knd,kd->kn", X, truth) + noise * torch.randn(tasks, n, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(X.reshape(-1, d), y.reshape(-1, 1)).solution.squeeze(1)
    grads = torch.einsum("knd,kn->kd", X, torch.einsum("knd,d->kn", X, w_star) - y) / n
    bound = float(grads.abs().max())
    p = tied_least_squares(X, y, strength=margin * bound)
    p.meta.update(solution=w_star.expand(tasks, d).clone(), multiplier_bound=bound)
    return p


def make_matrix_completion(m=50, n=40, rank=3, observed=0.5, noise=0.01, strength=0.5, seed=0) -> Problem:
    r"""A [`matrix_completion`][symopt.problems.matrix_completion] of a planted rank-``rank`` matrix.

    $M = AB + \mathrm{noise}·ε$ with Gaussian ``A`` (m × rank), ``B`` (rank × n); each entry is observed
    with probability ``observed``.

    Args:
        m: rows.
        n: columns.
        rank: planted rank (≤ min(m, n)).
        observed: fraction of observed entries, in (0, 1].
        noise: standard deviation of the noise.
        strength: λ of the nuclear norm.
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["truth"]`` is the noiseless planted matrix.

    Raises:
        ValueError: a size that is not a positive int, ``rank > min(m, n)``, negative noise, or
            ``observed`` outside (0, 1].

    Examples:
        >>> from symopt.problems import make_matrix_completion
        >>> problem = make_matrix_completion(m=8, n=6, rank=2)
        >>> problem.name, int(problem.data["mask"].sum()) < 48
        ('completion 8x6', True)
    """
    _check("make_matrix_completion", dict(m=m, n=n, rank=rank), dict(rank=(rank, min(m, n), "min(m, n)")),
           dict(noise=noise), dict(observed=observed))
    g = _gen(seed)
    truth = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g,
                                                                                dtype=torch.float64)
    M = truth + noise * torch.randn(m, n, generator=g, dtype=torch.float64)
    mask = torch.rand(m, n, generator=g) < observed
    p = matrix_completion(M, mask, strength)
    p.meta["truth"] = truth
    return p


def make_low_rank_regression(n=200, p=30, q=20, rank=3, noise=0.1, fraction=0.2, hard_rank=None,
                             orthogonal=False, seed=0) -> Problem:
    r"""A [`low_rank_regression`][symopt.problems.low_rank_regression] with planted rank-``rank`` coefficients.

    $Y = XW° + \mathrm{noise}·ε$. Without ``hard_rank``: the nuclear-norm problem at
    $λ = \mathrm{fraction} × ‖X^\top Y/n‖_2$. ``hard_rank=r`` gives the hard-rank variant; with
    ``orthogonal=True`` the design has $X^\top X = n·I$, so the truncated SVD of $X^\top Y/n$ is the exact
    hard-rank optimum (``meta["solution"]``, a check for any solver).

    Args:
        n: samples.
        p: inputs.
        q: outputs.
        rank: planted rank (≤ min(p, q)).
        noise: standard deviation of the noise.
        fraction: λ / ‖XᵀY/n‖₂ for the penalised variant, in (0, 1].
        hard_rank: the bound ``r`` of the hard-rank variant (None: penalised).
        orthogonal: make $X^\top X = n·I$ (needs $n ≥ p$).
        seed: seed of the generator (same seed, same problem).

    Returns:
        Problem: ``meta["truth"]`` is ``W°``.

    Raises:
        ValueError: a size that is not a positive int, ``rank > min(p, q)``, negative noise, a
            fraction outside (0, 1], or ``orthogonal`` with $n < p$.

    Examples:
        >>> from symopt.problems import make_low_rank_regression
        >>> problem = make_low_rank_regression(n=40, p=6, q=5, rank=2, hard_rank=2, orthogonal=True)
        >>> problem.name, tuple(problem.meta["solution"].shape)
        ('hard_rank 40x6x5, r=2', (6, 5))
    """
    _check("make_low_rank_regression", dict(n=n, p=p, q=q, rank=rank), dict(rank=(rank, min(p, q), "min(p, q)")),
           dict(noise=noise), dict(fraction=fraction))
    if orthogonal and n < p:
        raise ValueError(f"make_low_rank_regression: orthogonal=True needs n >= p, got n={n}, p={p}")
    g = _gen(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    if orthogonal:
        X = torch.linalg.qr(X).Q * n**0.5
    truth = torch.randn(p, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, q, generator=g,
                                                                                dtype=torch.float64)
    Y = X @ truth + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    if hard_rank is not None:
        problem = low_rank_regression(X, Y, rank=hard_rank)
    else:
        problem = low_rank_regression(X, Y, fraction * float(torch.linalg.matrix_norm(X.T @ Y / n, ord=2)))
    problem.meta["truth"] = truth
    if orthogonal and hard_rank is not None:
        P, S, Qh = torch.linalg.svd(X.T @ Y / n, full_matrices=False)
        problem.meta["solution"] = (P[:, :hard_rank] * S[:hard_rank]) @ Qh[:hard_rank]
    return problem
