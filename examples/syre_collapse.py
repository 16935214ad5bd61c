"""Weight decay collapses models onto mirror planes as it grows; syre does not (claim (b)).

    python examples/syre_collapse.py [--plot docs/figures/syre_collapse.png]

Two models, each trained with coupled weight decay λ toward zero ("decay") and with the same λ toward
syre's random anchors ("syre"), for growing λ:

* a two-layer *linear* net ``W₂W₁`` fitting a full-rank map: its rank (σ > 1e-6·σ_max) and
  effective rank — decay removes singular directions exactly (the rotation symmetry's mirror planes);
* a ReLU MLP on a regression task: dead units and groups of identical units found by
  :func:`symopt.diagnose` on the inputs.

Prints one table per model; ``--plot`` draws rank and dead units against λ.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import symopt


def _train(model, loss_fn, use_syre: bool, strength: float, steps: int, lr: float):
    if use_syre:
        symopt.syre(model, strength=strength, seed=1)
        opt = torch.optim.Adam(symopt.param_groups(model), lr=lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=strength)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        opt.step()
    return float(loss.detach())


def linear_net(strength: float, use_syre: bool, steps: int):
    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    M = Q1 @ torch.diag(torch.logspace(0.5, -1.5, 8, dtype=torch.float64)) @ Q2.T  # σ from 3.2 to 0.03
    X = torch.randn(256, 8, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)).double()
    loss = _train(net, lambda m: 0.5 * (m(X) - X @ M.T).square().sum(1).mean(), use_syre, strength, steps, 1e-2)
    W = (net[1].weight @ net[0].weight).detach()
    s = torch.linalg.svdvals(W)
    return loss, int((s > 1e-6 * s[0]).sum()), symopt.effective_rank(W)


def relu_mlp(strength: float, use_syre: bool, steps: int):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 6, generator=g, dtype=torch.float64)
    y = torch.sin(X[:, :1] * 2) + X[:, 1:2] * X[:, 2:3]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1)).double()
    loss = _train(net, lambda m: (m(X) - y).square().mean(), use_syre, strength, steps, 1e-2)
    report = symopt.diagnose(net, X)["0"]
    return loss, len(report.dead), sum(len(group) - 1 for group in report.identical)


def main(strengths=(1e-2, 1e-1, 3e-1, 1.0), steps: int = 3000, plot: str | None = None) -> dict:
    experiments = (  # key, run, title, names of the two measures after the loss
        ("linear", linear_net, "two-layer linear net (8×8)", ("rank", "eff.rank")),
        ("mlp", relu_mlp, "ReLU MLP 6→32→1 (units: dead / duplicates)", ("dead", "dup.")),
    )
    out = {}
    for key, run, title, (first, second) in experiments:
        print(f"\n{title}, {steps} Adam steps")
        print(f"{'λ':>7}  {'decay: loss':>11}  {first:>4}  {second:>8}   {'syre: loss':>10}  {first:>4}  {second:>8}")
        out[key] = {}
        for lam in strengths:
            plain, syre = run(lam, False, steps), run(lam, True, steps)
            out[key][lam] = (plain, syre)
            print(f"{lam:7.0e}  {plain[0]:11.3e}  {plain[1]:4d}  {plain[2]:8.4g}   "
                  f"{syre[0]:10.3e}  {syre[1]:4d}  {syre[2]:8.4g}")
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
        lams = list(strengths)
        for i, label in ((0, "decay"), (1, "syre")):
            left.semilogx(lams, [out["linear"][lam][i][1] for lam in lams], "o-", label=label)
            right.semilogx(lams, [out["mlp"][lam][i][1] for lam in lams], "o-", label=label)
        left.set(xlabel="λ", ylabel="rank of W₂W₁", title="linear net")
        right.set(xlabel="λ", ylabel="dead units (of 32)", title="ReLU MLP")
        left.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=240)  # 2× for page-width display
        print(f"wrote {plot}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--plot", default=None)
    main(**vars(parser.parse_args()))
