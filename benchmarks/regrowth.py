"""Zeros during a fixed-λ run: plain factor dynamics vs ``symopt.regrow``, against scikit-learn's optimum.

    python -m benchmarks.regrowth [--seeds 3] [--first 3000] [--second 5000] [--data NAME ...] [--quick]
    python -m benchmarks.regrowth --mlp [--rank] [--seeds 3] [--epochs 30]

Real data shipped with scikit-learn, columns standardised, targets centred (not scaled):

* ``diabetes``: the Lasso (442 × 10), ``symopt.sparse`` on a bias-free Linear; reference
  ``sklearn.linear_model.Lasso(tol=1e-14)``;
* ``breast_cancer``: the Lasso on the 0/1 label (569 × 30), likewise;
* ``wine``: the multi-task Lasso on the one-hot class (178 × 13 → 3), ``symopt.group_sparse(dim=1)``
  (one group per input feature); reference ``MultiTaskLasso(tol=1e-14)``;
* ``diabetes+``, ``breast_cancer+``: the non-negative Lasso, ``symopt.nonnegative`` (θ = ½u⊙u, whose
  pull off zero is (−∂ℓ/∂θ)⁺); reference ``Lasso(positive=True, tol=1e-14)``; λ_max is the largest
  pull at 0;
* ``digits-rank``: reduced-rank regression of digits' one-hot class on its 64 pixels (1797 × 64 → 10),
  ``symopt.low_rank`` (θ = UVᵀ: a direction is a column pair once the factors are rotated); reference
  accelerated proximal gradient with singular-value thresholding (FISTA, 3000 iterations: no
  scikit-learn estimator solves it); its "zeros" are zero column pairs, the missing rank.

Two phases, as a schedule or a fine-tuning does: ``--first`` full-batch steps at λ₁ = 0.5 λ_max, then
``--second`` at λ₂ = 0.05 λ_max (λ_max from the data: the fractions mean the same on every data set).
The atoms that enter at λ₂ spent the first phase decaying toward 0. Optimizers: GD at a learning rate
of 0.5 × the factored loss's stability limit at λ₂'s solution (``2 / λ_max`` of its Hessian at the
balanced factors, as ``examples/learning_rate_scale.py``), and Adam at lr 1e-2 (coupled decay).

Each row (median over ``--seeds`` factor initialisations): the relative objective gap to scikit-learn
at λ₂ after 500 / 2000 / all steps of the second phase, the first step at which it is below 1e-8,
the atoms whose zero / non-zero status differs from scikit-learn's at the end (exact zeros), and the
wall time per step (median) against the plain run's.

``--mlp``: minibatch training instead, where θ's gradient is noisy. scikit-learn's digits (80% train,
pixels / 16), MLP 64-256-256-10 with ``symopt.sparse(strength=1e-3)`` on both hidden weights, Adam lr
1e-3, batch 64, ``--epochs`` epochs; plain, and ``regrow`` with the moving average's factor β = 0.9 and
0.99 (the default). Each row (mean over seeds): test accuracy, the fraction of each layer's entries
that is exactly 0 and that is below 1e-3 of its largest (what the plain run calls zero), the
atoms regrown (seeded off 0) and snapped over training, and the training CPU time (median).
``--rank``: ``symopt.low_rank(strength=1e-3)`` instead, plain and β = 0.99; the fractions are of each
layer's singular directions (exact: zero column pairs of the factors; small: singular values below
1e-3 of the largest).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

import symopt

LAM_FIRST, LAM_SECOND = 0.5, 0.05  # fractions of λ_max
CHECKPOINTS = (500, 2000)
TARGET = 1e-8


GROUPS, POSITIVE, RANK = "groups", "positive", "rank"  # the kinds besides "entries" (symopt.sparse)
DATA = ("diabetes", "breast_cancer", "wine", "diabetes+", "breast_cancer+", "digits-rank")


def _standardised(X):
    X = X - X.mean(0)
    spread = X.std(0)
    return torch.tensor(X / np.where(spread > 0, spread, 1.0))  # (digits has constant border pixels)


def load(name: str):
    """(X, Y, kind) for a data set of the benchmark: Y has one column per task; kind "entries"
    (``sparse``), "groups" (``group_sparse`` over input features), "positive" (``nonnegative``) or "rank"
    (``low_rank``)."""
    from sklearn import datasets
    if name == "digits-rank":
        X, label = datasets.load_digits(return_X_y=True)
        Y = torch.nn.functional.one_hot(torch.tensor(label)).double()
        return _standardised(X), Y - Y.mean(0), RANK
    if name == "wine":
        X, label = datasets.load_wine(return_X_y=True)
        Y = torch.nn.functional.one_hot(torch.tensor(label)).double()
        return _standardised(X), Y - Y.mean(0), GROUPS
    base = name.rstrip("+")
    X, y = (datasets.load_diabetes if base == "diabetes" else datasets.load_breast_cancer)(return_X_y=True)
    y = torch.tensor(y, dtype=torch.float64)
    return _standardised(X), (y - y.mean()).unsqueeze(1), POSITIVE if name.endswith("+") else "entries"


def strength_max(X, Y, kind: str) -> float:
    """The smallest λ at which 0 is optimal: the dual norm of the gradient at 0 (for θ ≥ 0 the largest
    pull upward, (−∂ℓ/∂θ)⁺ = (XᵀY/n)⁺)."""
    G = X.T @ Y / len(X)  # features × tasks: −∂ℓ/∂θ at 0
    if kind == RANK:
        return float(torch.linalg.matrix_norm(G, 2))
    if kind == GROUPS:
        return float(G.norm(dim=1).max())
    return float(G.clamp_min(0).max() if kind == POSITIVE else G.abs().max())


def objective(W, X, Y, lam: float, kind: str) -> float:
    fit = 0.5 * float(((X @ W.T - Y) ** 2).sum()) / len(X)
    if kind == RANK:
        return fit + lam * float(torch.linalg.svdvals(W).sum())
    return fit + lam * float(W.norm(dim=0).sum() if kind == GROUPS else W.abs().sum())


def nuclear_reference(X, Y, lam: float, iterations: int = 3000):
    """min (1/2n)‖Y − XWᵀ‖² + λ‖W‖_* by accelerated proximal gradient (FISTA, singular-value
    thresholding at the step 1/L): the textbook solver, independent of symopt."""
    n = len(X)
    step = n / float(torch.linalg.matrix_norm(X, 2)) ** 2
    W = torch.zeros(Y.shape[1], X.shape[1], dtype=torch.float64)
    Z, t = W.clone(), 1.0
    for _ in range(iterations):
        P, S, Qh = torch.linalg.svd(Z - step * ((Z @ X.T - Y.T) @ X / n), full_matrices=False)
        following = (P * (S - step * lam).clamp_min(0)) @ Qh
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Z = following + (t - 1) / t_next * (following - W)
        W, t = following, t_next
    return W


def reference(X, Y, lam: float, kind: str):
    from sklearn.linear_model import Lasso, MultiTaskLasso
    if kind == RANK:
        return nuclear_reference(X, Y, lam)
    if kind == GROUPS:
        estimator = MultiTaskLasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10 ** 6)
        coef = estimator.fit(X.numpy(), Y.numpy()).coef_
    else:
        estimator = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10 ** 6, positive=kind == POSITIVE)
        coef = estimator.fit(X.numpy(), Y[:, 0].numpy()).coef_
    return torch.tensor(coef).reshape(Y.shape[1], X.shape[1])


def stable_lr(W, X, Y, lam: float, kind: str) -> float:
    """``2 / λ_max`` of the factored loss's Hessian at the balanced factors of ``W`` (entries: u = ±√|w|,
    v = √|w|; groups: the gate √‖w_g‖ and ω_g = w_g/√‖w_g‖; positive: u = √(2w))."""
    d, t = X.shape[1], Y.shape[1]
    if kind == RANK:
        P, S, Qh = torch.linalg.svd(W, full_matrices=False)
        start = torch.cat([(P * S.sqrt()).reshape(-1), (Qh.T * S.sqrt()).reshape(-1)])
        r = S.numel()

        def factored(z):
            U, V = z[:t * r].reshape(t, r), z[t * r:].reshape(d, r)
            return 0.5 * ((X @ (U @ V.T).T - Y) ** 2).sum() / len(X) + 0.5 * lam * z.square().sum()
    elif kind == POSITIVE:
        start = (2 * W.clamp_min(0)).sqrt().reshape(-1)

        def factored(z):
            return 0.5 * ((X @ (0.5 * z * z).reshape(t, d).T - Y) ** 2).sum() / len(X) + 0.5 * lam * z.square().sum()
    elif kind == GROUPS:
        norms = W.norm(dim=0)
        gates = norms.sqrt()
        omega = W / gates.clamp_min(1e-300)
        start = torch.cat([gates, omega.reshape(-1)])

        def factored(z):
            s, w = z[:d], z[d:].reshape(t, d)
            return 0.5 * ((X @ (s * w).T - Y) ** 2).sum() / len(X) + 0.5 * lam * (s.square().sum() + w.square().sum())
    else:
        root = W.abs().sqrt().reshape(-1)
        start = torch.cat([root * W.sign().reshape(-1), root])

        def factored(z):
            u, v = z[:d * t], z[d * t:]
            return 0.5 * ((X @ (u * v).reshape(t, d).T - Y) ** 2).sum() / len(X) + \
                0.5 * lam * (u.square().sum() + v.square().sum())
    hessian = torch.autograd.functional.hessian(factored, start)
    return 2 / float(torch.linalg.eigvalsh(hessian)[-1])


def run(X, Y, kind: str, optimizer: str, lr: float, lams: tuple[float, float], best: float,
        target_zeros, with_regrowth: bool, seed: int, first: int, second: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Linear(X.shape[1], Y.shape[1], bias=False).double()
    grouped = kind == GROUPS
    if kind == RANK:
        handle = symopt.low_rank(model, "weight", strength=lams[0], seed=seed)
    elif grouped:
        handle = symopt.group_sparse(model, "weight", dim=1, strength=lams[0], seed=seed)
    elif kind == POSITIVE:
        with torch.no_grad():
            model.weight.abs_()  # (a start inside the orthant: registration would project it there anyway)
        handle = symopt.nonnegative(model, "weight", strength=lams[0], seed=seed)
    else:
        handle = symopt.sparse(model, "weight", strength=lams[0], seed=seed)
    groups = symopt.param_groups(model, lr=lr)
    opt = torch.optim.SGD(groups, lr=lr) if optimizer == "GD" else torch.optim.Adam(groups, lr=lr)
    if with_regrowth:
        symopt.regrow(model, opt)  # its hooks on the model and the optimizer keep it alive
    gaps, reached, began = {}, None, time.perf_counter()
    for step in range(first + second):
        if step == first:
            handle.constraint.strength = lams[1]  # the groups from param_groups follow: weight_decay = λ₂
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
        after = step + 1 - first
        if after > 0 and (after in CHECKPOINTS or after == second or (reached is None and after % 50 == 0)):
            gap = (objective(model.weight.detach(), X, Y, lams[1], kind) - best) / abs(best)
            if after in CHECKPOINTS or after == second:
                gaps[after] = gap
            if reached is None and gap < TARGET:
                reached = after
    seconds = (time.perf_counter() - began) / (first + second)
    zeros = exact_zeros(model, kind)
    wrong = abs(int(zeros.sum()) - int(target_zeros.sum())) if kind == RANK else int((zeros != target_zeros).sum())
    return {"gaps": gaps, "reached": reached, "wrong": wrong, "step": seconds, "exact_zeros": int(zeros.sum())}


def exact_zeros(model: nn.Linear, kind: str):
    """The model's exact zeros: entries, input features (groups), or zero column pairs of (U, V) (rank)."""
    W = model.weight.detach()
    if kind == RANK:
        U, V = (f.detach() for f in (model.parametrizations.weight.original0, model.parametrizations.weight.original1))
        return (U.norm(dim=0) == 0) & (V.norm(dim=0) == 0)
    return (W.norm(dim=0) == 0) if kind == GROUPS else (W == 0)


