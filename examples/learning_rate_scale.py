"""The learning rate that is safe for a factored parameter depends on the data's scale (issue 25).

    python examples/learning_rate_scale.py

scikit-learn's diabetes (442 × 10, standardised columns), the Lasso at λ = 0.1·λ_max, fitted by
training ``symopt.sparse`` on a bias-free Linear layer, with the target ``y`` in its natural units
(std ≈ 77) and standardised (std 1). λ_max = ‖Xᵀy‖_∞/n scales with ``y``, so λ does too.

* **Gradient descent.** Near the solution the factored loss ``ℓ(u ⊙ v) + (λ/2)(‖u‖² + ‖v‖²)`` has
  curvature that grows with |w|: its Hessian in u holds ``v_i H_ij v_j``. The example computes the
  exact Hessian at the balanced factors of scikit-learn's solution, predicts the largest stable
  learning rate ``2 / λ_max(Hessian)``, and runs 3000 full-batch steps at 0.8× and 1.25× of it.
* **Adam** at lr 1e-2 for both scales: it moves each factor by about lr per step whatever the
  gradient's size, so the raw-``y`` solution (|w| up to ~26) needs far more steps.
* **AdamW** with ``weight_decay = λ`` on the factors: decoupled decay is not the L1 penalty.

The objective gap is relative to scikit-learn's (``tol=1e-12``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import symopt

STEPS = 3000


def data(standardise_y: bool):
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float64)
    y = torch.tensor(y - y.mean(), dtype=torch.float64)
    if standardise_y:
        y = y / y.std()
    lam = 0.1 * float((X.T @ y).abs().max() / len(y))
    return X, y, lam


def objective(w, X, y, lam) -> float:
    return float(0.5 * ((X @ w - y) ** 2).mean() + lam * w.abs().sum())


def reference(X, y, lam):
    from sklearn.linear_model import Lasso
    fit = Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy())
    return torch.tensor(fit.coef_, dtype=torch.float64)


def safe_lr(w_star, X, y, lam) -> float:
    """``2 / λ_max`` of the factored loss's Hessian at the balanced factors of ``w_star``."""
    root = w_star.abs().sqrt()

    def factored(z):
        u, v = z[:10], z[10:]
        return 0.5 * ((X @ (u * v) - y) ** 2).mean() + 0.5 * lam * (u.square().sum() + v.square().sum())

    hessian = torch.autograd.functional.hessian(factored, torch.cat([root * w_star.sign(), root]))
    return 2 / float(torch.linalg.eigvalsh(hessian)[-1])


def train(X, y, lam, make_optimizer, steps: int = STEPS) -> float:
    """Relative objective gap to scikit-learn after ``steps`` full-batch steps (inf if it diverged)."""
    torch.manual_seed(0)
    model = nn.Linear(10, 1, bias=False).double()
    symopt.sparse(model, "weight", strength=lam)
    optimizer = make_optimizer(model, lam)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * ((model(X).squeeze(1) - y) ** 2).mean()
        if not torch.isfinite(loss) or float(loss) > 1e12:
            return float("inf")
        loss.backward()
        optimizer.step()
    best = objective(reference(X, y, lam), X, y, lam)
    return (objective(model.weight.detach()[0], X, y, lam) - best) / abs(best)


def main() -> list:
    rows = []
    print(f"{'y':>13} {'λ':>8} {'max|w*|':>8} {'optimizer':>26} {'lr':>10} {'rel. gap after 3000 steps':>26}")
    for standardise in (False, True):
        X, y, lam = data(standardise)
        w_star = reference(X, y, lam)
        limit = safe_lr(w_star, X, y, lam)
        label = "standardised" if standardise else "natural units"
        runs = [("GD (predicted limit)", 0.8 * limit, lambda m, _l, lr=0.8 * limit: torch.optim.SGD(symopt.param_groups(m), lr=lr)),
                ("GD (predicted limit)", 1.25 * limit, lambda m, _l, lr=1.25 * limit: torch.optim.SGD(symopt.param_groups(m), lr=lr)),
                ("GD", 1e-2, lambda m, _l: torch.optim.SGD(symopt.param_groups(m), lr=1e-2)),
                ("Adam (coupled decay)", 1e-2, lambda m, _l: torch.optim.Adam(symopt.param_groups(m), lr=1e-2)),
                ("AdamW (decoupled decay)", 1e-2, lambda m, l: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=l))]
        for name, lr, make in runs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # AdamW's DecoupledDecayWarning: the row shows why
                gap = train(X, y, lam, make)
            rows.append((label, lam, float(w_star.abs().max()), name, lr, gap))
            shown = "diverged" if gap == float("inf") else f"{gap:.1e}"
            print(f"{label:>13} {lam:>8.3g} {float(w_star.abs().max()):>8.3g} {name:>26} {lr:>10.3g} {shown:>26}")
    return rows


if __name__ == "__main__":
    main()
