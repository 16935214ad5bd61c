"""Attention heads removed during training: symopt's landing head budgets vs gradual magnitude head pruning.

    python -m benchmarks.heads [--epochs 20] [--seeds 3] [--keep 4 2] [--global] [--methods ...] [--quick]

A character-level language model on real text that ships with Python: the source of a few standard
library modules (``argparse``, ``textwrap``, ``string``, ``json.decoder``, ``csv``, ``calendar``), 90% for
training, the last 10% for validation. The model: a character embedding (d = 64) with learned
positions, two pre-norm ``nn.TransformerEncoderLayer`` blocks (8 heads of 8 dimensions each, feed-forward
128, causal mask, no dropout) and a linear read-out; Adam (lr 3e-3, batch 32 windows of 64 characters),
the same epochs for every row. ``--keep`` heads of 8 stay in each layer. Rows:

* ``dense``: no pruning (the ceiling).
* ``magnitude``: gradual magnitude head pruning, the recipe of unstructured gradual pruning applied to
  heads: a head's importance is the L2 norm of everything it owns (its query, key and value rows and
  biases in ``in_proj``, its columns of ``out_proj``: the same group Torch-Pruning's magnitude importance
  measures for a head), the cubic schedule (Zhu & Gupta) from 10% to 75% of training applied once per
  epoch in each layer, the pruned heads held at 0 after every step, then fine-tuning.
  Torch-Pruning's own head pruning needs separate q, k, v Linear layers, not an ``nn.MultiheadAttention``.
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
  total_steps=N)`` (the same relative ranking and floor).

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
import json.decoder
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

from .compression import chosen, deployed, wants_dense, over_seeds, training_arguments

DIM, HEADS, LAYERS, CONTEXT, BATCH = 64, 8, 2, 64, 32
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
            nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=2 * DIM, dropout=0.0, batch_first=True,
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


def hold_pruned(attention: nn.MultiheadAttention, alive: torch.Tensor) -> None:
    """Zero the pruned heads' rows and columns (after every optimizer step, so they stay removed)."""
    d = DIM // HEADS
    with torch.no_grad():
        rows = alive.repeat_interleave(d).repeat(3).to(attention.in_proj_weight.dtype)
        attention.in_proj_weight.mul_(rows[:, None])
        attention.in_proj_bias.mul_(rows)
        attention.out_proj.weight.mul_(alive.repeat_interleave(d).to(attention.out_proj.weight.dtype)[None, :])


