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
from .compression import WEIGHTS, data, mlp

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
    """``{row: (model, optimizer, warm-up steps)}``."""
    landed = int(0.75 * total_steps) + 5
    rows = {}
    plain = mlp(0) if model == "mlp" else cnn(0)
    rows["dense"] = (plain, torch.optim.Adam(plain.parameters(), lr=1e-3), 0)
    net, groups = _factored_by_hand(model)
    rows["factored in plain PyTorch"] = (net, torch.optim.Adam(groups, lr=1e-3), 0)
    net = _symopt(model, False, total_steps)
    rows["symopt, fixed λ"] = (net, torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3), 0)
    for row, warm in (("symopt budget, on the ramp", ramp_start(total_steps)), ("symopt budget, landed", landed)):
        net = _symopt(model, True, total_steps)
        rows[row] = (net, torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3), warm)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_step")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=None, help="timed steps a round (MLP 60, CNN 25)")
    parser.add_argument("--quick", action="store_true", help="two rounds of three steps: a smoke test")
    args = parser.parse_args(argv)
    steps = 3 if args.quick else args.steps or (60 if args.model == "mlp" else 25)
    rounds = 2 if args.quick else args.rounds
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

    rows = variants(args.model, total_steps)
    for net, optimizer, warm in rows.values():
        for i in range(warm if not args.quick else min(warm, 20)):
            step(net, optimizer, i)
    times = {row: [] for row in rows}
    for _ in range(rounds):
        for row, (net, optimizer, _) in rows.items():
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
