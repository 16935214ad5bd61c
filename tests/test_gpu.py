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
    # (seeded: the test builds each kind twice, on CUDA and on CPU, and compares the two)
    "subspace": lambda: symopt.Subspace(torch.randn(3, 24, generator=torch.Generator().manual_seed(1)), 1.0),
    "subspace_rows": lambda: symopt.Subspace(torch.randn(2, 6, generator=torch.Generator().manual_seed(1)), 1.0, dim=1),
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


# --- Budgets on CUDA (issue 20): landing under autocast, a CNN with pooling that exports smaller, a rank
# budget that never runs a full SVD. The same tests run on CPU elsewhere (test_landing, test_budgets);
# here the device's kernels, autocast's CUDA dtypes and its GradScaler are the point.

@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["sparse", "nonnegative", "group_sparse", "low_rank", "low_rank_narrow"])
def test_a_budget_lands_on_cuda_under_autocast(kind, amp_dtype):
    """A float32 layer on CUDA trained by Adam under autocast (float16 with a GradScaler handed to
    symopt.bind, or bfloat16): the budget holds exactly from the landing to the end, and finalize needs
    no force."""
    from test_landing import KINDS as LANDING, STEPS, mixed_precision_run

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    model, handle, counts, _ = mixed_precision_run(kind, amp_dtype, scaler, device="cuda")
    budget = LANDING[kind][2]
    assert all(c == budget for c in counts[round(0.75 * STEPS):]), counts[round(0.75 * STEPS):][:10]
    assert "landed" in repr(handle.constraint)
    assert symopt.finalize(model).ok
    assert model.weight.device.type == "cuda" and model.weight.dtype == torch.float32


def test_a_channel_budget_on_a_cnn_with_pooling_lands_and_exports_smaller_on_cuda():
    """Conv → ReLU → MaxPool → Conv → global pool → Linear on CUDA, a budget of 6 of conv1's 16 output
    channels landing at 3/4 of 120 Adam steps under bfloat16 autocast: exactly 6 channels from the
    landing on, and the compressed export keeps 6 channels through the pooling layer and computes what
    the dense export computes."""
    torch.manual_seed(0)
    # (conv1 without a bias: a dead channel then emits exactly 0, which the zero-padded conv2 can drop)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).to(CUDA)
    handle = symopt.group_sparse(net, "0.weight", dim=0, max_groups=6, total_steps=120)
    x = torch.randn(64, 3, 16, 16, device=CUDA)
    y = torch.randint(0, 4, (64,), device=CUDA)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=3e-3), lr=3e-3)
    alive = []
    for _ in range(120):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        alive.append(int((net[0].weight.detach().flatten(1).abs().sum(1) != 0).sum()))
    assert all(a == 6 for a in alive[90:]) and "landed" in repr(handle.constraint)
    net.eval()
    dense, small = symopt.export(net), symopt.export(net, mode="compressed")
    assert small[0].out_channels == 6 and small[3].in_channels == 6
    assert next(small.parameters()).device.type == "cuda"
    with torch.no_grad():
        assert torch.allclose(small(x), dense(x), atol=1e-5, rtol=1e-5)


