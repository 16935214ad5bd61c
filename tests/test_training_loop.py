"""A constrained model behaves like a native PyTorch one at every step of a training run: compile,
autocast, parametrize.cached, clipping, schedulers, and checkpoint → resume (bitwise on CPU float64)."""

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import symopt

DT = torch.float64
KINDS = ("sparse", "group_sparse", "low_rank", "subspace", "fixed_zeros", "tied")


def _constrain(net: nn.Sequential, kind: str) -> None:
    """One constraint of ``kind`` on an MLP 6 → 8 → 8 → 8 → 3 (each kind on its own tensor)."""
    if kind == "sparse":
        symopt.sparse(net, "0.weight", strength=1e-2)
    elif kind == "group_sparse":
        symopt.group_sparse(net, "2.weight", dim=0, strength=1e-2)
    elif kind == "low_rank":
        symopt.low_rank(net, "4.weight", strength=1e-2)
    elif kind == "subspace":
        symopt.subspace(net, "4.bias", torch.ones(1, 8, dtype=net[4].bias.dtype), strength="auto")
    elif kind == "fixed_zeros":
        symopt.fixed_zeros(net, "6.weight", torch.eye(3, 8, dtype=torch.bool), strength=1.0)
    elif kind == "tied":
        with torch.no_grad():
            net[2].bias.copy_(net[0].bias)
        symopt.tie(net, ["0.bias", "2.bias"], strength="auto")


def _net(kinds=KINDS, dtype=DT, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                        nn.Linear(8, 3)).to(dtype)
    for kind in kinds:
        _constrain(net, kind)
    return net


def _data(dtype=DT, n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def _grads(net, x, y, forward=None):
    net.zero_grad(set_to_none=True)
    out = (forward or net)(x)
    loss = (out - y).square().mean() + symopt.penalty(net)
    loss.backward()
    return out.detach(), loss.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("kinds", [("sparse", "group_sparse", "low_rank", "fixed_zeros"), ("subspace", "tied")],
                         ids=["fixed-strength", "auto-strength"])
def test_compile_forward_and_backward_equal_eager(kinds):
    """Register first, then compile (registration replaces parameters: it belongs outside compiled code)."""
    x, y = _data()
    eager, compiled_net = _net(kinds), _net(kinds)
    compiled = torch.compile(compiled_net)
    for _ in range(2):  # second call: the compiled graph is reused
        out_e, loss_e, grads_e = _grads(eager, x, y)
        out_c, loss_c, grads_c = _grads(compiled_net, x, y, forward=compiled)
        assert torch.allclose(out_c, out_e, atol=1e-12, rtol=0)
        assert torch.allclose(loss_c, loss_e, atol=1e-12, rtol=0)
        for gc, ge in zip(grads_c, grads_e):
            assert torch.allclose(gc, ge, atol=1e-11, rtol=0)
    for he, hc in zip(symopt.list_constraints(eager), symopt.list_constraints(compiled_net)):  # auto λ saw the same gradients
        assert he.strength == pytest.approx(hc.strength, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_bfloat16_on_cpu(kind):
    """Factors stay float32; the parametrized weight is cast by autocast inside F.linear."""
    net, reference = _net((kind,), torch.float32), _net((kind,), torch.float32)
    x, y = _data(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = (out.float() - y).square().mean()
    assert out.dtype == torch.bfloat16
    total = loss + symopt.penalty(net)  # before backward: an auto λ then moves with the gradient seen
    total.backward()
    _, ref_loss, ref_grads = _grads(reference, x, y)
    assert abs(float(total) - float(ref_loss)) < 0.05 * float(ref_loss)
    for p, g in zip(net.parameters(), ref_grads):
        assert p.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert (p.grad - g).norm() <= 0.1 * g.norm() + 1e-3


def test_parametrize_cached_reuses_the_weight():
    """A weight used several times in one forward (a recurrent cell) is computed once under cached()."""
    cell = nn.Linear(5, 5).double()
    symopt.low_rank(cell, "weight", strength=1e-3)
    calls = []
    cell.parametrizations.weight[0].register_forward_hook(lambda *_: calls.append(1))
    h0 = torch.randn(4, 5, dtype=DT)

    def unroll():
        h = h0
        for _ in range(6):
            h = torch.tanh(cell(h))
        return h.square().sum()

    plain = unroll()
    plain.backward()
    grads = [p.grad.clone() for p in cell.parameters()]
    cell.zero_grad()
    calls.clear()
    with parametrize.cached():
        cached = unroll()
    cached.backward()
    assert len(calls) == 1
    assert torch.allclose(cached, plain, atol=1e-14)
    for p, g in zip(cell.parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-13)


def test_gradient_clipping_and_scheduler_with_param_groups():
    net = _net(("sparse", "low_rank", "fixed_zeros"))
    x, y = _data()
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    decays = sorted({g["weight_decay"] for g in opt.param_groups})
    loss0 = float((net(x) - y).square().mean())
    with torch.no_grad():
        net[6].parametrizations.weight.original1.fill_(0.3)  # move the fixed zeros off their set
    before = {row.kind: row for row in symopt.report(net)}
    for _ in range(200):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        total = nn.utils.clip_grad_norm_(net.parameters(), max_norm=0.5)
        assert torch.isfinite(total)
        opt.step()
        sched.step()
    assert sorted({g["weight_decay"] for g in opt.param_groups}) == decays  # the scheduler leaves λ alone
    assert opt.param_groups[0]["lr"] < 1e-4
    after = {row.kind: row for row in symopt.report(net)}
    assert float((net(x) - y).square().mean()) < 0.9 * loss0
    assert after["fixed_zeros"].violation < 1e-3 * before["fixed_zeros"].violation  # decay still pulls onto the set
    assert after["sparse"].balance < before["sparse"].balance


def _run(net, opt, sched, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        (net(x) - y).square().mean().backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_checkpoint_resume_is_bitwise(optimizer):
    """model + optimizer + scheduler state_dicts → a fresh process-like rebuild gives the same next
    steps exactly, adaptive λ (auto strength, budget) included."""

    def build():
        net = _net(("subspace", "tied", "low_rank"))
        symopt.sparse(net, "0.weight", max_nonzero=20)
        groups = symopt.param_groups(net, lr=1e-2)
        opt = (torch.optim.Adam(groups, lr=1e-2) if optimizer == "adam"
               else torch.optim.SGD(groups, lr=1e-2, momentum=0.9))
        symopt.bind(opt)  # weight_decay follows λ through opt.load_state_dict (which replaces the groups)
        return net, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)

    x, y = _data()
    net, opt, sched = build()
    _run(net, opt, sched, x, y, 15)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    _run(net, opt, sched, x, y, 10)
    reference = [t.detach().clone() for t in net.state_dict().values()]

    net2, opt2, sched2 = build()
    state = torch.load(io.BytesIO(buffer.getvalue()))
    net2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    _run(net2, opt2, sched2, x, y, 10)
    resumed = list(net2.state_dict().values())
    assert len(resumed) == len(reference)
    for a, b in zip(resumed, reference):
        assert torch.equal(a, b)
    assert [h.strength for h in symopt.list_constraints(net2)] == [h.strength for h in symopt.list_constraints(net)]


@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_autocast_on_cuda(kind, amp_dtype):
    net = _net((kind,), torch.float32).cuda()
    x, y = (t.cuda() for t in _data(torch.float32))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=amp_dtype):
            out = net(x)
            loss = (out.float() - y).square().mean()
        assert out.dtype == amp_dtype
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in net.parameters())
