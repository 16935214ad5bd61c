"""The examples run and show what they claim."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
