"""The Lasso path on scikit-learn's diabetes with an intercept: symopt.path against lasso_path.

    python examples/diabetes_path.py [--plot docs/figures/diabetes_path.png]

50 strengths from λ_max down to 1e-3·λ_max (the raw columns, an unpenalised intercept), each solve
warm started and certified. scikit-learn's ``lasso_path`` on the centred data (what ``fit_intercept``
does) at the same strengths, ``tol=1e-10``, is the reference. Prints the largest coefficient
difference over the path, the supports that differ, and both times (symopt's path timed twice: the
process's first call also pays torch's one-time set-up).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import symopt
from symopt.problems import lasso


def main(argv=None, n_strengths: int = 50) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import lasso_path

    X, y = load_diabetes(return_X_y=True)
    problem = lasso(torch.tensor(X), torch.tensor(y), 1.0, fit_intercept=True)
    start = time.perf_counter()
    path = symopt.path(problem, n_strengths=n_strengths, eps=1e-3)
    first_seconds = time.perf_counter() - start  # (the process's first solve: torch's one-time set-up too)
    start = time.perf_counter()
    path = symopt.path(problem, n_strengths=n_strengths, eps=1e-3)
    ours_seconds = time.perf_counter() - start
    strengths = path.strengths.numpy()
    start = time.perf_counter()
    _, theirs, _ = lasso_path(X - X.mean(0), y - y.mean(), alphas=strengths, tol=1e-10, max_iter=10**6)
    theirs_seconds = time.perf_counter() - start
    ours = path.coefs.numpy().T  # (features, strengths), as lasso_path returns
    difference = float(np.abs(ours - theirs).max())
    supports_differ = int(((ours != 0) != (np.abs(theirs) > 0)).any(axis=0).sum())
    print(f"{n_strengths} strengths, λ_max {strengths[0]:.3f}: max |Δcoef| {difference:.1e}, "
          f"supports differing at {supports_differ} strengths; all certified optimal: "
          f"{all(c.optimal for c in path.certificates())}; symopt {ours_seconds:.3f} s (the first call in the "
          f"process: {first_seconds:.2f} s), lasso_path {theirs_seconds:.3f} s")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.datasets import load_diabetes as names
        features = names().feature_names
        fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=200)
        ratio = strengths / strengths[0]
        for j in range(ours.shape[0]):
            line, = ax.plot(ratio, ours[j], lw=1.4, label=features[j])
            ax.plot(ratio[::4], theirs[j, ::4], "o", ms=3, color=line.get_color(), mfc="none")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("λ / λ_max (decreasing →)")
        ax.set_ylabel("coefficient")
        ax.set_title("lines: symopt.path; circles: scikit-learn's lasso_path", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        fig.tight_layout()
        fig.savefig(args.plot)
    return {"difference": difference, "supports_differ": supports_differ, "path": path}


if __name__ == "__main__":
    main()
