"""syre separates two tanh units that plain weight decay keeps identical (seed claim (a)).

    python examples/syre_identical_units.py [--plot docs/figures/syre_identical.png]

A network ``f(x) = Σ_j a_j tanh(w_j x + b_j)`` with two hidden units, both initialised to the same
weights, fits a target that needs two different units. Swapping the units is a symmetry of the loss,
and the identical start lies on its mirror plane: gradient descent with plain weight decay never
leaves it (the units get identical gradients), so the net acts as one unit. With ``symopt.syre`` the
decay pulls toward random anchors that lie on no mirror plane, the units separate and the loss drops
by orders of magnitude. Prints the final loss and the distance between the units for both runs.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import symopt


class TwoUnits(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(1, 2)
        self.out = nn.Linear(2, 1, bias=False)
        with torch.no_grad():  # both units identical: on the permutation mirror plane
            self.hidden.weight.fill_(0.5)
            self.hidden.bias.fill_(0.0)
            self.out.weight.fill_(0.5)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def run(use_syre: bool, steps: int, strength: float = 1e-3, lr: float = 0.05):
    x = torch.linspace(-3, 3, 200, dtype=torch.float64).unsqueeze(1)
    y = torch.tanh(3 * x - 2) - torch.tanh(x + 1)  # needs two different units
    model = TwoUnits().double()
    if use_syre:
        symopt.syre(model, strength=strength, seed=0)
        opt = torch.optim.Adam(symopt.param_groups(model), lr=lr)  # coupled decay toward the anchors
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=strength)  # plain (coupled) decay
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    units = torch.cat([model.hidden.weight, model.hidden.bias.unsqueeze(1), model.out.weight.T], 1).detach()
    return losses, float((units[0] - units[1]).norm())


def main(steps: int = 4000, plot: str | None = None) -> dict:
    results = {name: run(name == "syre", steps) for name in ("weight decay", "syre")}
    print(f"{'decay':>13}  {'final loss':>11}  {'‖unit1 − unit2‖':>16}")
    for name, (losses, distance) in results.items():
        print(f"{name:>13}  {losses[-1]:11.3e}  {distance:16.3e}")
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, (losses, _) in results.items():
            ax.semilogy(losses, label=name)
        ax.set(xlabel="step", ylabel="training loss", title="two tanh units, identical start")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=240)  # 2× for page-width display
        print(f"wrote {plot}")
    return {name: (losses[-1], distance) for name, (losses, distance) in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--plot", default=None)
    main(**vars(parser.parse_args()))
