"""Training-step overhead of each constraint kind vs the plain model (CPU or CUDA).

    python -m benchmarks.overhead [--model mlp|cnn] [--device cuda] [--width 512] [--batch 256] [--repeats 9]
                                  [--decay param_groups|penalty] [--budgets] [--regrow] [--profile ROW]

One model per kind, float32: an MLP (width × width hidden layers) or a CNN (three 3×3 convs with
``--channels`` channels on 32×32 inputs), its middle layer constrained (tied: first and middle
layers); a step is forward + backward + SGD update. The decay on the factors comes from
``symopt.param_groups`` (``weight_decay = λ`` in SGD's fused update; the default, as in the README)
or, with ``--decay penalty``, from ``symopt.penalty`` added to the loss (extra forward and backward
passes over the factors; the same minimiser). Prints the
median step time of ``--repeats`` interleaved timed rounds (after warm-up), its ratio to the
unconstrained model (the median over the rounds of each round's ratio: paired, so the machine's drift
between rounds cancels; the noise within a round does not), and the memory of a step (below).

Two memory columns:

* ``storage``, the issue's memory measure: the bytes the constrained layers hold (their factors, plus
  buffers such as a subspace basis or a mask) ÷ the bytes of the parameters they replace.
* ``peak MiB`` of one step, and its ratio to the plain model's: the bytes the model holds when a step
  starts (parameters, buffers, optimizer state; the batch is not counted) plus the highest the
  step's own allocations (activations, gradients, temporaries) rise above that. The allocations are
  read from the allocator, on any device: on CPU from the profiler's memory events
  (``torch.profiler``, ``profile_memory=True``), on CUDA from ``torch.cuda.max_memory_allocated``
  above what was allocated when the step started. Exact to the byte; measured on one step, after
  the timed ones.

``--regrow`` adds ``sparse + regrow``, ``low_rank + regrow`` and ``low_rank(max_rank=64) + regrow``:
the fixed-λ layers with ``symopt.regrow(net, optimizer)`` on the step's optimizer (θ's gradient folded
into a moving average every step, a decision every 10 steps: for low rank, the eigen-decomposition of
UᵀU + VᵀV that finds the directions near zero).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

import symopt
from symopt.cli import machine_name


# Budgets with no total_steps: the controller reads the atoms on one step in four
# (`symopt.constraints.budget.READ_EVERY`) for as long as training runs (with a schedule it would skip the
# warm-up's first 10% of steps), which is the cost to measure; and one with total_steps whose ramp covers
# every measured step (the trimmed decay and its step hook too).
# The rank budgets at max_rank=64 also with total_steps (the landing's pre-hook) and as one budget over the
# first two layers (a pool; the only row with two constrained layers).
# The rows of every run (None: the plain model), then BUDGETS with --budgets
KINDS = [None, "sparse", "group_sparse", "low_rank", "low_rank(max_rank=64)", "low_rank(max_rank=16)",
         "subspace(16 rows)", "subspace(16 per row)", "fixed_zeros(50%)", "tied", "tied(auto)"]
# A rank budget's default width (`max_rank="auto"`) is 4 × target_rank where that is narrow: 64 on the MLP's
# 512 × 512 layer, full width on the CNN's 64 × 576 view; max_rank=None asks for full width everywhere.
BUDGETS = ["sparse(density=0.1)", "sparse(density=0.1, total_steps)", "sparse(density=0.1, total_steps, mid-ramp)",
           "group_sparse(max_groups=half)",
           "low_rank(target_rank=16)", "low_rank(target_rank=16, total_steps)",
           "low_rank(target_rank=16, max_rank=None)", "low_rank([0, 2], max_rank=64, target_rank=32)"]


def _model(arch: str, width: int, device, kind: str | None) -> nn.Module:
    torch.manual_seed(0)
    if arch == "mlp":
        net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                            nn.Linear(width, 10)).to(device)
    else:
        net = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(width, 10)).to(device)
    shape = net[2].weight.shape
    numel = net[2].weight.numel()
    if kind is not None and kind.endswith(" + regrow"):
        kind = kind[:-len(" + regrow")]
        net.regrows = True  # _stepper installs symopt.regrow on its optimizer
    if kind == "sparse":
        symopt.sparse(net, "2.weight", strength=1e-4)
    elif kind == "group_sparse":
        symopt.group_sparse(net, "2.weight", dim=0, strength=1e-4)
    elif kind == "low_rank":
        symopt.low_rank(net, "2.weight", strength=1e-4)
    elif kind == "low_rank(max_rank=64)":
        with warnings.catch_warnings():  # the random init has full rank: registration truncates it, as intended
            warnings.simplefilter("ignore")
            symopt.low_rank(net, "2.weight", strength=1e-4, max_rank=min(64, min(shape[0], numel // shape[0])))
    elif kind == "low_rank(max_rank=16)":  # narrow enough on both models for the layer to skip its weight
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            symopt.low_rank(net, "2.weight", strength=1e-4, max_rank=16)
    elif kind == "subspace(16 rows)":
        A = torch.randn(16, numel, device=device)
        symopt.subspace(net, "2.weight", A, strength=1.0)
    elif kind == "subspace(16 per row)":  # the same 16 constraints on each output row / filter: a small basis
        A = torch.randn(16, numel // shape[0], device=device)
        symopt.subspace(net, "2.weight", A, strength=1.0, dim=tuple(range(1, len(shape))))
    elif kind == "fixed_zeros(50%)":
        symopt.fixed_zeros(net, "2.weight", torch.rand(shape, device=device) < 0.5, strength=1.0)
    elif kind == "tied":
        symopt.tie(net, ["0.weight", "2.weight"], strength=1.0)
    elif kind == "tied(auto)":  # λ from the running multiplier estimate, read to the host on one step in four
        symopt.tie(net, ["0.weight", "2.weight"])
    elif kind == "sparse(density=0.1)":
        symopt.sparse(net, "2.weight", density=0.1)
    elif kind == "sparse(density=0.1, total_steps)":  # inside the ramp for every measured step: the trimmed decay
        symopt.sparse(net, "2.weight", density=0.1, total_steps=10 ** 6, ramp=(0.0, 0.99))
    elif kind == "sparse(density=0.1, total_steps, mid-ramp)":
        # half-way through the ramp for every measured step: each reading also lands the entries ranked
        # beyond twice the count (`BudgetStrength.lands_early`), and the landed ones are held at 0
        handle = symopt.sparse(net, "2.weight", density=0.1, total_steps=10 ** 6, ramp=(0.0, 0.99))
        handle.constraint.policy.write("step", 0.5 * 0.99 * 10 ** 6)
    elif kind == "group_sparse(max_groups=half)":
        symopt.group_sparse(net, "2.weight", dim=0, max_groups=shape[0] // 2)
    elif kind == "low_rank(target_rank=16)":
        with warnings.catch_warnings():  # (where the default width is narrow, the random init is truncated to it)
            warnings.simplefilter("ignore")
            symopt.low_rank(net, "2.weight", target_rank=16)
    elif kind == "low_rank(target_rank=16, total_steps)":  # inside the ramp for every measured step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            symopt.low_rank(net, "2.weight", target_rank=16, total_steps=10 ** 6, ramp=(0.0, 0.99))
    elif kind == "low_rank(target_rank=16, max_rank=None)":  # full-width factors
        symopt.low_rank(net, "2.weight", target_rank=16, max_rank=None)
    elif kind == "low_rank([0, 2], max_rank=64, target_rank=32)":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            symopt.low_rank(net, ["0.weight", "2.weight"], max_rank=min(64, min(shape[0], numel // shape[0])),
                            target_rank=32)
    return net


def _storage_ratio(net: nn.Module, plain: nn.Module) -> float:
    """Bytes of the constrained layers' tensors ÷ bytes of the plain parameters they replace."""
    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    own, now = dict(plain.named_parameters()), dict(net.named_parameters())
    replaced = [name for name in own if name not in now]  # registered parameters move under .parametrizations
    added = [t for name, t in list(now.items()) + list(net.named_buffers()) if name not in own]
    return nbytes(added) / nbytes(own[name] for name in replaced)


