"""Unstructured sparsity during training: symopt's landing budgets vs gradual magnitude pruning.

    python -m benchmarks.compression [--epochs 100] [--seeds 3] [--sparsity 0.9 0.95] [--quick] [--plot docs/figures/compression.png]

scikit-learn's digits (1,797 8×8 images, 80/20 stratified split per seed, pixels / 16), an MLP
64-256-256-10 with ReLU, Adam (lr 1e-3, batch 64) for the same number of epochs in every row; the
three weight matrices are sparsified, the biases are not. Rows:

* ``dense``: no sparsity (the ceiling).
* ``magnitude (layer)`` / ``magnitude (global)``: gradual magnitude pruning with
  ``torch.nn.utils.prune`` (``l1_unstructured`` per layer / ``global_unstructured`` over the three),
  the cubic schedule of Zhu & Gupta applied once per epoch from 10% to 75% of training, then
  fine-tuning with the mask: the recipe such pruning is used with.
* ``symopt (layer)`` / ``symopt (global)``: ``symopt.sparse(model, name | names, density=1 − s,
  total_steps=N)``, coupled decay through ``symopt.param_groups``: no decay for the first 10% of the
  steps, the budget on the same cubic schedule to 75%, then the landing (exact zeros) and fine-tuning.

With ``--from-trained E`` every row sparsifies a trained model: the dense MLP first trains for E epochs
(the same in every row, not in its CPU), then both methods run on the schedule for a trained model,
from 0% to 25% of the epochs (no warm-up: the features exist; three quarters to fine-tune under
the final mask), symopt with ``ramp=(0.0, 0.25)``.

Each row: test accuracy (mean ± std over seeds), the weights' measured density, the deployed model's
stored numbers and forward time, and the CPU seconds of training (process time, both threads). Ratios
and accuracies are within one run.

The deployed model (`deployed`): symopt's rows are ``symopt.export(model, mode="compressed",
sparse_format="csr")`` with its default tolerance (so an export that needs ``force`` would fail the
row), the magnitude rows the pruned model with each pruned weight in the same CSR layer
(``symopt.SparseLinear``, what ``weight.to_sparse_csr()`` and ``addmm`` give a user of
``torch.nn.utils.prune``), so both are timed in one format; the dense row is the plain model. Accuracy is
the deployed model's.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils import prune

import symopt
from symopt.constraints.budget import scheduled_count

WEIGHTS = ("0.weight", "2.weight", "4.weight")


def data(seed: int):
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, stratify=y, random_state=seed)
    as_t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return as_t(Xtr, torch.float32), as_t(ytr, torch.long), as_t(Xte, torch.float32), as_t(yte, torch.long)


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + size] for i in range(0, n, size)]


def training_arguments(argv, prog: str, *, epochs: int, budgets: str, kind, defaults: list, smoke: str,
                       extra=None) -> argparse.Namespace:
    """The arguments every training benchmark takes (``--epochs``, ``--seeds``, its list of budgets
    under the option ``budgets``, ``--quick``: 2 epochs, 1 seed and the first default budget, a smoke
    test described by ``smoke``), plus what ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", dest="first_seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (more seeds for a row run before)")
    parser.add_argument(budgets, type=kind, nargs="+", default=defaults)
    parser.add_argument("--quick", action="store_true", help=f"2 epochs, 1 seed, {smoke}: a smoke test")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only these rows (e.g. 'dense' 'symopt (global)')")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 2, 1
        setattr(args, budgets.lstrip("-"), defaults[:1])
    return args


def add_from_trained(parser: argparse.ArgumentParser) -> None:
    """``--from-trained E``: every row compresses a model first trained dense for E epochs."""
    parser.add_argument("--from-trained", dest="trained", type=int, default=0, metavar="E",
                        help="compress a model first trained dense for E epochs (every row)")


def from_trained_words(args: argparse.Namespace) -> str:
    return f"from a model trained dense for {args.trained} epochs, " if args.trained else ""


