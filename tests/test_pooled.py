"""One budget over several tensors (``symopt.sparse(model, [names], max_nonzero=k)``): the atoms of all
the tensors compete on one λ, so the budget lands on the Lasso path of the *concatenated* problem —
checked against scikit-learn's Lasso on the stacked design at the λ found — and finalize keeps exactly
k entries over all of them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

import symopt
from helpers import lbfgs_fit, cross_entropy_training

DT = torch.float64


class TwoBlocks(nn.Module):
    """ŷ = X₁w₁ + X₂w₂: a Lasso on the concatenated design, its coefficients held by two tensors."""

    def __init__(self, d1: int, d2: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.full((d1,), 0.1, dtype=DT))
        self.w2 = nn.Parameter(torch.full((d2,), 0.1, dtype=DT))

    def forward(self, X1, X2):
        return X1 @ self.w1 + X2 @ self.w2


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(120, 30, generator=g, dtype=DT)
    truth = torch.zeros(30, dtype=DT)
    truth[[1, 4, 20, 22, 27, 28]] = torch.tensor([2.0, -1.5, 1.0, 3.0, -2.0, 0.8], dtype=DT)
    return X[:, :10], X[:, 10:], X @ truth + 0.3 * torch.randn(120, generator=g, dtype=DT)


def _fit(model, X1, X2, y, steps=150, tolerance_change=1e-9):
    lbfgs_fit(model, lambda m: 0.5 * (m(X1, X2) - y).square().mean(), steps, tolerance_change)


def test_a_global_budget_lands_on_the_lasso_path_of_the_stacked_problem():
    X1, X2, y = _data()
    model = TwoBlocks(10, 20)
    handle = symopt.sparse(model, ["w1", "w2"], max_nonzero=5)
    _fit(model, X1, X2, y, steps=250)  # λ settles after ~200 steps (0.7862 here, to 6 digits)
    lam = handle.strength
    w = torch.cat([model.w1.detach(), model.w2.detach()]).numpy()
    reference = Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=10**6)
    coef = reference.fit(torch.cat([X1, X2], 1).numpy(), y.numpy()).coef_
    assert int((np.abs(coef) > 1e-10).sum()) == 5                 # λ lies on the path's 5-atom interval
    assert set(np.flatnonzero(np.abs(w) > 1e-6)) == set(np.flatnonzero(coef))
    assert np.abs(w - coef).max() <= 1e-4  # the factored zeros near λ's boundary converge slowly (1e-5 here)
    per_tensor = [int((model.w1.abs() > 1e-6).sum()), int((model.w2.abs() > 1e-6).sum())]
    assert sum(per_tensor) == 5 and per_tensor[0] != per_tensor[1]  # allocated by the loss, not evenly
    certificate = symopt.finalize(model, tol=1e-6)                   # no force needed
    assert certificate.ok
    assert int((model.w1 != 0).sum() + (model.w2 != 0).sum()) == 5


def test_density_counts_every_entry_of_every_tensor():
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 30))
    handle = symopt.sparse(net, ["0.weight", "2.weight"], density=0.1)
    assert handle.constraint.budget == 40  # 10% of 100 + 300
    assert "budget 40" in handle.structure(handle.values())


def test_a_pool_saves_loads_and_deep_copies_its_lambda():
    X1, X2, y = _data()
    model = TwoBlocks(10, 20)
    handle = symopt.sparse(model, ["w1", "w2"], max_nonzero=5)
    _fit(model, X1, X2, y, steps=5)
    fresh = TwoBlocks(10, 20)
    fresh_handle = symopt.sparse(fresh, ["w1", "w2"], max_nonzero=5)
    fresh.load_state_dict(model.state_dict())
    assert fresh_handle.strength == handle.strength > 0
    assert torch.equal(fresh.w1, model.w1) and torch.equal(fresh.w2, model.w2)
    clone = copy.deepcopy(model)
    (clone_handle,) = symopt.list_constraints(clone)
    assert clone_handle.strength == handle.strength and clone_handle.constraint is not handle.constraint


def test_nonnegative_pools_too():
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    handle = symopt.nonnegative(net, ["0.weight", "2.weight"], max_nonzero=12)
    assert handle.kind == "nonnegative" and handle.constraint.budget == 12


@pytest.mark.parametrize("call,error,match", [
    (lambda m: symopt.sparse(m, ["0.weight", "2.weight"], strength=0.1), ValueError, "shares one budget"),
    (lambda m: symopt.sparse(m, ["0.weight", "2.weight"], max_nonzero=10_000), ValueError, "does not bind"),
    (lambda m: symopt.sparse(m, ["0.weight"], max_nonzero=3), ValueError, "at least two names"),
    (lambda m: symopt.sparse(m, ["0.weight", "2.weight"], max_nonzero=3, density=0.1), ValueError, "not both"),
    (lambda m: symopt.sparse(m, ["0.weight", "nope"], max_nonzero=3), ValueError, "no parameter"),
    (lambda m: symopt.sparse(m, ["0.weight", "0.weight"], max_nonzero=3), ValueError, "twice"),
    (lambda m: symopt.sparse(m, ["0.weight", "2.weight"], max_nonzero=1), ValueError, "below the 2 tensors"),
])
def test_bad_pools_change_nothing(call, error, match):
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        call(net)
    assert symopt.list_constraints(net) == []
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_a_pool_over_two_dtypes_is_refused():
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    net[2].double()
    with pytest.raises(ValueError, match="one dtype and device"):
        symopt.sparse(net, ["0.weight", "2.weight"], max_nonzero=3)
    assert symopt.list_constraints(net) == []


def test_a_global_budget_on_diabetes_matches_scikit_learn():
    """Real data: diabetes' 10 standardised features held by two tensors (4 + 6); a global budget of 5
    lands on scikit-learn's Lasso of the whole design at the λ found (same support, 1e-4)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X, y = torch.tensor((X - X.mean(0)) / X.std(0)), torch.tensor((y - y.mean()) / y.std())
    model = TwoBlocks(4, 6)
    handle = symopt.sparse(model, ["w1", "w2"], max_nonzero=5)
    # tolerance_change=0: torch's default (1e-9) ends each step after one iteration once the loss moves
    # less than that, which an atom on its way out of the support does here. The point then stops, and
    # the budget's λ rests where that stale point predicts 5 atoms with 6 still alive (seen: λ 0.0543,
    # below the path's 5-atom interval 0.0548–0.0803)
    _fit(model, X[:, :4], X[:, 4:], y, steps=250, tolerance_change=0.0)
    w = torch.cat([model.w1.detach(), model.w2.detach()]).numpy()
    coef = Lasso(alpha=handle.strength, fit_intercept=False, tol=1e-12, max_iter=10**6).fit(X.numpy(), y.numpy()).coef_
    assert set(np.flatnonzero(np.abs(w) > 1e-6)) == set(np.flatnonzero(coef)) and len(np.flatnonzero(coef)) == 5
    assert np.abs(w - coef).max() <= 1e-4
    assert symopt.finalize(model, tol=1e-6).ok


