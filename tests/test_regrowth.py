"""symopt.regrow (issue 20, item 4): zeros that should be zero become exactly zero during training, and
zeros that should leave do so at once. The reference is scikit-learn's solver on real data: the Lasso
on diabetes, the multi-task Lasso (a group lasso over input features) on wine, after λ is lowered
mid-training, the case where the factors had decayed to 1e-100 and grew back at lr·(|g| − λ) a step."""

import numpy as np
import pytest
import torch
from torch import nn

import symopt
from helpers import optimizer_step

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_diabetes, load_wine  # noqa: E402
from sklearn.linear_model import Lasso, MultiTaskLasso  # noqa: E402

FIRST, SECOND = 2000, 2000  # steps at the large λ, then at the small one


def _standardised(X):
    X = X - X.mean(0)
    return X / X.std(0)


def _diabetes():
    X, y = load_diabetes(return_X_y=True)
    return torch.tensor(_standardised(X)), torch.tensor(y - y.mean()).unsqueeze(1)


def _wine():
    X, label = load_wine(return_X_y=True)
    Y = torch.nn.functional.one_hot(torch.tensor(label)).double()
    return torch.tensor(_standardised(X)), Y - Y.mean(0)


def _objective(W, X, Y, lam, rows: bool) -> float:
    """(1/2n)‖Y − X Wᵀ‖² + λ·(Σ|w| or Σ_j ‖column j of W‖): scikit-learn's Lasso / MultiTaskLasso."""
    fit = 0.5 * float(((X @ W.T - Y) ** 2).sum()) / len(X)
    return fit + lam * float(W.norm(dim=0).sum() if rows else W.abs().sum())


def _reference(X, Y, lam, grouped: bool, positive: bool = False):
    options = {"positive": True} if positive else {}
    estimator = (MultiTaskLasso if grouped else Lasso)(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=10 ** 6,
                                                       **options)
    coef = estimator.fit(X.numpy(), Y.numpy() if grouped else Y[:, 0].numpy()).coef_
    return torch.tensor(coef).reshape(Y.shape[1], X.shape[1])


def _lowered(X, Y, make, lams, optimizer, with_regrowth, lr=0.01, second=SECOND):
    """Train a bias-free Linear at lams[0] for FIRST steps, then at lams[1] for ``second``: returns the
    weight, the relative objective gap to scikit-learn's at lams[1], and the Regrowth (or None)."""
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], Y.shape[1], bias=False).double()
    handle = make(model, lams[0])
    opt = optimizer(symopt.param_groups(model, lr=lr), lr=lr)
    growth = symopt.regrow(model, opt) if with_regrowth else None
    for step in range(FIRST + second):
        if step == FIRST:
            handle.constraint.strength = lams[1]  # the groups from param_groups follow: weight_decay = λ₂
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
    grouped = handle.kind == "group_sparse"
    W = model.weight.detach()
    best = _objective(_reference(X, Y, lams[1], grouped, handle.kind == "nonnegative"), X, Y, lams[1], grouped)
    return W, (_objective(W, X, Y, lams[1], grouped) - best) / best, growth


SPARSE = (lambda model, lam: symopt.sparse(model, "weight", strength=lam))
ROWS = (lambda model, lam: symopt.group_sparse(model, "weight", dim=1, strength=lam))


def NONNEGATIVE(model, lam):
    with torch.no_grad():
        model.weight.abs_()  # a start inside the orthant (registration would project it there, warning)
    return symopt.nonnegative(model, "weight", strength=lam)


@pytest.mark.parametrize("optimizer,second", [(torch.optim.SGD, 2000), (torch.optim.Adam, 3000)], ids=["sgd", "adam"])
def test_lowering_lambda_regrows_to_the_lasso(optimizer, second):
    """Lasso on diabetes, λ 10 → 0.5: the atoms that should enter had decayed to ~1e-100 at λ = 10.
    With regrow the objective is scikit-learn's to 1e-9 within 2000 (SGD) / 3000 (Adam) steps and the
    zeros are its zeros, exactly; without it, the same steps end 1e-4 or more above it (SGD: 4e-2)."""
    X, Y = _diabetes()
    W, gap, growth = _lowered(X, Y, SPARSE, (10.0, 0.5), optimizer, True, second=second)
    _, gap_without, _ = _lowered(X, Y, SPARSE, (10.0, 0.5), optimizer, False, second=second)
    reference = _reference(X, Y, 0.5, False)
    assert gap < 1e-9
    assert gap_without > 1e-4
    assert torch.equal(W == 0, reference == 0)  # the same support, its zeros exactly 0
    assert growth.regrown["weight"] > 0 and growth.snapped["weight"] > 0


