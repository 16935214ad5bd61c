"""The weighted group lasso, λ Σ_g c_g ‖w_g‖₂: the gated product w_g = s_g ω_g / c_g under one decay λ
induces it exactly, and every layer (prox, KKT, dual, λ_max, working sets, budgets, estimator)
asks the constraint for the weights. Checked against skglm's GroupLasso(weights=) and cvxpy."""

import numpy as np
import pytest
import torch
from torch import nn

import symopt
from symopt.problems import group_lasso

DT = torch.float64


def _diabetes():
    sklearn = pytest.importorskip("sklearn.datasets")
    return sklearn.load_diabetes(return_X_y=True)


GROUPS = [[0, 1], [2], [3, 4, 5], [6, 7, 8, 9]]  # unequal sizes: age+sex, bmi, bp+s1+s2, s3..s6
ROOTS = [float(np.sqrt(len(g))) for g in GROUPS]


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_matches_skglm_and_cvxpy_on_diabetes(fit_intercept):
    pytest.importorskip("skglm")
    pytest.importorskip("cvxpy")
    from symopt.baselines import solve_cvxpy, solve_skglm

    X, y = _diabetes()
    problem = group_lasso(X, y, GROUPS, 1.0, group_weights=ROOTS, fit_intercept=fit_intercept)
    problem = problem.at_strength(0.2 * problem.strength_max())
    ours, theirs, twin = symopt.solve(problem), solve_skglm(problem), solve_cvxpy(problem)
    assert ours.status == "optimal" and "weighted" in problem.name
    assert abs(ours.objective - theirs.objective) <= 1e-9 * abs(theirs.objective)
    assert abs(ours.objective - twin.objective) <= 1e-7 * abs(twin.objective)
    assert float((ours.x - theirs.x).abs().max()) <= 1e-5 * float(theirs.x.abs().max())
    certificate = symopt.certify(ours)
    assert certificate.ok


def test_the_weights_move_the_answer_and_the_threshold_is_exact():
    """A zero group is exact iff ‖X_gᵀ r‖₂ / n ≤ λ c_g: raising one group's weight past its gradient
    norm at the unweighted answer removes it, and the KKT conditions hold with c_g at the new answer."""
    X, y = _diabetes()
    X = (X - X.mean(0)) / X.std(0)
    plain = group_lasso(X, y, GROUPS, 2.0)
    first = symopt.solve(plain)
    norms = torch.stack([first.x[g].norm() for g in GROUPS])
    assert bool((norms > 0).all())
    weights = [1.0, 1.0, 1.0, 50.0]
    heavy = symopt.solve(group_lasso(X, y, GROUPS, 2.0, group_weights=weights))
    assert float(heavy.x[GROUPS[3]].abs().max()) == 0.0 and float(heavy.x[GROUPS[1]].abs().max()) > 0
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    grad = Xt.T @ (Xt @ heavy.x - yt) / len(y)
    for g, c in zip(GROUPS, weights):
        if float(heavy.x[g].norm()) == 0.0:
            assert float(grad[g].norm()) <= 2.0 * c
        else:  # stationarity on an alive group: g_g + λ c_g w_g / ‖w_g‖ = 0
            unit = heavy.x[g] / heavy.x[g].norm()
            assert float((grad[g] + 2.0 * c * unit).norm()) <= 1e-6 * float(grad.norm())


def test_strength_max_divides_by_the_weights():
    X, y = _diabetes()
    problem = group_lasso(X, y, GROUPS, 1.0, group_weights=ROOTS)
    grad = -torch.as_tensor(X).T @ torch.as_tensor(y) / len(y)
    expected = max(float(grad[g].norm()) / c for g, c in zip(GROUPS, ROOTS))
    assert problem.strength_max() == pytest.approx(expected, rel=1e-12)
    at_max = symopt.solve(problem.at_strength(problem.strength_max()))
    assert at_max.status == "optimal" and float(at_max.x.abs().max()) == 0.0
    below = symopt.solve(problem.at_strength(0.999 * problem.strength_max()))
    assert float(below.x.abs().max()) > 0.0


