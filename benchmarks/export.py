"""What ``symopt.export(mode="compressed")`` buys: stored numbers and forward time, dense vs compressed.

    python -m benchmarks.export [--device cuda] [--width 1024] [--batch 256] [--repeats 50]

Each case is a float32 model whose constrained layers hold the structure training would leave (set
through the factors, so the numbers do not depend on a training run): low rank r = width/16 on both
hidden layers of an MLP, 75% dead hidden units (group sparsity on output rows), 5% / 20% elementwise
density, and a CNN with a rank-8 middle conv and 50% dead channels. Prints stored numbers, median
forward time (no grad) and the max |output difference| between the two exports.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import symopt
from symopt.cli import machine_name


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def _factors(model, name):
    module, leaf = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
    return module.parametrizations[leaf]


def low_rank(width: int) -> nn.Module:
    net = _mlp(width)
    for name in ("0.weight", "2.weight"):
        symopt.low_rank(net, name, max_rank=width // 16, strength=1e-4)
    return net


def dead_units(width: int) -> nn.Module:
    net = _mlp(width)
    for name in ("0.weight", "2.weight"):
        symopt.group_sparse(net, name, dim=0, strength=1e-4)
        with torch.no_grad():
            _factors(net, name).original0[: 3 * width // 4] = 0  # gates of 75% of the units
            _factors(net, name).original1[: 3 * width // 4] = 0
    return net


def sparse(width: int, density: float) -> nn.Module:
    net = _mlp(width)
    g = torch.Generator().manual_seed(0)
    for name in ("0.weight", "2.weight"):
        symopt.sparse(net, name, strength=1e-4)
        with torch.no_grad():
            u = _factors(net, name).original0
            u[torch.rand(u.shape, generator=g) > density] = 0
    return net


def cnn(channels: int) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(channels, channels, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(channels, 10))
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-4)
    with torch.no_grad():
        _factors(net, "0.weight").original0[: channels // 2] = 0
        _factors(net, "0.weight").original1[: channels // 2] = 0
    symopt.low_rank(net, "2.weight", max_rank=8, strength=1e-4)
    return net


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cases = {
        f"MLP {args.width}, rank {args.width // 16}": (low_rank(args.width), (args.batch, args.width)),
        f"MLP {args.width}, 75% dead units": (dead_units(args.width), (args.batch, args.width)),
        f"MLP {args.width}, 5% density": (sparse(args.width, 0.05), (args.batch, args.width)),
        f"MLP {args.width}, 20% density": (sparse(args.width, 0.20), (args.batch, args.width)),
        "CNN 64ch 32×32, rank 8 + 50% dead": (cnn(64), (32, 3, 32, 32)),
    }
    print(f"export dense vs compressed — torch {torch.__version__}, {machine_name(device)}, float32, "
          f"median forward of {args.repeats}\n")
    header = f"{'case':<36}{'stored dense':>13}{'compressed':>11}{'ratio':>7}{'ms dense':>10}{'ms compr.':>10}{'speed-up':>9}{'max|Δy|':>10}"
    print(header)
    rows = []
    for name, (model, shape) in cases.items():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # registration's rank-r approximation of the random init
            model = model.to(device)
            dense = symopt.export(model, tol=0.0)
            small = symopt.export(model, mode="compressed", tol=0.0, sparse_format="csr")
        x = torch.randn(*shape, device=device)
        a = symopt.footprint(dense, x, repeats=args.repeats)
        b = symopt.footprint(small, x, repeats=args.repeats)
        with torch.no_grad():
            diff = float((dense(x) - small(x)).abs().max())
        rows.append((name, a.stored, b.stored, a.forward_seconds, b.forward_seconds, diff))
        print(f"{name:<36}{a.stored:>13}{b.stored:>11}{b.stored / a.stored:>7.2f}{a.forward_seconds * 1e3:>10.3f}"
              f"{b.forward_seconds * 1e3:>10.3f}{a.forward_seconds / b.forward_seconds:>9.2f}{diff:>10.1e}")
    return rows


if __name__ == "__main__":
    main()
