"""How the nuclear-norm decay chooses a rank: the singular values of a reduced-rank regression on
scikit-learn's digits, against least squares and its truncated SVD.

    python examples/singular_values.py [--plot docs/figures/singular_values.png]

The map Θ (64 × 10) from a digit's pixels (standardised) to its one-hot label, fitted by
``symopt.solve`` on ``1/(2n)‖XΘ − Y‖²_F + λ‖Θ‖_*`` (``symopt.LowRank(λ)``, factors ``Θ = UVᵀ``) for
λ from 1e-3 to 1e-1, each certified, and by least squares. The nuclear norm puts the trailing singular
values at 0 (to rounding, ~1e-17); least squares keeps all 9 that centred one-hot labels allow; the
larger λ, the fewer survive. The table gives the rank (singular values above σ_max·64·eps), the
training accuracy of ``argmax XΘ`` and the largest trailing singular value.
"""

from __future__ import annotations

import argparse

import torch

import symopt

STRENGTHS = (0.03, 0.1, 0.2, 0.3, 0.4, 0.5)  # λ_max = ‖XᵀY‖₂/n ≈ 0.75 here


def data():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0).clamp(min=1e-12)
    Y = torch.nn.functional.one_hot(torch.tensor(y), 10).double()
    return X, Y - Y.mean(0)


def loss(theta, X, Y):
    return 0.5 * ((X @ theta - Y) ** 2).sum() / len(X)


def main(argv=None, strengths=STRENGTHS) -> list:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    X, Y = data()
    labels = Y.argmax(1)
    least_squares = torch.linalg.pinv(X) @ Y  # X has constant (all-zero) pixel columns: the minimum-norm solution
    spectra = {"least squares": torch.linalg.svdvals(least_squares)}
    print(f"least squares: train acc {float(((X @ least_squares).argmax(1) == labels).double().mean()):.3f}")
    rows = []
    print(f"{'fit':>16} {'status':>9} {'rank':>5} {'train acc':>9} {'largest trailing σ':>19}")
    for lam in strengths:
        problem = symopt.Problem(f"reduced rank λ={lam:g}", (64, 10), loss, lambda lam=lam: symopt.LowRank(lam),
                                 {"X": X, "Y": Y})
        result = symopt.solve(problem)
        sigma = torch.linalg.svdvals(result.x)
        rank = int((sigma > sigma.max() * 64 * torch.finfo(sigma.dtype).eps).sum())  # above rounding
        accuracy = float(((X @ result.x).argmax(1) == labels).double().mean())
        trailing = float(sigma[rank:].max()) if rank < len(sigma) else float("nan")
        spectra[f"λ = {lam:g}"] = sigma
        rows.append((lam, result.status, rank, accuracy, trailing))
        print(f"{'λ = ' + format(lam, 'g'):>16} {result.status:>9} {rank:>5} {accuracy:>9.3f} {trailing:>19.1e}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=200)
        for name, sigma in spectra.items():
            shown = sigma.clamp(min=1e-17).numpy()
            ax.semilogy(range(1, len(shown) + 1), shown, "o-" if name != "least squares" else "s--", ms=4, label=name)
        ax.axhline(1e-17, color="k", lw=0.6)
        ax.text(10, 2e-17, "rounding (below 1e-17 drawn at 1e-17)", ha="right", va="bottom", fontsize=7)
        ax.set_xticks(range(1, 11))
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value of Θ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(args.plot)
    return rows


if __name__ == "__main__":
    main()
