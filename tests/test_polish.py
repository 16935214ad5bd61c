"""Faces of the induced norms and the face polish of ``solve`` (and its compiled loss).

A face is the set of tensors with the point's structure (support and signs, alive groups, rank) in
smooth coordinates. Checked: the coordinates rebuild the point and the face norm equals the induced
norm there and nearby; its gradient is finite (no √0); the polish reaches the closed-form Lasso
solution; its residual is honest on a wrong face; solve with and without it agrees.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symopt
from helpers import DT, least_squares
from symopt.optimality import SMALL_FACE, kkt_at_snap, polish_on_face, snap_tol
from symopt.problems import (lasso, make_equality_ls, make_fixed_zeros_ls, make_group_lasso, make_logistic_l1,
                             make_matrix_completion, make_tied_least_squares)

FAST = settings(max_examples=int(os.environ.get("SYMOPT_PROPERTY_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _structured(kind: str, seed: int, shape=(6, 5)) -> tuple[symopt.Constraint, torch.Tensor]:
    """A value on a proper face of ``kind``: some zeros, zero groups, or rank 2."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(*shape, generator=g, dtype=DT)
    if kind == "sparse":
        return symopt.Sparse(0.1), value * (torch.rand(*shape, generator=g, dtype=DT) > 0.5)
    if kind == "group_rows":
        return symopt.GroupSparse(0, 0.1), value * (torch.arange(shape[0], dtype=DT) % 2).unsqueeze(1)
    if kind == "group_index":
        c = symopt.GroupSparse(groups=[[0, 1, 2], [3, 4], list(range(5, value.numel()))], strength=0.1)
        flat = value.reshape(-1).clone()
        flat[3:5] = 0
        return c, flat.view(shape)
    rank2 = torch.randn(shape[0], 2, generator=g, dtype=DT) @ torch.randn(2, shape[1], generator=g, dtype=DT)
    return symopt.LowRank(0.1), rank2


KINDS = ("sparse", "group_rows", "group_index", "low_rank")


@FAST
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), step=st.floats(1e-4, 1e-2))
def test_face_rebuilds_the_point_and_its_norm_nearby(kind, seed, step):
    c, value = _structured(kind, seed)
    face = c.face(value, snap_tol(value, 1e-9))
    assert torch.allclose(face.embed(*face.start), value, atol=1e-12)
    assert float(face.norm(*face.start)) == pytest.approx(float(c.induced_norm(value)), rel=1e-10)
    # a small move along the face keeps the structure, so the face norm is still the induced norm
    g = torch.Generator().manual_seed(seed + 1)
    moved = [t + step * t.abs().amax() * torch.randn(t.shape, generator=g, dtype=DT) for t in face.start]
    if kind == "sparse":  # keep the signs (the face's)
        moved = [torch.where(m.sign() == t.sign(), m, t) for m, t in zip(moved, face.start)]
    assert float(face.norm(*moved)) == pytest.approx(float(c.induced_norm(face.embed(*moved))), rel=1e-9)


@FAST
@given(seed=st.integers(0, 10_000), step=st.floats(1e-3, 0.3))
def test_a_low_rank_faces_variational_norm_bounds_the_nuclear_norm_and_meets_it_when_balanced(seed, step):
    # ½Σ(‖A_i‖² + ‖B_i‖²)/σ_i, which the face's L-BFGS minimises: equal to ‖θ‖_* at the start, above it off
    # balance, and equal again once the same θ is refactored with aᵀa = bᵀb (so its minimum is the norm's)
    c, value = _structured("low_rank", seed)
    face = c.face(value, snap_tol(value, 1e-9))
    bound = face.variational_norm
    assert float(bound(*face.start)) == pytest.approx(float(c.induced_norm(value)), rel=1e-10)
    g = torch.Generator().manual_seed(seed + 1)
    moved = [t + step * t.abs().amax() * torch.randn(t.shape, generator=g, dtype=DT) for t in face.start]
    theta = face.embed(*moved)
    exact = float(c.induced_norm(theta))
    assert float(bound(*moved)) >= exact * (1 - 1e-12)
    assert float(face.norm(*moved)) == pytest.approx(exact, rel=1e-9)  # (the exact norm, Newton's)
    sigma = face.start[0].norm(dim=0)  # (‖A_i‖ = σ_i at the start)
    U, S, Vh = torch.linalg.svd(theta, full_matrices=False)
    r = sigma.numel()
    balanced = (U[:, :r] * (S[:r] * sigma).sqrt(), Vh[:r].mT * (S[:r] * sigma).sqrt())
    assert torch.allclose(face.embed(*balanced), theta, atol=1e-10)
    assert float(bound(*balanced)) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_face_norm_gradient_is_finite_and_is_the_subgradient(kind):
    c, value = _structured(kind, 4)
    face = c.face(value, snap_tol(value, 1e-9))
    coords = [t.clone().requires_grad_() for t in face.start]
    grads = torch.autograd.grad(face.norm(*coords), coords)
    assert all(bool(torch.isfinite(g).all()) for g in grads)  # the zero groups meet no √0
    if kind == "sparse":
        assert torch.equal(grads[0], value[value != 0].sign())


