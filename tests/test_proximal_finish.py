"""The proximal finish of a nuclear-norm point (`symopt.optimality.proximal_finish`): the step a
low-rank face cannot take. A point one small singular value short of the optimum is not optimal on
any rank-r face, and putting the missing direction on a face with a tiny value makes that face
ill-conditioned; singular-value thresholding steps set it exactly. Checked against the optimum
itself, against accelerated SoftImpute, and for the kinds it must leave alone."""

import pytest
import torch

import symopt
from symopt.constraints import LowRank, Sparse
from symopt.optimality import SMALL_FACE, kkt_at_snap, loss_gradient, polish_on_face, proximal_finish, snap_tol
from symopt.problems import matrix_completion

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402

TOL = 1e-6


def _digits_completion(rows=300, fraction=0.02):
    """A real matrix that is not low rank (digits pixels), half observed: at a small λ its optimum
    has singular values just above the threshold, the case the finish is for."""
    M = torch.as_tensor(load_digits().data[:rows], dtype=torch.float64)
    mask = torch.rand(M.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.5
    lam_max = float(torch.linalg.matrix_norm(torch.where(mask, M, 0.0), ord=2))
    return matrix_completion(M, mask, fraction * lam_max)


def _one_short(theta):
    """The optimum without its smallest singular value: one rank short."""
    P, S, Qh = torch.linalg.svd(theta, full_matrices=False)
    rank = int((S > snap_tol(theta, TOL)).sum())
    return (P[:, :rank - 1] * S[:rank - 1]) @ Qh[:rank - 1], rank, float(S[rank - 1])


def test_a_point_one_singular_value_short_is_finished_by_proximal_steps():
    problem = _digits_completion()
    optimum = symopt.solve(problem, tol=1e-9)
    assert optimum.status == "optimal"
    short, rank, smallest = _one_short(optimum.x)
    data = problem.data_on("cpu", torch.float64)
    loss, constraint = problem.bind(data), problem.constraint().to(dtype=torch.float64)
    target = TOL * float(loss_gradient(loss, torch.zeros_like(short)).norm())  # the solve's own target
    assert kkt_at_snap(loss, constraint, short, TOL)[1] > target  # the dropped direction violates KKT
    on_face = polish_on_face(loss, constraint, short, TOL, target)
    assert on_face is None or on_face[1] > target  # its rank-(r − 1) face cannot fix it
    finished, residual = proximal_finish(loss, constraint, short, TOL, target)
    assert residual <= target
    assert int((torch.linalg.svdvals(finished) > snap_tol(finished, TOL)).sum()) == rank
    assert problem.objective(finished) == pytest.approx(optimum.objective, rel=1e-9)


def test_the_finished_solve_matches_accelerated_softimpute():
    from symopt.baselines.softimpute import solve_softimpute

    problem = _digits_completion(rows=200)
    ours, theirs = symopt.solve(problem), solve_softimpute(problem)
    assert ours.status == theirs.status == "optimal"
    assert ours.objective <= theirs.objective + 1e-9 * abs(theirs.objective)
    assert ours.iterations <= 3  # (18 outer iterations on the whole of digits before the finish)


def test_only_unbounded_nuclear_norms_of_small_matrices_are_finished_by_prox():
    small, large = torch.zeros(40, 30), torch.zeros(600, 700)
    assert LowRank(0.1).finishes_by_prox(small)
    assert not LowRank(0.1).finishes_by_prox(large)  # a full SVD a step: the descent is cheaper there
    assert not LowRank(0.1, max_rank=5).finishes_by_prox(small)  # the prox of a rank bound: not convex
    assert not LowRank(0.1).with_width(8).finishes_by_prox(small)  # the solver's narrowed width too
    assert not Sparse(0.1).finishes_by_prox(torch.zeros(30))  # its face admits atoms: the active set


def test_a_point_already_optimal_is_returned_at_the_first_check():
    problem = _digits_completion(rows=120, fraction=0.1)
    optimum = symopt.solve(problem, tol=1e-9)
    data = problem.data_on("cpu", torch.float64)
    loss, constraint = problem.bind(data), problem.constraint().to(dtype=torch.float64)
    finished, residual = proximal_finish(loss, constraint, optimum.x, TOL, 1e-6)
    assert residual <= 1e-6
    assert problem.objective(finished) == pytest.approx(optimum.objective, rel=1e-12)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_a_kind_finished_by_prox_has_only_its_small_faces_polished(fraction):
    # The optimum with its singular values 1% off, on its own face. At 0.1 λ_max its rank-15 face has
    # 15 · (300 + 64) coordinates, above SMALL_FACE: the face polish's twenty L-BFGS iterations do not
    # resolve it (the residual 5.2 → 5.0 with the face's variational norm; 5.2 → 51 with its exact norm
    # before), the proximal finish reaches the target, and small_faces_only leaves it to the finish. At
    # 0.3 λ_max the rank-1 face (364 coordinates) is polished either way.
    problem = _digits_completion(rows=300, fraction=fraction)
    optimum = symopt.solve(problem, tol=1e-9)
    P, S, Qh = torch.linalg.svd(optimum.x, full_matrices=False)
    rank = int((S > snap_tol(optimum.x, TOL)).sum())
    off = (P[:, :rank] * (1.01 * S[:rank])) @ Qh[:rank]
    data = problem.data_on("cpu", torch.float64)
    loss, constraint = problem.bind(data), problem.constraint().to(dtype=torch.float64)
    target = TOL * float(loss_gradient(loss, torch.zeros_like(off)).norm())
    before = kkt_at_snap(loss, constraint, off, TOL)[1]
    assert before > target
    polished = polish_on_face(loss, constraint, off, TOL, target)
    small_only = polish_on_face(loss, constraint, off, TOL, target, small_faces_only=True)
    if rank * sum(off.shape) > SMALL_FACE:
        assert rank == 15 and small_only is None
        assert polished is not None and polished[1] > 100 * target  # what the flag spares
        assert proximal_finish(loss, constraint, off, TOL, target)[1] <= target
    else:
        assert rank == 1 and small_only is not None and polished is not None
        assert small_only[1] == pytest.approx(polished[1], rel=1e-9) and polished[1] < before
