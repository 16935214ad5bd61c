"""Attention heads or feed-forward neurons removed during training: symopt's landing budgets vs gradual
magnitude pruning of the same units.

    python -m benchmarks.heads [--units heads|neurons] [--epochs 20] [--seeds 3] [--keep 4 2] [--global]
                               [--methods ...] [--quick]

A character-level language model on real text that ships with Python: the source of a few standard
library modules (``argparse``, ``textwrap``, ``string``, ``json.decoder``, ``csv``, ``calendar``), 90% for
training, the last 10% for validation. The model: a character embedding (d = 64) with learned
positions, two pre-norm ``nn.TransformerEncoderLayer`` blocks (8 heads of 8 dimensions each, feed-forward
128, causal mask, no dropout) and a linear read-out; Adam (lr 3e-3, batch 32 windows of 64 characters),
the same epochs for every row. ``--keep`` heads of 8 stay in each layer (default 4 and 2); with ``--units
neurons``, ``--keep`` feed-forward neurons of 128 (default 32 and 16): a neuron is a row of ``linear1``
with its bias and the column of ``linear2`` it feeds. The rows below for heads; for neurons the same with
a neuron's norm (its ``linear1`` row and bias and its ``linear2`` column: Torch-Pruning's group for a
hidden unit) and ``symopt.group_sparse(model, ["layers.i.linear1.weight", "layers.i.linear1.bias"],
max_groups=k, total_steps=N)`` per layer (a neuron whose ``linear1`` row and bias are 0 emits ``relu(0) = 0``,
so its ``linear2`` column reads nothing; export removes both), or over both layers as one list per layer
with ``--global``. Rows:

* ``dense``: no pruning (the ceiling).
* ``magnitude``: gradual magnitude head pruning, the recipe of unstructured gradual pruning applied to
  heads: a head's importance is the L2 norm of everything it owns (its query, key and value rows and
  biases in ``in_proj``, its columns of ``out_proj``: the same group Torch-Pruning's magnitude importance
  measures for a head), the cubic schedule (Zhu & Gupta) from 10% to 75% of training applied once per
  epoch in each layer, the pruned heads held at 0 after every step, then fine-tuning.
* ``torch-pruning`` (an optional benchmark dependency): Torch-Pruning's ``MagnitudePruner``, L2 group
  importance, a linear schedule from 10% to 75% of training (one pruning an epoch), a fresh Adam after
  each pruning as in ``benchmarks.channels``; with ``--global``, ``torch-pruning (global)``
  (``global_pruning=True``: one ranking over both layers, each group's importance over its mean). For
  neurons, one pruner on the ``linear1`` layers (its dependency graph takes ``linear2``'s columns along)
  and its own ``iterative_steps``. For heads, Torch-Pruning prunes heads of separate q, k, v ``Linear``
  layers (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``), not of an
  ``nn.MultiheadAttention``: each layer's attention is rebuilt as `SeparateHeadsAttention`, the same
  function with the same initial weights (checked to 1e-6 at the start), and each epoch of the schedule
  runs a one-shot pruner to that epoch's head count. Its own ``iterative_steps`` cannot land on 2 of 8
  per layer: it removes ``ceil(ratio × heads left)`` a step, so its linear schedule of 0.25, 0.5, 0.75 of 8
  heads stops at 3 (measured on torch-pruning 1.6.0).
* ``symopt``: ``symopt.attention_heads(model, "layers.i.self_attn", max_heads=k, total_steps=N)`` per
  layer, coupled decay through ``symopt.param_groups``: the budget's cubic schedule from 10% to 75% of
  the steps with the trimmed decay, the landing, fine-tuning.
* ``symopt (compact)``: the same budgets; at the first epoch after the landing the model is exported
  (``mode="compressed"``: each attention keeps its k heads only) and fine-tuned with plain weights and a
  fresh Adam.
* with ``--global``, ``keep`` × 2 heads over both layers together: ``magnitude (global)`` ranks the
  heads of both layers on one scale, each head's norm over its layer's mean (Torch-Pruning's default
  normalisation of a global ranking), each layer keeping at least one; ``symopt (global)`` is
  ``symopt.attention_heads(model, ["layers.0.self_attn", "layers.1.self_attn"], max_heads=2·keep,
  total_steps=N)`` (the same relative ranking and floor); ``symopt (global, compact)`` that budget with the
  compact row's export at the landing and fine-tuning.

Each row: validation loss in nats per character (mean ± std over seeds; lower is better) of the final
model (for symopt, after ``symopt.export(mode="compressed")``, which removes the landed heads' rows and
columns and must give the trained model's loss), the heads left per layer, the parameters (for
magnitude pruning, what removing its zeroed heads would leave), the median forward time of a batch of
256 validation windows as the method leaves the model (no grad, `compression.deployed`: symopt's export
has only the kept heads; magnitude pruning's zeroed heads are still computed, as
``torch.nn.utils.prune``-style masks leave them), the CPU seconds of training (process time).
"""