def test_a_linear_kinds_face_is_its_constraint_set():
    c = symopt.Subspace(torch.tensor([[1.0, -1.0, 0.0]], dtype=DT), 1.0)  # θ0 = θ1
    z = torch.tensor([3.0, 1.0, 5.0], dtype=DT)
    face = c.face(z)
    assert torch.allclose(face.embed(z), torch.tensor([2.0, 2.0, 5.0], dtype=DT))
    assert float(face.norm(z)) == 0.0  # the exact penalty vanishes on the set


@pytest.mark.parametrize("make", [make_equality_ls, make_tied_least_squares, make_fixed_zeros_ls,
                                  lambda: make_logistic_l1(n=500, d=200),
                                  lambda: make_matrix_completion(m=40, n=30)],
                         ids=["equality", "tied", "fixed_zeros", "logistic_l1", "completion"])
def test_float32_descent_is_certified_in_float64(make):
    """A float32 descent cannot show a relative KKT residual of 1e-6; the certificate and the face
    polish run in float64, so the float32 solve ends optimal at the float64 answer."""
    problem = make()
    r32, r64 = symopt.solve(problem, dtype=torch.float32), symopt.solve(problem)
    assert r32.status == r64.status == "optimal"
    assert r32.objective == pytest.approx(r64.objective, rel=1e-7)  # both within tol of the optimum


@pytest.mark.parametrize("spurious", [-1e-3, 1e-3], ids=["wrong-sign", "right-sign"])
def test_an_entry_that_crosses_zero_on_the_face_leaves_it(spurious):
    """ℓ(w) = ½‖w − c‖², λ = 0.1, c = (3, 0.05): the optimum is (2.9, 0). From (2.9, ±1e-3) the
    second entry is on its way to 0; on the face its linear norm ±λ·w₁ pushes it through 0 (to 0.15
    from the negative side, to −0.05 from the positive one). It crosses 0, so it leaves, and the
    smaller face gives the optimum."""
    c = torch.tensor([3.0, 0.05], dtype=DT)
    constraint = symopt.Sparse(0.1)
    point = torch.tensor([2.9, spurious], dtype=DT)
    polished, residual = polish_on_face(lambda w: 0.5 * (w - c).square().sum(), constraint, point, 1e-12,
                                        target=1e-10)
    assert residual < 1e-10
    assert torch.allclose(polished, torch.tensor([2.9, 0.0], dtype=DT), atol=1e-12)
    face = constraint.face(point)
    assert face.crossed(torch.tensor([2.9, 0.15], dtype=DT)).tolist() == [False, spurious < 0]


def test_face_is_none_where_there_is_nothing_to_polish():
    batch = symopt.LowRank(0.1, layout="batch")
    assert batch.face(torch.randn(2, 4, 3, dtype=DT)) is None  # each matrix would have its own rank
    assert symopt.LowRank(0.1).face(torch.zeros(4, 3, dtype=DT)) is None  # rank 0


