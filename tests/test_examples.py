"""The examples run and show what they claim."""

import pytest

from helpers import load_example as load


def test_lasso_diabetes_matches_sklearn():
    pytest.importorskip("sklearn")
    for lam, nnz_dcs, nnz_ref, max_dw, gap in load("lasso_diabetes").main():
        assert nnz_dcs == nnz_ref and max_dw <= 1e-6 and gap <= 1e-10


def test_exact_threshold_is_sharp():
    for c, violation, error in load("exact_threshold").main():
        if c > 1:
            assert violation <= 1e-10 and error <= 1e-10
        else:
            assert violation >= 1e-3
