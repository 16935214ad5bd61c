"""Gradient noise drives Hadamard atoms onto the mirror's fixed point (the DCS paper's noise claim):
batch-1 SGD collapses coordinates of a sparse regression that carry signal, large batches do not, and
noise_collapse's Lyapunov criterion predicts which — with a warning when signal is at risk."""

import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt.symmetry.noise import collapse_exponents

W_TRUE = torch.tensor([1.0, -0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)


def _data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g, dtype=torch.float64)
    y = X @ W_TRUE + 3.0 * torch.randn(n, generator=g, dtype=torch.float64)  # noisy targets
    return X, y.unsqueeze(1)


def _train(batch_size, lr, steps, seed=0, watched=None):
    X, y = _data(seed)
    torch.manual_seed(seed)
    model = nn.Linear(8, 1, bias=False).double()
    symopt.sparse(model, "weight", strength=1e-9)  # (almost) no decay: only the noise can collapse
    opt = torch.optim.SGD(symopt.param_groups(model), lr=lr)
    if watched is not None:
        watched.append(symopt.watch_noise(model, opt))
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch_size,), generator=g)
        opt.zero_grad()
        (0.5 * ((model(X[idx]) - y[idx]) ** 2).mean()).backward()
        opt.step()
    return model, X, y


def _loss(out, target):
    return 0.5 * ((out - target) ** 2).mean()


def test_batch_one_collapses_signal_that_large_batches_keep_and_the_criterion_predicts_it():
    watched = []
    with pytest.warns(UserWarning, match=r"watch_noise: at lr=0.05 SGD's batch noise is holding \d+ atoms of 'weight'"):
        model, X, y = _train(batch_size=1, lr=0.05, steps=6000, watched=watched)  # warned during training
    zero = (model.weight.detach().abs() < 1e-6).reshape(-1)
    assert int(zero.sum()) >= 2  # every coordinate of W_TRUE carries signal, yet some go
    with pytest.warns(UserWarning, match=r"SGD's noise pulls \d+ of 8 atoms of 'weight' that carry signal"):
        report = symopt.noise_collapse(model, "weight", _loss, X, y, lr=0.05, batch_size=1)
    predicted = torch.zeros(8, dtype=torch.bool)
    predicted[list(report.collapsing)] = True
    assert int((predicted == zero).sum()) >= 7  # the criterion agrees on (almost) every coordinate
    assert set(report.at_risk) <= set(report.collapsing)
    # The watch's estimates, drawn by training itself, agree with the per-sample criterion at the end.
    seen = watched[0].report("weight")
    assert set(seen.atoms) == set(zero.nonzero().reshape(-1).tolist())  # the atoms held at 0 are the ones judged
    assert len(set(seen.collapsing) ^ set(report.collapsing)) <= 1
    assert set(seen.at_risk) <= set(seen.collapsing) and seen.at_risk
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a large batch keeps every coordinate, and the watch stays quiet
        big, X, y = _train(batch_size=64, lr=0.05, steps=1500, watched=watched)
    assert int((big.weight.detach().abs() < 1e-6).sum()) == 0
    assert watched[1].report("weight").atoms == () and watched[1].steps == 1500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert symopt.noise_collapse(big, "weight", _loss, X, y, lr=0.05, batch_size=64).collapsing == ()


def test_exponents_follow_the_closed_form_without_noise():
    g = torch.full((10, 2), 0.5, dtype=torch.float64)  # every sample the same: no noise
    g[:, 1] = -0.2
    e = collapse_exponents(g, lr=0.1, batch_size=3, strength=0.1)
    expected = torch.log(torch.tensor([abs(1 - 0.1 * (0.1 - 0.5)), abs(1 - 0.1 * (0.1 - 0.2))], dtype=torch.float64))
    assert torch.allclose(e, expected, atol=1e-12)  # the growing mode 1 + lr(|g| − λ): |g| > λ escapes


def test_bad_inputs():
    model = nn.Linear(3, 1)
    X, y = torch.randn(4, 3), torch.randn(4, 1)
    with pytest.raises(ValueError, match="has no constraint whose atoms are Hadamard pairs"):
        symopt.noise_collapse(model, "weight", _loss, X, y, lr=0.1, batch_size=1)
    symopt.sparse(model, "weight", strength=1e-3)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        symopt.noise_collapse(model, "weight", _loss, X, y, lr=0, batch_size=1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        symopt.noise_collapse(model, "weight", _loss, X, y, lr=0.1, batch_size=0)


def test_watch_noise_refuses_what_its_criterion_does_not_cover():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    symopt.sparse(model, "0.weight", strength=1e-3)
    symopt.low_rank(model, "1.weight", strength=1e-3)
    sgd = torch.optim.SGD(symopt.param_groups(model), lr=0.1)
    for optimizer, match in ((torch.optim.Adam(model.parameters()), "plain SGD's; got Adam"),
                             (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "got SGD with momentum")):
        with pytest.raises(ValueError, match=match):
            symopt.watch_noise(model, optimizer)
    with pytest.raises(ValueError, match="'1.weight' has no constraint whose atoms are Hadamard pairs"):
        symopt.watch_noise(model, sgd, ["1.weight"])
    with pytest.raises(ValueError, match="does not hold the factors of '0.weight'"):
        symopt.watch_noise(model, torch.optim.SGD(model[1].parameters(), lr=0.1))
    for option, value in (("beta", 1.0), ("warmup", 0), ("every", 2.5), ("near_zero", -1)):
        with pytest.raises(ValueError, match=option):
            symopt.watch_noise(model, sgd, **{option: value})
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        symopt.watch_noise(model, "sgd")
    with pytest.raises(ValueError, match="no Hadamard-factorised tensor"):
        symopt.watch_noise(nn.Linear(2, 2), sgd)
    watch = symopt.watch_noise(model, sgd)  # nothing was changed by the refusals; this one works
    with pytest.raises(ValueError, match="'1.weight' is not watched"):
        watch.report("1.weight")
    watch.remove()
    sgd.zero_grad()
    model(torch.randn(4, 3)).sum().backward()
    sgd.step()
    assert watch.steps == 0  # removed: the hooks are off
