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


def digits_cnn(dead_fraction: float) -> tuple[nn.Module, dict]:
    """Issue 21's CNN (conv 1→32 → ReLU → conv 32→64 → ReLU → MaxPool2d → Flatten → Linear, 8×8 digits)
    with the same fraction of both convs' channels wholly dead (weights and bias)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 10))
    dead = {}
    for i, width in ((0, 32), (2, 64)):
        symopt.group_sparse(net, f"{i}.weight", dim=0, strength=1e-4)
        rows = torch.randperm(width)[: int(width * dead_fraction)]
        with torch.no_grad():
            _factors(net, f"{i}.weight").original0[rows] = 0
            _factors(net, f"{i}.weight").original1[rows] = 0
            net[i].bias[rows] = 0
        dead[i] = sorted(rows.tolist())
    return net, dead


class ResidualCNN(nn.Module):
    """stem conv → [conv-BN-ReLU-conv-BN] + skip → ReLU → global pool → Linear (a ResNet basic block)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)) + x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def residual_cnn(dead_fraction: float, width: int = 64) -> tuple[nn.Module, dict]:
    """Half the channels of the inner conv, and the same channels of the residual group (stem and the
    block's second conv), wholly dead: weights, bias and BatchNorm entries."""
    torch.manual_seed(0)
    net = ResidualCNN(width).eval()
    dead = {}
    for name, bn in (("conv1", net.bn1), ("stem", None), ("conv2", net.bn2)):
        symopt.group_sparse(net, f"{name}.weight", dim=0, strength=1e-4)
        rows = dead.get("stem") if name == "conv2" else sorted(torch.randperm(width)[: int(width * dead_fraction)].tolist())
        with torch.no_grad():
            _factors(net, f"{name}.weight").original0[rows] = 0
            _factors(net, f"{name}.weight").original1[rows] = 0
            layer = getattr(net, name)
            if layer.bias is not None:
                layer.bias[rows] = 0
            if bn is not None:
                bn.weight[rows], bn.bias[rows] = 0, 0
        dead[name] = rows
    return net, dead


def torch_pruning_removes(model: nn.Module, dead: dict, x) -> nn.Module | None:
    """The same channels removed by Torch-Pruning's DependencyGraph (None when it is not installed)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    model = symopt.export(model)  # plain modules holding the same values
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    for name, rows in dead.items():
        if name == "conv2":  # in the residual group with the stem: Torch-Pruning removes them together
            continue
        layer = model.get_submodule(str(name))
        graph.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=list(rows)).prune()
    return model


def architectures(args) -> list[tuple]:
    """symopt's compressed export against Torch-Pruning removing the same channels, on real architectures."""
    import warnings
    cases = {}
    for fraction in (0.5, 0.75):
        cases[f"digits CNN, {fraction:.0%} channels dead"] = (*digits_cnn(fraction), (args.batch, 1, 8, 8))
        cases[f"residual block 64ch, {fraction:.0%} dead"] = (*residual_cnn(fraction), (64, 3, 32, 32))
    print(f"\nchannels removed through the traced graph vs Torch-Pruning — median forward of {args.repeats}\n")
    print(f"{'case':<36}{'params':>8}{'symopt':>8}{'TP':>8}{'ms dense':>10}{'ms symopt':>10}{'ms TP':>8}{'max|Δy|':>10}")
    rows = []
    for name, (model, dead, shape) in cases.items():
        x = torch.randn(*shape)
        with warnings.catch_warnings():
            warnings.simplefilter("error", symopt.ExportWarning)  # every dead channel must go
            dense, small = symopt.export(model), symopt.export(model, mode="compressed")
        pruned = torch_pruning_removes(model, dead, x)
        a, b = (symopt.footprint(m.eval(), x, repeats=args.repeats) for m in (dense, small))
        c = symopt.footprint(pruned.eval(), x, repeats=args.repeats) if pruned is not None else None
        with torch.no_grad():
            diff = float((dense.eval()(x) - small.eval()(x)).abs().max())
        rows.append((name, a.stored, b.stored, c and c.stored, a.forward_seconds, b.forward_seconds,
                     c and c.forward_seconds, diff))
        tp_params = f"{c.stored:>8}" if c else f"{'-':>8}"
        tp_ms = f"{c.forward_seconds * 1e3:>8.3f}" if c else f"{'-':>8}"
        print(f"{name:<36}{a.stored:>8}{b.stored:>8}{tp_params}{a.forward_seconds * 1e3:>10.3f}"
              f"{b.forward_seconds * 1e3:>10.3f}{tp_ms}{diff:>10.1e}")
    return rows


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
    return rows + architectures(args)


if __name__ == "__main__":
    main()