# -- one rank budget over several matrices: symopt.low_rank(model, [names], target_rank=r) (issue 20) ----

class TwoMatrices(nn.Module):
    """Y ≈ X₁W₁ᵀ + X₂W₂ᵀ: two linear blocks, each with its own nuclear norm."""

    def __init__(self, d1: int, d2: int, q: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(0.1 * torch.randn(q, d1, generator=g, dtype=DT))
        self.w2 = nn.Parameter(0.1 * torch.randn(q, d2, generator=g, dtype=DT))

    def forward(self, X1, X2):
        return X1 @ self.w1.T + X2 @ self.w2.T


def test_a_global_rank_budget_lands_on_the_path_of_the_summed_nuclear_norms():
    """Block 1 carries a rank-3 signal, block 2 a rank-1 one; a global budget of 4 ranks is the problem
    min ½‖Y − X₁W₁ᵀ − X₂W₂ᵀ‖²/n + λ(‖W₁‖_* + ‖W₂‖_*) at the λ the budget found: checked against cvxpy
    there (ranks 3 + 1, coefficients to 1e-4). The budget is shared by the loss, not evenly."""
    cp = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(7)
    n, d1, d2, q = 200, 8, 6, 5
    X1, X2 = torch.randn(n, d1, generator=g, dtype=DT), torch.randn(n, d2, generator=g, dtype=DT)
    W1 = torch.randn(q, 3, generator=g, dtype=DT) @ torch.randn(3, d1, generator=g, dtype=DT)
    W2 = torch.randn(q, 1, generator=g, dtype=DT) @ torch.randn(1, d2, generator=g, dtype=DT)
    Y = X1 @ W1.T + X2 @ W2.T + 0.3 * torch.randn(n, q, generator=g, dtype=DT)
    model = TwoMatrices(d1, d2, q)
    handle = symopt.low_rank(model, ["w1", "w2"], target_rank=4)
    lbfgs_fit(model, lambda m: 0.5 * (m(X1, X2) - Y).square().sum(1).mean(), 100)  # 80 are enough here
    lam = handle.strength
    A, B = cp.Variable((q, d1)), cp.Variable((q, d2))
    residual = X1.numpy() @ A.T + X2.numpy() @ B.T - Y.numpy()
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(residual) / n + lam * (cp.normNuc(A) + cp.normNuc(B)))).solve()
    ranks = [int((torch.linalg.svdvals(torch.tensor(M.value)) > 1e-5).sum()) for M in (A, B)]
    assert ranks == [3, 1]
    assert [int((torch.linalg.svdvals(w.detach()) > 1e-5).sum()) for w in (model.w1, model.w2)] == ranks
    assert torch.allclose(model.w1.detach(), torch.tensor(A.value), atol=1e-4)
    assert torch.allclose(model.w2.detach(), torch.tensor(B.value), atol=1e-4)
    assert "per tensor 3, 1, budget 4" in handle.constraint.structure(handle.values(), 1e-6)
    assert symopt.finalize(model, tol=1e-6).ok


