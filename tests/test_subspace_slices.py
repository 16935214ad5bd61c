"""``Subspace(A, dim=...)``: ``A`` on every slice over ``dim`` is the dense constraint ``(I ⊗ A)·vec(θ) = 0``
(up to the axis order), without forming it; checked against that dense form, cvxpy and a training run."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symopt
from helpers import DT


def block_matrix(A: torch.Tensor, shape: tuple, dim: tuple) -> torch.Tensor:
    """The dense ``(slices·m, numel)`` matrix that applies ``A`` to each slice, built from index sets
    (an independent construction: no permute, no reshape of values)."""
    ndim = len(shape)
    axes = [a % ndim for a in dim]
    rest = [d for d in range(ndim) if d not in axes]
    strides = torch.ones(ndim, dtype=torch.long)
    for d in range(ndim - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    rows = []
    for s in np.ndindex(*[shape[d] for d in rest]):
        base = sum(int(i) * int(strides[d]) for i, d in zip(s, rest))
        columns = [base + sum(int(i) * int(strides[d]) for i, d in zip(j, axes))
                   for j in np.ndindex(*[shape[d] for d in axes])]
        block = torch.zeros(A.shape[0], int(np.prod(shape)), dtype=A.dtype)
        block[:, columns] = A
        rows.append(block)
    return torch.cat(rows)


CASES = [((3, 5), 1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), (1, 2)), ((2, 3, 4), (2, 0)), ((4, 2, 3, 3), (1, 2, 3))]


@pytest.mark.parametrize("shape,dim", CASES)
def test_slices_act_like_the_dense_block_constraint(shape, dim):
    g = torch.Generator().manual_seed(0)
    axes = (dim,) if isinstance(dim, int) else dim
    size = int(np.prod([shape[a] for a in axes]))
    A = torch.randn(2, size, generator=g, dtype=DT)
    sliced = symopt.Subspace(A, 1.0, dim=dim)
    dense = symopt.Subspace(block_matrix(A, shape, axes), 1.0)
    theta = torch.randn(shape, generator=g, dtype=DT)
    full = block_matrix(A, shape, axes)
    # the same set: the same orthogonal projection (basis-free), and its image satisfies (I ⊗ A)θ = 0
    assert torch.allclose(sliced.project(theta), dense.project(theta), atol=1e-12)
    assert float((full @ sliced.project(theta).reshape(-1)).abs().max()) < 1e-12
    # the penalty is λΣ_s‖Oᵀθ_s‖₁ with the slice's basis O, slice by slice
    blocks = block_matrix(sliced.basis.mT, shape, axes)  # (slices·k, numel): Oᵀ on each slice
    assert torch.allclose(sliced.coordinates(theta).reshape(-1), blocks @ theta.reshape(-1), atol=1e-12)
    assert torch.allclose(sliced.induced_norm(theta), (blocks @ theta.reshape(-1)).abs().sum(), atol=1e-12)
    assert torch.allclose(sliced.dual_norm(theta), (blocks @ theta.reshape(-1)).abs().amax(), atol=1e-12)
    # the parametrisation reproduces θ, and its factors are (slices, k)
    w, a, b = sliced.right_inverse(theta)
    slices = int(np.prod(shape)) // size
    assert a.shape == b.shape == (slices, sliced.basis.shape[1])
    assert torch.allclose(sliced(w, a, b), theta, atol=1e-12)


def test_row_constraint_reaches_the_cvxpy_optimum_exactly():
    """Least squares ``Y ≈ X Wᵀ`` with every row of ``W`` summing to zero, solved by DCS: the cvxpy optimum,
    and the constraint exact to rounding (λ above the multipliers)."""
    cp = pytest.importorskip("cvxpy")
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(80, 6, generator=g, dtype=DT), torch.randn(80, 4, generator=g, dtype=DT)
    problem = symopt.Problem(
        name="row sums", shape=(4, 6),
        loss=lambda theta, X, Y: 0.5 * (X @ theta.mT - Y).square().sum() / X.shape[0],
        constraint=lambda: symopt.Subspace(torch.ones(1, 6, dtype=DT), 10.0, dim=1),
        data={"X": X, "Y": Y}, penalized=False)
    result = symopt.solve(problem)
    assert result.status == "optimal"
    W = cp.Variable((4, 6))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X.numpy() @ W.T - Y.numpy()) / 80),
               [W @ np.ones(6) == 0]).solve(solver=cp.CLARABEL)
    assert np.abs(result.x.numpy() - W.value).max() < 1e-6
    assert result.violation < 1e-12 and float(result.x.sum(dim=1).abs().max()) < 1e-12


def test_zero_mean_filters_train_to_an_exact_constraint():
    """Each Conv2d filter (dim=(1, 2, 3)) kept zero-mean during SGD training, exactly at the end."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 1)).double()
    handle = symopt.subspace(net, "0.weight", torch.ones(1, 18, dtype=DT), strength=5.0, dim=(1, 2, 3))
    assert handle.constraint.basis.shape == (18, 1)
    x, y = torch.randn(64, 2, 6, 6, dtype=DT), torch.randn(64, 1, dtype=DT)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05), lr=0.05)
    loss_fn = lambda model: (model(x) - y).square().mean()  # noqa: E731
    means = []
    for step in range(1500):
        opt.zero_grad()
        loss_fn(net).backward()
        opt.step()
        if step in (0, 1499):
            means.append(float(net[0].weight.mean(dim=(1, 2, 3)).abs().max()))
    assert means[0] > 1e-3 and means[1] < 1e-10  # it started off the set and ended on it
    entry = symopt.certify(net, loss_fn).entries[0]
    assert entry.exact and 0 < entry.multiplier < 5.0  # λ above the largest multiplier over all filters
    assert symopt.finalize(net, tol=1e-9).ok
    assert type(net[0].weight) is nn.Parameter and float(net[0].weight.mean(dim=(1, 2, 3)).abs().max()) < 1e-12


