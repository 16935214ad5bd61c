"""DistributedDataParallel (gloo, 2 CPU processes): a constrained model trained on two half batches ends
where the single-process run on the full batch ends (≤ 1e-6), for every fixed-strength kind."""

import contextlib
import gc
import os
import socket
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import symopt

STEPS = 20
DT = torch.float64


def _model(adaptive: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if adaptive:  # λ estimated from gradients: budgets and auto strengths
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
        symopt.sparse(net, "0.weight", max_nonzero=12)
        symopt.low_rank(net, "2.weight", target_rank=2)
        symopt.subspace(net, "2.bias", torch.ones(1, 3, dtype=DT), strength="auto")
        return net
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                        nn.Linear(8, 3)).to(DT)
    symopt.sparse(net, "0.weight", strength=1e-2)
    symopt.group_sparse(net, "2.weight", dim=0, strength=1e-2)
    symopt.low_rank(net, "4.weight", strength=1e-2)
    symopt.fixed_zeros(net, "6.weight", torch.eye(3, 8, dtype=torch.bool), strength=1.0)
    symopt.subspace(net, "4.bias", torch.ones(1, 8, dtype=DT), strength=0.5)
    with torch.no_grad():
        net[2].bias.copy_(net[0].bias)
    symopt.tie(net, ["0.bias", "2.bias"], strength=0.5)
    return net


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g, dtype=DT), torch.randn(32, 3, generator=g, dtype=DT)


def _train(net, forward, x, y, path, sync=False):
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05) if path == "param_groups" else net.parameters(),
                          lr=0.05, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = (forward(x) - y).square().mean()
        if path == "penalty":
            loss = loss + symopt.penalty(net)
        loss.backward()
        if sync:  # after backward (where λ observed the local gradient), before the step uses λ
            symopt.sync_strengths(net)
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@contextlib.contextmanager
def _process_group(rank: int, world: int, port: int):
    """A gloo group for this spawned rank, torn down only after every rank is done with it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        yield
        gc.collect()  # DDP's reducer holds the group: free it now, not during interpreter shutdown
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _half_batch(rank: int, world: int):
    x, y = _data()
    part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    return x[part], y[part]


def _worker(rank: int, world: int, port: int, path: str, out: str, adaptive: bool = False,
            sync: bool = False) -> None:
    with _process_group(rank, world, port):
        net = _model(adaptive)
        ddp = nn.parallel.DistributedDataParallel(net)
        state = _train(net, ddp, *_half_batch(rank, world), path, sync)
        del ddp
        state["strengths"] = torch.tensor([h.strength for h in symopt.list_constraints(net)], dtype=DT)
        torch.save(state, f"{out}.{rank}")


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    with _process_group(rank, world, port):
        net = _model()
        # One FSDP unit for the whole model: a tie's anchor is read by the other copy's layer, and a parameter
        # shared between FSDP units is not supported by FSDP (tested: per-layer units fail on it).
        fully_shard(net)  # every factor becomes a DTensor sharded over the ranks
        state = _train(net, net, *_half_batch(rank, world), "param_groups")
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}
        if rank == 0:
            torch.save(state, out)


def test_fsdp2_fully_shard_matches_the_full_batch_run(tmp_path):
    """FSDP2 (``fully_shard``) shards the factors as DTensors; the parametrizations run on them."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    pytest.importorskip("torch.distributed.fsdp")
    out = os.fspath(tmp_path / "fsdp.pt")
    _spawn(_fsdp_worker, out)
    sharded = torch.load(out)
    net = _model()
    x, y = _data()
    single = _train(net, net, x, y, "param_groups")
    assert sharded.keys() == single.keys()
    for key in single:
        assert torch.allclose(sharded[key], single[key], atol=1e-6, rtol=0), key


