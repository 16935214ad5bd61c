"""Large nuclear-norm problems: the thin SVD from the range, the quick KKT estimate, and solve's
narrow factors that widen on demand (the narrow problem is the full one while the rank stays below
the width)."""

import sys

import pytest
import torch

import symopt
from helpers import DT
from symopt.constraints.lowrank import thin_svd
from symopt.problems import make_matrix_completion

LOWRANK = sys.modules["symopt.constraints.lowrank"]


def _low_rank(m, n, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=DT) @ torch.randn(r, n, generator=g, dtype=DT)


def test_thin_svd_from_the_range_is_the_svd():
    W = _low_rank(200, 150, 6)
    P, S, Qh = thin_svd(W, width=8)
    assert S.shape[0] == 16  # width + 8 triplets, not min(m, n)
    assert torch.allclose(S, torch.linalg.svdvals(W)[:16], atol=1e-9)
    assert torch.allclose((P * S) @ Qh, W, atol=1e-9)
    assert torch.allclose(P.mT @ P, torch.eye(16, dtype=DT), atol=1e-10)


def test_thin_svd_falls_back_when_the_rank_exceeds_the_width():
    W = torch.randn(200, 150, dtype=DT, generator=torch.Generator().manual_seed(1))  # full rank
    P, S, Qh = thin_svd(W, width=8)
    assert S.shape[0] == 150 and torch.allclose((P * S) @ Qh, W, atol=1e-9)
    assert thin_svd(W[:40, :40], width=8)[1].shape[0] == 40  # too small for the range: plain SVD


def test_a_narrow_low_rank_keeps_its_maths_on_a_full_rank_input():
    """The fast path is only taken when checked: a capped constraint still projects and measures
    gradients (full rank) exactly."""
    G = torch.randn(120, 100, dtype=DT, generator=torch.Generator().manual_seed(2))
    narrow, full = symopt.LowRank(0.5, max_rank=8), symopt.LowRank(0.5)
    assert float(narrow.dual_norm(G)) == pytest.approx(float(torch.linalg.svdvals(G)[0]), rel=1e-12)
    assert torch.allclose(narrow.project(G, 3.0), full.project(G, 3.0), atol=1e-10)


@pytest.mark.parametrize("shape", [(200, 120), (90, 300), (70, 70)])
@pytest.mark.parametrize("spike", [0.0, 50.0])
def test_a_large_gradients_operator_norm_is_compared_exactly(shape, spike):
    # on a matrix above the power iterations' size: decided by the lower bound far below the norm,
    # by the full SVD at it (both sides of a level within 1e-9 of ‖G‖₂); with a dominant singular
    # value (spike) the bound meets the norm to rounding, and the level equal to it must still say no
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    G = G + spike * torch.outer(torch.randn(shape[0], generator=gen, dtype=torch.float64),
                                torch.randn(shape[1], generator=gen, dtype=torch.float64))
    c = symopt.LowRank(0.1)
    top = float(torch.linalg.matrix_norm(G, ord=2))
    for level in (0.1 * top, 0.9 * top, (1 - 1e-9) * top, top, (1 + 1e-9) * top, 3 * top):
        assert c.dual_norm_exceeds(G, level) == (top > level)


def test_quick_kkt_never_exceeds_the_exact_residual():
    W = _low_rank(300, 260, 4, seed=3)
    c = symopt.LowRank(1.0)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        noise = 0.5 * torch.randn(300, 260, dtype=DT, generator=g)  # all its σ far above λ = 1
        exact, quick = c.kkt_residual(W, noise, 1e-9), c.kkt_residual(W, noise, 1e-9, quick=True)
        assert quick <= exact * (1 + 1e-12)
        spikes = 5 * _low_rank(300, 260, 3, seed=seed + 10) / 300 + 0.01 * noise  # 3 σ above λ, the rest below
        exact, quick = c.kkt_residual(W, spikes, 1e-9), c.kkt_residual(W, spikes, 1e-9, quick=True)
        assert quick == pytest.approx(exact, rel=1e-6)  # the leading values are the ones that count
    small = _low_rank(30, 20, 2)
    G = torch.randn(30, 20, dtype=DT)
    assert c.kkt_residual(small, G, 1e-9, quick=True) == c.kkt_residual(small, G, 1e-9)  # small: exact