def test_lowering_lambda_regrows_the_multitask_lasso():
    """A group lasso over input features (group_sparse(dim=1)) on wine, λ 0.3 → 0.05, GD: regrown
    groups reach scikit-learn's MultiTaskLasso to 1e-10 with its zero features exactly 0; without
    regrow the objective is still 2.6% above it."""
    X, Y = _wine()
    W, gap, growth = _lowered(X, Y, ROWS, (0.3, 0.05), torch.optim.SGD, True, lr=0.2)
    _, gap_without, _ = _lowered(X, Y, ROWS, (0.3, 0.05), torch.optim.SGD, False, lr=0.2)
    reference = _reference(X, Y, 0.05, True)
    assert gap < 1e-10
    assert gap_without > 1e-2
    assert torch.equal(W.norm(dim=0) == 0, reference.norm(dim=0) == 0)
    assert growth.regrown["weight"] > 0


def test_lowering_lambda_regrows_the_nonnegative_lasso():
    """The non-negative Lasso (θ = ½u⊙u) on diabetes, λ 10 → 0.5, GD: an entry's pull off zero is
    (−∂ℓ/∂θ_i)⁺, not |∂ℓ/∂θ_i| (a positive gradient pushes it against the orthant's wall). With regrow
    the objective reaches scikit-learn's Lasso(positive=True) to 1e-9 with its zeros exactly 0; the
    entries it keeps at 0 are those whose gradient is positive or below λ; without it, 4e-4 above."""
    X, Y = _diabetes()
    W, gap, growth = _lowered(X, Y, NONNEGATIVE, (10.0, 0.5), torch.optim.SGD, True)
    _, gap_without, _ = _lowered(X, Y, NONNEGATIVE, (10.0, 0.5), torch.optim.SGD, False)
    reference = _reference(X, Y, 0.5, False, positive=True)
    assert gap < 1e-9
    assert gap_without > 1e-4
    assert torch.equal(W == 0, reference == 0)
    assert bool((W >= 0).all()) and growth.regrown["weight"] > 0 and growth.snapped["weight"] > 0


def test_a_tensor_zeroed_by_a_lambda_above_lambda_max_comes_back():
    """λ = 2 λ_max for 2000 GD steps puts every entry of the diabetes Lasso at exactly 0.0 (underflow),
    from where no gradient moves the factors: lowered to 0.5, plain GD stays at 0 (the objective at
    zero). regrow seeds the entries off it by one proximal step each (there is no largest atom to
    scale by) and reaches scikit-learn's objective to 1e-8 in 2000 steps."""
    X, Y = _diabetes()
    lam_max = float((X.T @ Y).abs().max()) / len(X)
    W, gap, growth = _lowered(X, Y, SPARSE, (2 * lam_max, 0.5), torch.optim.SGD, True)
    W_plain, gap_plain, _ = _lowered(X, Y, SPARSE, (2 * lam_max, 0.5), torch.optim.SGD, False)
    assert gap < 1e-8 and growth.regrown["weight"] >= int((_reference(X, Y, 0.5, False) != 0).sum())
    assert bool((W_plain == 0).all()) and gap_plain > 0.5