def train(method: str, keep: int, seed: int, epochs: int):
    train_ids, val, vocab = corpus()
    model = CharLM(vocab, seed)
    per_epoch = len(train_ids) // (BATCH * CONTEXT)
    steps = epochs * per_epoch
    attentions = [layer.self_attn for layer in model.layers]
    handles = []
    if method in ("symopt", "symopt (compact)"):
        for i in range(LAYERS):
            handles.append(symopt.attention_heads(model, f"layers.{i}.self_attn", max_heads=keep, total_steps=steps))
    if method == "symopt (global)":
        symopt.attention_heads(model, [f"layers.{i}.self_attn" for i in range(LAYERS)], max_heads=keep * LAYERS,
                               total_steps=steps)
    if method.startswith("symopt"):
        opt = torch.optim.Adam(symopt.param_groups(model, lr=3e-3), lr=3e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    alive = [torch.ones(HEADS, dtype=torch.bool) for _ in attentions]
    first, last = int(0.1 * epochs), max(int(0.1 * epochs) + 1, round(0.75 * epochs))
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for epoch in range(epochs):
        if method == "magnitude" and epoch >= first:
            count = scheduled_count(epoch, HEADS, keep, first, last)
            for i, attention in enumerate(attentions):
                norms = head_norms(attention).masked_fill(~alive[i], -1.0)
                alive[i] = torch.zeros(HEADS, dtype=torch.bool)
                alive[i][norms.topk(count).indices] = True
                hold_pruned(attention, alive[i])
        if method == "magnitude (global)" and epoch >= first:
            count = scheduled_count(epoch, HEADS * LAYERS, keep * LAYERS, first, last)
            norms = [head_norms(a) for a in attentions]
            relative = torch.cat([(n / n[m].mean()).masked_fill(~m, -1.0) for n, m in zip(norms, alive)])
            alive = list(largest_in_parts(relative, count, [HEADS] * LAYERS).split(HEADS))
            for attention, mask in zip(attentions, alive):
                hold_pruned(attention, mask)
        if method == "symopt (compact)" and handles and all(h.constraint.policy.has_landed() for h in handles):
            # landed: the exported model (each attention with its kept heads only) fine-tunes with plain
            # weights and a fresh Adam
            alive = [head_norms(a) > 0 for a in attentions]
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
                for attention, mask in zip(attentions, alive):
                    hold_pruned(attention, mask)
    seconds = time.process_time() - start
    if method.startswith("symopt") and symopt.list_constraints(model):
        alive = [head_norms(a) > 0 for a in attentions]  # the landing made the dropped heads exactly 0
        before = validation_loss(model, val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes of what stays dense
            model = symopt.export(model, mode="compressed")
        params = sum(p.numel() for p in model.parameters())
        if abs(validation_loss(model, val) - before) > 1e-4:
            raise RuntimeError("the exported model is not the trained one")
    elif method.startswith("symopt"):  # (compact: exported at the landing, `alive` read then)
        params = sum(p.numel() for p in model.parameters())
    else:
        # a removed head takes its q, k, v rows (weights and biases) and its out_proj columns with it
        d = DIM // HEADS
        removed = sum(int((~a).sum()) for a in alive)
        params = sum(p.numel() for p in model.parameters()) - removed * (4 * d * DIM + 3 * d)
    loss = validation_loss(model, val)
    heads = "/".join(str(int(a.sum())) for a in alive)
    # (timed in train mode, as validation_loss runs: no dropout here, and no eval fast path to differ)
    example = windows(val, torch.arange(0, len(val) - CONTEXT - 1, CONTEXT)[:256])[:, :-1]
    return loss, heads, params, deployed(model, example, eval_mode=False)[1], seconds


def main(argv=None) -> list:
    def extra(parser):
        parser.add_argument("--global", dest="global_budget", action="store_true",
                            help="add one budget over both layers' heads, for magnitude pruning and symopt")

    args = training_arguments(argv, "python -m benchmarks.heads", epochs=20, budgets="--keep", kind=int,
                              defaults=[4, 2], smoke="4 heads", extra=extra)
    _, _, vocab = corpus()
    print(f"character LM on the standard library's source ({vocab} characters), 2 pre-norm encoder layers, "
          f"d={DIM}, {HEADS} heads, Adam lr 3e-3, batch {BATCH}×{CONTEXT}, {args.epochs} epochs, {args.seeds} seeds; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'method':18s} {'heads':>5s} {'val nats/char':>17s} {'per layer':>9s} {'params':>7s} {'ms':>6s} "
          f"{'CPU s':>6s}")
    methods = ("magnitude", "symopt", "symopt (compact)") + (("magnitude (global)", "symopt (global)") if args.global_budget else ())
    runs = [("dense", HEADS)] * wants_dense(args) + [(m, k) for k in args.keep for m in chosen(args, methods)]
    table = []
    for method, keep in runs:
        mean, spread, seconds, results = over_seeds(train, method, keep, args.seeds, args.epochs)
        table.append((method, keep, mean, spread, results[0][1], results[0][2]))
        milliseconds = statistics.median(r[3] for r in results)
        print(f"{method:18s} {keep:5d} {mean:10.4f} ± {spread:.4f} {results[0][1]:>9s} {results[0][2]:7d} "
              f"{milliseconds:6.2f} {seconds:6.1f}", flush=True)
    return table


if __name__ == "__main__":
    main()
