"""Loss of plasticity on permuted digits: no decay, plain decay and syre (issue 26).

    python -m benchmarks.plasticity [--tasks 8] [--seeds 3] [--epochs 15] [--strength 1e-3]

scikit-learn's digits (70/30 split, pixels / 16); task t applies a fixed random permutation to the 64
pixels (task 0: the identity). One MLP 64-128-128-10 (ReLU) learns the tasks in sequence with Adam (lr
1e-3, batch 64, ``--epochs`` per task), never reset. Three rows, same seeds and data:

* ``no decay``: Adam without weight decay.
* ``decay``: Adam's coupled ``weight_decay=λ`` on every parameter (pulls toward 0: the mirror planes
  of every symmetry — dead and identical units, lost rank).
* ``syre``: ``symopt.syre(model, strength=λ)`` (the same decay, toward a random anchor, which removes
  those symmetries; arXiv 2408.15495) through ``symopt.param_groups``.

After each task, on that task's test split: accuracy, and ``symopt.diagnose(model, inputs)`` of the
first hidden layer: dead units (exact, plus near-dead: < 1% of the largest unit's output RMS), units in
near-duplicate groups (cosine ≥ 0.99) and the effective rank of its features. Printed: the first and
last task, and the mean over tasks; medians over seeds.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import symopt


def tasks(count: int, seed: int):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, torch.tensor(y), test_size=0.3, random_state=0)
    g = torch.Generator().manual_seed(1000 + seed)
    perms = [torch.arange(64)] + [torch.randperm(64, generator=g) for _ in range(count - 1)]
    return [(Xtr[:, p], ytr, Xte[:, p], yte) for p in perms]


def model_for(method: str, strength: float, seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    if method == "syre":
        symopt.syre(net, strength=strength, seed=seed)
        opt = torch.optim.Adam(symopt.param_groups(net), lr=1e-3)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=strength if method == "decay" else 0.0)
    return net, opt


def run(method: str, strength: float, seed: int, count: int, epochs: int):
    net, opt = model_for(method, strength, seed)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for Xtr, ytr, Xte, yte in tasks(count, seed):
        for _ in range(epochs):
            perm = torch.randperm(len(Xtr), generator=g)
            for i in range(0, len(Xtr), 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx]).backward()
                opt.step()
        with torch.no_grad():
            accuracy = float((net(Xte).argmax(1) == yte).float().mean())
            layer = symopt.diagnose(net, Xte)[0]
        rows.append((accuracy, len(layer.dead) + len(layer.near_dead),
                     sum(len(group) for group in layer.near_duplicate), layer.feature_rank))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--strength", type=float, default=1e-3)
    parser.add_argument("--plot", default=None, help="PNG: accuracy and feature rank per task (medians)")
    args = parser.parse_args(argv)
    print(f"permuted digits, {args.tasks} tasks x {args.epochs} epochs, MLP 64-128-128-10, Adam lr 1e-3, "
          f"λ = {args.strength}, medians over {args.seeds} seeds; first hidden layer (128 units)\n")
    header = (f"{'method':<10}{'acc first':>10}{'acc last':>10}{'acc mean':>10}{'dead last':>10}"
              f"{'dup last':>10}{'rank first':>11}{'rank last':>10}")
    print(header)
    results = {}
    for method in ("no decay", "decay", "syre"):
        runs = [run(method, args.strength, seed, args.tasks, args.epochs) for seed in range(args.seeds)]
        med = lambda values: statistics.median(values)  # noqa: E731
        row = dict(acc_first=med([r[0][0] for r in runs]), acc_last=med([r[-1][0] for r in runs]),
                   acc_mean=med([statistics.mean(t[0] for t in r) for r in runs]),
                   dead_last=med([r[-1][1] for r in runs]), dup_last=med([r[-1][2] for r in runs]),
                   rank_first=med([r[0][3] for r in runs]), rank_last=med([r[-1][3] for r in runs]))
        results[method] = (row, runs)
        print(f"{method:<10}{row['acc_first']:>10.4f}{row['acc_last']:>10.4f}{row['acc_mean']:>10.4f}"
              f"{row['dead_last']:>10.0f}{row['dup_last']:>10.0f}{row['rank_first']:>11.1f}{row['rank_last']:>10.1f}")
    if args.plot:
        plot(results, args, args.plot)
    return results


def plot(results: dict, args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=200)
    tasks_axis = list(range(1, args.tasks + 1))
    for method, (_, runs) in results.items():
        for ax, column in ((axes[0], 0), (axes[1], 3)):
            ax.plot(tasks_axis, [statistics.median(r[t][column] for r in runs) for t in range(args.tasks)], "o-",
                    label=method)
    axes[0].set_title(f"test accuracy on each new task (λ = {args.strength:g})")
    axes[1].set_title("effective rank of the first hidden layer")
    for ax in axes:
        ax.set_xlabel("task")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