def test_a_channel_group_over_weight_and_bias_comes_back_to_the_cvxpy_optimum():
    """group_sparse over a Linear's weight rows and bias entries (one gate per output unit, the channel
    group of a conv + BN), wine's one-hot classes: λ = 2 λ_max for 2000 GD steps puts every unit at 0.0;
    lowered to 0.3 λ_max, regrow seeds the units off it and reaches cvxpy's group lasso to 1e-7 in 2000
    steps, SGD momentum state and all; plain GD stays at 0."""
    cp = pytest.importorskip("cvxpy")
    X, Y = _wine()
    n, d, k = X.shape[0], X.shape[1], Y.shape[1]
    lam_max = float((X.T @ Y).norm(dim=0).max()) / n
    lams = (2 * lam_max, 0.3 * lam_max)

    W, b = cp.Variable((k, d)), cp.Variable(k)
    fit = 0.5 * cp.sum_squares(X.numpy() @ W.T + np.ones((n, 1)) @ cp.reshape(b, (1, k), order="C") - Y.numpy()) / n
    problem = cp.Problem(cp.Minimize(fit + lams[1] * sum(cp.norm(cp.hstack([W[c], b[c:c + 1]])) for c in range(k))))
    problem.solve(solver=cp.CLARABEL)
    best = problem.value

    def train(with_regrowth: bool):
        torch.manual_seed(0)
        model = nn.Linear(d, k).double()
        handle = symopt.group_sparse(model, ["weight", "bias"], strength=lams[0])
        opt = torch.optim.SGD(symopt.param_groups(model, lr=0.1), lr=0.1, momentum=0.5)
        growth = symopt.regrow(model, opt) if with_regrowth else None
        for step in range(4000):
            if step == 2000:
                handle.constraint.strength = lams[1]
            opt.zero_grad()
            (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
            opt.step()
        W_, b_ = model.weight.detach(), model.bias.detach()
        units = torch.cat([W_, b_[:, None]], 1).norm(dim=1)
        objective = 0.5 * float(((X @ W_.T + b_ - Y) ** 2).sum()) / n + lams[1] * float(units.sum())
        return (objective - best) / best, units, growth

    gap, units, growth = train(True)
    gap_plain, units_plain, _ = train(False)
    assert abs(gap) < 1e-7 and growth.regrown["weight, bias"] >= int((units > 0).sum()) > 0
    assert bool((units_plain == 0).all()) and gap_plain > 0.1


@pytest.mark.parametrize("optimizer", [lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
                                       lambda p, lr: torch.optim.Adam(p, lr=lr)], ids=["momentum", "adam"])
@pytest.mark.parametrize("grouped", [False, True], ids=["entries", "groups"])
def test_held_zeros_stay_exactly_zero_under_momentum(optimizer, grouped):
    """Once snapped, an atom's factors are 0.0 after every step, although the optimizer's momentum
    (SGD's buffer, Adam's averages) was built while they were moving: its state is put on zero with
    them. The held atoms are the reference's zeros (diabetes Lasso at λ = 10; wine's multi-task Lasso
    at λ = 0.3)."""
    X, Y = _wine() if grouped else _diabetes()
    lam = 0.3 if grouped else 10.0
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], Y.shape[1], bias=False).double()
    (ROWS if grouped else SPARSE)(model, lam)
    opt = optimizer(symopt.param_groups(model), 0.03 if grouped else 0.01)
    growth = symopt.regrow(model, opt)
    plist = model.parametrizations.weight
    held_seen = 0
    for _ in range(1500):
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
        held = growth.held("weight")
        held_seen = max(held_seen, int(held.sum()))
        if grouped:
            assert bool((plist.original0[held] == 0).all()) and bool((plist.original1[:, held] == 0).all())
        else:
            assert bool((plist.original0.view(-1)[held] == 0).all()) and bool((plist.original1.view(-1)[held] == 0).all())
    reference = _reference(X, Y, lam, grouped)
    zeros = (reference.norm(dim=0) == 0) if grouped else (reference == 0).view(-1)
    assert held_seen == int(zeros.sum()) > 0
    assert torch.equal(growth.held("weight"), zeros)


def test_seeded_atoms_point_down_the_gradient_with_balanced_factors():
    """seed_atoms puts an atom at −size·g/‖g‖ (an entry, or a group with weight c: its atom c·size),
    with the split at which the decay equals λ times the induced norm."""
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    for constraint in (symopt.Sparse(strength=0.3), symopt.GroupSparse(dim=1, strength=0.3, weights=weights)):
        holder = nn.Module()
        holder.w = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
        symopt.constrain(holder, "w", constraint)
        plist = holder.parametrizations.w
        factors = (plist.original0.detach(), plist.original1.detach())
        grad = torch.randn(4, 5, dtype=torch.float64)
        which = torch.zeros(constraint.atom_count(grad), dtype=torch.bool)
        which[::2] = True
        size = torch.rand(len(which), dtype=torch.float64) + 0.1
        constraint.land(factors, which)  # the other atoms on their fixed point: only the seeded ones count
        constraint.seed_atoms(factors, which, grad, size)
        value = holder.w.detach()
        grouped = constraint.kind == "group_sparse"
        expected = size * weights if grouped else size
        torch.testing.assert_close(constraint.atoms(value)[which], expected[which])
        direction = grad / (grad.norm(dim=0) if grouped else grad.abs())
        seeded = which.view(1, 5).expand(4, 5) if grouped else which.view(4, 5)
        torch.testing.assert_close(value[seeded], -(direction * (size.view(1, 5) if grouped else size.view(4, 5)))[seeded])
        torch.testing.assert_close(constraint.penalty(*factors), 0.3 * constraint.induced_norm(value))


def _scaled_run(mode: str, low_rank: bool = False):
    """600 steps of the diabetes Lasso, λ 10 → 0.5 half way (with ``low_rank``: digits' reduced-rank
    regression, λ 0.7 λ_max → 0.05), under a GradScaler of scale 2^10 handed to regrow ("told"), to
    symopt.bind ("bound"), to neither ("untold"), or without one ("none")."""
    X, Y = _digits_regression() if low_rank else _diabetes()
    lams = (0.7 * float(torch.linalg.matrix_norm(X.T @ Y / len(X), 2)), 0.05) if low_rank else (10.0, 0.5)
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], Y.shape[1], bias=False).double()
    handle = (symopt.low_rank if low_rank else symopt.sparse)(model, "weight", strength=lams[0])
    lr = 0.05 if low_rank else 0.01
    opt = torch.optim.SGD(symopt.param_groups(model, lr=lr), lr=lr)
    scaler = None if mode == "none" else torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10 ** 6)
    growth = symopt.regrow(model, opt, scaler=scaler if mode == "told" else None)
    if mode == "bound":
        symopt.bind(opt, scaler=scaler)
    for step in range(600):
        if step == 300:
            handle.constraint.strength = lams[1]
        opt.zero_grad()
        loss = 0.5 * ((model(X) - Y) ** 2).sum(1).mean()
        optimizer_step(opt, loss, scaler)
    return model.weight.detach(), growth.snapped["weight"], growth.regrown["weight"]