def chosen(args: argparse.Namespace, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The rows of ``methods`` that ``--methods`` asks for (all without it)."""
    if args.methods is None:
        return methods
    unknown = sorted(set(args.methods) - set(methods) - {"dense"})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(methods)}")
    return tuple(m for m in methods if m in args.methods)


def wants_dense(args: argparse.Namespace) -> bool:
    """Whether to run the dense row: always, unless ``--methods`` names rows without ``dense``."""
    return args.methods is None or "dense" in args.methods


def seed_range(args: argparse.Namespace) -> range:
    """The seeds ``--seeds`` and ``--first-seed`` ask for."""
    return range(args.first_seed, args.first_seed + args.seeds)


def seed_words(args: argparse.Namespace) -> str:
    """``3 seeds``, or ``3 seeds (3-5)`` from a ``--first-seed``: the table's header says which it ran."""
    return f"{args.seeds} seeds" + (f" ({args.first_seed}-{args.first_seed + args.seeds - 1})" if args.first_seed else "")


def over_seeds(train, method: str, setting, seeds: range, epochs: int):
    """``train(method, setting, seed, epochs)`` for every seed (`seed_range`), whose first result is the quality
    measure (test accuracy; the heads benchmark's validation loss) and last the CPU seconds: ``(its mean, its
    std over seeds, median CPU s, results)``."""
    results = [train(method, setting, seed, epochs) for seed in seeds]
    accuracies = [r[0] for r in results]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return statistics.mean(accuracies), spread, statistics.median(r[-1] for r in results), results


def accuracy(model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def density(model) -> float:
    weights = [model.get_submodule(n.rsplit(".", 1)[0]).weight for n in WEIGHTS]
    nonzeros = [int((w.values() if w.layout == torch.sparse_csr else w).count_nonzero()) for w in weights]
    return sum(nonzeros) / sum(w.shape[0] * w.shape[1] for w in weights)


def deployed(model: nn.Module, example: torch.Tensor, eval_mode: bool = True) -> tuple[int, float]:
    """``(numbers stored, median forward ms)`` of a model as it is deployed, in eval mode (unless
    ``eval_mode`` is False), on ``example`` (the test set): `symopt.footprint` (CSR weights counted by their
    non-zeros), 30 timed forwards."""
    training = model.training
    model.train(not eval_mode)
    fp = symopt.footprint(model, example, repeats=30, warmup=5)
    model.train(training)
    return fp.stored, fp.forward_seconds * 1e3


def dense_training(model: nn.Module, Xtr, ytr, epochs: int, seed: int, batch: int = 64) -> None:
    """``--from-trained``: the plain model trained with the recipe's Adam for ``epochs`` (its own seeded
    batches)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epochs):
        for index in batches(len(Xtr), batch, gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[index]), ytr[index]).backward()
            opt.step()


# The schedule's (start, end) as fractions of training: from scratch (a warm-up for the features, then
# the ramp), and for a trained model (no warm-up, most of the epochs to fine-tune)
FROM_SCRATCH, FROM_TRAINED = (0.1, 0.75), (0.0, 0.25)


def train(method: str, sparsity: float, seed: int, epochs: int, batch: int = 64, trained: int = 0):
    """``(test accuracy, density, stored numbers, forward ms, CPU s)`` of one run, on the deployed model."""
    Xtr, ytr, Xte, yte = data(seed)
    model = mlp(seed)
    if trained:
        dense_training(model, Xtr, ytr, trained, seed, batch)
    ramp = FROM_TRAINED if trained else FROM_SCRATCH
    steps_per_epoch = math.ceil(len(Xtr) / batch)
    total = epochs * steps_per_epoch
    keep = 1.0 - sparsity
    if method.startswith("symopt"):
        names = list(WEIGHTS) if "global" in method else None
        if names:
            symopt.sparse(model, names, density=keep, total_steps=total, ramp=ramp)
        else:
            for name in WEIGHTS:
                symopt.sparse(model, name, density=keep, total_steps=total, ramp=ramp)
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    layers = [model.get_submodule(n.rsplit(".", 1)[0]) for n in WEIGHTS]
    sizes = [layer.weight.numel() for layer in layers]
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    start = time.process_time()
    for epoch in range(epochs):
        if method.startswith("magnitude"):
            _prune_to(layers, sizes, keep, epoch, epochs, "global" in method, ramp)
        for index in batches(len(Xtr), batch, gen):
            opt.zero_grad()
            loss_fn(model(Xtr[index]), ytr[index]).backward()
            opt.step()
    seconds = time.process_time() - start
    if method.startswith("symopt"):  # default tol: the landing made the zeros exact
        model = symopt.export(model, mode="compressed", sparse_format="csr")
    if method.startswith("magnitude") and sparsity > 0:
        for name, layer in zip(WEIGHTS, layers):
            prune.remove(layer, "weight")
            setattr(model, name.split(".")[0], symopt.SparseLinear(layer.weight, layer.bias))
    stored, milliseconds = deployed(model, Xte)
    return accuracy(model, Xte, yte), density(model), stored, milliseconds, seconds


def pruning_epochs(epochs: int, ramp: tuple[float, float] = FROM_SCRATCH) -> tuple[int, int]:
    """``(start, end)``: the epochs of a baseline that prunes once an epoch on the cubic schedule over ``ramp``
    (fractions of the epochs; `scheduled_count` keeps the budget from epoch ``end`` on). ``end`` stays inside the
    run where it has two epochs or more: with ``round(ramp[1] · epochs)`` as the end, a 2-epoch run (the smoke
    tests') ended before its schedule did, and kept 44 of 32 neurons."""
    start = int(ramp[0] * epochs)
    return start, max(start + 1, min(round(ramp[1] * epochs), epochs - 1))


def _prune_to(layers, sizes, keep: float, epoch: int, epochs: int, global_: bool,
              ramp: tuple[float, float] = FROM_SCRATCH) -> None:
    """Once per epoch, the masks that keep the cubic schedule's count (per layer, or over all) on the
    ``ramp`` (fractions of the epochs; `pruning_epochs`)."""
    start, end = pruning_epochs(epochs, ramp)
    if epoch < start or keep >= 1.0:
        return
    if global_:
        total = sum(sizes)
        k = scheduled_count(epoch, total, round(keep * total), start, end)
        alive = sum(int(layer.weight_mask.sum()) if hasattr(layer, "weight_mask") else size
                    for layer, size in zip(layers, sizes))
        if alive > k:
            prune.global_unstructured([(layer, "weight") for layer in layers], prune.L1Unstructured,
                                      amount=alive - k)
        return
    for layer, size in zip(layers, sizes):
        k = scheduled_count(epoch, size, round(keep * size), start, end)
        alive = int(layer.weight_mask.sum()) if hasattr(layer, "weight_mask") else size
        if alive > k:
            prune.l1_unstructured(layer, "weight", amount=alive - k)


def main(argv=None) -> list:
    def extra(parser):
        parser.add_argument("--plot", default=None, help="a PNG of test accuracy against sparsity per method")
        add_from_trained(parser)

    args = training_arguments(argv, "python -m benchmarks.compression", epochs=100, budgets="--sparsity", kind=float,
                              defaults=[0.9, 0.95], smoke="90%%", extra=extra)
    print(f"digits MLP 64-256-256-10, Adam lr 1e-3, batch 64, {from_trained_words(args)}{args.epochs} epochs, "
          f"{seed_words(args)}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'method':22s} {'sparsity':>8s} {'test accuracy':>17s} {'density':>8s} {'params':>7s} {'ms':>6s} "
          f"{'CPU s':>7s}")
    methods = chosen(args, ("magnitude (layer)", "magnitude (global)", "symopt (layer)", "symopt (global)"))
    runs = [("dense", 0.0)] * wants_dense(args) + [(m, s) for s in args.sparsity for m in methods]
    table = []
    for method, sparsity in runs:
        mean, spread, seconds, results = over_seeds(functools.partial(train, trained=args.trained), method, sparsity,
                                                    seed_range(args), args.epochs)
        table.append((method, sparsity, mean, spread))
        print(f"{method:22s} {sparsity:8.2f} {mean:10.4f} ± {spread:.4f} "
              f"{statistics.mean(r[1] for r in results):8.4f} {results[0][2]:7d} "
              f"{statistics.median(r[3] for r in results):6.3f} {seconds:7.1f}", flush=True)
    if args.plot:
        plot(table, args.plot, f"digits MLP 64-256-256-10, {args.epochs} epochs, {args.seeds} seeds")
    return table


def plot(table, path: str, title: str) -> None:
    """Test accuracy (mean ± std over seeds) against sparsity, one line per method; dense as a band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=200)
    dense = [(mean, spread) for method, _, mean, spread in table if method == "dense"]
    if dense:
        mean, spread = dense[0]
        ax.axhspan(mean - spread, mean + spread, color="0.85", label="dense (mean ± std)")
    for method in dict.fromkeys(m for m, *_ in table if m != "dense"):
        rows = sorted((s, mean, spread) for m, s, mean, spread in table if m == method)
        ax.errorbar([100 * r[0] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o",
                    capsize=3, ls="-" if method.startswith("symopt") else "--", label=method)
    ax.set_xlabel("sparsity of the three weight matrices (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
