"""The column products kept on a design (`symopt.problems.design.column_products`): exact against a
direct product whatever the request order, layout or sub-design they come through, and the
least-squares curvature built from them is autograd's Hessian."""

import pytest
import torch

from symopt.problems import design, lasso
from symopt.problems.design import column_products, columns, forget_kept


def _design(layout: str, n: int = 30, d: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    if layout == "column-major":
        return X.t().contiguous().t()
    if layout == "csr":
        return torch.where(torch.rand(n, d, generator=g, dtype=torch.float64) < 0.2, X, 0.0).to_sparse_csr()
    return X


def _direct(X: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Z = (X.to_dense() if X.layout != torch.strided else X)[:, index]
    return Z.mT @ Z, Z.sum(0)


@pytest.mark.parametrize("layout", ["row-major", "column-major", "csr"])
def test_kept_products_are_the_direct_ones_over_a_sequence_of_requests(layout):
    X = _design(layout)
    g = torch.Generator().manual_seed(1)
    kept_before = 0
    for size in (5, 40, 17, 120, 3, 60):
        index = torch.randperm(X.shape[1], generator=g)[:size]  # unsorted, overlapping earlier requests
        products, sums = column_products(X, index)
        want_products, want_sums = _direct(X, index)
        torch.testing.assert_close(products, want_products, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sums, want_sums, rtol=1e-12, atol=1e-12)
        known = getattr(X, design._PRODUCTS).known
        assert known.numel() >= kept_before and torch.unique(known).numel() == known.numel()
        kept_before = known.numel()


def test_a_request_already_kept_multiplies_nothing(monkeypatch):
    X = _design("row-major")
    column_products(X, torch.arange(50))
    grown = []
    monkeypatch.setattr(design, "_grow", lambda *args: grown.append(args))
    products, _ = column_products(X, torch.tensor([7, 3, 49]))
    assert not grown
    torch.testing.assert_close(products, _direct(X, torch.tensor([7, 3, 49]))[0], rtol=0, atol=1e-12)


def test_a_working_sets_design_reads_and_grows_the_whole_designs_products():
    X = _design("column-major")
    chosen = torch.tensor([250, 4, 90, 17, 160])
    sub = columns(X, chosen)
    products, sums = column_products(sub, torch.tensor([3, 0]))  # sub's columns 3, 0 are X's 17, 250
    want_products, want_sums = _direct(X, torch.tensor([17, 250]))
    torch.testing.assert_close(products, want_products, rtol=0, atol=1e-12)
    torch.testing.assert_close(sums, want_sums, rtol=0, atol=1e-12)
    assert not hasattr(sub, design._PRODUCTS)  # kept on the whole design, which outlives the working set
    assert sorted(getattr(X, design._PRODUCTS).known.tolist()) == [17, 250]
    # a design taken from a working set's design maps through both
    inner = columns(sub, torch.tensor([1, 2]))  # X's 4, 90
    torch.testing.assert_close(column_products(inner, torch.tensor([1]))[0], _direct(X, torch.tensor([90]))[0],
                               rtol=0, atol=1e-12)


def test_past_the_limit_the_kept_set_starts_afresh(monkeypatch):
    monkeypatch.setattr(design, "KEPT_PRODUCT_COLUMNS", 64)
    X = _design("row-major")
    column_products(X, torch.arange(60))
    index = torch.arange(100, 140)
    products, _ = column_products(X, index)  # 60 + 40 > 64: only the request's columns are kept now
    torch.testing.assert_close(products, _direct(X, index)[0], rtol=0, atol=1e-12)
    assert sorted(getattr(X, design._PRODUCTS).known.tolist()) == index.tolist()
    assert int((getattr(X, design._PRODUCTS).position >= 0).sum()) == 40


def test_forgetting_drops_what_is_kept():
    X = _design("row-major")
    column_products(columns(X, torch.arange(10)), torch.arange(3))
    forget_kept(X)
    assert not [name for name in vars(X) if name.startswith("_symopt_")]


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_the_least_squares_curvature_from_kept_products_is_autograds_hessian(fit_intercept):
    # 300 columns: above the whole-Gram limit, so the face's block comes from the kept products
    X = _design("row-major", n=40, d=300, seed=2) + 3.0  # (offset columns: the intercept's centring matters)
    y = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    problem = lasso(X, y, 0.1, fit_intercept=fit_intercept)
    loss = problem.bind(problem.data)
    theta = torch.zeros(300, dtype=torch.float64)
    theta[[5, 80, 200]] = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    for chosen in ([5, 80, 200, 7], [80, 200, 299, 0, 11]):  # the second reuses the first's products
        mask = torch.zeros(300, dtype=torch.bool)
        mask[chosen] = True
        index = mask.nonzero().squeeze(1)

        def on_face(values, index=index):
            full = theta.clone()
            full[index] = values
            return problem.loss(full, **problem.data)

        want = torch.autograd.functional.hessian(on_face, theta[index])
        torch.testing.assert_close(loss.curvature(theta, mask), want, rtol=1e-10, atol=1e-12)