@pytest.mark.parametrize("low_rank", [False, True], ids=["sparse", "low_rank"])
def test_a_grad_scaler_handed_to_regrow_gives_the_unscaled_run(low_rank):
    # (low rank: the pulls are singular values of the mean gradient, which the scale multiplies too)
    plain, untold = _scaled_run("none", low_rank), _scaled_run("untold", low_rank)
    assert plain[1] > 0 and plain[2] > 0  # (atoms were snapped and regrown: the decisions are tested)
    for told in (_scaled_run("told", low_rank), _scaled_run("bound", low_rank)):
        assert plain[1:] == told[1:]
        torch.testing.assert_close(told[0], plain[0], rtol=1e-9, atol=1e-12)
    assert untold[1:] != plain[1:]  # the scaled gradient (1024×) pulls every zero off it


def test_a_resumed_run_continues_bit_identically():
    X, Y = _diabetes()

    def build():
        torch.manual_seed(0)
        model = nn.Linear(10, 1, bias=False).double()
        symopt.sparse(model, "weight", strength=10.0)
        opt = torch.optim.SGD(symopt.param_groups(model, lr=0.01, momentum=0.5), lr=0.01)
        return model, opt, symopt.regrow(model, opt, every=7)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * ((model(X) - Y) ** 2).mean()).backward()
            opt.step()

    model, opt, growth = build()
    train(model, opt, 403)
    saved = (model.state_dict(), opt.state_dict(), growth.state_dict())
    train(model, opt, 400)
    resumed, resumed_opt, resumed_growth = build()
    resumed.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    resumed_growth.load_state_dict(saved[2])
    train(resumed, resumed_opt, 400)
    assert torch.equal(model.weight, resumed.weight)
    assert torch.equal(growth.held("weight"), resumed_growth.held("weight"))
    assert growth.snapped == resumed_growth.snapped


def _no_hooks(model, opt) -> bool:
    constraint = model.parametrizations.weight[0]
    return not opt._optimizer_step_pre_hooks and \
        all(getattr(h, "__qualname__", "").split(".")[0] != "Regrowth" for h in constraint._forward_hooks.values())


@pytest.mark.parametrize("call,error,match", [
    (lambda m, o: symopt.regrow(m, torch.optim.LBFGS(m.parameters())), ValueError, "L-BFGS"),
    (lambda m, o: symopt.regrow(m, o, every=0), ValueError, "every must be an int >= 1"),
    (lambda m, o: symopt.regrow(m, o, beta=1.0), ValueError, "beta must be a number in"),
    (lambda m, o: symopt.regrow(m, o, near_zero=0.0), ValueError, "near_zero must be"),
    (lambda m, o: symopt.regrow(m, o, seed_size=1e-4), ValueError, "seed_size must be a number in"),
    (lambda m, o: symopt.regrow(m, o, names="bias"), ValueError, "'bias' is not constrained"),
    (lambda m, o: symopt.regrow(m, o, names=[]), ValueError, "names is empty"),
    (lambda m, o: symopt.regrow(m, torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)), ValueError,
     "does not hold the factors of 'weight'"),
    (lambda m, o: symopt.regrow(m, o, scaler=2.0), TypeError, "scaler must be a torch.amp.GradScaler"),
    (lambda m, o: symopt.regrow("model", o), TypeError, "model must be an nn.Module"),
    (lambda m, o: symopt.regrow(m, "sgd"), TypeError, "optimizer must be a torch.optim.Optimizer"),
])
def test_bad_arguments_are_refused_before_anything_is_installed(call, error, match):
    model = nn.Linear(4, 3)
    symopt.sparse(model, "weight", strength=0.1)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.1), lr=0.1)
    with pytest.raises(error, match=match):
        call(model, opt)
    assert _no_hooks(model, opt)


@pytest.mark.parametrize("make,name,match", [
    (lambda m: symopt.sparse(m, "weight", density=0.5), "weight", "has a budget"),
    (lambda m: symopt.low_rank(m, "weight", target_rank=1), "weight", "has a budget"),
    (lambda m: symopt.low_rank(m, "weight", strength=0.1, layout="batch"), "weight", "cannot be seeded off zero"),
])
def test_kinds_it_cannot_serve_are_refused_by_name(make, name, match):
    model = nn.Conv2d(3, 4, 2)  # a 4-d weight: a batch layout is a batch of 2×2 matrices
    make(model)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.1), lr=0.1)
    with pytest.raises(ValueError, match=match):
        symopt.regrow(model, opt, names=name)
    with pytest.raises(ValueError, match="no constrained tensor to watch"):
        symopt.regrow(model, opt)
    assert _no_hooks(model, opt)