def test_polish_reaches_the_closed_form_lasso_solution():
    """On the true support with signs s: w_S = (X_SᵀX_S)⁻¹(X_Sᵀy − nλs), the Lasso optimum."""
    X, y = least_squares(n=80, d=20, k=4, noise=0.1)
    lam, n = 0.05, X.shape[0]
    reference = symopt.solve(lasso(X, y, lam), tol=1e-10).x
    support = reference != 0
    s = reference[support].sign()
    XS = X[:, support]
    closed = torch.zeros_like(reference)
    closed[support] = torch.linalg.solve(XS.T @ XS, XS.T @ y - n * lam * s)
    assert torch.allclose(reference, closed, atol=1e-8)  # the reference is the closed form
    loss = lambda w: 0.5 * (X @ w - y).square().mean()  # noqa: E731
    start = closed + 1e-2 * support * torch.randn(20, dtype=DT, generator=torch.Generator().manual_seed(1))
    point, before = kkt_at_snap(loss, symopt.Sparse(lam), start, 1e-10)
    # the target sits above the line search's floor (objective changes below eps·f are invisible)
    polished, after = polish_on_face(loss, symopt.Sparse(lam), point, 1e-10, target=1e-7)
    assert before > 1e-4 and after < 1e-7
    assert torch.allclose(polished, closed, atol=1e-7)


def test_a_zero_that_should_enter_joins_the_face():
    """A descent that left one support entry at 0 (|g_i| > λ there; DCS lets atoms near the
    breakpoint in last): the face, given the gradient, frees it with the sign −sign(g_i), and the
    polish lands on the Lasso optimum."""
    X, y = least_squares(n=80, d=20, k=4, noise=0.1)
    lam = 0.05
    loss = lambda w: 0.5 * (X @ w - y).square().mean()  # noqa: E731
    reference = symopt.solve(lasso(X, y, lam), tol=1e-10).x
    missing = int(torch.where(reference != 0, reference.abs(), torch.inf).argmin())  # the smallest: nearest to λ
    start = reference.clone()
    start[missing] = 0.0
    probe = start.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(probe), probe)
    c = symopt.Sparse(lam)
    assert abs(float(grad[missing])) > lam  # the optimality condition of that zero fails
    face = c.face(start, 1e-12, grad)
    assert face.start[0].numel() == int((reference != 0).sum())  # the support, the missing entry included
    assert c.face(start, 1e-12).start[0].numel() == int((reference != 0).sum()) - 1  # without the gradient
    polished, residual = polish_on_face(loss, c, start, 1e-10, target=1e-7)
    assert residual < 1e-7 and torch.allclose(polished, reference, atol=1e-7)


def test_a_zero_group_that_should_enter_joins_the_face():
    """The same for groups: a group left at 0 with ‖g_g‖ > λ enters (started off its kink) and the
    polish reaches the group-lasso optimum."""
    problem = make_group_lasso(n=100, d=40, group_size=4, active_groups=3, seed=3)
    data = problem.data_on("cpu", DT)
    loss = lambda w: problem.loss(w, **data)  # noqa: E731
    c = problem.constraint()
    reference = symopt.solve(problem, tol=1e-10).x
    norms = c.group_norms(reference)
    weakest = int(torch.where(norms > 0, norms, torch.inf).argmin())
    start = reference.clone()
    start[c.group_ids(start) == weakest] = 0.0
    probe = start.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(probe), probe)
    assert float(c.group_norms(grad)[weakest]) > c.strength
    assert c.face(start, 1e-12, grad).start[0].numel() == c.face(reference, 1e-12).start[0].numel()
    polished, residual = polish_on_face(loss, c, start, 1e-10, target=1e-7)
    assert residual < 1e-7 and torch.allclose(polished, reference, atol=1e-6)


def test_polish_on_a_wrong_face_reports_an_honest_residual_and_repairs_it():
    """A wrong sign makes the face objective wrong: that atom crosses 0 on the face and leaves, then
    rejoins with the right sign (its gradient at the smaller face's optimum exceeds λ: an
    active-set round). The residual is always that of the point returned."""
    X, y = least_squares(n=80, d=20, k=4, noise=0.1)
    loss = lambda w: 0.5 * (X @ w - y).square().mean()  # noqa: E731
    c = symopt.Sparse(0.05)
    reference = symopt.solve(lasso(X, y, 0.05), tol=1e-10).x
    wrong = reference.clone()
    wrong[0] = -wrong[0]
    assert kkt_at_snap(loss, c, wrong, 1e-10, levels=1)[1] > 1e-3
    polished, residual = polish_on_face(loss, c, wrong, 1e-10, target=1e-12)
    _, recomputed = kkt_at_snap(loss, c, polished, 1e-10, levels=1)
    assert residual == pytest.approx(recomputed, rel=1e-12, abs=1e-15)
    assert residual <= 1e-12
    torch.testing.assert_close(polished, reference, rtol=1e-8, atol=1e-10)