def test_working_sets_with_weights_match_skglm():
    """1500 groups of sizes 1, 2, 3 with c_g = √|g|: the working sets rank violators by ‖g_g‖ / c_g."""
    pytest.importorskip("skglm")
    from symopt.baselines import solve_skglm
    from symopt.solver.working_set import applies

    g = torch.Generator().manual_seed(0)
    n, d = 150, 3000
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = X[:, :12] @ torch.randn(12, generator=g, dtype=DT) + 0.1 * torch.randn(n, generator=g, dtype=DT)
    groups, start = [], 0
    for size in [1, 2, 3] * (d // 6):
        groups.append(list(range(start, start + size)))
        start += size
    problem = group_lasso(X, y, groups, 1.0, group_weights=[float(np.sqrt(len(m))) for m in groups])
    problem = problem.at_strength(0.1 * problem.strength_max())
    assert applies(problem, problem.constraint())
    ours, theirs = symopt.solve(problem), solve_skglm(problem)
    assert ours.status == "optimal" and "working sets" in ours.message
    assert abs(ours.objective - theirs.objective) <= 1e-8 * abs(theirs.objective)


def test_training_a_module_lands_on_the_weighted_prox():
    """½‖θ − t‖² + decay trained by L-BFGS on a Linear's rows lands on the block soft-threshold at
    λ c_g, and the decay equals λ Σ c_g ‖θ_g‖ at the balanced point."""
    lin = nn.Linear(5, 4, bias=False).double()
    weights = [0.5, 1.0, 2.0, 4.0]
    c = symopt.GroupSparse(dim=0, strength=0.6, weights=weights)
    symopt.constrain(lin, "weight", c)
    target = 2 * torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=100, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-15, tolerance_change=0.0)
    symopt.bind(opt)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (lin.weight - target).square().sum() + symopt.penalty(lin)
        loss.backward()
        return loss

    for _ in range(60):
        opt.step(closure)
    norms = target.norm(dim=1)
    expected = target * (1 - 0.6 * torch.tensor(weights, dtype=DT) / norms).clamp_min(0)[:, None]
    assert torch.allclose(lin.weight.detach(), expected, atol=1e-6)
    assert torch.allclose(c.prox(target, 1.0), expected, atol=1e-12)
    induced = 0.6 * float((torch.tensor(weights, dtype=DT) * expected.norm(dim=1)).sum())
    assert float(symopt.penalty(lin)) == pytest.approx(induced, rel=1e-5)
    assert c.kkt_residual(lin.weight.detach(), (lin.weight - target).detach(), 1e-8) <= 1e-5


def test_a_group_budget_with_weights_lands_exactly():
    """max_groups with weights: λ adapts on ‖g_g‖ / c_g and exactly k groups survive the landing."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 8).double()
    symopt.constrain(lin, "weight", symopt.GroupSparse(dim=0, max_groups=3, total_steps=300,
                                                        weights=[1.0 + i for i in range(8)]))
    X = torch.randn(256, 6, dtype=DT)
    Y = X @ torch.randn(6, 8, dtype=DT)
    opt = torch.optim.Adam(symopt.param_groups(lin), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (lin(X) - Y).square().mean().backward()
        opt.step()
    alive = int((lin.weight.detach().norm(dim=1) > 0).sum())
    assert alive == 3
    symopt.finalize(lin)


@pytest.mark.parametrize("weights, error, match", [
    ([1.0, 2.0], ValueError, "2 weights for 4 groups"),
    ([1.0, 0.0, 1.0, 1.0], ValueError, "finite and > 0"),
    ([1.0, -1.0, 1.0, 1.0], ValueError, "finite and > 0"),
    ([1.0, float("nan"), 1.0, 1.0], ValueError, "finite and > 0"),
    ([[1.0, 2.0], [3.0, 4.0]], ValueError, "1-d"),
    ("heavy", TypeError, "sequence or 1-d tensor"),
    (["a", "b", "c", "d"], TypeError, "numbers"),
])
def test_bad_weights_are_refused_before_anything_changes(weights, error, match):
    lin = nn.Linear(5, 4)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(error, match=match):
        symopt.constrain(lin, "weight", symopt.GroupSparse(dim=0, weights=weights))
    assert not hasattr(lin, "parametrizations")
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    X, y = _diabetes()
    with pytest.raises(error, match=match.replace("4 groups", "4 groups")):
        group_lasso(X, y, GROUPS, 0.1, group_weights=weights)


def test_estimator_takes_weights_as_skglm_does():
    skglm = pytest.importorskip("skglm")
    from symopt.estimators import GroupLasso

    X, y = _diabetes()
    X = (X - X.mean(0)) / X.std(0)
    ours = GroupLasso(groups=GROUPS, alpha=3.0, weights=ROOTS).fit(X, y)
    theirs = skglm.GroupLasso(groups=GROUPS, alpha=3.0, weights=np.array(ROOTS), tol=1e-10).fit(X, y)
    assert np.allclose(ours.coef_, theirs.coef_, atol=1e-6 * np.abs(theirs.coef_).max())
    assert ours.intercept_ == pytest.approx(theirs.intercept_, rel=1e-8)
