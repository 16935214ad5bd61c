"""prox and kkt_residual of each kind: prox solves its subproblem (checked by the KKT residual at the
prox point); kkt_residual vanishes at references and not elsewhere."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symopt
from helpers import DT, soft_threshold_svd
from symopt.constraints.lowrank import soft_threshold_singular_values

KINDS = {
    "sparse": lambda: symopt.Sparse(0.3),
    "group": lambda: symopt.GroupSparse(0, 0.8),
    "low_rank": lambda: symopt.LowRank(1.0),
}


@pytest.mark.parametrize("kind", KINDS)
def test_prox_point_satisfies_kkt_of_its_subproblem(kind):
    """x = prox(v, t) minimises ½‖x − v‖² + tλ‖x‖: residual of the smooth part (x − v)/t is 0."""
    c = KINDS[kind]()
    v = torch.randn(5, 4, dtype=DT, generator=torch.Generator().manual_seed(3)) * 1.5
    t = 1.0
    x = c.prox(v, t)
    assert c.kkt_residual(x, (x - v) / t, tol=1e-12) <= 1e-10
    assert c.kkt_residual(v, (v - v + 1.0), tol=1e-12) > 1e-3  # a wrong point is flagged
    assert float(c.induced_norm(x)) < float(c.induced_norm(v))  # shrinks


def test_low_rank_prox_is_svt():
    v = torch.randn(6, 5, dtype=DT)
    assert torch.allclose(symopt.LowRank(0.7).prox(v, 1.0), soft_threshold_svd(v, 0.7), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), seed=st.integers(0, 10**6), share=st.floats(0.0, 1.5),
       spread=st.floats(0.0, 6.0), clustered=st.booleans(), single=st.booleans())
def test_the_gram_soft_threshold_is_the_svd_one(rows, cols, seed, share, spread, clustered, single):
    # The nuclear norm's prox without an SVD (the Gram's eigh): the same matrix as the SVD's
    # thresholding to rounding of σ_max, tall or wide, singular values spread over up to 6 decades or
    # in tight clusters (where singular vectors are ill-determined), τ below, among and above them;
    # a float32 input comes back float32
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    left = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=DT)).Q
    right = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=DT)).Q
    sigma = 10 ** (-spread * torch.rand(k, generator=gen, dtype=DT))
    if clustered:
        sigma = 1.0 + 1e-9 * torch.rand(k, generator=gen, dtype=DT)
    mat = (left * sigma) @ right.mT
    tau = share * float(sigma.max())
    if single:
        mat = mat.float()
    shrunk = soft_threshold_singular_values(mat, tau)
    assert shrunk.dtype == mat.dtype and shrunk.shape == mat.shape
    reference = soft_threshold_svd(mat.double(), tau)
    eps = torch.finfo(mat.dtype).eps
    assert float((shrunk.double() - reference).abs().max()) <= 50 * eps * float(sigma.max()) * (1 + k)


def _nuclear_case(rows: int, cols: int, seed: int, share: float, rank: int):
    """(W of rank ≤ ``rank``, a gradient G, λ = ``share``·‖G‖₂, a snap tolerance) for the nuclear residual's tests."""
    gen = torch.Generator().manual_seed(seed)
    rank = min(rank, rows, cols)
    W = torch.randn(rows, rank, generator=gen, dtype=DT) @ torch.randn(rank, cols, generator=gen, dtype=DT)
    G = torch.randn(rows, cols, generator=gen, dtype=DT)
    return W, G, share * float(torch.linalg.matrix_norm(G, 2)), 1e-9 * (1.0 + float(W.abs().max()))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 60), cols=st.integers(1, 60), seed=st.integers(0, 10**6), share=st.floats(0.0, 1.2),
       rank=st.integers(0, 5))
def test_the_nuclear_residual_from_the_gram_is_the_svd_one(rows, cols, seed, share, rank):
    # `_nuclear_kkt` reads the normal part's excess over λ from the smaller side's Gram (a Cholesky
    # factorisation where every σ ≤ λ, its eigenvalues where the matrix is far from square): the
    # residual is the one from LAPACK's singular values, tall, wide and square, with λ below, among and
    # above them (an excess that counts, or none)
    from symopt.constraints import lowrank

    W, G, lam, tol = _nuclear_case(rows, cols, seed, share, rank)
    residual = lowrank._nuclear_kkt(W, G, lam, tol)
    reference = lowrank._excess_singular_values
    try:
        lowrank._excess_singular_values = lambda mat, lam: (torch.linalg.svdvals(mat) - lam).clamp_min(0)
        exact = lowrank._nuclear_kkt(W, G, lam, tol)
    finally:
        lowrank._excess_singular_values = reference
    assert residual == pytest.approx(exact, rel=1e-10, abs=1e-10 * float(G.abs().max()))


