"""Shared test helpers: small float64 problems and a plain training loop."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import torch
from torch import nn

import symopt

DT = torch.float64


class Vector(nn.Module):
    """A bare ``nn.Parameter`` in a custom module (the most basic embedding)."""

    def __init__(self, *shape, init=None):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(*shape, dtype=DT) if init is None else init.clone())


class Transposed(nn.Module):
    """A dense layer that stores its weight as (inputs, outputs) and its widths in nx / nf, as Hugging Face's
    GPT-2 Conv1D does (written here so that these tests need no transformers)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx ** 0.5)
        self.bias = nn.Parameter(torch.randn(nf) / 10)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


def bound_problem(problem, relative: float):
    """``(bound loss, constraint, target)`` of a problem on the CPU in float64, the target a KKT residual of
    ``relative`` times ‖∇loss(0)‖ (what proximal Newton's callers certify against)."""
    from symopt.optimality import loss_gradient

    data = problem.data_on("cpu", torch.float64)
    loss = problem.bind(data)
    constraint = problem.constraint().to(dtype=torch.float64)
    target = relative * float(loss_gradient(loss, torch.zeros(problem.shape, dtype=torch.float64)).norm())
    return loss, constraint, target


def model_sizes(monkeypatch, name: str) -> list:
    """A list that gets the size of each model ``symopt.proximal_newton``'s function ``name`` solves (its first
    argument's rows; the function still runs), patched through ``monkeypatch`` (pytest's fixture or a
    ``pytest.MonkeyPatch.context()``): clear it before the calls to record."""
    import symopt.proximal_newton as pn

    sizes = []
    solve = getattr(pn, name)
    monkeypatch.setattr(pn, name, lambda hessian, *a, **k: sizes.append(hessian.shape[0]) or solve(hessian, *a, **k))
    return sizes