def _run_rank(rank: int, worker, *args) -> None:
    """``worker(rank, *args)``, then leave without interpreter shutdown: gloo's threads can abort the process
    in C++ static destructors ("terminate called without an active exception", seen in CI on 2 loaded cores)
    after the rank's result is already on disk. An exception in ``worker`` propagates as usual."""
    worker(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(worker, *args) -> None:
    """Run ``worker(rank, 2, port, *args)`` on two gloo ranks.

    A rank killed by a signal (gloo aborting under CPU contention, not a Python error) is retried once on a
    fresh port; an exception raised in a worker fails the test at once.
    """
    for attempt in range(2):
        try:
            mp.spawn(_run_rank, args=(worker, 2, _free_port(), *args), nprocs=2, join=True)
            return
        except mp.ProcessExitedException as error:
            if attempt:
                raise
            warnings.warn(f"retrying a gloo run after {error}", stacklevel=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path", ["param_groups", "penalty"])
def test_ddp_two_processes_match_the_full_batch_run(tmp_path, path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    out = os.fspath(tmp_path / "rank0.pt")
    _spawn(_worker, path, out)
    distributed = torch.load(out + ".0")
    del distributed["strengths"]
    net = _model()
    x, y = _data()
    single = _train(net, net, x, y, path)
    assert distributed.keys() == single.keys()
    for key in single:
        assert torch.allclose(distributed[key], single[key], atol=1e-6, rtol=0), key
    moved = max(float((single[k] - v).abs().max()) for k, v in _model().state_dict().items())
    assert moved > 1e-2  # the runs trained: the comparison is not between two initial states


@pytest.mark.parametrize("sync", [True, False])
def test_adaptive_strengths_stay_equal_across_ranks_only_with_sync(tmp_path, sync):
    """auto / budget λ watch each rank's local gradient; sync_strengths keeps the replicas identical."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    out = os.fspath(tmp_path / "rank")
    _spawn(_worker, "param_groups", out, True, sync)
    rank0, rank1 = torch.load(out + ".0"), torch.load(out + ".1")
    worst = max(float((rank0[k] - rank1[k]).abs().max()) for k in rank0)
    if sync:
        assert worst == 0.0, [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert bool((rank0["strengths"] > 0).all())
    else:
        assert float((rank0["strengths"] - rank1["strengths"]).abs().max()) > 1e-6  # why the sync exists


LANDING_STEPS = 60


def _train_to_the_landing(net: nn.Module, rank: int, world: int) -> dict:
    """``LANDING_STEPS`` SGD steps of ``net`` under DDP on this rank's half batch, λ kept equal by
    ``sync_strengths``; then its state and whether ``finalize`` (default tolerance) succeeds."""
    ddp = nn.parallel.DistributedDataParallel(net)
    x, y = _half_batch(rank, world)
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.05), lr=0.05, momentum=0.9)
    for _ in range(LANDING_STEPS):
        opt.zero_grad()
        (ddp(x) - y).square().mean().backward()
        symopt.sync_strengths(net)
        opt.step()
    del ddp
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state["finalized"] = torch.tensor(bool(symopt.finalize(net).ok))
    return state


def _identical_replicas(worker, out) -> dict:
    """Run ``worker`` on two gloo ranks (skip where gloo is missing), check that both saved the same
    state, and return rank 0's."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    out = os.fspath(out)
    _spawn(worker, out)
    rank0, rank1 = torch.load(out + ".0"), torch.load(out + ".1")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    return rank0


def _landing_worker(rank: int, world: int, port: int, out: str, narrow: bool = False) -> None:
    """Landing budgets (``total_steps``) under DDP, λ kept equal by ``sync_strengths``. ``narrow``: the rank
    budget on factors of width 2 (3 × 8: narrow, so the layer computes x V Uᵀ between readings)."""
    with _process_group(rank, world, port):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
        symopt.sparse(net, "0.weight", max_nonzero=12, total_steps=LANDING_STEPS)
        if narrow:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # (the random init truncated to rank 2)
                symopt.low_rank(net, "2.weight", max_rank=2, target_rank=1, total_steps=LANDING_STEPS)
        else:
            symopt.low_rank(net, "2.weight", target_rank=2, total_steps=LANDING_STEPS)
        state = _train_to_the_landing(net, rank, world)
        state["weights"] = torch.stack([net[0].weight.detach().reshape(-1)[:8], net[2].weight.detach()[0, :8]])
        state["nonzeros"] = torch.tensor(int((net[0].weight != 0).sum()))
        state["rank"] = torch.tensor(int((torch.linalg.svdvals(net[2].weight.detach()) > 1e-12).sum()))
        torch.save(state, f"{out}.{rank}")


def _narrow_landing_worker(rank: int, world: int, port: int, out: str) -> None:
    _landing_worker(rank, world, port, out, narrow=True)


@pytest.mark.parametrize("narrow", [False, True], ids=["full_width", "narrow"])
def test_landing_budgets_land_identically_on_every_rank(tmp_path, narrow):
    """Under DDP with ``sync_strengths``, both ranks land the same atoms at the same step: the budgets are
    exact on each rank, the replicas identical, and ``finalize`` needs no force (also where the
    low-rank layer never forms its weight between the budget's readings)."""
    rank0 = _identical_replicas(_narrow_landing_worker if narrow else _landing_worker, tmp_path / "landing")
    assert int(rank0["nonzeros"]) == 12 and int(rank0["rank"]) == (1 if narrow else 2)
    assert bool(rank0["finalized"])


def _global_landing_worker(rank: int, world: int, port: int, out: str) -> None:
    """Global budgets under DDP: one channel budget over two layers' rows (with their biases) and one
    rank budget over two other matrices, λ kept equal by ``sync_strengths``."""
    with _process_group(rank, world, port):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                            nn.Linear(8, 3)).to(DT)
        symopt.group_sparse(net, [["0.weight", "0.bias"], ["2.weight", "2.bias"]], max_groups=10,
                            total_steps=LANDING_STEPS)
        symopt.low_rank(net, ["4.weight", "6.weight"], target_rank=5, total_steps=LANDING_STEPS)
        state = _train_to_the_landing(net, rank, world)
        rows = [int((torch.cat([net[i].weight, net[i].bias[:, None]], 1) != 0).any(1).sum()) for i in (0, 2)]
        ranks = [int((torch.linalg.svdvals(net[i].weight.detach()) > 1e-12).sum()) for i in (4, 6)]
        state["rows"], state["ranks"] = torch.tensor(rows), torch.tensor(ranks)
        torch.save(state, f"{out}.{rank}")


def test_global_budgets_land_identically_on_every_rank(tmp_path):
    """Under DDP with ``sync_strengths``, a global channel budget and a global rank budget land the same
    units and directions on both ranks: exactly 10 rows over the two layers and rank 5 over the two
    matrices, replicas identical, ``finalize`` without force."""
    rank0 = _identical_replicas(_global_landing_worker, tmp_path / "global")
    assert int(rank0["rows"].sum()) == 10 and int(rank0["ranks"].sum()) == 5 and bool(rank0["finalized"])
    assert int(rank0["rows"].min()) >= 1 and int(rank0["ranks"].min()) >= 1


REGROW_STEPS = 150


def _regrowing(forward, net, x, y) -> dict:
    """``REGROW_STEPS`` SGD steps of a sparse layer under ``symopt.regrow`` (every 5 steps), λ lowered
    half way so that zeros are both snapped and regrown; the weights and the held zeros."""
    opt = torch.optim.SGD(symopt.param_groups(net, lr=0.2), lr=0.2)
    growth = symopt.regrow(net, opt, every=5)
    handle = symopt.list_constraints(net)[0]
    for step in range(REGROW_STEPS):
        if step == REGROW_STEPS // 2:
            handle.constraint.strength = 0.02
        opt.zero_grad()
        (forward(x) - y).square().mean().backward()
        opt.step()
    return {"weight": net.weight.detach().clone(), "held": growth.held("weight"),
            "counts": torch.tensor([growth.snapped["weight"], growth.regrown["weight"]])}


def _regrow_net(low_rank: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Linear(6, 3, bias=False).to(DT)
    (symopt.low_rank if low_rank else symopt.sparse)(net, "weight", strength=0.3)
    return net


def _regrow_worker(rank: int, world: int, port: int, out: str, low_rank: bool = False) -> None:
    with _process_group(rank, world, port):
        net = _regrow_net(low_rank)
        ddp = nn.parallel.DistributedDataParallel(net)
        state = _regrowing(ddp, net, *_half_batch(rank, world))
        del ddp
        torch.save(state, f"{out}.{rank}")


def _low_rank_regrow_worker(rank: int, world: int, port: int, out: str) -> None:
    _regrow_worker(rank, world, port, out, low_rank=True)


@pytest.mark.parametrize("low_rank", [False, True], ids=["sparse", "low_rank"])
def test_regrow_decides_alike_on_every_rank(tmp_path, low_rank):
    """symopt.regrow under DDP averages θ's gradient over the replicas before deciding: both ranks snap
    and regrow the same atoms (entries; for low rank, singular directions isolated by the same QR, SVD
    and rotation on every rank), and the run is the single-process full-batch run's."""
    rank0 = _identical_replicas(_low_rank_regrow_worker if low_rank else _regrow_worker, tmp_path / "regrow")
    net = _regrow_net(low_rank)
    single = _regrowing(net, net, *_data())
    assert torch.equal(rank0["held"], single["held"]) and torch.equal(rank0["counts"], single["counts"])
    assert int(single["counts"][0]) > 0
    torch.testing.assert_close(rank0["weight"], single["weight"], rtol=0, atol=1e-9)