@pytest.mark.parametrize("low_rank", [False, True], ids=["sparse", "low_rank"])
def test_a_compiled_model_regrows_as_the_eager_one(low_rank):
    """Under torch.compile the gradient hook still sees θ's gradient: the same zeros (entries; for low
    rank, the directions its QR, SVD and rotation hold), bit for bit for entries, to rounding for low
    rank (the compiled UVᵀ may round differently)."""
    def run(compiled):
        torch.manual_seed(0)
        model = nn.Linear(6, 4 if low_rank else 1, bias=False).double()
        if low_rank:
            symopt.low_rank(model, "weight", strength=0.05)
        else:
            symopt.sparse(model, "weight", strength=0.1)
        opt = torch.optim.SGD(symopt.param_groups(model, lr=0.2), lr=0.2)
        growth = symopt.regrow(model, opt, every=5)
        forward = torch.compile(model) if compiled else model
        x = torch.randn(64, 6, dtype=torch.float64)
        y = (x @ torch.randn(6, 2, dtype=torch.float64) @ torch.randn(2, 4, dtype=torch.float64) if low_rank
             else x[:, :2].sum(1, keepdim=True))  # rank 2 of 4; two of six inputs
        for _ in range(300):
            opt.zero_grad()
            (forward(x) - y).square().mean().backward()
            opt.step()
        return model.weight.detach(), growth.held("weight")

    eager, compiled = run(False), run(True)
    assert torch.equal(eager[1], compiled[1]) and int(eager[1].sum()) == (2 if low_rank else 4)
    if low_rank:
        torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=1e-10)
    else:
        assert torch.equal(eager[0], compiled[0]) and int((eager[0][0, 2:] == 0).sum()) == 4