def test_polish_admits_the_atoms_its_face_optimum_pulls_in():
    """From the support with its two smallest atoms removed, the face optimum's gradient exceeds λ
    at those two: they join, and the polish lands on the optimum (it stopped at the smaller face)."""
    X, y = least_squares(n=80, d=20, k=6, noise=0.1)
    loss = lambda w: 0.5 * (X @ w - y).square().mean()  # noqa: E731
    c = symopt.Sparse(0.02)
    reference = symopt.solve(lasso(X, y, 0.02), tol=1e-10).x
    alive = reference.abs().gt(0).nonzero().squeeze(1)
    assert alive.numel() >= 6
    smallest = alive[reference[alive].abs().argsort()[:2]]
    partial = reference.clone()
    partial[smallest] = 0.0
    polished, residual = polish_on_face(loss, c, partial, 1e-10, target=1e-12)
    assert residual <= 1e-12
    torch.testing.assert_close(polished, reference, rtol=1e-8, atol=1e-10)


def test_polish_skips_a_face_that_is_large_and_not_small_relative_to_theta():
    c = symopt.Sparse(0.1)
    dense = torch.randn(2 * SMALL_FACE + 2, dtype=DT)
    assert polish_on_face(lambda w: w.square().sum(), c, dense, 1e-8, target=1e-8) is None


def test_polish_solves_a_small_face_even_if_dense():
    """Working-set sub-problems are small and often mostly alive: their face is still polished."""
    c = symopt.Sparse(0.1)
    dense = torch.randn(10, dtype=DT, generator=torch.Generator().manual_seed(0)) + 3.0  # all entries stay non-zero at the optimum (w − 0.05·sign)
    polished = polish_on_face(lambda w: (w - 3.0).square().sum(), c, dense, 1e-8, target=1e-8)
    assert polished is not None and polished[1] < 1e-8


@pytest.mark.parametrize("make", [lambda: make_logistic_l1(n=300, d=100),
                                  lambda: make_group_lasso(n=100, d=200, group_size=4),
                                  lambda: make_matrix_completion(m=30, n=30, rank=2, observed=0.5)],
                         ids=["logistic_l1", "group_lasso", "completion"])
def test_solve_agrees_with_and_without_polish(make):
    problem = make()
    plain, polished = symopt.solve(problem, polish=False), symopt.solve(problem)
    assert plain.status == polished.status == "optimal"
    assert polished.objective <= plain.objective + 1e-9 * max(1.0, abs(plain.objective))
    assert polished.iterations <= plain.iterations
    reference = symopt.solve(problem, tol=1e-9)
    assert abs(polished.objective - reference.objective) <= 1e-6 * max(1.0, abs(reference.objective))


def test_polish_removes_the_slow_tail_on_logistic_l1():
    """Without the polish the KKT residual creeps down for tens of outer iterations (entries whose
    gradient sits near λ shrink geometrically); with it the face solve certifies within a few."""
    problem = make_logistic_l1(n=500, d=200)
    assert symopt.solve(problem, method="lbfgs").iterations <= 6  # torch's L-BFGS on the parametrization
    assert symopt.solve(problem, method="lbfgs", polish=False).iterations >= 40
    # The lean loop's weak-Wolfe L-BFGS (symopt.solver.flat) has a much shorter tail (7 outer iterations
    # where torch's took 85, measured); the polish still shortens it.
    assert symopt.solve(problem).iterations <= min(6, symopt.solve(problem, polish=False).iterations)


def test_polish_option_is_checked():
    with pytest.raises(TypeError, match="polish must be True or False"):
        symopt.solve(make_logistic_l1(), polish="yes")


def test_compiled_loss_gives_the_same_answer():
    """``compile=True`` runs the loss through torch.compile (inductor; a C compiler on the CPU): the
    answer is the plain one to the tolerance."""
    problem = make_logistic_l1(n=200, d=50)
    plain, compiled = symopt.solve(problem), symopt.solve(problem, compile=True)
    assert compiled.status == "optimal"
    assert compiled.objective == pytest.approx(plain.objective, rel=1e-9)
    assert torch.equal(compiled.x != 0, plain.x != 0)
    with pytest.raises(TypeError, match="compile must be True or False"):
        symopt.solve(problem, compile=1)


