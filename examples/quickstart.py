"""The README quickstart: sparse linear regression with ``symopt.sparse`` on an ``nn.Linear``, trained
by plain SGD with the decay as parameter groups, then snapped exactly with ``symopt.finalize``.

    python examples/quickstart.py

Prints the report (density, violation, factor balance) and the recovered support.
"""

import torch

import symopt


def main(steps: int = 3000) -> list[int]:
    torch.manual_seed(0)
    X = torch.randn(100, 20, dtype=torch.float64)
    y = X[:, :3] @ torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(100, dtype=torch.float64)

    model = torch.nn.Linear(20, 1, bias=False).double()
    symopt.sparse(model, "weight", strength=0.05)        # w = u ⊙ v: decay gives 0.05·‖w‖₁
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.3), lr=0.3)   # factors get weight_decay = λ
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (model(X).squeeze(1) - y).square().mean()).backward()
        opt.step()

    print(symopt.report(model))
    certificate = symopt.finalize(model, tol=1e-6)        # snap exact zeros, back to a plain Linear
    print(certificate)
    support = model.weight.detach()[0].nonzero().squeeze(1).tolist()
    print("non-zero weights:", support)
    return support


if __name__ == "__main__":
    main()
