"""A sparse design matrix X (scipy.sparse or torch sparse) for the linear-model families: kept
sparse (torch CSR), and every solver reaches the same optimum as with the dense X."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import symopt
from symopt.baselines import solve_cvxpy, solve_proximal, solve_skglm, solve_sklearn
from symopt.problems import lasso, logistic_l1, make_lasso
from symopt.problems.design import matvec, rmatvec


def _design(n=120, d=300, density=0.05, seed=0):
    A = sp.random(n, d, density=density, format="csr", random_state=seed, dtype=np.float64)
    w = np.zeros(d)
    w[:5] = [2.0, -1.0, 1.5, -2.0, 1.0]
    return A, A @ w + 0.01 * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("solver", [symopt.solve, solve_cvxpy, solve_sklearn, solve_skglm, solve_proximal],
                         ids=["dcs", "cvxpy", "sklearn", "skglm", "proximal"])
def test_sparse_and_dense_lasso_have_the_same_optimum(solver):
    A, y = _design()
    lam = 0.05 * float(np.abs(A.T @ y).max()) / A.shape[0]
    sparse, dense = lasso(A, y, lam), lasso(A.toarray(), y, lam)
    assert sparse.data["X"].layout == torch.sparse_csr  # not densified
    a, b = solver(sparse), solver(dense)
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-9, abs=1e-12)


def test_torch_sparse_inputs_and_logistic():
    A, y = _design(seed=1)
    coo = torch.tensor(A.toarray()).to_sparse()  # a torch COO tensor is accepted too
    labels = (y > 0).astype(float)
    a = symopt.solve(logistic_l1(coo, labels, 0.01))
    b = symopt.solve(logistic_l1(A.toarray(), labels, 0.01))
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-9)


def test_float32_solve_on_a_sparse_design():
    problem = make_lasso(n=100, d=400, nonzeros=5, x_density=0.1)
    r32, r64 = symopt.solve(problem, dtype=torch.float32), symopt.solve(problem)
    assert r32.status == r64.status == "optimal"
    assert r32.objective == pytest.approx(r64.objective, rel=1e-7)


def test_bad_sparse_designs_are_named():
    A, y = _design()
    bad = A.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        lasso(bad, y, 0.1)
    with pytest.raises(ValueError, match="X must be"):
        lasso(A, y[:-1], 0.1)
    with pytest.raises(ValueError, match="x_density must be in"):
        make_lasso(n=10, d=20, nonzeros=2, x_density=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("columns", [None, 3], ids=["vector", "matrix"])
def test_csr_product_gradient_is_the_dense_one(dtype, columns):
    """The CSR product's own backward (cached CSR transpose) gives autograd's dense answer."""
    A, _ = _design(n=40, d=70, density=0.1, seed=2)
    dense = torch.tensor(A.toarray(), dtype=dtype)
    csr = dense.to_sparse_csr()
    shape = (70,) if columns is None else (70, columns)
    theta = torch.randn(shape, dtype=dtype, requires_grad=True)
    weights = torch.randn((40,) if columns is None else (40, columns), dtype=dtype)
    (matvec(csr, theta) * weights).sum().backward()
    grad, theta.grad = theta.grad, None
    (dense @ theta * weights).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(grad, theta.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(rmatvec(csr, weights), dense.t() @ weights, rtol=tol, atol=tol)
    assert rmatvec(csr, weights) is not None and csr._symopt_csr_transpose is not None  # built once, kept


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_csr_transpose_is_the_same_tensor_by_scipy_or_by_torch(monkeypatch, dtype):
    """The cached CSR transpose, built by SciPy on the CPU (`design.CSR_STRUCTURE_BY_SCIPY`) or by torch's sort (a
    GPU's route): the same pointers, column indices and values, entry by entry, in int64 and the design's dtype."""
    from symopt.problems import design

    A, _ = _design(n=40, d=70, density=0.1, seed=3)
    built = {}
    for by_scipy in (True, False):
        monkeypatch.setattr(design, "CSR_STRUCTURE_BY_SCIPY", by_scipy)
        csr = torch.tensor(A.toarray(), dtype=dtype).to_sparse_csr()
        built[by_scipy] = design._csr_transpose(csr)
    for part in ("crow_indices", "col_indices", "values"):
        assert torch.equal(getattr(built[True], part)(), getattr(built[False], part)())
    assert built[True].crow_indices().dtype == torch.int64 and built[True].dtype == dtype
    assert torch.equal(built[True].to_dense(), torch.tensor(A.toarray(), dtype=dtype).t())
    # (a design whose transpose torch built, the switch turned on later: SciPy's selection reads that transpose)
    monkeypatch.setattr(design, "CSR_STRUCTURE_BY_SCIPY", True)
    index = torch.tensor([3, 0, 69, 3])
    assert torch.equal(design.columns(csr, index).to_dense(), torch.tensor(A.toarray(), dtype=dtype)[:, index])


def test_dense_designs_take_torchs_own_product():
    X, theta = torch.randn(5, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(matvec(X, theta), X @ theta)
    torch.testing.assert_close(rmatvec(X, X @ theta), X.t() @ (X @ theta))
    assert not hasattr(X, "_symopt_csr_transpose")


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("nonzeros", [0, 1, 20, 48, 49, 250, 251, 2000])
def test_a_dense_product_through_the_support_is_the_full_one(layout, nonzeros):
    """``X @ θ`` for a θ with few non-zeros reads only their columns (`design.SPARSE_PRODUCT_SHARE`,
    `SPARSE_PRODUCT_COLUMNS`): the same numbers as the full product on both sides of each threshold and
    in both layouts, and a θ that requires a gradient still gets autograd's full backward."""
    gen = torch.Generator().manual_seed(nonzeros)
    X = torch.randn(30, 2000, generator=gen, dtype=torch.float64)
    X = X if layout == "row-major" else X.t().contiguous().t()
    theta = torch.zeros(2000, dtype=torch.float64)
    theta[torch.randperm(2000, generator=gen)[:nonzeros]] = torch.randn(nonzeros, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(matvec(X, theta), X @ theta, rtol=1e-12, atol=1e-12)
    probe = theta.clone().requires_grad_()
    matvec(X, probe).sum().backward()
    torch.testing.assert_close(probe.grad, X.sum(0), rtol=1e-12, atol=1e-12)  # every entry's, the zeros' too
