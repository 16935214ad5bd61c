"""CUDA: the same maths on the GPU (skipped without CUDA; run with `pytest -m gpu`)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

import symopt
from helpers import least_squares, ls_loss, train

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")

KINDS = {
    "sparse": lambda: symopt.Sparse(1e-2),
    "group": lambda: symopt.GroupSparse(1, 1e-2),
    "low_rank": lambda: symopt.LowRank(1e-2),
    "subspace": lambda: symopt.Subspace(torch.randn(3, 24), 1.0),
    "subspace_rows": lambda: symopt.Subspace(torch.randn(2, 6), 1.0, dim=1),
    "fixed_zeros": lambda: symopt.FixedZeros(torch.eye(4, 6, dtype=torch.bool), 1.0),
}


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", KINDS)
def test_register_on_cuda_keeps_value_and_trains(kind, dtype, atol):
    lin = nn.Linear(6, 4).to(CUDA, dtype)
    w0 = lin.weight.detach().clone()
    symopt.constrain(lin, "weight", KINDS[kind]())
    assert lin.weight.device.type == "cuda"
    assert float((lin.weight.detach() - w0).abs().max()) <= atol
    opt = torch.optim.SGD(symopt.param_groups(lin, lr=0.1), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        lin(torch.randn(8, 6, device=CUDA, dtype=dtype)).square().mean().backward()
        opt.step()
    assert symopt.report(lin)[0].violation >= 0
    cpu = nn.Linear(6, 4).to(dtype)
    symopt.constrain(cpu, "weight", KINDS[kind]())
    cpu.load_state_dict({k: v.cpu() for k, v in lin.state_dict().items()})
    assert torch.allclose(cpu.weight, lin.weight.cpu(), atol=atol)
    symopt.finalize(lin, tol=1e-6, force=True)
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.device.type == "cuda"


def test_constrain_on_cpu_then_move_to_cuda():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 4)).double()
    symopt.subspace(model, "0.weight", torch.randn(3, 24))
    symopt.tie(model, ["0.bias", "1.bias"])
    model.to(CUDA)
    out = model(torch.randn(2, 6, device=CUDA, dtype=torch.float64))
    (out.sum() + symopt.penalty(model)).backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.parameters())


def test_lasso_on_cuda_matches_sklearn():
    X, y = least_squares(n=60, d=15)
    lam = 0.1
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    model = nn.Module()
    model.theta = nn.Parameter(torch.randn(15, dtype=torch.float64, device=CUDA))
    symopt.sparse(model, "theta", strength=lam)
    Xc, yc = X.to(CUDA), y.to(CUDA)
    train(model, lambda m: ls_loss(Xc, yc)(m.theta), steps=8000, lr=0.4)
    assert np.abs(model.theta.detach().cpu().numpy() - ref).max() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solve_on_cuda_matches_cpu(dtype):
    from symopt.comparison import builtin_problems
    from symopt import solve

    for problem in builtin_problems(quick=True):
        cpu = solve(problem)
        gpu = solve(problem, device="cuda", dtype=dtype, tol=1e-6 if dtype == torch.float64 else 1e-4)
        assert gpu.device.startswith("cuda") and gpu.status == "optimal", problem.name
        rel = 1e-6 if dtype == torch.float64 else 1e-4
        assert abs(gpu.objective - cpu.objective) <= rel * max(1.0, abs(cpu.objective)), problem.name


def test_compare_cli_on_cuda(tmp_path):
    from symopt.cli import main

    assert main(["compare", "--quick", "--device", "cuda", "--solvers", "dcs,projected", "--out", str(tmp_path)]) == 0