def _hidden_ranks(net) -> list[int]:
    return [int(torch.linalg.matrix_rank(net[i].weight.detach())) for i in (0, 2)]


def _mlp_task():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))
    X = torch.randn(256, 20)
    y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()
    return net, X, y


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum_clipped"])
def test_a_global_rank_budget_lands_exactly_and_export_factorises_each_layer(optimizer):
    """float32 MLP, target_rank=10 over the 32×20 and 24×32 hidden weights with total_steps: from the
    landing on the two ranks sum to exactly 10 (each ≥ 1), finalize with defaults succeeds (the float32
    product's rounding is not rank), and the compressed export splits each layer at its own rank with
    the same outputs."""
    net, X, y = _mlp_task()
    steps = 200
    symopt.low_rank(net, ["0.weight", "2.weight"], target_rank=10, total_steps=steps)
    ranks = cross_entropy_training(net, X, y, steps, optimizer, _hidden_ranks)
    land = round(0.75 * steps)
    assert sum(ranks[land - 2]) > 10 and all(sum(r) == 10 and min(r) >= 1 for r in ranks[land:])
    r0, r2 = ranks[-1]
    symopt.finalize(copy.deepcopy(net))  # default arguments, no force
    net.eval()
    reference = net(X[:8]).detach()
    small = symopt.export(net, mode="compressed", example_input=X[:4])
    assert (small[0][0].out_features, small[2][0].out_features) == (r0, r2)
    assert torch.allclose(small(X[:8]), reference, rtol=1e-4, atol=1e-5)  # float32 factors: relative rounding


