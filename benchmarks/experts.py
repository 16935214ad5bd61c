"""A mixture of experts' feed-forward neurons removed during training: symopt's landing budgets vs gradual magnitude
pruning of the same neurons, on transformers' own mixture-of-experts model.

    python -m benchmarks.experts [--epochs 8] [--seeds 3] [--keep 16 8] [--methods ...] [--quick]
    python -m benchmarks.experts --step [--rounds 9]

The character-level language model data of `benchmarks.heads` (the source of a few standard library modules, 90%
for training, the last 10% for validation), with a ``transformers.MixtralForCausalLM`` (an optional benchmark
dependency; transformers 5, whose experts are fused ``(experts, 2·width, hidden)`` tensors): hidden size 64, 2
layers of 4 heads, 4 experts of 64 neurons each, the top 2 experts a token, Adam (lr 3e-3, batch 32 windows of 64
characters), the same epochs for every row. ``--keep`` neurons of 64 stay per expert on average (default 16 and 8):
``4 × keep`` in each layer. A neuron is its expert's gate and up rows and its column of ``down_proj``. Rows:

* ``dense``: no pruning (the ceiling).
* ``magnitude (each expert)``: gradual magnitude pruning, each expert keeping ``keep`` neurons by the L2 norm of its
  gate row, up row and ``down_proj`` column (Torch-Pruning's group for a hidden unit), the cubic schedule (Zhu &
  Gupta) from 10% to 75% of training applied once per epoch, the pruned neurons held at 0 after every step, then
  fine-tuning.
* ``magnitude (layer)``: the same, ranked over all the layer's experts (each expert keeps what the ranking gives it).
* ``symopt``: ``symopt.group_sparse(model, names, max_groups=4·keep, total_steps=N)`` per layer over
  ``symopt.feed_forward_units(model)``: the budget's cubic schedule with the trimmed decay, the landing, fine-tuning.
* ``symopt (equal experts)``: the same with ``equal_experts=True``: every expert keeps ``keep``.
* ``magnitude (each expert, global)``: one ranking over both layers, ``2 · 4 · keep`` neurons, every expert of a layer
  keeping the same count (`symopt.constraints.base.equal_in_layers`: a layer's r-th largest neurons of all its
  experts ranked together by their mean norm, each norm over its layer's mean, as Torch-Pruning's global ranking
  normalises), so the layers share the budget as the ranking says.
* ``symopt (equal experts, global)``: one budget over both layers, ``equal_experts=True``: the same rule on symopt's
  relative unit norms.

``--step`` times a training step instead (the same model, batch and Adam): ``plain``; ``symopt, fixed λ`` (each
layer's experts' neurons, ``strength=1e-4``); ``symopt equal experts, on the ramp`` (``max_groups=4·16``,
``equal_experts=True``, ``total_steps`` 2000, timed from step 220, inside its ramp); ``--rounds`` interleaved rounds
of 20 steps each, the median over rounds of each row's ratio to the plain step within the round.

Each row: validation loss in nats per character (mean ± std over seeds), the width of each layer's fused expert
tensors after removing the dead neurons (symopt's export; for magnitude pruning the same rule: the widest expert's
live neurons, rounded up to a multiple of 8 as grouped matrix products need), the parameters of that model, the
median forward time of a batch of 256 validation windows (eval mode, no grad, transformers' default experts kernel),
and the CPU seconds of training.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from torch import nn

import symopt
from symopt._layers import expert_layout
from symopt.constraints.base import equal_in_layers, equal_in_parts
from symopt.constraints.budget import scheduled_count
from symopt.export import EXPERT_WIDTH_MULTIPLE

from .compression import chosen, deployed, over_seeds, pruning_epochs, seed_range, seed_words, training_arguments, wants_dense
from .heads import BATCH, CONTEXT, corpus, validation_loss, windows

HIDDEN, LAYERS, HEADS, EXPERTS, WIDTH, TOP = 64, 2, 4, 4, 64, 2
METHODS = ("magnitude (each expert)", "magnitude (layer)", "symopt", "symopt (equal experts)",
           "magnitude (each expert, global)", "symopt (equal experts, global)")


def mixtral(vocab: int, seed: int) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.MixtralConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=WIDTH,
                                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                                        num_local_experts=EXPERTS, num_experts_per_tok=TOP,
                                        max_position_embeddings=CONTEXT, router_jitter_noise=0.0)
    return transformers.MixtralForCausalLM(config)


class Logits(nn.Module):
    """The language model's logits alone, as `benchmarks.heads`' validation and timing call it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids).logits


def experts_of(model: nn.Module) -> list[nn.Module]:
    return [layer.mlp.experts for layer in model.model.layers]