def test_a_rank_budget_on_a_large_cuda_layer_runs_no_full_svd_and_lands():
    """target_rank=16 on a 512×512 CUDA layer with total_steps=200: once the schedule's count is below a
    quarter of the width (by step 72) the budget's readings are tracked range finds on the device, so
    from step 100 on the only full SVDs are the landing's (step 150: the spectrum, then the balanced
    factors); the rank is 16 from the landing on, and finalize needs no force."""
    torch.manual_seed(0)
    X = torch.randn(1024, 512, device=CUDA)
    Y = X @ (torch.randn(512, 32, device=CUDA) @ torch.randn(32, 512, device=CUDA)) / 512 ** 0.5
    model = nn.Linear(512, 512, bias=False).to(CUDA)
    handle = symopt.low_rank(model, "weight", target_rank=16, total_steps=200)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-3), lr=1e-3)
    full_svds, steps = [], [0]
    real_svd, real_svdvals = torch.linalg.svd, torch.linalg.svdvals

    def watch(real):
        def call(A, *args, **kwargs):
            if min(A.shape[-2:]) >= 512:
                full_svds.append(steps[0])
            return real(A, *args, **kwargs)
        return call

    def step():
        opt.zero_grad()
        (0.5 * (model(X) - Y).square().mean()).backward()
        opt.step()
        steps[0] += 1

    for _ in range(100):
        step()
    torch.linalg.svd, torch.linalg.svdvals = watch(real_svd), watch(real_svdvals)
    try:
        for _ in range(100):
            step()
    finally:
        torch.linalg.svd, torch.linalg.svdvals = real_svd, real_svdvals
    assert full_svds == [150, 150]  # the landing's two, in the forward pass after 150 steps
    assert "landed" in repr(handle.constraint)
    sigma = torch.linalg.svdvals(model.weight.detach())
    assert int((sigma > 6 * torch.finfo(torch.float32).eps * sigma.max()).sum()) == 16
    assert symopt.finalize(model).ok


def test_auto_strength_steps_between_its_readings_do_not_synchronise():
    """On CUDA an ``"auto"`` strength folds each step's dual norm into its estimate on the device and
    reads λ to the host on one step in four: the three steps between two readings (forward, backward,
    SGD step) make no host synchronisation at all (torch's sync debug mode raises on one)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)).to(CUDA)
    handle = symopt.tie(net, ["0.weight", "2.weight"])
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2, momentum=0.9)
    x, y = torch.randn(32, 16, device=CUDA), torch.randn(32, 16, device=CUDA)

    def step():
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()

    for _ in range(8):  # λ known; step 8 read it (8 is a multiple of READ_EVERY = 4)
        step()
    torch.cuda.synchronize()
    lam = handle.strength
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert handle.strength == lam > 0


def test_a_sparse_lasso_whose_models_go_by_products_matches_the_cpus_on_cuda():
    """A CSR design (kept CSR on the GPU) whose answer holds ~1500 columns: its ℓ1 models go by the curvature's
    products (`symopt.l1_products`) on the device, to the CPU solve's objective."""
    import scipy.sparse

    generator = np.random.default_rng(2)
    rows, columns = generator.integers(0, 3000, 40_000), generator.integers(0, 10000, 40_000)
    X = scipy.sparse.coo_matrix((generator.standard_normal(40_000), (rows, columns)), shape=(3000, 10000)).tocsr()
    truth = np.zeros(10000)
    truth[generator.choice(10000, 40, replace=False)] = generator.standard_normal(40)
    problem = symopt.problems.lasso(X, X @ truth + 0.1 * generator.standard_normal(3000), 1.0)
    problem = problem.at_strength(0.01 * problem.strength_max())
    cpu, gpu = symopt.solve(problem), symopt.solve(problem, device="cuda")
    assert cpu.status == gpu.status == "optimal" and int((gpu.x != 0).sum()) > 1024
    assert abs(gpu.objective - cpu.objective) <= 1e-9 * abs(cpu.objective)


def test_expert_neurons_of_a_mixtral_land_and_export_for_grouped_products_on_cuda():
    """transformers 5's Mixtral on CUDA (its experts through grouped matrix products): an equal-experts budget of 8
    neurons an expert lands in each layer, and export narrows the fused expert tensors to exactly 8 (rows of 16 bytes
    and more, which grouped_mm takes) with the trained model's logits."""
    transformers = pytest.importorskip("transformers", minversion="5")
    import warnings

    from symopt._layers import expert_layout

    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=40, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=16)
    model = transformers.MixtralForCausalLM(config).to(CUDA)
    for names in symopt.feed_forward_units(model):
        symopt.group_sparse(model, names, max_groups=4 * 8, total_steps=30, equal_experts=True)
    ids = torch.randint(0, 40, (8, 9), device=CUDA)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    for _ in range(35):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", symopt.ExportWarning)
        small = symopt.export(model, mode="compressed", example_input=(ids,))
    assert [expert_layout(layer.mlp.experts).width for layer in small.model.layers] == [8, 8]
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, want, atol=1e-4, rtol=0)