@pytest.mark.parametrize("land_on_the_way", [True, False])
def test_a_global_entry_budget_never_empties_a_layer(land_on_the_way):
    """Issue 20's "never kill a layer" for a global density budget ranked on raw entries (as
    ``global_unstructured`` ranks them): a ReLU network whose first layer is scaled by 1e-3 and second by
    1e3 (the same function) had its first and last layers emptied at density 0.01 (0 of 1024 and 0 of 256
    non-zeros: a constant network). Each layer now keeps its largest entry on the ramp's way and at the
    landing, the count is still exactly the budget, and finalize needs no force."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        net[0].weight.mul_(1e-3), net[0].bias.mul_(1e-3), net[2].weight.mul_(1e3)
    handle = symopt.sparse(net, ["0.weight", "2.weight", "4.weight"], density=0.01, total_steps=300,
                           land_on_the_way=land_on_the_way)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-3), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 16, generator=g), torch.randint(0, 4, (128,), generator=g)
    alive = []
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        alive.append([int((net[i].weight != 0).sum()) for i in (0, 2, 4)])
    assert handle.constraint.policy.has_landed()
    assert all(min(counts) >= 1 for counts in alive), [c for c in alive if min(c) == 0][:3]
    assert sum(alive[-1]) == handle.constraint.budget == round(0.01 * (1024 + 4096 + 256))
    assert symopt.finalize(net).ok


def test_each_matrix_of_a_global_rank_budget_keeps_rank_one():
    """A matrix whose singular values are all below the other's keeps its largest one (rank 0 would cut
    the network there) in place of the other's smallest kept one: still exactly the budget."""
    model = TwoMatrices(8, 6, 5)
    with torch.no_grad():
        model.w2.mul_(1e-4)
    handle = symopt.low_rank(model, ["w1", "w2"], target_rank=3)
    snapped = handle.constraint.snap(handle.values())
    assert [int(torch.linalg.matrix_rank(s)) for s in snapped] == [2, 1]
    assert handle.constraint.violation(snapped) == 0.0


@pytest.mark.parametrize("call,error,match", [
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], strength=0.1), ValueError, "give target_rank="),
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], target_rank=1), ValueError, "below the 2 tensors"),
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], target_rank=12), ValueError, "does not bind"),
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], max_rank=3, target_rank=6), ValueError,
     "the factor widths allow only 6"),
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], target_rank=4, layout="batch"), ValueError,
     r"not \['layout'\]"),
    (lambda m: symopt.low_rank(m, ["0.weight", "0.bias"], target_rank=4), ValueError, "needs a matrix"),
    (lambda m: symopt.low_rank(m, ["0.weight", "2.weight"], target_rank=4, total_steps=0), ValueError,
     "total_steps must be an int >= 1"),
])
def test_bad_rank_pools_change_nothing(call, error, match):
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        call(net)
    assert symopt.list_constraints(net) == []
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_a_global_rank_ramp_ranks_singular_values_relative_to_their_matrix():
    """During the ramp and at the landing a pool of matrices compares singular values over each matrix's
    Frobenius norm (energy fractions): the choice is unchanged when a layer is scaled (the ReLU
    network's own rescaling symmetry), and a layer 100× smaller than the other (same function) is not
    cut to rank 1."""
    net, X, y = _mlp_task()
    with torch.no_grad():
        net[0].weight.mul_(1e-2)
        net[0].bias.mul_(1e-2)
        net[2].weight.mul_(1e2)
    steps = 200
    handle = symopt.low_rank(net, ["0.weight", "2.weight"], target_rank=10, total_steps=steps)
    pool = handle.constraint
    values = [v.detach() for v in handle.values()]
    relative = [pool.atoms([v]) / c for v, c in zip(values, pool.scales(values))]
    scaled = [values[0] * 37.0, values[1]]
    again = [pool.atoms([v]) / c for v, c in zip(scaled, pool.scales(scaled))]
    assert all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(relative, again))
    cross_entropy_training(net, X, y, steps)
    ranks = _hidden_ranks(net)
    assert sum(ranks) == 10 and min(ranks) >= 3, ranks
