"""Channels removed during training: symopt's landing channel budgets vs Torch-Pruning's magnitude pruner.

    python -m benchmarks.channels [--epochs 30] [--seeds 3] [--remove 0.5 0.75] [--global] [--methods ...] [--quick]

scikit-learn's digits (8×8 images, 80/20 stratified split per seed, pixels / 16), a CNN
conv(1→32)+BN+ReLU, conv(32→64)+BN+ReLU, max-pool 2, Linear(64·4·4 → 10), Adam (lr 1e-3, batch 64) for
the same number of epochs in every row. A fraction ``--remove`` of both convolutions' channels goes.
Rows:

* ``dense``: no pruning (the ceiling).
* ``torch-pruning``: ``tp.pruner.MagnitudePruner`` (L2 magnitude importance, the final Linear
  ignored), ``iterative_steps`` = one per epoch from 10% to 75% of training, then fine-tuning: the
  gradual recipe its authors show. The optimizer is rebuilt after each pruning step (the parameters
  change shape), as in Torch-Pruning's own examples.
* ``symopt``: ``symopt.group_sparse(net, [conv.weight, conv.bias, bn.weight, bn.bias],
  max_groups=k, total_steps=N)`` for each conv (one gate per channel across its four tensors), coupled
  decay through ``symopt.param_groups``: the budget's cubic schedule from 10% to 75%, the landing, then
  fine-tuning; ``symopt.export(mode="compressed")`` removes the landed channels.
* ``symopt (compact)``: the same budgets, but at the first epoch after the landing the model is
  exported (``mode="compressed"``) and the rest of training fine-tunes that small model's plain
  weights with a fresh Adam, as Torch-Pruning's recipe trains its pruned model: after the landing the
  factors serve nothing (the structure is final, λ is 0), and the small model is cheaper to train.
* with ``--global``, two more rows per fraction, one budget over both convs' 96 channels:
  ``torch-pruning (global)`` (the same pruner with ``global_pruning=True``; its L2 importance is
  normalised by each group's mean, its default, so layers of different scales compare) and
  ``symopt (global)`` (``symopt.group_sparse(net, [[conv 0's four tensors], [conv 1's four]],
  max_groups=k)``: one λ, one count; each layer keeps at least one channel).

Each row: test accuracy of the final (exported / pruned) model in eval mode, mean ± std over seeds;
the channels left in each conv; its parameters; its median forward time on the test set (eval mode, no
grad: `compression.deployed`); the CPU seconds of training (process time).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch
from torch import nn

import symopt

from .compression import chosen, wants_dense, batches, data, deployed, over_seeds, seed_range, seed_words, training_arguments


def cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


CONVS = (("0", "1"), ("3", "4"))  # (conv, its BatchNorm)


def _images(seed: int):
    Xtr, ytr, Xte, yte = data(seed)
    return Xtr.view(-1, 1, 8, 8), ytr, Xte.view(-1, 1, 8, 8), yte


def _accuracy(model, X, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def train(method: str, remove: float, seed: int, epochs: int, batch: int = 64):
    Xtr, ytr, Xte, yte = _images(seed)
    model = cnn(seed)
    steps = epochs * math.ceil(len(Xtr) / batch)
    pruner = None
    layers = [[f"{conv}.weight", f"{conv}.bias", f"{bn}.weight", f"{bn}.bias"] for conv, bn in CONVS]
    handles = []
    if method in ("symopt", "symopt (compact)"):
        for names, (conv, _) in zip(layers, CONVS):
            channels = model.get_submodule(conv).out_channels
            handles.append(symopt.group_sparse(model, names, max_groups=round((1 - remove) * channels),
                                               total_steps=steps))
    if method == "symopt (global)":
        channels = sum(model.get_submodule(conv).out_channels for conv, _ in CONVS)
        symopt.group_sparse(model, layers, max_groups=round((1 - remove) * channels), total_steps=steps)
    if method.startswith("symopt"):
        make_opt = lambda: torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)  # noqa: E731
    else:
        make_opt = lambda: torch.optim.Adam(model.parameters(), lr=1e-3)  # noqa: E731
    first, last = int(0.1 * epochs), max(int(0.1 * epochs) + 1, round(0.75 * epochs))
    if method.startswith("torch-pruning"):
        import torch_pruning as tp

        pruner = tp.pruner.MagnitudePruner(model, Xtr[:2], importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=remove, iterative_steps=last - first,
                                           ignored_layers=[model[-1]], global_pruning=method.endswith("(global)"))
    opt = make_opt()
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    start = time.process_time()
    for epoch in range(epochs):
        if pruner is not None and first <= epoch < last:
            pruner.step()
            opt = make_opt()
        if method == "symopt (compact)" and handles and symopt.landed(model):
            # landed: the compact model fine-tunes as Torch-Pruning's does, plain weights, a fresh Adam
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = symopt.export(model, mode="compressed", example_input=Xte[:4])
            handles = []
            make_opt = lambda: torch.optim.Adam(model.parameters(), lr=1e-3)  # noqa: E731
            opt = make_opt()
        model.train()
        for index in batches(len(Xtr), batch, gen):
            opt.zero_grad()
            loss_fn(model(Xtr[index]), ytr[index]).backward()
            opt.step()
    seconds = time.process_time() - start
    if method.startswith("symopt") and symopt.list_constraints(model):  # (compact: exported at the landing)
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the per-layer notes of what stays dense
            model = symopt.export(model, mode="compressed", example_input=Xte[:4])
    kept = tuple(model.get_submodule(conv).out_channels for conv, _ in CONVS)
    params = sum(p.numel() for p in model.parameters())
    return _accuracy(model, Xte, yte), kept, params, deployed(model, Xte)[1], seconds


def main(argv=None) -> list:
    def extra(parser):
        parser.add_argument("--global", dest="global_budget", action="store_true",
                            help="add one budget over both convs, for Torch-Pruning and symopt")

    args = training_arguments(argv, "python -m benchmarks.channels", epochs=30, budgets="--remove", kind=float,
                              defaults=[0.5, 0.75], smoke="50%%", extra=extra)
    print(f"digits CNN (32, 64 channels, BatchNorm, max-pool), Adam lr 1e-3, batch 64, {args.epochs} epochs, "
          f"{seed_words(args)}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'method':22s} {'removed':>7s} {'test accuracy':>17s} {'channels':>9s} {'params':>7s} {'ms':>6s} "
          f"{'CPU s':>6s}")
    methods = ("torch-pruning", "symopt", "symopt (compact)") + (("torch-pruning (global)", "symopt (global)") if args.global_budget else ())
    methods = chosen(args, methods)
    runs = [("dense", 0.0)] * wants_dense(args) + [(m, r) for r in args.remove for m in methods]
    table = []
    for method, remove in runs:
        mean, spread, seconds, results = over_seeds(train, method, remove, seed_range(args), args.epochs)
        kept = "/".join(str(c) for c in results[0][1])
        table.append((method, remove, mean, spread, results[0][1], results[0][2]))
        milliseconds = statistics.median(r[3] for r in results)
        print(f"{method:22s} {remove:7.2f} {mean:10.4f} ± {spread:.4f} {kept:>9s} {results[0][2]:7d} "
              f"{milliseconds:6.3f} {seconds:6.1f}", flush=True)
    return table


if __name__ == "__main__":
    main()