def test_a_skipped_inf_batch_does_not_poison_the_mean():
    """Under a GradScaler a batch with an Inf is skipped (no optimizer step), but backward already
    handed its gradient to the running mean: the next decision finds it non-finite, starts the mean
    again and decides nothing on it; the run then snaps the reference's zeros as without the bad batch."""
    X, Y = _diabetes()
    torch.manual_seed(0)
    model = nn.Linear(10, 1, bias=False).double()
    symopt.sparse(model, "weight", strength=10.0)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.01), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, growth_interval=10 ** 6)
    growth = symopt.regrow(model, opt, scaler=scaler)
    for step in range(1500):
        bad = X.clone()
        if step == 15:
            bad[0, 0] = float("inf")
        opt.zero_grad()
        scaler.scale(0.5 * ((model(bad) - Y) ** 2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    assert bool(torch.isfinite(model.weight).all())
    assert torch.equal(growth.held("weight"), (_reference(X, Y, 10.0, False) == 0).view(-1))


def test_a_nonnegative_atom_is_seeded_inside_the_orthant_whatever_the_gradient():
    """NonNegative.seed_atoms puts θ_i = size_i (u_i = √(2 size_i)): the one direction off zero its
    factorisation reaches; its pull is (−g_i)⁺, the orthant's dual atom, and the decay is λ·Σθ."""
    constraint = symopt.NonNegative(strength=0.3)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.rand(3, 4, dtype=torch.float64))
    symopt.constrain(holder, "w", constraint)
    u = holder.parametrizations.w.original0.detach()
    grad = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(constraint.dual_atoms(grad), (-grad).clamp_min(0).reshape(-1))
    which = torch.zeros(12, dtype=torch.bool)
    which[1::3] = True
    size = torch.rand(12, dtype=torch.float64) + 0.1
    constraint.land((u,), which)  # the other atoms on their fixed point
    constraint.seed_atoms((u,), which, grad, size)
    value = holder.w.detach().reshape(-1)
    torch.testing.assert_close(value[which], size[which])
    assert bool((value[~which] == 0).all())
    torch.testing.assert_close(constraint.penalty(u), 0.3 * constraint.induced_norm(holder.w.detach()))


def test_a_tensor_whose_atoms_all_decay_together_gets_exact_zeros():
    """λ = 1.05 λ_max on the diabetes Lasso: θ = 0 is the optimum and the entries decay together, so
    none is ever small next to today's largest. regrow compares them with the largest atom the tensor
    has had and snaps each, exactly, once it is below near_zero of it (its pull below λ); plain GD
    leaves every entry non-zero after the same steps."""
    X, Y = _diabetes()
    lam = 1.05 * float((X.T @ Y).abs().max()) / len(X)
    weights = []
    for with_regrowth in (True, False):
        torch.manual_seed(0)
        model = nn.Linear(X.shape[1], 1, bias=False).double()
        symopt.sparse(model, "weight", strength=lam)
        opt = torch.optim.SGD(symopt.param_groups(model, lr=1e-3), lr=1e-3)
        growth = symopt.regrow(model, opt) if with_regrowth else None
        for _ in range(1500):
            opt.zero_grad()
            (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
            opt.step()
        weights.append(model.weight.detach().clone())
        if growth is not None:
            assert growth.snapped["weight"] == X.shape[1] and growth.regrown["weight"] == 0
    assert bool((weights[0] == 0).all())
    assert bool((weights[1] != 0).all())


def test_attention_heads_that_decay_together_are_snapped_exactly():
    """attention_heads on an nn.MultiheadAttention at a λ that every head's pull stays below: the heads
    decay together (none small next to the largest), and a zero head's pull is 0 (q·k·v·out: a
    higher-order saddle). regrow snaps each once it falls below near_zero of the largest head the
    block has had: all four exactly 0 after 500 SGD steps, none regrown; without it they are 1e-11."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True).double()
            self.head = nn.Linear(16, 1).double()

        def forward(self, x):
            out, _ = self.attn(x, x, x)
            return self.head(out.mean(1))

    torch.manual_seed(0)
    x, y = torch.randn(64, 5, 16, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    norms = []
    for with_regrowth in (True, False):
        torch.manual_seed(0)
        net = Net()
        symopt.attention_heads(net, "attn", strength=0.5)
        opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05), lr=0.05)
        growth = symopt.regrow(net, opt) if with_regrowth else None
        for _ in range(500):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
        heads = net.attn.in_proj_weight.detach().view(3, 4, 4, 16).square().sum((0, 2, 3)).sqrt()
        norms.append(heads + net.attn.out_proj.weight.detach().view(16, 4, 4).square().sum((0, 2)).sqrt())
        if growth is not None:
            assert sum(growth.snapped.values()) == 4 and sum(growth.regrown.values()) == 0
    assert bool((norms[0] == 0).all())
    assert bool((norms[1] > 0).all())


# --- low rank: a singular direction is a column pair of (U, V) once rotated (issue 20, item 4) -----------

def _digits_regression():
    """Reduced-rank regression of digits' one-hot classes on its 64 standardised pixels: W is 10 × 64."""
    from sklearn.datasets import load_digits
    X, label = load_digits(return_X_y=True)
    X = X - X.mean(0)
    X = torch.tensor(X / np.where(X.std(0) > 0, X.std(0), 1.0))
    Y = torch.nn.functional.one_hot(torch.tensor(label)).double()
    return X, Y - Y.mean(0)


def _nuclear_objective(W, X, Y, lam) -> float:
    return 0.5 * float(((X @ W.T - Y) ** 2).sum()) / len(X) + lam * float(torch.linalg.svdvals(W).sum())


def _nuclear_reference(X, Y, lam):
    """Accelerated proximal gradient (FISTA with singular-value thresholding), the textbook solver of
    min (1/2n)‖Y − XWᵀ‖² + λ‖W‖_*, independent of symopt: the regrowth benchmark's reference."""
    from benchmarks.regrowth import nuclear_reference
    return nuclear_reference(X, Y, lam)


def _low_rank_lowered(X, Y, lams, optimizer, with_regrowth, lr, second):
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], Y.shape[1], bias=False).double()
    handle = symopt.low_rank(model, "weight", strength=lams[0])
    opt = optimizer(symopt.param_groups(model, lr=lr), lr=lr)
    growth = symopt.regrow(model, opt) if with_regrowth else None
    for step in range(FIRST + second):
        if step == FIRST:
            handle.constraint.strength = lams[1]
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
    return model, growth


def test_lowering_lambda_regrows_the_nuclear_norm():
    """Reduced-rank regression on digits, λ 0.7 λ_max (rank 3) → 0.05 (rank 9), GD: the directions
    that should enter had decayed for 2000 steps. With regrow (it seeds them along the leading singular
    pairs of the gradient's part orthogonal to the live directions) the objective is FISTA's to 1e-6
    after 2000 steps, the rank is its rank, and the missing direction is an exact zero column pair;
    without it the same steps end 10% above."""
    X, Y = _digits_regression()
    lam_max = float(torch.linalg.matrix_norm(X.T @ Y / len(X), 2))
    lams = (0.7 * lam_max, 0.05)
    reference = _nuclear_reference(X, Y, lams[1])
    best = _nuclear_objective(reference, X, Y, lams[1])
    model, growth = _low_rank_lowered(X, Y, lams, torch.optim.SGD, True, 0.05, 2000)
    plain, _ = _low_rank_lowered(X, Y, lams, torch.optim.SGD, False, 0.05, 2000)
    W = model.weight.detach()
    assert (_nuclear_objective(W, X, Y, lams[1]) - best) / best < 1e-6
    assert (_nuclear_objective(plain.weight.detach(), X, Y, lams[1]) - best) / best > 0.1
    rank = int((torch.linalg.svdvals(reference) > 1e-9).sum())
    U, V = model.parametrizations.weight.original0, model.parametrizations.weight.original1
    zero_columns = (U.norm(dim=0) == 0) & (V.norm(dim=0) == 0)
    assert rank == 9 and int(zero_columns.sum()) == 10 - rank
    assert torch.equal(growth.held("weight"), zero_columns)
    torch.testing.assert_close(torch.linalg.svdvals(W)[:rank], torch.linalg.svdvals(reference)[:rank], rtol=1e-3, atol=0)
    assert growth.snapped["weight"] >= 7 and growth.regrown["weight"] >= 6  # rank 3 at λ₁ of 10 columns