from __future__ import annotations

import argparse
import calendar
import csv
import functools
import json.decoder
import math
import statistics
import string
import textwrap
import time
import warnings

import torch
from torch import nn

import symopt
from symopt.constraints.base import largest_in_parts
from symopt.constraints.budget import scheduled_count

from .compression import (chosen, deployed, over_seeds, pruning_epochs, seed_range, seed_words, training_arguments,
                          wants_dense)

DIM, HEADS, LAYERS, CONTEXT, BATCH = 64, 8, 2, 64, 32
FFN = 2 * DIM  # feed-forward neurons per layer
UNITS = {"heads": HEADS, "neurons": FFN}  # units per layer, by kind
SOURCES = (argparse, textwrap, string, json.decoder, csv, calendar)


def corpus():
    """(train ids, validation ids, vocabulary size): the characters of the standard library sources."""
    text = "".join(open(module.__file__, encoding="utf-8").read() for module in SOURCES)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(chars)


class CharLM(nn.Module):
    def __init__(self, vocab: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, DIM)
        self.position = nn.Parameter(0.02 * torch.randn(CONTEXT, DIM))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=FFN, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(DIM)
        self.out = nn.Linear(DIM, vocab)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, ids):
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, src_mask=self.causal[: ids.shape[1], : ids.shape[1]], is_causal=True)
        return self.out(self.norm(x))