@pytest.mark.parametrize("max_rank, shape", [(None, (30, 12)), (None, (12, 30)), (6, (40, 40)), (None, (3, 8, 6))])
def test_low_rank_snap_and_residual_from_one_svd_are_the_generic_ones(max_rank, shape):
    # `LowRank.snapped_kkt` builds the snapped point and its residual from one SVD; the generic
    # `Constraint.snapped_kkt` (project, then kkt_residual's own SVD of the point) is the reference,
    # at a tolerance below, among (between the 3rd and 4th) and above the singular values; a batch of
    # matrices falls back to it
    gen = torch.Generator().manual_seed(5)
    constraint = symopt.LowRank(0.4, max_rank=max_rank, layout="batch" if len(shape) == 3 else "flatten")
    value = torch.randn(*shape, generator=gen, dtype=DT)
    if max_rank is not None:  # (a value of the factor width, as the solver's are)
        value = torch.randn(shape[0], max_rank, generator=gen, dtype=DT) @ torch.randn(max_rank, shape[1], generator=gen, dtype=DT)
    G = torch.randn(*shape, generator=gen, dtype=DT)
    gradient_at = lambda point: G + 0.3 * point  # noqa: E731 (a loss whose gradient depends on the point)
    top = float(torch.linalg.matrix_norm(value, 2).max())
    # (a positive tolerance, as the solver's snap: at 0 a rank-6 value's rounding-level singular values
    # would count, and their singular vectors are arbitrary in either decomposition)
    between = float(torch.linalg.svdvals(value).reshape(-1, min(shape[-2:]))[:, 2:4].mean())  # among the σ
    for tol in (1e-10 * top, between, 1e3):
        point, residual = constraint.snapped_kkt(value, tol, gradient_at)
        ref_point, ref_residual = symopt.Constraint.snapped_kkt(constraint, value, tol, gradient_at)
        torch.testing.assert_close(point, ref_point, rtol=0, atol=1e-12 * float(value.abs().max()))
        assert residual == pytest.approx(ref_residual, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), seed=st.integers(0, 10**6), share=st.floats(0.0, 1.2),
       rank=st.integers(0, 5), capped=st.booleans())
def test_the_nuclear_residual_is_the_distance_from_explicit_projectors(rows, cols, seed, share, rank, capped):
    # `_nuclear_parts` reads the tangent part from P^T R and R Q alone (no m × n normal part formed for it);
    # the reference builds R = G + λPQ^T, its tangent part with the projectors PP^T and QQ^T as
    # matrices, and the normal part's excess from LAPACK's singular values
    from symopt.constraints import lowrank

    W, G, lam, tol = _nuclear_case(rows, cols, seed, share, rank)
    cap = min(rank, rows, cols) if capped and min(rank, rows, cols) > 0 else None
    P, S, Qh = torch.linalg.svd(W, full_matrices=False)
    keep = S > tol
    left, right = P[:, keep] @ P[:, keep].mT, Qh[keep].mT @ Qh[keep]
    R = G + lam * P[:, keep] @ Qh[keep]
    normal = (torch.eye(rows, dtype=DT) - left) @ R @ (torch.eye(cols, dtype=DT) - right)
    excess = (torch.linalg.svdvals(normal) - lam).clamp_min(0)
    if cap is not None and int(keep.sum()) >= cap:
        excess = excess[:0]
    reference = float(((R - normal).square().sum() + excess.square().sum()).sqrt())
    residual = lowrank._nuclear_kkt(W, G, lam, tol, cap)
    assert residual == pytest.approx(reference, rel=1e-9, abs=1e-10 * (1 + float(G.abs().max())))


@pytest.mark.parametrize("max_rank, shape", [(None, (30, 12)), (None, (12, 30)), (6, (40, 40)), (4, (120, 100)),
                                             (None, (3, 8, 6))])
def test_low_rank_best_snap_from_one_svd_is_the_generic_one(max_rank, shape):
    # `LowRank.best_snapped_kkt` takes every snap from one SVD and the normal part's excess only where
    # the tangent part leaves it a chance; the generic `Constraint.best_snapped_kkt` (snapped_kkt at each
    # tolerance, every residual in full) is the reference: the same point and residual, on values with
    # a tail of small singular values (what a descent leaves), a capped width and a batch
    gen = torch.Generator().manual_seed(7)
    constraint = symopt.LowRank(0.4, max_rank=max_rank, layout="batch" if len(shape) == 3 else "flatten")
    m, n = shape[-2:]
    k = max_rank or min(m, n)
    P = torch.linalg.qr(torch.randn(*shape[:-2], m, k, generator=gen, dtype=DT)).Q
    Q = torch.linalg.qr(torch.randn(*shape[:-2], n, k, generator=gen, dtype=DT)).Q
    spectrum = torch.cat([torch.linspace(5.0, 1.0, min(3, k), dtype=DT), 10.0 ** -torch.arange(2.0, 2 + k - min(3, k))])
    value = (P * spectrum) @ Q.mT
    G = torch.randn(*shape, generator=gen, dtype=DT)
    gradient_at = lambda point: G + 0.3 * point  # noqa: E731
    tols = [1e-9 * 10**level for level in range(12)]
    point, residual = constraint.best_snapped_kkt(value, tols, gradient_at)
    ref_point, ref_residual = symopt.Constraint.best_snapped_kkt(constraint, value, tols, gradient_at)
    torch.testing.assert_close(point, ref_point, rtol=0, atol=1e-12 * float(value.abs().max()))
    assert residual == pytest.approx(ref_residual, rel=1e-9, abs=1e-12)


def test_linear_kkt_is_projected_gradient():
    A = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)
    c = symopt.Subspace(A, 1.0)
    assert c.kkt_residual(torch.zeros(3, dtype=DT), torch.tensor([2.0, 2.0, 0.0], dtype=DT)) == pytest.approx(0.0)
    assert c.kkt_residual(torch.zeros(3, dtype=DT), torch.tensor([1.0, -1.0, 0.0], dtype=DT)) == pytest.approx(2**0.5)
    tied = symopt.Tied(1.0)
    g = torch.tensor([1.0, -2.0], dtype=DT)
    assert tied.kkt_residual([g, g], [g, -g]) == 0.0