def test_held_directions_stay_exactly_zero_under_adam():
    """Adam at a fixed λ = 0.2 on the digits regression: the directions regrow snaps are zero column
    pairs after every later step (the rotation that made them columns moved Adam's averages too:
    the first by W, the second by W∘W), and their number is FISTA's missing rank."""
    X, Y = _digits_regression()
    torch.manual_seed(0)
    model = nn.Linear(64, 10, bias=False).double()
    symopt.low_rank(model, "weight", strength=0.2)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=0.01), lr=0.01)
    growth = symopt.regrow(model, opt)
    U, V = model.parametrizations.weight.original0, model.parametrizations.weight.original1
    for _ in range(1500):
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()
        held = growth.held("weight")
        assert bool((U[:, held] == 0).all()) and bool((V[:, held] == 0).all())
        assert all(bool((opt.state[p][key][:, held] == 0).all()) for p in (U, V) for key in ("exp_avg", "exp_avg_sq"))
    rank = int((torch.linalg.svdvals(_nuclear_reference(X, Y, 0.2)) > 1e-9).sum())
    assert int(growth.held("weight").sum()) == 10 - rank > 0


def test_isolating_a_zero_direction_is_a_symmetry_of_a_momentum_run():
    """A θ of rank 9 on 10 columns, whose missing direction is spread over every column (U and V
    times I − wwᵀ): isolate_small_atoms rotates (U, V) so that it is one zero column pair and, through
    its move, SGD's momentum with them: a run that continues from the rotated state gives the same θ
    at every step as the one that was not rotated (float64, 1e-12): the factors' gradients GV, GᵀU
    rotate as the factors do, and so does their running sum."""
    X, Y = _digits_regression()

    def build():
        torch.manual_seed(0)
        model = nn.Linear(64, 10, bias=False).double()
        symopt.low_rank(model, "weight", strength=0.05)
        return model, torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05, momentum=0.9)

    def step(model, opt):
        opt.zero_grad()
        (0.5 * ((model(X) - Y) ** 2).sum(1).mean()).backward()
        opt.step()

    w = torch.randn(10, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    off = torch.eye(10, dtype=torch.float64) - (w @ w.T) / float(w.T @ w)
    runs = [build(), build()]
    for model, opt in runs:
        plist = model.parametrizations.weight
        with torch.no_grad():
            plist.original0.copy_(plist.original0 @ off)  # (gradients keep U w = V w = 0: w's mirror's fixed subspace)
            plist.original1.copy_(plist.original1 @ off)
        for _ in range(30):
            step(model, opt)
    model, opt = runs[1]
    constraint = model.parametrizations.weight[0]
    U, V = model.parametrizations.weight.original0, model.parametrizations.weight.original1
    before = model.weight.detach().clone()
    held = torch.zeros(10, dtype=torch.bool)
    with torch.no_grad():
        factors = (U.detach(), V.detach())
        smallest = float(torch.linalg.svdvals(before)[-2])
        near, move = constraint.isolate_small_atoms(factors, held, constraint.atom_sizes(factors, before),
                                                    1e-6 * smallest)
        move((opt.state[U]["momentum_buffer"], opt.state[V]["momentum_buffer"]), False)
    assert int(near.sum()) == 1 and move is not None
    assert float((model.weight.detach() - before).abs().max()) < 1e-13  # θ unchanged
    assert float(U.detach()[:, near].abs().max()) < 1e-12 and float(V.detach()[:, near].abs().max()) < 1e-12
    for _ in range(50):
        for model_, opt_ in runs:
            step(model_, opt_)
        torch.testing.assert_close(runs[1][0].weight, runs[0][0].weight, rtol=0, atol=1e-12)


def test_isolating_small_directions_removes_exactly_theta_s_small_singular_part():
    """Unbalanced factors (each column's u and v scaled by c and 1/c, c spread over 1e-2 … 1e2): the
    columns' products, and the eigen-directions of UᵀU + VᵀV, say nothing about θ's small singular
    values. isolate_small_atoms still finds them: θ after the move is θ truncated to its singular
    values above the threshold (1e-12), and as many columns of U are 0, whose zeroing in V then leaves θ
    as it is; nothing moves when the threshold is below every singular value."""
    generator = torch.Generator().manual_seed(3)
    holder = nn.Module()
    P = torch.linalg.qr(torch.randn(30, 8, dtype=torch.float64, generator=generator)).Q
    Q = torch.linalg.qr(torch.randn(20, 8, dtype=torch.float64, generator=generator)).Q
    sigma = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 1e-3, 5e-4, 1e-4], dtype=torch.float64)
    holder.w = nn.Parameter((P * sigma) @ Q.T)
    constraint = symopt.LowRank(strength=0.1, max_rank=8)
    symopt.constrain(holder, "w", constraint)
    plist = holder.parametrizations.w
    scale = torch.logspace(-2, 2, 8, dtype=torch.float64)
    mix = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=generator)).Q
    with torch.no_grad():
        plist.original0.copy_((plist.original0 * scale) @ mix)
        plist.original1.copy_((plist.original1 / scale) @ mix)
    before = holder.w.detach().clone()
    factors = (plist.original0.detach(), plist.original1.detach())
    held = torch.zeros(8, dtype=torch.bool)
    with torch.no_grad():
        near, move = constraint.isolate_small_atoms(factors, held, constraint.atom_sizes(factors, before), 1e-5)
        assert not bool(near.any()) and move is None
        near, move = constraint.isolate_small_atoms(factors, held, constraint.atom_sizes(factors, before), 2e-3)
    assert int(near.sum()) == 3
    truncated = (P[:, :5] * sigma[:5]) @ Q[:, :5].T
    torch.testing.assert_close(holder.w.detach(), truncated, rtol=0, atol=1e-12)
    assert float(factors[0][:, near].abs().max()) < 1e-12
    constraint.hold_atoms(factors, ~near)
    torch.testing.assert_close(holder.w.detach(), truncated, rtol=0, atol=1e-12)