def neuron_norms(experts: nn.Module) -> torch.Tensor:
    """(experts, width): the L2 norm of each neuron's gate row, up row and ``down_proj`` column."""
    gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    squares = gate_up.square().sum(dim=2)
    return (squares[:, :WIDTH] + squares[:, WIDTH:] + down.square().sum(dim=1)).sqrt()


def hold_pruned(experts: nn.Module, alive: torch.Tensor) -> None:
    with torch.no_grad():
        rows = torch.cat([alive, alive], dim=1).to(experts.gate_up_proj.dtype)
        experts.gate_up_proj.mul_(rows[:, :, None])
        experts.down_proj.mul_(alive.to(experts.down_proj.dtype)[:, None, :])


def fused_width(alive: torch.Tensor) -> int:
    """The width export's rule leaves: the widest expert's live neurons, rounded up to `EXPERT_WIDTH_MULTIPLE`."""
    live = max(int(alive.sum(dim=1).max()), 1)
    return min(WIDTH, -(-live // EXPERT_WIDTH_MULTIPLE) * EXPERT_WIDTH_MULTIPLE)


def parameters_at(model: nn.Module, widths: list[int]) -> int:
    """The model's parameters with each layer's expert tensors narrowed to ``widths``."""
    removed = sum(3 * EXPERTS * HIDDEN * (WIDTH - w) for w in widths)  # (gate, up and down per neuron)
    return sum(p.numel() for p in model.parameters()) - removed


def train(method: str, keep: int, seed: int, epochs: int):
    train_ids, val, vocab = corpus()
    model = mixtral(vocab, seed)
    per_epoch = len(train_ids) // (BATCH * CONTEXT)
    steps = epochs * per_epoch
    if method == "symopt (equal experts, global)":
        symopt.group_sparse(model, symopt.feed_forward_units(model), max_groups=LAYERS * EXPERTS * keep,
                            total_steps=steps, equal_experts=True)
    elif method.startswith("symopt"):
        for names in symopt.feed_forward_units(model):
            symopt.group_sparse(model, names, max_groups=EXPERTS * keep, total_steps=steps,
                                equal_experts=method.endswith("(equal experts)"))
    if method.startswith("symopt"):
        opt = torch.optim.Adam(symopt.param_groups(model, lr=3e-3), lr=3e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    alive = [torch.ones(EXPERTS, WIDTH, dtype=torch.bool) for _ in range(LAYERS)]
    cubic = pruning_epochs(epochs)
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for epoch in range(epochs):
        if method == "magnitude (each expert, global)" and epoch >= cubic[0]:
            count = scheduled_count(epoch, LAYERS * EXPERTS * WIDTH, LAYERS * EXPERTS * keep, *cubic)
            norms = [neuron_norms(experts) for experts in experts_of(model)]
            relative = torch.cat([(n / n[m].mean()).masked_fill(~m, -1.0).reshape(-1) for n, m in zip(norms, alive)])
            masks = equal_in_layers(relative, count, EXPERTS, [EXPERTS * WIDTH] * LAYERS).split(EXPERTS * WIDTH)
            alive = [mask.view(EXPERTS, WIDTH) for mask in masks]
            for experts, mask in zip(experts_of(model), alive):
                hold_pruned(experts, mask)
        elif method.startswith("magnitude") and epoch >= cubic[0]:
            count = scheduled_count(epoch, EXPERTS * WIDTH, EXPERTS * keep, *cubic)
            for i, experts in enumerate(experts_of(model)):
                norms = neuron_norms(experts).masked_fill(~alive[i], -1.0).reshape(-1)
                if method == "magnitude (each expert)":
                    mask = equal_in_parts(norms, count, EXPERTS)
                else:
                    mask = torch.zeros_like(norms, dtype=torch.bool)
                    mask[norms.topk(count).indices] = True
                alive[i] = mask.view(EXPERTS, WIDTH)
                hold_pruned(experts, alive[i])
        starts = torch.randint(0, len(train_ids) - CONTEXT - 1, (per_epoch, BATCH), generator=gen)
        for row in starts:
            batch = windows(train_ids, row)
            opt.zero_grad()
            logits = model(batch[:, :-1]).logits
            nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)).backward()
            opt.step()
            if method.startswith("magnitude"):
                for experts, mask in zip(experts_of(model), alive):
                    hold_pruned(experts, mask)
    seconds = time.process_time() - start
    model.eval()
    if method.startswith("symopt"):
        before = validation_loss(Logits(model), val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the notes of what stays dense: attention, embeddings)
            model = symopt.export(model, mode="compressed")
        if abs(validation_loss(Logits(model), val) - before) > 1e-4:
            raise RuntimeError("the exported model is not the trained one")
        widths = [expert_layout(experts).width for experts in experts_of(model)]
        params = sum(p.numel() for p in model.parameters())
    else:
        widths = [fused_width(mask) if method != "dense" else WIDTH for mask in alive]
        params = parameters_at(model, widths)
    loss = validation_loss(Logits(model), val)
    example = windows(val, torch.arange(0, len(val) - CONTEXT - 1, CONTEXT)[:256])[:, :-1]
    return loss, "/".join(map(str, widths)), params, deployed(Logits(model), example)[1], seconds


def step_times(rounds: int) -> dict[str, tuple[float, float]]:
    """``--step``: ``{row: (median step ms, median ratio to the plain step)}`` (see the module docstring)."""
    train_ids, _, vocab = corpus()
    gen = torch.Generator().manual_seed(0)
    batches = [windows(train_ids, torch.randint(0, len(train_ids) - CONTEXT - 1, (BATCH,), generator=gen))
               for _ in range(20)]

    def built(row: str):
        model = mixtral(vocab, 0)
        for names in symopt.feed_forward_units(model) if row != "plain" else ():
            if row == "symopt, fixed λ":
                symopt.group_sparse(model, names, strength=1e-4)
            else:
                symopt.group_sparse(model, names, max_groups=EXPERTS * 16, total_steps=2000, equal_experts=True)
        groups = symopt.param_groups(model, lr=3e-3) if row != "plain" else model.parameters()
        return model, torch.optim.Adam(groups, lr=3e-3)

    def steps(model, opt) -> float:
        start = time.perf_counter()
        for batch in batches:
            opt.zero_grad()
            logits = model(batch[:, :-1]).logits
            nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)).backward()
            opt.step()
        return (time.perf_counter() - start) / len(batches)

    rows = {row: built(row) for row in ("plain", "symopt, fixed λ", "symopt equal experts, on the ramp")}
    for _ in range(11):  # (into the ramp: it starts at 10% of 2000 steps)
        steps(*rows["symopt equal experts, on the ramp"])
    times = {row: [] for row in rows}
    for _ in range(rounds):
        for row, pair in rows.items():
            times[row].append(steps(*pair))
    return {row: (1e3 * statistics.median(t), statistics.median(a / b for a, b in zip(t, times["plain"])))
            for row, t in times.items()}


