"""Low rank during training: symopt's landing rank budgets vs truncated SVD + fine-tuning.

    python -m benchmarks.ranks [--epochs 30] [--seeds 3] [--ranks 16 4] [--global] [--methods ...] [--quick]

The digits MLP of ``benchmarks.compression`` (64-256-256-10, Adam lr 1e-3, batch 64), its two hidden
weight matrices (256×64 and 256×256) held to rank ``r``, the same number of epochs in every row:

* ``dense``: no constraint (the ceiling).
* ``truncated SVD``: dense training for 75% of the epochs, then each hidden layer replaced by its
  best rank-r factorisation (``Linear(in, r)`` then ``Linear(r, out)``, from the SVD) and both factors
  fine-tuned for the rest, with a fresh Adam: the usual recipe.
* ``symopt``: ``symopt.low_rank(model, name, target_rank=r, total_steps=N)`` on each hidden layer,
  decay through ``symopt.param_groups``: no decay for 10% of the steps, the rank budget on the cubic
  schedule to 75%, the landing (the dropped directions' factor columns exactly 0), fine-tuning. The
  default factor width (``max_rank="auto"``): 4r where that is narrow (the 256 × 256 layer; both
  layers at rank 4), the random initialisation truncated to it at registration; there the layer
  computes $x V U^\top$ and never forms its weight between the budget's readings.
* ``symopt (full width)``: the same budgets on full-width factors (``max_rank=None``), which start
  from the exact initialisation (the default before 2026-12-04).
* ``symopt (compact)``: the same budgets as ``symopt``; at the first epoch after the landing the model is exported
  (``mode="compressed"``: each hidden layer becomes two Linear factors of rank r) and fine-tuned with
  plain weights and a fresh Adam, as the truncated SVD recipe fine-tunes its factors.
* with ``--global``, the same total rank ``2r`` shared by the two layers as the spectra decide:
  ``truncated SVD (global)`` keeps the ``2r`` largest singular values of both layers together, each
  over its layer's Frobenius norm (each layer at least one), at the switch; ``symopt (global)`` is
  ``symopt.low_rank(model, ["0.weight", "2.weight"], target_rank=2r, total_steps=N)``, each matrix's
  factors of the default width for the whole count (4 × 2r where that is narrow), and ``symopt
  (global, full width)`` the same with ``max_rank=None``.

With ``--from-trained E``, every row compresses a trained model instead of training from scratch: the
dense MLP first trains for E epochs (the same in every row, not counted in its CPU), then the truncated
SVD recipe factorises it at once and fine-tunes for the epochs, and symopt's budgets register on the
trained weights (full width: the trained model exactly; the default width 4r: its best rank-4r
part) on the ramp for a trained model (``ramp=(0.0, 0.25)``: no warm-up, since the features exist,
and three quarters of the epochs to fine-tune at the final rank, as the SVD recipe has them all).

Each row: test accuracy (mean ± std over seeds), the hidden layers' final rank, the deployed model's
stored numbers and median forward time on the test set (`compression.deployed`; symopt's rows are
``symopt.export(model, mode="compressed")`` with its default tolerance, each hidden layer two Linear
factors as the SVD recipe's are), and the CPU seconds of training (process time).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings

import torch
from torch import nn

import symopt
from symopt.constraints.base import largest_in_parts

from .compression import (FROM_SCRATCH, FROM_TRAINED, accuracy, add_from_trained, batches, chosen, data, dense_training, deployed,
                          from_trained_words, mlp, over_seeds, seed_range, seed_words, training_arguments, wants_dense)

HIDDEN = ("0", "2")


def _factorised(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``layer`` as ``Linear(in, r) → Linear(r, out)`` from its truncated SVD (balanced √S on both)."""
    U, S, Vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    root = S[:rank].sqrt()
    first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * Vh[:rank])
        second.weight.copy_(U[:, :rank] * root)
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def _global_ranks(model, total: int) -> list[int]:
    """Each hidden layer's share of the ``total`` largest singular values of all of them (at least 1),
    each over its layer's Frobenius norm (the energy fraction; on raw values the first layer kept rank 2
    of 8 and 0.68 accuracy, over the RMS singular value rank 1 and 0.40); symopt's pool compares them
    the same way."""
    spectra = [torch.linalg.svdvals(model.get_submodule(name).weight.detach()) for name in HIDDEN]
    spectra = [S / S.norm() for S in spectra]
    keep = largest_in_parts(torch.cat(spectra), total, [S.numel() for S in spectra])
    return [int(part.sum()) for part in keep.split([S.numel() for S in spectra])]


def _rank(model, name: str) -> int:
    layer = model.get_submodule(name)
    weight = layer[1].weight @ layer[0].weight if isinstance(layer, nn.Sequential) else layer.weight
    S = torch.linalg.svdvals(weight.detach().double())
    return int((S > S.max() * max(weight.shape) * torch.finfo(torch.float32).eps).sum())