def test_a_seeded_direction_is_the_proximal_step_off_the_live_directions():
    """seed_atoms on zero columns puts u_j v_jᵀ = s_j a_j b_jᵀ, (a_j, b_j) the leading singular pairs
    of −(I − PPᵀ) G (I − QQᵀ) (P, Q: the live columns' spaces), with ‖u_j‖ = ‖v_j‖: the new directions
    are orthogonal to the live ones, descend (⟨G, u_j v_jᵀ⟩ = −s_j σ_j) and cost λ Σ s_j in the penalty."""
    torch.manual_seed(0)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.randn(12, 40, dtype=torch.float64))
    constraint = symopt.LowRank(strength=0.3)
    symopt.constrain(holder, "w", constraint)
    U, V = (f.detach() for f in (holder.parametrizations.w.original0, holder.parametrizations.w.original1))
    which = torch.zeros(12, dtype=torch.bool)
    which[[3, 7, 10]] = True
    constraint.hold_atoms((U, V), ~which)  # those three columns on the fixed point
    live_before = holder.w.detach().clone()
    grad = torch.randn(12, 40, dtype=torch.float64)
    size = torch.zeros(12, dtype=torch.float64)
    size[which] = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    constraint.seed_atoms((U, V), which, grad, size)
    P = torch.linalg.qr(U[:, ~which]).Q
    Q = torch.linalg.qr(V[:, ~which]).Q
    M = grad - P @ (P.T @ grad)
    M = M - (M @ Q) @ Q.T
    sigma = torch.linalg.svdvals(M)[:3]
    added = holder.w.detach() - live_before
    seeded = [3, 7, 10]
    torch.testing.assert_close(U[:, seeded].norm(dim=0), V[:, seeded].norm(dim=0))
    assert float((P.T @ U[:, seeded]).abs().max()) < 1e-12 and float((Q.T @ V[:, seeded]).abs().max()) < 1e-12
    torch.testing.assert_close(torch.linalg.svdvals(added)[:3], torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64))
    # the largest size on the leading pair: the change's inner product with G is −Σ s_j σ_j
    torch.testing.assert_close((grad * added).sum(), -(torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64) * sigma).sum())
    penalty = 0.15 * sum(float(f[:, seeded].square().sum()) for f in (U, V))
    assert abs(penalty - 0.3 * 0.8) < 1e-12


def test_a_conv_weight_at_low_rank_gets_exact_zero_directions():
    """low_rank on a 4-d conv weight (its 16 × 27 matrix view): regrow's held columns are zero pairs of
    the factors, θ's rank is the columns left, and finalize keeps it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 2))
    x, y = torch.randn(64, 3, 8, 8), torch.randn(64, 2)
    symopt.low_rank(net, "0.weight", strength=0.05)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    growth = symopt.regrow(net, opt, every=10)
    for _ in range(600):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
    held = growth.held("0.weight")
    U, V = net[0].parametrizations.weight.original0, net[0].parametrizations.weight.original1
    assert int(held.sum()) > 0 and bool((U[:, held] == 0).all()) and bool((V[:, held] == 0).all())
    rank = int(torch.linalg.matrix_rank(net[0].weight.detach().reshape(16, -1)))
    assert rank == 16 - int(held.sum())
    symopt.finalize(net)
    assert int(torch.linalg.matrix_rank(net[0].weight.detach().reshape(16, -1))) == rank