def reference_zeros(W, kind: str):
    """The reference's zeros, as `exact_zeros` counts them (rank: one per missing singular value)."""
    if kind == RANK:
        S = torch.linalg.svdvals(W)
        return S <= 1e-9 * float(S.max())
    return (W.norm(dim=0) == 0) if kind == GROUPS else (W == 0)


def mlp(seeds: int, epochs: int, rank: bool = False) -> list[dict]:
    """The ``--mlp`` table (see the module docstring); ``rank``: ``low_rank`` instead of ``sparse``."""
    from benchmarks.compression import batches, data
    from benchmarks.compression import mlp as digits_mlp

    kind, unit = ("low_rank", "directions") if rank else ("sparse", "entries")
    print(f"digits MLP 64-256-256-10, {kind}(strength=1e-3) on both hidden weights, Adam lr 1e-3, batch 64, "
          f"{epochs} epochs, means over {seeds} seeds; fractions of each layer's {unit}")
    print(f"{'method':18s} {'accuracy':>8s} {'exact 0 (layers)':>17s} {'< 1e-3 max':>13s} {'regrown':>8s} "
          f"{'snapped':>8s} {'CPU s':>6s}")
    rows = []
    methods = (("plain", None), ("regrow β=0.99", 0.99)) if rank else \
        (("plain", None), ("regrow β=0.9", 0.9), ("regrow β=0.99", 0.99))
    for method, beta in methods:
        runs = []
        for seed in range(seeds):
            Xtr, ytr, Xte, yte = data(seed)
            net = digits_mlp(seed)  # benchmarks.compression's model and split
            for name in ("0.weight", "2.weight"):
                (symopt.low_rank if rank else symopt.sparse)(net, name, strength=1e-3, seed=seed)
            opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3)
            growth = symopt.regrow(net, opt, beta=beta) if beta is not None else None
            order = torch.Generator().manual_seed(seed)
            began = time.process_time()
            for _ in range(epochs):
                for idx in batches(len(Xtr), 64, order):
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx]).backward()
                    opt.step()
            cpu = time.process_time() - began
            with torch.no_grad():
                exact, small = [], []
                for i in (0, 2):
                    if rank:  # zero column pairs of (U, V); singular values below 1e-3 of the largest
                        U, V = net[i].parametrizations.weight.original0, net[i].parametrizations.weight.original1
                        S = torch.linalg.svdvals(net[i].weight)
                        exact.append(float(((U.norm(dim=0) == 0) & (V.norm(dim=0) == 0)).float().mean()))
                        small.append(float((S < 1e-3 * S[0]).float().mean()))
                    else:
                        w = net[i].weight
                        exact.append(float((w == 0).float().mean()))
                        small.append(float((w.abs() < 1e-3 * w.abs().max()).float().mean()))
                runs.append((float((net(Xte).argmax(1) == yte).float().mean()), exact, small,
                             sum(growth.regrown.values()) if growth else 0,
                             sum(growth.snapped.values()) if growth else 0, cpu))
        row = {"method": method, "accuracy": statistics.mean(r[0] for r in runs),
               "exact": [statistics.mean(r[1][i] for r in runs) for i in (0, 1)],
               "small": [statistics.mean(r[2][i] for r in runs) for i in (0, 1)],
               "regrown": statistics.mean(r[3] for r in runs), "snapped": statistics.mean(r[4] for r in runs),
               "cpu": statistics.median(r[5] for r in runs)}
        rows.append(row)
        print(f"{method:18s} {row['accuracy']:8.4f} {row['exact'][0]:8.3f} {row['exact'][1]:8.3f} "
              f"{row['small'][0]:6.3f} {row['small'][1]:6.3f} {row['regrown']:8.0f} {row['snapped']:8.0f} "
              f"{row['cpu']:6.1f}", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first", type=int, default=3000)
    parser.add_argument("--second", type=int, default=5000)
    parser.add_argument("--quick", action="store_true",
                        help="one seed, short phases, diabetes (Lasso and non-negative Lasso) only: a smoke test")
    parser.add_argument("--mlp", action="store_true", help="minibatch training of a digits MLP instead")
    parser.add_argument("--epochs", type=int, default=30, help="--mlp: epochs")
    parser.add_argument("--rank", action="store_true", help="--mlp: low_rank instead of sparse")
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA, help="the data sets (default: all)")
    args = parser.parse_args(argv)
    if args.mlp:
        torch.set_num_threads(2)
        return mlp(1 if args.quick else args.seeds, 1 if args.quick else args.epochs, rank=args.rank)
    names = args.data
    if args.quick:
        args.seeds, args.first, args.second, names = 1, 300, 600, ["diabetes", "diabetes+"]
    torch.set_num_threads(2)
    checkpoints = [c for c in CHECKPOINTS if c < args.second] + [args.second]
    header = (f"{'data':14s} {'optimizer':9s} {'method':8s} " + " ".join(f"{'gap@' + str(c):>9s}" for c in checkpoints)
              + f" {'steps<1e-8':>10s} {'zeros':>7s} {'wrong':>5s} {'step ×':>6s}")
    print(f"two phases: {args.first} full-batch steps at {LAM_FIRST} λ_max, then {args.second} at {LAM_SECOND} "
          f"λ_max; medians over {args.seeds} seeds; reference scikit-learn (tol 1e-14), FISTA for digits-rank")
    print(header)
    rows = []
    for name in names:
        X, Y, kind = load(name)
        lam_max = strength_max(X, Y, kind)
        lams = (LAM_FIRST * lam_max, LAM_SECOND * lam_max)
        W = reference(X, Y, lams[1], kind)
        best = objective(W, X, Y, lams[1], kind)
        target_zeros = reference_zeros(W, kind)
        limit = stable_lr(W, X, Y, lams[1], kind)
        if kind == POSITIVE:
            # ½u⊙u's curvature at an entry is λ + ∂ℓ/∂θ_i + u_i²·∂²ℓ/∂θ_i²: at a solution with one
            # non-zero (breast_cancer+) it is tiny, and the descent from the start diverged at that
            # limit. The signed Lasso's limit at the same λ (its wider support) bounds the trajectory.
            limit = min(limit, stable_lr(reference(X, Y, lams[1], "entries"), X, Y, lams[1], "entries"))
        for optimizer, lr in (("GD", 0.5 * limit), ("Adam", 1e-2)):
            plain_step = None
            for method in ("plain", "regrow"):
                runs = [run(X, Y, kind, optimizer, lr, lams, best, target_zeros, method == "regrow", seed,
                            args.first, args.second) for seed in range(args.seeds)]
                gaps = [statistics.median(r["gaps"][c] for r in runs) for c in checkpoints]
                reached = [r["reached"] for r in runs]
                reached_text = (f"{statistics.median(reached):.0f}" if all(r is not None for r in reached)
                                else f"{sum(r is not None for r in reached)}/{len(reached)} seeds")
                step = statistics.median(r["step"] for r in runs)
                plain_step = plain_step or step
                row = {"data": name, "optimizer": optimizer, "method": method, "lr": lr, "gaps": gaps,
                       "reached": reached, "wrong": max(r["wrong"] for r in runs),
                       "zeros": statistics.median(r["exact_zeros"] for r in runs),
                       "reference_zeros": int(target_zeros.sum()), "step_ratio": step / plain_step}
                rows.append(row)
                print(f"{name:14s} {optimizer:9s} {method:8s} " + " ".join(f"{g:9.1e}" for g in gaps)
                      + f" {reached_text:>10s} {row['zeros']:>3.0f}/{row['reference_zeros']:<3d} {row['wrong']:5d}"
                      f" {row['step_ratio']:6.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
