"""The training step of issue 20's two models, and the floor any factorisation of their weights pays.

    python -m benchmarks.training_step [--model mlp|cnn] [--rounds 9] [--steps 60]

The models and recipes of `benchmarks.compression` (the digits MLP 64-256-256-10, its three weights
sparsified) and `benchmarks.channels` (the digits CNN, both convolutions' channels, each gate shared by
the conv's weight and bias and its BatchNorm's weight and bias), Adam (lr 1e-3, batch 64), float32, on
the CPU. Rows:

* ``dense``: the plain model, ``Adam(model.parameters())``.
* ``factored in plain PyTorch``: the same reparametrisation written by hand with no symopt code: each
  weight a product ``u ⊙ v`` of two parameters (MLP), or each channel's four tensors times one gate
  parameter per channel (CNN), the decay as Adam's ``weight_decay`` on the factors. This is the floor
  of the method in eager PyTorch: one more product in the forward pass, its two backward products, and
  Adam's per-tensor update on the extra tensors.
* ``symopt, fixed λ``: ``symopt.sparse(model, name, strength=1e-4)`` per weight /
  ``symopt.group_sparse(model, [four tensors], strength=1e-4)`` per conv, through ``symopt.param_groups``.
* ``symopt budget, on the ramp``: ``density=0.1`` / ``max_groups=half`` with ``total_steps`` of the
  benchmark's training (100 / 30 epochs), timed between 10% and 75% of them (the cubic ramp: the
  readings on one step in ``budget.READ_EVERY``, the trimmed decay, the landings on the way).
* ``symopt budget, landed``: the same, timed after the landing (the fine-tuning quarter).
* ``symopt low rank, fixed λ`` (MLP): ``symopt.low_rank(model, name, strength=1e-3)`` on the two hidden
  weights (full-width factors: ``max_rank`` is None without a budget), whose factors' rows for units without
  gradient (a hidden unit that stopped firing, an input pixel that is always 0) shrink entry by entry.
* ``magnitude pruning, after its ramp`` (MLP): what a user of ``torch.nn.utils.prune`` pays for the same
  90% in the same quarter: `benchmarks.compression`'s gradual magnitude pruning (its masks, its cubic
  schedule once an epoch) over the same steps, Adam over ``model.parameters()``. Its masked entries' gradients
  are 0 from their pruning on, as a landed atom's are.

``--whole`` instead trains each of dense / fixed λ / budget (/ magnitude pruning) through all of
``total_steps`` from scratch, ``--rounds`` times in turn, and prints each phase's median step time (before
the ramp, on it, after it) and the whole run's seconds and ratio to the dense run: a window of the ramp
does not see what builds up over it (a landed atom's momentum reaching subnormal floats, hundreds of steps
after its landing).

Each variant trains its own model; after ``--warm`` steps (the ramp rows: into the ramp; the landed
row: past the landing) ``--rounds`` rounds of ``--steps`` steps are timed, the variants interleaved.
Prints each row's median step time and its ratio to the dense step (the median over rounds of the
ratio within the round: the machine's drift between rounds cancels).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import symopt
from symopt.cli import machine_name

from .channels import CONVS, cnn
from .compression import WEIGHTS, _prune_to, data, mlp

LOW_RANK_WEIGHTS = ("0.weight", "2.weight")  # (`benchmarks.ranks`' hidden layers)
EPOCHS = {"mlp": 100, "cnn": 30}  # the training the budgets' total_steps describe (compression, channels)
BATCH = 64


class ProductLinear(nn.Module):
    """``F.linear(x, u ⊙ v, b)``: the hand-written factorisation of a Linear layer's weight."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        root = layer.weight.detach().abs().sqrt()
        self.u = nn.Parameter(layer.weight.detach().sign() * root)
        self.v = nn.Parameter(root.clone())
        self.bias = layer.bias

    def forward(self, x):
        return F.linear(x, self.u * self.v, self.bias)


