"""prox and kkt_residual of each kind: prox solves its subproblem (checked by the KKT residual at the
prox point); kkt_residual vanishes at references and not elsewhere."""

import pytest
import torch

import symopt
from helpers import DT, soft_threshold_svd

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


def test_linear_kkt_is_projected_gradient():
    A = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)
    c = symopt.Subspace(A, 1.0)
    assert c.kkt_residual(torch.zeros(3, dtype=DT), torch.tensor([2.0, 2.0, 0.0], dtype=DT)) == pytest.approx(0.0)
    assert c.kkt_residual(torch.zeros(3, dtype=DT), torch.tensor([1.0, -1.0, 0.0], dtype=DT)) == pytest.approx(2**0.5)
    tied = symopt.Tied(1.0)
    g = torch.tensor([1.0, -2.0], dtype=DT)
    assert tied.kkt_residual([g, g], [g, -g]) == 0.0