def main(argv=None) -> list:
    try:
        import transformers
    except ImportError:  # pragma: no cover - an optional benchmark dependency
        raise SystemExit("benchmarks.experts needs transformers (pip install 'symopt[hf]')") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise SystemExit("benchmarks.experts needs transformers 5, whose experts are fused tensors")
    def extra(parser):
        parser.add_argument("--step", action="store_true", help="time a training step of each row instead")
        parser.add_argument("--rounds", type=int, default=9, help="--step: interleaved rounds of 20 steps")

    args = training_arguments(argv, "python -m benchmarks.experts", epochs=8, budgets="--keep", kind=int,
                              defaults=[16, 8], smoke="16 neurons an expert", extra=extra)
    if args.step:
        print(f"a training step of MixtralForCausalLM (hidden {HIDDEN}, {LAYERS} layers, {EXPERTS} experts of {WIDTH}), "
              f"batch {BATCH}×{CONTEXT}, Adam; {args.rounds} rounds of 20 steps; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads\n")
        found = step_times(args.rounds)
        for row, (ms, ratio) in found.items():
            print(f"{row:36s} {ms:8.2f} ms  × {ratio:.2f}")
        return list(found.items())
    if any(not 1 <= k < WIDTH for k in args.keep):
        raise SystemExit(f"--keep: each between 1 and {WIDTH - 1} neurons per expert")
    _, _, vocab = corpus()
    print(f"character LM on the standard library's source ({vocab} characters), MixtralForCausalLM: hidden {HIDDEN}, "
          f"{LAYERS} layers, {EXPERTS} experts of {WIDTH} neurons (top {TOP}), Adam lr 3e-3, batch {BATCH}×{CONTEXT}, "
          f"{args.epochs} epochs, {seed_words(args)}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'method':32s} {'keep':>5s} {'val nats/char':>17s} {'widths':>7s} {'params':>7s} {'ms':>6s} {'CPU s':>6s}")
    runs = [("dense", WIDTH)] * wants_dense(args) + [(m, k) for k in args.keep for m in chosen(args, METHODS)]
    table = []
    for method, keep in runs:
        mean, spread, seconds, results = over_seeds(train, method, keep, seed_range(args), args.epochs)
        table.append((method, keep, mean, spread, results[0][1], results[0][2]))
        milliseconds = statistics.median(r[3] for r in results)
        print(f"{method:32s} {keep:5d} {mean:10.4f} ± {spread:.4f} {results[0][1]:>7s} {results[0][2]:7d} "
              f"{milliseconds:6.2f} {seconds:6.1f}", flush=True)
    return table


if __name__ == "__main__":
    main()