def test_a_quick_estimate_that_fell_short_does_not_stay_the_best_point(monkeypatch):
    """A low-rank residual estimated from the normal part's leading singular values can fall short of
    the exact one (china.jpg completion: 2.4e-5 estimated, 6.3e-4 exact, the target 1.2e-4). The
    certifier confirms an estimate below the target exactly; the point must then keep the exact
    residual as its record, or it stays "best", unpolished, while the descent's points lose to it."""
    import symopt.solver.certifier as certifier_module
    from symopt.constraints import LowRank
    from symopt.solver.certifier import Certifier

    def fake_kkt_at_snap(loss, constraint, theta, tol, levels=5, quick=False):
        return theta, (1e-9 if quick else 1.0)  # the estimate far below the exact residual

    monkeypatch.setattr(certifier_module, "kkt_at_snap", fake_kkt_at_snap)
    assert LowRank(0.1).quick_kkt
    certifier = Certifier(lambda theta: theta.square().sum(), {}, 1e-6, 1e-3, 20, polish=False)
    point, kkt, _, _ = certifier.certify(torch.ones(4, 3, dtype=DT), LowRank(0.1))
    assert kkt == 1.0 and certifier.best[1] == 1.0


@pytest.mark.parametrize("gains", [False, True])
def test_a_best_point_the_polish_left_unchanged_is_not_polished_again(monkeypatch, gains):
    """The descent's point is worse than the best one, which the certifier takes instead. When the
    polish and the finish ran from that best point and found nothing better, running them from it
    again would only repeat that (china.jpg completion: three such polishes, 65 ms each): they are
    skipped. When they did improve it, the improved point is polished again (its polish goes on)."""
    import symopt.solver.certifier as certifier_module
    from symopt.constraints import LowRank
    from symopt.solver.certifier import Certifier

    calls = []

    def fake_kkt_at_snap(loss, constraint, theta, tol, levels=5, quick=False):
        return theta, float(theta.abs().sum())

    def fake_polish(loss, constraint, point, *args, **kwargs):
        calls.append(("polish", float(point.abs().sum())))
        return (0.5 * point, 0.5 * float(point.abs().sum())) if gains else None

    def fake_finish(loss, constraint, point, *args, **kwargs):
        calls.append(("finish", float(point.abs().sum())))
        return None

    monkeypatch.setattr(certifier_module, "kkt_at_snap", fake_kkt_at_snap)
    monkeypatch.setattr(certifier_module, "polish_on_face", fake_polish)
    monkeypatch.setattr(certifier_module, "proximal_finish", fake_finish)
    constraint = LowRank(0.1)
    assert constraint.finishes_by_prox(torch.ones(4, 3, dtype=DT))
    certifier = Certifier(lambda theta: theta.square().sum(), {}, 1e-6, 1e-3, 20, polish=True)
    certifier.certify(2 * torch.ones(4, 3, dtype=DT), constraint)  # residual 24: polished, finished
    best = 12.0 if gains else 24.0  # (the polish halves it and the finish finds nothing; or neither does)
    assert calls == ([("polish", 24.0), ("finish", 12.0)] if gains else [("polish", 24.0), ("finish", 24.0)])
    calls.clear()
    point, kkt, _, _ = certifier.certify(3 * torch.ones(4, 3, dtype=DT), constraint)  # 36: the best point instead
    assert kkt == (best / 2 if gains else best)
    assert calls == ([("polish", 12.0), ("finish", 6.0)] if gains else [])
    calls.clear()
    certifier.certify(0.125 * torch.ones(4, 3, dtype=DT), constraint)  # 1.5: a better point is polished
    assert calls == ([("polish", 1.5), ("finish", 0.75)] if gains else [("polish", 1.5), ("finish", 1.5)])