def _stepper(net: nn.Module, x, y, decay: str):
    """(one training step, its optimizer): SGD, gradients set to None before each step (under
    ``symopt.regrow`` for the model that asks: take it off with ``opt.symopt_regrowth.remove()``)."""
    groups = symopt.param_groups(net, lr=1e-3) if decay == "param_groups" else net.parameters()
    opt = torch.optim.SGD(groups, lr=1e-3)
    opt.symopt_regrowth = symopt.regrow(net, opt) if getattr(net, "regrows", False) else None
    loss_fn = nn.CrossEntropyLoss()

    def objective():
        return loss_fn(net(x), y) + (symopt.penalty(net) if decay == "penalty" else 0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        objective().backward()
        opt.step()

    return step, opt


def _step_time(net: nn.Module, x, y, steps: int, device, decay: str) -> float:
    step, opt = _stepper(net, x, y, decay)
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    if opt.symopt_regrowth is not None:
        opt.symopt_regrowth.remove()
    return seconds


def _held_bytes(net: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters, buffers and optimizer state (each storage once)."""
    tensors = list(net.parameters()) + list(net.buffers())
    tensors += [t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: the profiler's C++ side logs its start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _transient_peak(step, device) -> int:
    """Highest bytes one ``step()`` allocates above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()  # + allocation, − free
        peak = max(peak, current)
    return peak


def _peak_bytes(net: nn.Module, x, y, device, decay: str) -> int:
    """Memory of one step: what the model holds at its start plus the step's own peak above that."""
    step, opt = _stepper(net, x, y, decay)
    for _ in range(2):  # optimizer state (if any) exists from the first step on
        step()
    opt.zero_grad(set_to_none=True)
    peak = _held_bytes(net, opt) + _transient_peak(step, device)
    if opt.symopt_regrowth is not None:
        opt.symopt_regrowth.remove()
    return peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=None, help="MLP width (512) / CNN channels (64)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (MLP 256, CNN 32)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--decay", choices=("param_groups", "penalty"), default="param_groups",
                        help="how the factors are decayed (see the module docstring)")
    parser.add_argument("--budgets", action="store_true",
                        help="also the budgeted kinds (λ adapted from a reading on one step in four: BUDGETS)")
    parser.add_argument("--regrow", action="store_true", help="also fixed-λ sparse and low-rank layers under symopt.regrow")
    parser.add_argument("--profile", metavar="ROW", default=None,
                        help="instead of the table: where one row's steps spend their time (torch.profiler's "
                             "operators by self time, CUDA kernels too on a GPU), against the plain model; "
                             "e.g. --profile 'sparse(density=0.1)'")
    args = parser.parse_args(argv)
    args.width = args.width or (512 if args.model == "mlp" else 64)
    args.batch = args.batch or (256 if args.model == "mlp" else 32)
    device = torch.device(args.device)
    machine = machine_name(device)
    if args.profile is not None:
        rows = KINDS[1:] + BUDGETS
        if args.profile not in rows:
            raise SystemExit(f"--profile: unknown row {args.profile!r}; choose from {sorted(rows)}")
        return _profile(args, device)
    print(f"training-step overhead — torch {torch.__version__}, {machine}, float32, "
          f"{args.model.upper()} width {args.width}, batch {args.batch}, decay by {args.decay}, median of "
          f"{args.repeats} interleaved rounds of {args.steps} steps (ratio: median of the rounds' paired ratios)\n")
    x, y = _batch(args, device)
    kinds = list(KINDS)
    if args.budgets:
        kinds += BUDGETS
    if args.regrow:
        kinds += ["sparse + regrow", "low_rank + regrow", "low_rank(max_rank=64) + regrow"]
    nets = {kind: _model(args.model, args.width, device, kind) for kind in kinds}
    times: dict = {kind: [] for kind in kinds}
    for _ in range(args.repeats):  # interleaved rounds, so drift in machine load hits every kind alike
        for kind in kinds:
            times[kind].append(_step_time(nets[kind], x, y, args.steps, device, args.decay))
    peaks = {kind: _peak_bytes(nets[kind], x, y, device, args.decay) / 2**20 for kind in kinds}
    # Each round's ratio to the plain step of the same round, then their median: this machine's speed
    # drifts by up to 2× between phases of a run, and a ratio of two medians taken over different
    # rounds carried that drift. Pairing removes the drift between rounds, not the noise within one:
    # paired ratios of one row still moved by 0.1-0.3 between runs of the same code (RESULTS.md).
    rows = [(kind or "plain", statistics.median(t) * 1e3,
             statistics.median(mine / plain for mine, plain in zip(t, times[None])),
             _storage_ratio(nets[kind], nets[None]) if kind else None, peaks[kind], peaks[kind] / peaks[None])
            for kind, t in times.items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  ms/step  ratio  storage  peak MiB  ratio")
    for name, ms, ratio, storage, peak, peak_ratio in rows:
        print(f"{name:<{width}}  {ms:7.3f}  {ratio:5.2f}  " + ("      -" if storage is None else f"{storage:6.2f}×")
              + f"  {peak:8.2f}  {peak_ratio:5.2f}")


def _batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every row trains on: inputs (MLP: batch × width; CNN: batch × channels × 32 × 32) and
    labels of 10 classes."""
    x = (torch.randn(args.batch, args.width, device=device) if args.model == "mlp"
         else torch.randn(args.batch, args.width, 32, 32, device=device))
    return x, torch.randint(0, 10, (args.batch,), device=device)


def _profile(args: argparse.Namespace, device: torch.device, steps: int = 40, top: int = 25) -> None:
    """Print where ``steps`` training steps of row ``args.profile`` and of the plain model spend their time:
    torch.profiler's operators (and CUDA kernels on a GPU) by self time, the ``top`` of each. A budget
    reads its atoms one step in four, so 40 steps hold 10 readings."""
    from torch.profiler import ProfilerActivity, profile

    x, y = _batch(args, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for kind in (None, args.profile):
        net = _model(args.model, args.width, device, kind)
        step, opt = _stepper(net, x, y, args.decay)
        for _ in range(8):  # past λ's first estimate and the warm-up readings
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        with _quiet_stderr(), profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        print(f"\n== {kind or 'plain'}: {steps} steps, {args.model.upper()} width {args.width}, batch {args.batch}, "
              f"on {machine_name(device)}, sorted by {sort}")
        print(prof.key_averages().table(sort_by=sort, row_limit=top))
        if opt.symopt_regrowth is not None:
            opt.symopt_regrowth.remove()


if __name__ == "__main__":
    main()