def test_state_dict_round_trip_and_assignment():
    torch.manual_seed(0)

    def columns_sum_to_zero():
        lin = nn.Linear(5, 3).double()
        return lin, symopt.subspace(lin, "weight", torch.ones(1, 3, dtype=DT), 1.0, dim=0)

    (first, handle), (second, _) = columns_sum_to_zero(), columns_sum_to_zero()
    value = torch.randn(3, 5, dtype=DT)
    first.weight = value
    assert torch.allclose(first.weight, value, atol=1e-12)
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.weight, first.weight)
    assert handle.constraint.structure(value) == "codim 1 on each of 5 slices"


@st.composite
def sliced_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    axes = draw(st.permutations(range(len(shape))).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
    size = int(np.prod([shape[a] for a in axes]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    A = torch.randn(draw(st.integers(1, size)), size, generator=g, dtype=DT)
    return shape, tuple(axes), A, torch.randn(shape, generator=g, dtype=DT)


@settings(max_examples=60, deadline=None)
@given(sliced_case())
def test_slices_project_like_the_dense_block_constraint_for_any_axes(case):
    """Any shape and any ordered set of axes: the projection is the dense ``I ⊗ A`` one, and feasible."""
    shape, axes, A, theta = case
    full = block_matrix(A, shape, axes)
    projected = symopt.Subspace(A, 1.0, dim=axes).project(theta)
    assert torch.allclose(projected, symopt.Subspace(full, 1.0).project(theta), atol=1e-10)
    assert float((full @ projected.reshape(-1)).abs().max()) < 1e-10


def test_a_scalar_has_no_slices():
    holder = nn.Module()
    holder.s = nn.Parameter(torch.tensor(1.0, dtype=DT))
    with pytest.raises(ValueError, match="a scalar parameter has no axes to slice; drop dim"):
        symopt.subspace(holder, "s", torch.ones(1, 1, dtype=DT), dim=0)
    assert type(holder.s) is nn.Parameter  # nothing registered