@pytest.mark.parametrize("second_certifies", [False, True])
def test_a_polish_that_gains_tenfold_polishes_again_and_keeps_only_a_certified_point(monkeypatch,
                                                                                      second_certifies):
    """A polish that cut the residual tenfold (and no proximal finish follows) is followed by a second
    one from its point, which may certify the solve at once (china.jpg completion at 0.1 λ_max: one
    outer iteration instead of two). The second's point is kept only if it is within the target: a
    better point that is not would hold the best-point slot (china.jpg at 0.02 λ_max: 6 → 13 outer
    iterations)."""
    import symopt.solver.certifier as certifier_module
    from symopt.solver.certifier import Certifier

    calls = []

    def fake_kkt_at_snap(loss, constraint, theta, tol, levels=5, quick=False):
        return theta, float(theta.abs().sum())

    def fake_polish(loss, constraint, point, *args, **kwargs):
        if kwargs.get("proximal_newton_only"):  # (the finish of a point within tolerance: not this test's)
            return None
        calls.append(float(point.abs().sum()))
        factor = 0.01 if len(calls) == 1 else (1e-6 if second_certifies else 0.5)
        return factor * point, factor * float(point.abs().sum())

    monkeypatch.setattr(certifier_module, "kkt_at_snap", fake_kkt_at_snap)
    monkeypatch.setattr(certifier_module, "polish_on_face", fake_polish)
    constraint = symopt.Sparse(0.1)
    assert not constraint.finishes_by_prox(torch.ones(12, dtype=DT))
    certifier = Certifier(lambda theta: theta.square().sum(), {}, 1e-6, 1e-3, 20, polish=True)
    _, kkt, _, _ = certifier.certify(torch.ones(12, dtype=DT), constraint)  # residual 12 → 0.12 → ...
    assert calls == [12.0, pytest.approx(0.12)]
    assert kkt == (pytest.approx(1.2e-7) if second_certifies else pytest.approx(0.12))


def test_a_low_rank_face_hessian_from_the_losses_curvature_is_autograds():
    # The mapped face's Hessian J^T H J + the map's and the norm's own terms (`_face_hessian`, from the
    # matrix least-squares loss's curvature) is the Hessian of the whole face objective, which
    # autograd differentiates twice through the data
    from symopt.constraints import LowRank
    from symopt.optimality import _face_hessian
    from symopt.problems import low_rank_regression

    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(30, 6, generator=gen, dtype=DT), torch.randn(30, 4, generator=gen, dtype=DT)
    problem = low_rank_regression(X, Y, strength=0.1)
    loss = problem.bind(problem.data_on("cpu", DT))
    W = torch.randn(6, 4, generator=gen, dtype=DT)
    face = LowRank(0.1).face(W, 1e-12)
    second = _face_hessian(loss, 0.1, face)
    assert second is not None
    sizes, shapes = [t.numel() for t in face.start], [t.shape for t in face.start]
    z = torch.cat([t.reshape(-1) for t in face.start])

    def objective(v):
        parts = [p.reshape(s) for p, s in zip(torch.split(v, sizes), shapes)]
        return loss(face.embed(*parts)) + 0.1 * face.norm(*parts)

    expected = torch.autograd.functional.hessian(objective, z)
    assert torch.allclose(second(z), expected, atol=1e-10, rtol=1e-9)


def test_a_reduced_rank_regression_on_raw_pixels_is_certified_optimal():
    # Raw digits pixels: some are always 0 (XᵀX singular), the others range over 0-16. The face
    # polish's L-BFGS and the proximal finish gained ~10% a round and the solve stopped "stalled"
    # after 39 outer iterations, 6e-8 above cvxpy's objective; Newton on the low-rank face, once
    # the descent no longer helps (`newton_polish`), certifies it
    cp = pytest.importorskip("cvxpy")
    from sklearn.datasets import load_digits

    from symopt.problems import low_rank_regression

    digits = load_digits()
    X, Y = digits.data.astype(float), np.eye(10)[digits.target]
    result = symopt.solve(low_rank_regression(torch.as_tensor(X), torch.as_tensor(Y), strength=0.01))
    assert result.status == "optimal"
    W = cp.Variable((64, 10))
    reference = cp.Problem(cp.Minimize(0.5 / len(Y) * cp.sum_squares(X @ W - Y) + 0.01 * cp.normNuc(W)))
    reference.solve()
    assert result.objective <= reference.value + 1e-8 * abs(reference.value)
