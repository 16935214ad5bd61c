"""Noether charges: conserved by gradient flow, decaying as e^{−2λt} under weight decay (claim (c)).

    python examples/noether_charges.py [--plot docs/figures/noether.png]

The net ``Linear(4,6) → ReLU → Linear(6,5) → Linear(5,2)`` has a rescaling symmetry per ReLU unit
(charge ``‖w_in‖² − ‖w_out‖²``) and a GL(5) symmetry between the two adjacent linear layers (charge
``W_lW_lᵀ − W_{l+1}ᵀW_{l+1}``). Full-batch gradient descent with a small step conserves both (up to
the O(lr²) discretisation); with coupled weight decay λ they shrink as ``e^{−2λt}``, ``t = lr × steps``.
Prints the drift without decay and the fitted decay rate against 2λ.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import symopt


def run(decay: float, steps: int, lr: float):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(64, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Linear(5, 2)).double()
    opt = torch.optim.SGD(net.parameters(), lr=lr, weight_decay=decay)
    tracker = symopt.ConservationTracker(net)
    for step in range(steps + 1):
        if step % max(steps // 50, 1) == 0:
            tracker.record(step * lr)  # time t = lr × steps
        opt.zero_grad()
        (0.5 * (net(X) - Y).square().sum(1).mean()).backward()
        opt.step()
    return tracker


def main(steps: int = 4000, lr: float = 1e-3, decay: float = 0.1, plot: str | None = None) -> dict:
    free, decayed = run(0.0, steps, lr), run(decay, steps, lr)
    print(f"gradient descent, lr={lr}, {steps} steps (t = {steps * lr:g})")
    print(f"{'charge':>14}  {'drift, no decay':>15}  {'fitted rate, λ=' + format(decay, 'g'):>18}  {'2λ':>6}")
    out = {}
    for key in free.drift():
        drift, rate = free.drift()[key], decayed.decay_rate()[key]
        out[key] = (drift, rate)
        print(f"{key:>14}  {drift:15.2e}  {rate:18.4f}  {2 * decay:6.3f}")
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for tracker, label in ((free, "no decay"), (decayed, f"decay λ={decay:g}")):
            for key in tracker.history[0]:
                norms = [float(h[key].norm()) for h in tracker.history]
                ax.semilogy(tracker.steps, norms, label=f"{key}, {label}")
        t = torch.tensor(decayed.steps)
        key = next(iter(decayed.history[0]))
        ax.semilogy(t, float(decayed.history[0][key].norm()) * torch.exp(-2 * decay * t), "k:", label="e^{-2λt}")
        ax.set(xlabel="t = lr × steps", ylabel="‖charge‖")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot, dpi=240)  # 2× for page-width display
        print(f"wrote {plot}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--plot", default=None)
    main(**vars(parser.parse_args()))