class GatedConvNorm(nn.Module):
    """A conv and its BatchNorm whose four tensors are multiplied by one gate per channel: the
    hand-written factorisation of a channel group."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.norm = conv, norm
        self.gate = nn.Parameter(torch.ones(conv.out_channels))

    def forward(self, x):
        g = self.gate
        y = F.conv2d(x, self.conv.weight * g[:, None, None, None], self.conv.bias * g, padding=self.conv.padding)
        n = self.norm
        return F.batch_norm(y, n.running_mean, n.running_var, n.weight * g, n.bias * g, self.training,
                            n.momentum, n.eps)


def _factored_by_hand(model: str) -> tuple[nn.Module, list[dict]]:
    if model == "mlp":
        net = mlp(0)
        for i in (0, 2, 4):
            net[i] = ProductLinear(net[i])
        factors = [p for i in (0, 2, 4) for p in (net[i].u, net[i].v)]
    else:
        net = cnn(0)
        for conv, norm in CONVS:
            c, n = int(conv), int(norm)
            net[c], net[n] = GatedConvNorm(net[c], net[n]), nn.Identity()
        factors = [p for conv, _ in CONVS for p in net[int(conv)].parameters()]
    rest = [p for p in net.parameters() if all(p is not f for f in factors)]
    return net, [{"params": factors, "weight_decay": 1e-4}, {"params": rest}]


def _symopt(model: str, budget: bool, total_steps: int) -> nn.Module:
    if model == "mlp":
        net = mlp(0)
        for name in WEIGHTS:
            if budget:
                symopt.sparse(net, name, density=0.1, total_steps=total_steps)
            else:
                symopt.sparse(net, name, strength=1e-4)
        return net
    net = cnn(0)
    for conv, norm in CONVS:
        names = [f"{conv}.weight", f"{conv}.bias", f"{norm}.weight", f"{norm}.bias"]
        channels = net[int(conv)].out_channels
        if budget:
            symopt.group_sparse(net, names, max_groups=channels // 2, total_steps=total_steps)
        else:
            symopt.group_sparse(net, names, strength=1e-4)
    return net


def ramp_start(total_steps: int) -> int:
    """Where the ramp rows' timing starts: a tenth of the ramp (10% .. 75% of the steps) into it."""
    return int(0.1 * total_steps) + int(0.065 * total_steps)