def train(method: str, rank: int, seed: int, epochs: int, batch: int = 64, trained: int = 0):
    Xtr, ytr, Xte, yte = data(seed)
    model = mlp(seed)
    if trained:
        dense_training(model, Xtr, ytr, trained, seed, batch)
    steps = epochs * math.ceil(len(Xtr) / batch)
    # a trained model needs no warm-up and gets most of the epochs to fine-tune (RESULTS.md: the
    # default ramp (0.1, 0.75) lost 0.3–1.3 points to the SVD recipe there; from scratch it is the better one)
    ramp = FROM_TRAINED if trained else FROM_SCRATCH
    handles = []
    if method in ("symopt", "symopt (compact)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the random init truncated to the default width at registration)
            for name in HIDDEN:
                handles.append(symopt.low_rank(model, f"{name}.weight", target_rank=rank, total_steps=steps, ramp=ramp))
    if method == "symopt (full width)":
        for name in HIDDEN:
            symopt.low_rank(model, f"{name}.weight", max_rank=None, target_rank=rank, total_steps=steps, ramp=ramp)
    if method == "symopt (global)":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the random init truncated to the default width at registration)
            symopt.low_rank(model, [f"{name}.weight" for name in HIDDEN], target_rank=len(HIDDEN) * rank,
                            total_steps=steps, ramp=ramp)
    if method == "symopt (global, full width)":
        symopt.low_rank(model, [f"{name}.weight" for name in HIDDEN], target_rank=len(HIDDEN) * rank, total_steps=steps,
                        max_rank=None, ramp=ramp)
    if method.startswith("symopt"):
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    switch = 0 if trained else min(round(0.75 * epochs), epochs - 1)  # (a trained model factorises at once)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    start = time.process_time()
    for epoch in range(epochs):
        if method.startswith("truncated SVD") and epoch == switch:
            ranks = _global_ranks(model, len(HIDDEN) * rank) if method.endswith("(global)") else [rank] * len(HIDDEN)
            for name, r in zip(HIDDEN, ranks):
                setattr(model, name, _factorised(model.get_submodule(name), r))
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if method.endswith("(compact)") and handles and symopt.landed(model):
            # landed: the exported model (each layer two Linear factors of rank r) fine-tunes with plain
            # weights and a fresh Adam, as the truncated SVD recipe's does
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = symopt.export(model, mode="compressed", example_input=Xte[:4])
            handles = []
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for index in batches(len(Xtr), batch, gen):
            opt.zero_grad()
            loss_fn(model(Xtr[index]), ytr[index]).backward()
            opt.step()
    seconds = time.process_time() - start
    if method.startswith("symopt") and symopt.list_constraints(model):
        # default tol: the landing made the rank exact; each hidden layer becomes two Linear factors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = symopt.export(model, mode="compressed", example_input=Xte[:4])
    stored, milliseconds = deployed(model, Xte)
    return accuracy(model, Xte, yte), tuple(_rank(model, name) for name in HIDDEN), stored, milliseconds, seconds


def main(argv=None) -> list:
    def extra(parser):
        parser.add_argument("--global", dest="global_budget", action="store_true",
                            help="add a total rank 2r over both layers, for truncated SVD and symopt")
        add_from_trained(parser)

    args = training_arguments(argv, "python -m benchmarks.ranks", epochs=30, budgets="--ranks", kind=int,
                              defaults=[16, 4], smoke="rank 16", extra=extra)
    print(f"digits MLP 64-256-256-10, hidden layers at rank r, Adam lr 1e-3, batch 64, {from_trained_words(args)}"
          f"{args.epochs} epochs, "
          f"{seed_words(args)}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'method':22s} {'rank':>4s} {'test accuracy':>17s} {'ranks':>8s} {'params':>7s} {'ms':>6s} {'CPU s':>6s}")
    methods = ("truncated SVD", "symopt", "symopt (compact)", "symopt (full width)")
    methods += ("truncated SVD (global)", "symopt (global)", "symopt (global, full width)") if args.global_budget else ()
    methods = chosen(args, methods)
    runs = [("dense", 0)] * wants_dense(args) + [(m, r) for r in args.ranks for m in methods]
    table = []
    for method, rank in runs:
        mean, spread, seconds, results = over_seeds(functools.partial(train, trained=args.trained), method, rank,
                                                    seed_range(args), args.epochs)
        ranks = "/".join(str(k) for k in results[0][1])
        table.append((method, rank, mean, spread, results[0][1], results[0][2]))
        milliseconds = statistics.median(r[3] for r in results)
        print(f"{method:22s} {rank:4d} {mean:10.4f} ± {spread:.4f} {ranks:>8s} {results[0][2]:7d} {milliseconds:6.3f} "
              f"{seconds:6.1f}", flush=True)
    return table


if __name__ == "__main__":
    main()