def least_squares(n=60, d=15, k=4, noise=0.3, seed=0):
    """Planted sparse regression; returns X (n×d), y (n,)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    truth = torch.zeros(d, dtype=DT)
    truth[:k] = torch.linspace(2.0, 0.5, k, dtype=DT) * torch.tensor([1.0, -1.0] * k, dtype=DT)[:k]
    return X, X @ truth + noise * torch.randn(n, generator=g, dtype=DT)


def ls_loss(X, y):
    """``1/(2n)‖Xθ − y‖²`` on a flat view of θ."""
    return lambda theta: 0.5 * (X @ theta.reshape(-1) - y).square().mean()


def ls_grad(X, y, theta):
    return X.T @ (X @ theta - y) / X.shape[0]


def train(model, loss_fn, steps, lr, path="penalty", optimizer=torch.optim.SGD, **opt_kwargs):
    """Full-batch training of ``loss_fn(model)`` with symopt decay through ``path``."""
    if path == "penalty":
        opt = optimizer(model.parameters(), lr=lr, **opt_kwargs)
    elif path == "param_groups":
        opt = optimizer(symopt.param_groups(model, lr=lr), lr=lr, **opt_kwargs)
    else:
        raise ValueError(path)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model)
        if path == "penalty":
            loss = loss + symopt.penalty(model)
        loss.backward()
        opt.step()
    return model


def recorded_training(model, loss, steps, record, lr=1e-2, optimizer=torch.optim.SGD):
    """``record()`` after each of ``steps`` steps of ``optimizer`` (decay through ``symopt.param_groups``)
    on ``loss()``."""
    opt = optimizer(symopt.param_groups(model, lr=lr), lr=lr)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        seen.append(record())
    return seen


def null_space_solution(X, y, A):
    """Equality-constrained LS ``min 1/(2n)‖Xθ−y‖² s.t. Aθ = 0`` via a null-space basis (numpy)."""
    Xn, yn, An = X.numpy(), y.numpy(), A.numpy()
    _, s, vh = np.linalg.svd(An)
    rank = int((s > 1e-12 * s.max()).sum())
    N = vh[rank:].T
    coef = np.linalg.lstsq(Xn @ N, yn, rcond=None)[0]
    return torch.from_numpy(N @ coef)


def soft_threshold_svd(M, lam):
    """Singular-value soft-thresholding: argmin ½‖W − M‖² + λ‖W‖_*."""
    P, S, Qh = torch.linalg.svd(M, full_matrices=False)
    return (P * (S - lam).clamp_min(0)) @ Qh


def proximal_group_lasso(X, y, groups, lam, iters=20000):
    """Reference group lasso by FISTA with block soft-thresholding (numpy, float64)."""
    Xn, yn = X.numpy(), y.numpy()
    n, d = Xn.shape
    L = np.linalg.norm(Xn, 2) ** 2 / n
    w = np.zeros(d)
    z, t = w.copy(), 1.0
    for _ in range(iters):
        grad = Xn.T @ (Xn @ z - yn) / n
        v = z - grad / L
        w_new = np.zeros(d)
        for g in groups:
            norm = np.linalg.norm(v[g])
            if norm > lam / L:
                w_new[g] = (1 - lam / (L * norm)) * v[g]
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = w_new + (t - 1) / t_new * (w_new - w)
        w, t = w_new, t_new
    return torch.from_numpy(w)


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resumed_matches(build, run, before: int, after: int):
    """Train ``build()``'s ``(model, optimizer)`` for ``before`` steps with ``run(model, opt, steps)``,
    checkpoint both state_dicts, go on for ``after`` steps; then build afresh, load the checkpoint and
    run the same ``after`` steps. Returns ``(uninterrupted model, resumed model)``, and asserts that
    every state entry of the two is bit-identical (a schedule's step count and landing masks are
    buffers, so a resume crosses a landing on the same step)."""
    import io

    model, opt = build()
    run(model, opt, before)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    run(model, opt, after)
    again, opt2 = build()
    state = torch.load(io.BytesIO(buffer.getvalue()))
    again.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    run(again, opt2, after)
    for (key, a), b in zip(again.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), f"resumed run differs at {key}"
    return model, again


def cross_entropy_steps(X, y):
    """``run(model, optimizer, steps)``: full-batch cross-entropy steps on ``(X, y)`` (for `resumed_matches`)."""
    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
    return run


def cross_entropy_training(net, X, y, steps, optimizer="adam", measure=None, lr=1e-2, sgd_lr=0.05, bind=False):
    """Full-batch cross-entropy training of ``net`` through ``symopt.param_groups``: Adam (``lr``), or
    SGD with momentum 0.9 (``sgd_lr``) and gradients clipped to norm 0.5 (``"sgd_momentum_clipped"``),
    the optimizer bound by ``symopt.bind`` when ``bind``. Returns ``measure(net)`` after every step
    (an empty list without ``measure``)."""
    groups = symopt.param_groups(net, lr=lr)
    opt = torch.optim.Adam(groups, lr=lr) if optimizer == "adam" else torch.optim.SGD(groups, lr=sgd_lr, momentum=0.9)
    if bind:
        symopt.bind(opt)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        if optimizer != "adam":
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        if measure is not None:
            seen.append(measure(net))
    return seen


def lbfgs_fit(model, loss, steps, tolerance_change=0.0, bind=True):
    """``steps`` strong-Wolfe L-BFGS steps (20 iterations each, history 50) on ``loss(model) +
    symopt.penalty(model)``; with ``bind`` the optimizer is bound by ``symopt.bind`` so that an adaptive
    λ moves once a step (how the convex-equivalence tests of budgets train), without it λ moves at
    every closure call."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=20, line_search_fn="strong_wolfe", history_size=50,
                            tolerance_change=tolerance_change)
    if bind:
        symopt.bind(opt)

    def closure():
        opt.zero_grad()
        value = loss(model) + symopt.penalty(model)
        value.backward()
        return value

    for _ in range(steps):
        opt.step(closure)


def optimizer_step(opt, loss, scaler=None) -> None:
    """``loss.backward(); opt.step()``, or under a torch.amp.GradScaler its scaled backward, step and
    update (the loop a mixed-precision user writes)."""
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