def variants(model: str, total_steps: int) -> dict:
    """``{row: (model, optimizer, warm-up steps, what to do before warm-up step i or None)}``."""
    landed = int(0.75 * total_steps) + 5
    rows = {}
    plain = mlp(0) if model == "mlp" else cnn(0)
    rows["dense"] = (plain, torch.optim.Adam(plain.parameters(), lr=1e-3), 0, None)
    net, groups = _factored_by_hand(model)
    rows["factored in plain PyTorch"] = (net, torch.optim.Adam(groups, lr=1e-3), 0, None)
    net = _symopt(model, False, total_steps)
    rows["symopt, fixed λ"] = (net, torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3), 0, None)
    for row, warm in (("symopt budget, on the ramp", ramp_start(total_steps)), ("symopt budget, landed", landed)):
        net = _symopt(model, True, total_steps)
        rows[row] = (net, torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3), warm, None)
    if model == "mlp":
        net = mlp(0)
        for name in LOW_RANK_WEIGHTS:
            symopt.low_rank(net, name, strength=1e-3)
        rows["symopt low rank, fixed λ"] = (net, torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3), 0, None)
        net = mlp(0)
        layers = [net.get_submodule(n.rsplit(".", 1)[0]) for n in WEIGHTS]
        sizes = [layer.weight.numel() for layer in layers]
        epochs, per_epoch = EPOCHS[model], max(1, total_steps // EPOCHS[model])

        def prune_each_epoch(i: int) -> None:
            if i % per_epoch == 0:
                _prune_to(layers, sizes, 0.1, i // per_epoch, epochs, False)

        rows["magnitude pruning, after its ramp"] = (net, torch.optim.Adam(net.parameters(), lr=1e-3), landed,
                                                     prune_each_epoch)
    return rows


PHASES = (("before the ramp", 0.0, 0.1), ("on the ramp", 0.1, 0.75), ("after it", 0.75, 1.0))


def whole_runs(model: str, total_steps: int, rounds: int, step) -> dict:
    """``{row: (median seconds of a whole run, median ratio to the dense run, {phase: median step ms})}``."""
    bounds = [(name, round(a * total_steps), round(b * total_steps)) for name, a, b in PHASES]
    chosen = ("dense", "symopt, fixed λ", "symopt budget, landed", "symopt low rank, fixed λ",
              "magnitude pruning, after its ramp")
    runs: dict = {}
    for _ in range(rounds):
        rows = {row: value for row, value in variants(model, total_steps).items() if row in chosen}
        for row, (net, optimizer, _, before) in rows.items():
            phases = {}
            for name, start, end in bounds:
                began = time.perf_counter()
                for i in range(start, end):
                    if before is not None:
                        before(i)
                    step(net, optimizer, i)
                phases[name] = (time.perf_counter() - began) / max(1, end - start)
            runs.setdefault(row, []).append(phases)
    result = {}
    whole = {row: [sum(p[name] * (end - start) for name, start, end in bounds) for p in r] for row, r in runs.items()}
    for row, r in runs.items():
        ratio = statistics.median(a / d for a, d in zip(whole[row], whole["dense"]))
        result[row.replace(", landed", "").replace(", after its ramp", "")] = (statistics.median(whole[row]), ratio,
                                               {name: 1e3 * statistics.median(p[name] for p in r) for name, *_ in bounds})
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_step")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of timed steps (9), or whole runs (3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps a round (MLP 60, CNN 25)")
    parser.add_argument("--quick", action="store_true", help="two rounds of three steps: a smoke test")
    parser.add_argument("--whole", action="store_true",
                        help="whole runs of total_steps, by phase (--rounds runs each; --quick: 40 steps)")
    args = parser.parse_args(argv)
    steps = 3 if args.quick else args.steps or (60 if args.model == "mlp" else 25)
    rounds = 2 if args.quick else args.rounds or (3 if args.whole else 9)
    Xtr, ytr, _, _ = data(0)
    if args.model == "cnn":
        Xtr = Xtr.view(-1, 1, 8, 8)
    total_steps = EPOCHS[args.model] * math.ceil(len(Xtr) / BATCH)
    room = int(0.75 * total_steps) - ramp_start(total_steps)
    if not args.quick and rounds * steps > room:
        parser.error(f"--rounds × --steps must stay inside the ramp: at most {room} steps")
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(Xtr), (BATCH,), generator=generator) for _ in range(50)]

    def step(net, optimizer, i):
        optimizer.zero_grad()
        F.cross_entropy(net(Xtr[batches[i % 50]]), ytr[batches[i % 50]]).backward()
        optimizer.step()

    if args.whole:
        total = 40 if args.quick else total_steps
        runs = 1 if args.quick else rounds
        result = whole_runs(args.model, total, runs, step)
        print(f"digits {args.model.upper()}, Adam, batch {BATCH}, whole runs of {total} steps (the budget's "
              f"total_steps), {runs} each in turn; {machine_name()}")
        print(f"{'row':34s} {'run s':>7s} {'× dense':>8s}  " + "  ".join(f"{name + ' ms':>18s}" for name, *_ in PHASES))
        for row, (seconds, ratio, phases) in result.items():
            print(f"{row:34s} {seconds:7.2f} {ratio:8.2f}  " + "  ".join(f"{ms:18.3f}" for ms in phases.values()))
        return result
    rows = variants(args.model, total_steps)
    for net, optimizer, warm, before in rows.values():
        for i in range(warm if not args.quick else min(warm, 20)):
            if before is not None:
                before(i)
            step(net, optimizer, i)
    times = {row: [] for row in rows}
    names = list(rows)
    for index in range(rounds):
        # (the rows' order rotates from round to round: a row that always runs first read slower than it is)
        for row in names[index % len(names):] + names[:index % len(names)]:
            net, optimizer, *_ = rows[row]
            start = time.perf_counter()
            for i in range(steps):
                step(net, optimizer, i)
            times[row].append((time.perf_counter() - start) / steps)
    print(f"digits {args.model.upper()}, Adam, batch {BATCH}, total_steps {total_steps}; "
          f"{rounds} rounds of {steps} steps, interleaved; {machine_name()}")
    print(f"{'row':30s} {'step ms':>8s} {'× dense':>8s}")
    result = {}
    for row, seconds in times.items():
        ratio = statistics.median(s / d for s, d in zip(seconds, times["dense"]))
        result[row] = (statistics.median(seconds), ratio)
        print(f"{row:30s} {1e3 * result[row][0]:8.3f} {ratio:8.2f}")
    return result


if __name__ == "__main__":
    main()