def windows(ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    return torch.stack([ids[s:s + CONTEXT + 1] for s in starts.tolist()])


def validation_loss(model, val: torch.Tensor) -> float:
    """Mean next-character cross-entropy over every non-overlapping window of the validation text."""
    starts = torch.arange(0, len(val) - CONTEXT - 1, CONTEXT)
    total, count = 0.0, 0
    with torch.no_grad():  # train mode (no dropout here): the same function, without the eval fast path
        for chunk in starts.split(256):
            batch = windows(val, chunk)
            logits = model(batch[:, :-1])
            total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
    return total / count


def head_norms(attention: nn.MultiheadAttention) -> torch.Tensor:
    """The L2 norm of everything head h owns: its q, k, v rows (and biases) and its out_proj columns."""
    d = DIM // HEADS
    w = attention.in_proj_weight.detach().view(3, HEADS, d, DIM).square().sum(dim=(0, 2, 3))
    b = attention.in_proj_bias.detach().view(3, HEADS, d).square().sum(dim=(0, 2))
    o = attention.out_proj.weight.detach().view(DIM, HEADS, d).square().sum(dim=(0, 2))
    return (w + b + o).sqrt()


def neuron_norms(layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    """The L2 norm of everything neuron j owns: its linear1 row and bias, its linear2 column."""
    return (layer.linear1.weight.detach().square().sum(1) + layer.linear1.bias.detach().square()
            + layer.linear2.weight.detach().square().sum(0)).sqrt()


def unit_norms(layer: nn.TransformerEncoderLayer, units: str) -> torch.Tensor:
    return head_norms(layer.self_attn) if units == "heads" else neuron_norms(layer)


def live_units(layer: nn.TransformerEncoderLayer, units: str) -> torch.Tensor:
    """The units a landed symopt budget left: a neuron lives while its linear1 row or bias does (the budget
    groups those; its linear2 column is not penalised and reads nothing once the neuron emits 0)."""
    if units == "heads":
        return head_norms(layer.self_attn) > 0
    return (layer.linear1.weight.detach().abs().amax(1) + layer.linear1.bias.detach().abs()) > 0


def hold_pruned(layer: nn.TransformerEncoderLayer, alive: torch.Tensor, units: str) -> None:
    """Zero the pruned units' rows and columns (after every optimizer step, so they stay removed)."""
    with torch.no_grad():
        if units == "neurons":
            keep = alive.to(layer.linear1.weight.dtype)
            layer.linear1.weight.mul_(keep[:, None])
            layer.linear1.bias.mul_(keep)
            layer.linear2.weight.mul_(keep[None, :])
            return
        attention, d = layer.self_attn, DIM // HEADS
        rows = alive.repeat_interleave(d).repeat(3).to(attention.in_proj_weight.dtype)
        attention.in_proj_weight.mul_(rows[:, None])
        attention.in_proj_bias.mul_(rows)
        attention.out_proj.weight.mul_(alive.repeat_interleave(d).to(attention.out_proj.weight.dtype)[None, :])


def torch_pruner(model: CharLM, train_ids: torch.Tensor, keep: int, steps: int, method: str):
    """Torch-Pruning's ``MagnitudePruner`` of the feed-forward neurons (its dependency graph finds the group:
    ``linear1``'s row and bias, ``linear2``'s column), L2 group importance, its linear schedule over ``steps``
    calls to ``step()`` (one an epoch, from 10% to 75% of training as the other rows) to ``keep`` of 128 a
    layer, every other layer ignored; ``(global)``: ``global_pruning=True`` over both layers (its importance
    normalised by each group's mean, as ``magnitude (global)``)."""
    import torch_pruning as tp

    feed_forward = [layer.linear1 for layer in model.layers]
    ignored = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm,
                                                              nn.MultiheadAttention)) and m not in feed_forward]
    example = windows(train_ids, torch.arange(2))[:, :-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.pruner.MagnitudePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                         pruning_ratio=1 - keep / FFN, iterative_steps=steps, ignored_layers=ignored,
                                         global_pruning=method.endswith("(global)"),
                                         unwrapped_parameters=[(model.position, 1)])  # (features: never pruned here)


class SeparateHeadsAttention(nn.Module):
    """An ``nn.MultiheadAttention``'s function (batch first, no dropout, an additive mask) with its q, k, v
    projections as three ``nn.Linear`` layers and ``out`` its output projection: the form Torch-Pruning's
    head pruning reads (``num_heads`` per q, k, v layer). The head count follows ``q``'s width, so the layer
    keeps working as Torch-Pruning narrows it."""

    batch_first = False  # (read only by TransformerEncoderLayer's fast-path check: False keeps its slow path)

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.head_dim = attention.head_dim
        self.q, self.k, self.v = (nn.Linear(attention.embed_dim, attention.embed_dim) for _ in range(3))
        with torch.no_grad():
            for layer, weight, bias in zip((self.q, self.k, self.v), attention.in_proj_weight.chunk(3),
                                           attention.in_proj_bias.chunk(3)):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        self.out = nn.Linear(attention.embed_dim, attention.embed_dim)
        self.out.load_state_dict(attention.out_proj.state_dict())

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, need_weights=False,
                is_causal=False):
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("SeparateHeadsAttention: no key padding mask, no attention weights")
        batch, length, _ = query.shape
        heads = self.q.out_features // self.head_dim

        def split(t):
            return t.view(batch, length, heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(value))
        # (written out, not scaled_dot_product_attention: Torch-Pruning's graph follows matmuls and views)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores = scores + attn_mask
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, heads * self.head_dim)
        return self.out(mixed), None