@pytest.fixture
def narrow_from_40(monkeypatch):
    """Narrow factors from min(m, n) = 40 with width 4, so small problems take the large-problem path."""
    monkeypatch.setattr(LOWRANK, "_NARROW_FROM", 40)
    monkeypatch.setattr(LOWRANK, "_START_WIDTH", 4)


def _reference(problem, monkeypatch):
    monkeypatch.setattr(LOWRANK, "_NARROW_FROM", 10**9)  # full-width factors throughout
    return symopt.solve(problem, tol=1e-9)


@pytest.mark.parametrize("rank, strength, observed", [(2, 0.5, 0.6), (10, 0.2, 0.8)],
                         ids=["rank below width", "widens"])
def test_narrow_factors_reach_the_full_width_optimum(narrow_from_40, monkeypatch, rank, strength, observed):
    problem = make_matrix_completion(m=60, n=50, rank=rank, observed=observed, strength=strength)
    result = symopt.solve(problem)
    assert result.status == "optimal"
    reference = _reference(problem, monkeypatch)
    assert result.objective == pytest.approx(reference.objective, rel=1e-7)
    found = int((torch.linalg.svdvals(result.x) > 1e-6 * float(result.x.abs().max())).sum())
    expected = int((torch.linalg.svdvals(reference.x) > 1e-6 * float(reference.x.abs().max())).sum())
    assert found == expected
    if rank == 10:
        assert found > 4  # above the starting width: solve had to widen


def test_working_width_only_for_penalised_low_rank_of_a_large_matrix():
    assert symopt.LowRank(0.1).working_width((200, 300)) == (16, 200)
    assert symopt.LowRank(0.1).working_width((100, 300))[0] is None  # small: full width
    assert symopt.LowRank(0.1, max_rank=3).working_width((200, 300))[0] is None  # a rank bound
    assert symopt.LowRank(target_rank=3).working_width((200, 300))[0] is None  # a budget
    assert symopt.Sparse(0.1).working_width((200, 300))[0] is None


def test_with_width_keeps_a_subclass():
    """The solver narrows a constraint through with_width: a subclass must stay itself (a plain LowRank
    would silently replace, say, a block-structured one)."""
    class Special(symopt.LowRank):
        pass

    narrow = Special(0.2, seed=3).with_width(4)
    assert type(narrow) is Special and narrow.max_rank == 4 and narrow.strength == 0.2
    assert narrow.factorizer.seed == 3


def test_a_point_that_fills_the_width_is_widened_without_a_polish(narrow_from_40, monkeypatch):
    """A filled width is never accepted, and its low-rank face keeps every direction it has: the
    certifier hands it to the widening unpolished (the polish of a rank-16 face of a rank-10
    completion took a fifth of the solve and raised the residual). Points below the width are still
    polished, and the answer is the full-width optimum."""
    certifier = sys.modules["symopt.solver.certifier"]
    polished, real = [], certifier.polish_on_face

    def spy(loss, constraint, point, tol, *args, **kwargs):
        cut = symopt.optimality.snap_tol(point, tol)
        polished.append((int((constraint.atoms(point) > cut).sum()), constraint.max_rank))
        return real(loss, constraint, point, tol, *args, **kwargs)

    monkeypatch.setattr(certifier, "polish_on_face", spy)
    problem = make_matrix_completion(m=60, n=50, rank=10, observed=0.8, strength=0.2)
    result = symopt.solve(problem)
    assert result.status == "optimal"
    assert polished, "the points below the width are polished"
    assert all(width is None or rank < width for rank, width in polished), polished
    reference = _reference(problem, monkeypatch)
    assert result.objective == pytest.approx(reference.objective, rel=1e-7)
