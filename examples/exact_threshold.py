"""The exact-penalty threshold of linear constraints, seen on equality-constrained least squares.

    python examples/exact_threshold.py [--plot docs/figures/threshold.png]

For a random constraint ``A w = 0`` the Lagrange multipliers at the constrained optimum give
``λ* = ‖Oᵀ∇ℓ(w*)‖_∞``. Training with ``symopt.subspace(strength = c·λ*)`` holds the constraint to
rounding for c > 1 and violates it for c < 1. Prints ``‖A w‖_∞`` and ``‖w − w*‖_∞`` per c, and with
``--plot`` draws the violation against λ/λ* on a log scale (the figure of docs/hard-constraints.md).
"""

from __future__ import annotations

import torch

import symopt


def main(steps: int = 6000, factors=(0.5, 0.9, 0.99, 1.01, 1.1, 2.0)) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    n, d, m = 80, 20, 4
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    N = torch.linalg.svd(A).Vh[m:].mT  # null space of A
    w_star = N @ torch.linalg.lstsq(X @ N, y.unsqueeze(1)).solution.squeeze(1)
    grad = X.T @ (X @ w_star - y) / n
    lam_star = float(symopt.Subspace(A).dual_norm(grad))
    print(f"λ* = {lam_star:.4f}\n{'c = λ/λ*':>9}  {'‖Aw‖_∞':>9}  {'‖w − w*‖_∞':>11}")
    rows = []
    for c in factors:
        torch.manual_seed(0)
        model = torch.nn.Linear(d, 1, bias=False).double()
        symopt.subspace(model, "weight", A, strength=c * lam_star)
        opt = torch.optim.SGD(symopt.param_groups(model, lr=0.3), lr=0.3)
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * (model(X).squeeze(1) - y).square().mean()).backward()
            opt.step()
        w = model.weight.detach()[0]
        rows.append((c, float((A @ w).abs().max()), float((w - w_star).abs().max())))
        print(f"{c:>9.2f}  {rows[-1][1]:>9.1e}  {rows[-1][2]:>11.1e}")
    return rows


def plot(rows: list[tuple], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, violation = [r[0] for r in rows], [max(r[1], 1e-17) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogy(c, violation, "o-")
    ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="λ / λ*", ylabel="violation ‖A w‖∞ after training", title="exact penalty: a sharp threshold at λ*")
    fig.tight_layout()
    fig.savefig(path, dpi=220)  # 2× for page-width display
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", help="write the violation-vs-λ/λ* figure to this PNG")
    args = parser.parse_args()
    if args.plot:
        plot(main(factors=(0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01, 1.05, 1.2, 1.5, 2.0)), args.plot)
    else:
        main()