def separate_heads(model: CharLM, val: torch.Tensor) -> CharLM:
    """``model`` with every attention rebuilt as `SeparateHeadsAttention`, its function checked unchanged."""
    before = validation_loss(model, val)
    for layer in model.layers:
        layer.self_attn = SeparateHeadsAttention(layer.self_attn)
    if abs(validation_loss(model, val) - before) > 1e-6:
        raise RuntimeError("SeparateHeadsAttention does not compute the model's attention")
    return model


def heads_left(layer: nn.TransformerEncoderLayer) -> int:
    attention = layer.self_attn
    if isinstance(attention, SeparateHeadsAttention):
        return attention.q.out_features // attention.head_dim
    return attention.num_heads


def prune_heads_to(model: CharLM, train_ids: torch.Tensor, count: int, global_pruning: bool) -> None:
    """One Torch-Pruning ``MagnitudePruner`` step that leaves ``count`` heads in each layer (or, with
    ``global_pruning``, ``count`` over both layers, ranked by its importance over each group's mean).
    The ratio asked of it is relative to the heads left, (removed − ½) / left: it removes ``ceil(ratio ×
    left)`` heads of a layer, and ``left − int(left × (1 − ratio))`` over a global ranking, both
    ``removed`` exactly."""
    import torch_pruning as tp

    left = [heads_left(layer) for layer in model.layers]
    removed = sum(left) - count if global_pruning else left[0] - count
    if removed <= 0:
        return
    ratio = (removed - 0.5) / (sum(left) if global_pruning else left[0])
    projections = {getattr(layer.self_attn, name): heads for layer, heads in zip(model.layers, left)
                   for name in ("q", "k", "v")}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm))
               and m not in projections]  # (the output projections follow the heads' groups)
    example = windows(train_ids, torch.arange(2))[:, :-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=global_pruning,
            pruning_ratio=ratio, num_heads=projections, prune_num_heads=True, prune_head_dims=False,
            head_pruning_ratio=ratio, ignored_layers=ignored, unwrapped_parameters=[(model.position, 1)])
        pruner.step()
    after = [heads_left(layer) for layer in model.layers]
    if (sum(after) if global_pruning else max(after)) != count or min(after) < 1:
        raise RuntimeError(f"Torch-Pruning left heads {after}, not {count} {'in all' if global_pruning else 'a layer'}")


def budget(model: nn.Module, units: str, layers: list[int], keep: int, steps: int):
    """symopt's landing budget of ``keep`` units over ``layers`` (one layer, or all for a global budget)."""
    if units == "heads":
        names = [f"layers.{i}.self_attn" for i in layers]
        return symopt.attention_heads(model, names if len(layers) > 1 else names[0], max_heads=keep,
                                      total_steps=steps)
    tensors = [[f"layers.{i}.linear1.weight", f"layers.{i}.linear1.bias"] for i in layers]
    return symopt.group_sparse(model, tensors if len(layers) > 1 else tensors[0], max_groups=keep, total_steps=steps)


def removed_parameters(units: str, removed: int) -> int:
    """What removing ``removed`` zeroed units would take out of the model."""
    if units == "heads":  # q, k, v rows (weights and biases) and out_proj columns
        return removed * (4 * (DIM // HEADS) * DIM + 3 * (DIM // HEADS))
    return removed * (2 * DIM + 1)  # a linear1 row and bias, a linear2 column


def train(method: str, keep: int, seed: int, epochs: int, units: str = "heads"):
    train_ids, val, vocab = corpus()
    model = CharLM(vocab, seed)
    per_epoch = len(train_ids) // (BATCH * CONTEXT)
    steps = epochs * per_epoch
    total = UNITS[units]
    handles = []
    if method in ("symopt", "symopt (compact)"):
        handles = [budget(model, units, [i], keep, steps) for i in range(LAYERS)]
    if method in ("symopt (global)", "symopt (global, compact)"):
        handles = [budget(model, units, list(range(LAYERS)), keep * LAYERS, steps)]
    if method.startswith("symopt"):
        opt = torch.optim.Adam(symopt.param_groups(model, lr=3e-3), lr=3e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    alive = [torch.ones(total, dtype=torch.bool) for _ in model.layers]
    first, last = int(0.1 * epochs), max(int(0.1 * epochs) + 1, round(0.75 * epochs))
    cubic = pruning_epochs(epochs)  # (magnitude pruning's schedule: it ends inside the run)
    by_torch_pruning = method.startswith("torch-pruning")
    pruner = torch_pruner(model, train_ids, keep, last - first, method) if by_torch_pruning and units == "neurons" else None
    if by_torch_pruning and units == "heads":
        model = separate_heads(model, val)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for epoch in range(epochs):
        if by_torch_pruning and first <= epoch < last:
            # (the layers shrink in place; a fresh Adam for the new shapes, as benchmarks.channels)
            if pruner is not None:
                pruner.step()
            else:  # heads: Torch-Pruning's own linear schedule's count at this step (see the module docstring)
                layers = LAYERS if method.endswith("(global)") else 1
                share = (epoch + 1 - first) / (last - first)
                count = max(keep * layers, math.floor(total * layers * (1 - share * (1 - keep / total)) + 1e-9))
                prune_heads_to(model, train_ids, count, method.endswith("(global)"))
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        if method == "magnitude" and epoch >= first:
            count = scheduled_count(epoch, total, keep, *cubic)
            for i, layer in enumerate(model.layers):
                norms = unit_norms(layer, units).masked_fill(~alive[i], -1.0)
                alive[i] = torch.zeros(total, dtype=torch.bool)
                alive[i][norms.topk(count).indices] = True
                hold_pruned(layer, alive[i], units)
        if method == "magnitude (global)" and epoch >= first:
            count = scheduled_count(epoch, total * LAYERS, keep * LAYERS, *cubic)
            norms = [unit_norms(layer, units) for layer in model.layers]
            relative = torch.cat([(n / n[m].mean()).masked_fill(~m, -1.0) for n, m in zip(norms, alive)])
            alive = list(largest_in_parts(relative, count, [total] * LAYERS).split(total))
            for layer, mask in zip(model.layers, alive):
                hold_pruned(layer, mask, units)
        if method.endswith("compact)") and handles and symopt.landed(model):
            # landed: the exported model (only the kept units) fine-tunes with plain weights and a fresh Adam
            alive = [live_units(layer, units) for layer in model.layers]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = symopt.export(model, mode="compressed")
            handles = []
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        starts = torch.randint(0, len(train_ids) - CONTEXT - 1, (per_epoch, BATCH), generator=gen)
        for row in starts:
            batch = windows(train_ids, row)
            opt.zero_grad()
            logits = model(batch[:, :-1])
            nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)).backward()
            opt.step()
            if method.startswith("magnitude"):
                for layer, mask in zip(model.layers, alive):
                    hold_pruned(layer, mask, units)
    seconds = time.process_time() - start
    if method.startswith("symopt") and symopt.list_constraints(model):
        alive = [live_units(layer, units) for layer in model.layers]  # the landing made the others exactly 0
        before = validation_loss(model, val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes of what stays dense
            model = symopt.export(model, mode="compressed")
        params = sum(p.numel() for p in model.parameters())
        if abs(validation_loss(model, val) - before) > 1e-4:
            raise RuntimeError("the exported model is not the trained one")
    elif method.startswith("symopt"):  # (compact: exported at the landing, `alive` read then)
        params = sum(p.numel() for p in model.parameters())
    elif by_torch_pruning:  # (Torch-Pruning removed the units: the model is as small as it says)
        params = sum(p.numel() for p in model.parameters())
        alive = [torch.ones(layer.linear1.out_features if units == "neurons" else heads_left(layer), dtype=torch.bool)
                 for layer in model.layers]
    else:
        params = sum(p.numel() for p in model.parameters()) - removed_parameters(units, sum(int((~a).sum())
                                                                                            for a in alive))
    kept = "/".join(str(int(a.sum())) for a in alive)
    if method.startswith("symopt") and units == "neurons":
        widths = [layer.linear1.out_features for layer in model.layers]
        if widths != [int(a.sum()) for a in alive]:
            raise RuntimeError(f"export left feed-forward widths {widths}, not the {kept} neurons the landing kept")
    loss = validation_loss(model, val)
    # (timed in train mode, as validation_loss runs: no dropout here, and no eval fast path to differ)
    example = windows(val, torch.arange(0, len(val) - CONTEXT - 1, CONTEXT)[:256])[:, :-1]
    return loss, kept, params, deployed(model, example, eval_mode=False)[1], seconds


def main(argv=None) -> list:
    def extra(parser):
        parser.add_argument("--units", choices=sorted(UNITS), default="heads",
                            help="what the budgets remove: attention heads (8 a layer) or feed-forward neurons (128)")
        parser.add_argument("--global", dest="global_budget", action="store_true",
                            help="add one budget over both layers' units, for magnitude pruning and symopt")

    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--units", default="heads")
    units = peek.parse_known_args(argv)[0].units
    args = training_arguments(argv, "python -m benchmarks.heads", epochs=20, budgets="--keep", kind=int,
                              defaults=[32, 16] if units == "neurons" else [4, 2],
                              smoke=f"{'32 neurons' if units == 'neurons' else '4 heads'}", extra=extra)
    total = UNITS[args.units]
    if any(not 1 <= k < total for k in args.keep):
        raise SystemExit(f"--keep: each between 1 and {total - 1} {args.units} per layer")
    _, _, vocab = corpus()
    print(f"character LM on the standard library's source ({vocab} characters), 2 pre-norm encoder layers, "
          f"d={DIM}, {HEADS} heads, feed-forward {FFN}, Adam lr 3e-3, batch {BATCH}×{CONTEXT}, {args.epochs} epochs, "
          f"{seed_words(args)}; units removed: {args.units}; torch {torch.__version__}, {torch.get_num_threads()} "
          "threads\n")
    print(f"{'method':24s} {args.units:>7s} {'val nats/char':>17s} {'per layer':>9s} {'params':>7s} {'ms':>6s} "
          f"{'CPU s':>6s}")
    pruning = ("torch-pruning",)
    methods = ("magnitude",) + pruning + ("symopt", "symopt (compact)") + (
        ("magnitude (global)",) + tuple(f"{m} (global)" for m in pruning) + ("symopt (global)", "symopt (global, compact)")
        if args.global_budget else ())
    runs = [("dense", total)] * wants_dense(args) + [(m, k) for k in args.keep for m in chosen(args, methods)]
    table = []
    for method, keep in runs:
        mean, spread, seconds, results = over_seeds(functools.partial(train, units=args.units), method, keep,
                                                    seed_range(args), args.epochs)
        table.append((method, keep, mean, spread, results[0][1], results[0][2]))
        milliseconds = statistics.median(r[3] for r in results)
        print(f"{method:24s} {keep:7d} {mean:10.4f} ± {spread:.4f} {results[0][1]:>9s} {results[0][2]:7d} "
              f"{milliseconds:6.2f} {seconds:6.1f}", flush=True)
    return table


if __name__ == "__main__":
    main()
