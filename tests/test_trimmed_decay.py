"""The trimmed decay of a landing budget's ramp: only the factors of the atoms outside the current count's
largest are decayed, so the penalty is the trimmed norm and the kept atoms are not shrunk on the way to
the landing. Both ways to decay (the penalty in the loss, ``param_groups`` with its step hook) implement
the same objective, exactly, also under gradient scaling and with ``symopt.bind``."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import symopt
from symopt.constraints.budget import scheduled_count

DT = torch.float64
STEPS = 200


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, 12, generator=g, dtype=DT)
    W = torch.zeros(12, 6, dtype=DT)
    W[:4, :3] = 1.0 + torch.rand(4, 3, generator=g, dtype=DT)
    return X, X @ W + 0.05 * torch.randn(200, 6, generator=g, dtype=DT)


def _dense_data(seed=0):
    """12 large planted entries (2 to 3) among 60 small ones (0.3 to 0.5, random signs): a budget of 12
    must push the small ones down against their gradients, so the plain ℓ1 decay needs a λ that
    visibly shrinks the large ones too."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(200, 12, generator=g, dtype=DT)
    W = (0.3 + 0.2 * torch.rand(12, 6, generator=g, dtype=DT)) * torch.randn(12, 6, generator=g, dtype=DT).sign()
    W[:4, :3] = 2.0 + torch.rand(4, 3, generator=g, dtype=DT)
    return X, X @ W + 0.05 * torch.randn(200, 6, generator=g, dtype=DT)


def _loss(model, X, Y):
    return 0.5 * (model(X) - Y).square().mean()


def _model(register, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(12, 6, bias=False).double()
    return model, register(model)


SPARSE = lambda m: symopt.sparse(m, "weight", max_nonzero=12, total_steps=STEPS)  # noqa: E731


def SPARSE_300(model):
    """A budget of 12 of 72 entries over 300 steps, its ramp decaying the dropped atoms alone: landing on
    the way (`BudgetStrength.lands_early`) is off: on `_dense_data` one planted entry is still 0.03–0.08
    at the first readings that land (steps 85–92), among the smallest, and landing on the way cuts it
    there (as gradual magnitude pruning would); these tests measure what the trimmed decay does alone."""
    return symopt.sparse(model, "weight", max_nonzero=12, total_steps=300, land_on_the_way=False)


def _step(model, opt, scaler, X, Y):
    """One optimizer step on the least-squares loss, through ``scaler`` (a GradScaler) when given."""
    opt.zero_grad()
    if scaler is None:
        _loss(model, X, Y).backward()
        opt.step()
    else:
        scaler.scale(_loss(model, X, Y)).backward()
        scaler.step(opt)
        scaler.update()


def _step_into_the_ramp(model, opt, steps):
    X, Y = _data()
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, X, Y).backward()
        opt.step()


def test_the_decay_spares_the_counts_largest_atoms_during_the_ramp():
    """Mid-ramp: the penalty's gradient is λ·factor on the entries outside the count(t) largest |θ| and
    exactly 0 on those inside; its value is λ·(sum of the other |θ_i|) at balanced factors."""
    model, handle = _model(SPARSE)
    handle.constraint.policy.every = 1  # a reading on every step, so the last backward pass's is the one checked
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05)
    _step_into_the_ramp(model, opt, 59)
    X, Y = _data()
    opt.zero_grad()
    _loss(model, X, Y).backward()  # the backward pass that says which atoms are kept (no step after it)
    policy = handle.constraint.policy
    assert policy.trimming() and opt.param_groups[0]["weight_decay"] == 0.0 and handle.strength > 0
    u, v = handle.decayed_factors()
    theta = (u * v).detach().reshape(-1)
    count = scheduled_count(int(policy.step) - 1, 72, 12, *policy.ramp)  # the count of the last backward
    kept = torch.zeros(72, dtype=torch.bool)
    kept[theta.abs().topk(count).indices] = True
    assert torch.equal(policy.dropped_atoms(), (~kept).to(DT))
    u.grad = v.grad = None
    symopt.penalty(model).backward()
    lam = handle.strength
    for factor in (u, v):
        expected = torch.where(kept.view_as(factor), 0.0, lam * factor.detach())
        assert torch.equal(factor.grad, expected)
    balanced = lam * theta.abs()[~kept].sum()
    assert float(symopt.penalty(model)) >= float(balanced) - 1e-12


@pytest.mark.parametrize("way", ["hook", "bind", "scaled"])
def test_param_groups_apply_the_trimmed_decay_as_coupled_weight_decay(way):
    """The same model trained through the ramp and the landing by SGD + momentum, once by plain groups
    with λ·mask⊙factor added to the factors' gradients by hand before each step (coupled decay on the
    dropped atoms), once through ``param_groups``: by the global step hook, by a bound optimizer's own
    hook (not twice), or under a GradScaler (scale 2^10, the same in both runs), where the hook acts on
    the unscaled gradients. The same weights to rounding."""
    X, Y = _data()

    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10 ** 6) if way == "scaled" else None

    reference, handle = _model(SPARSE)
    opt, scale = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9), scaler()
    for _ in range(STEPS):
        opt.zero_grad()
        (_loss(reference, X, Y) if scale is None else scale.scale(_loss(reference, X, Y))).backward()
        if scale is not None:
            scale.unscale_(opt)
        for slot, factor in enumerate(handle.decayed_factors()):
            mask = handle.members[0].parametrization.decay_mask(slot, factor)
            factor.grad += handle.strength * factor.detach() * (1.0 if mask is None else mask)
        if scale is None:
            opt.step()
        else:
            scale.step(opt)
            scale.update()

    model, _ = _model(SPARSE)
    opt = torch.optim.SGD(symopt.param_groups(model, lr=0.05), lr=0.05, momentum=0.9)
    if way == "bind":
        symopt.bind(opt)
    scaler = scaler()
    # The scaler is not handed to symopt in either run (the budget reads the scaled gradients in both):
    # symopt says so at the first step
    with pytest.warns(UserWarning, match="GradScaler") if way == "scaled" else contextlib.nullcontext():
        for _ in range(STEPS):
            _step(model, opt, scaler, X, Y)
    assert int((model.weight != 0).sum()) == 12
    torch.testing.assert_close(model.weight, reference.weight, rtol=1e-9, atol=1e-12)


def test_the_penalty_in_the_loss_trims_too():
    """With ``symopt.penalty`` in the loss (no weight decay in the optimizer) the budget lands the same
    planted support, and the kept weights at the landing are as little shrunk as through param_groups."""
    X, Y = _dense_data()
    model, handle = _model(SPARSE_300)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(handle.constraint.policy.ramp[1]):
        opt.zero_grad()
        (_loss(model, X, Y) + symopt.penalty(model)).backward()
        opt.step()
    W = model.weight.detach().T
    planted = torch.zeros(12, 6, dtype=torch.bool)
    planted[:4, :3] = True
    assert torch.equal(W.abs() >= W.abs().reshape(-1).topk(12).values[-1], planted)
    assert _shrinkage(W, planted, X, Y) < 0.05


def _landing_snapshot(trimmed: bool):
    """Train the planted problem to just before the landing; return the kept weights' relative shrinkage
    against least squares on the same support, and the loss."""
    X, Y = _dense_data()
    model, handle = _model(SPARSE_300)
    handle.constraint.policy.trims = trimmed
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    land = handle.constraint.policy.ramp[1]
    for _ in range(land):
        opt.zero_grad()
        _loss(model, X, Y).backward()
        opt.step()
    W = model.weight.detach().T
    support = W.abs() >= W.abs().reshape(-1).topk(12).values[-1]
    return _shrinkage(W, support, X, Y), float(_loss(model, X, Y)), support


def _shrinkage(W, support, X, Y) -> float:
    """‖W − refit‖ / ‖refit‖ on the support, refit = least squares on each output's kept inputs."""
    refit = torch.zeros_like(W)
    for j in range(W.shape[1]):
        cols = support[:, j]
        if cols.any():
            refit[cols, j] = torch.linalg.lstsq(X[:, cols], Y[:, j:j + 1]).solution[:, 0]
    return float((W[support] - refit[support]).norm() / refit[support].norm())


def test_the_kept_atoms_are_not_shrunk_on_the_way_to_the_landing():
    """At the landing of `_dense_data`'s budget, both decays have found the planted support; the plain
    ℓ1 decay has shrunk the kept weights by the Lasso's bias (13% from least squares on the support),
    the trimmed one has left them within a fraction of that (1.5%), and the loss is lower."""
    plain_shrink, plain_loss, plain_support = _landing_snapshot(False)
    shrink, loss, support = _landing_snapshot(True)
    planted = torch.zeros(12, 6, dtype=torch.bool)
    planted[:4, :3] = True
    assert torch.equal(support, planted) and torch.equal(plain_support, planted)
    assert shrink < 0.3 * plain_shrink and loss < plain_loss


def test_group_and_channel_budgets_trim_per_unit():
    """A GroupSparse budget (rows) and a channel budget over conv + BatchNorm: mid-ramp, the decay's
    gradient on the gates and on every ω entry of a kept unit is 0, and λ·factor on a dropped one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    units = symopt.group_sparse(net, ["0.weight", "0.bias", "1.weight", "1.bias"], max_groups=3, total_steps=100)
    rows = symopt.group_sparse(net, "4.weight", dim=1, max_groups=50, total_steps=100)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    X, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    for handle in (units, rows):
        policy = handle.constraint.policy
        dropped = policy.dropped_atoms()
        assert policy.trimming() and 0 < int(dropped.sum()) < dropped.numel()
        for factor in handle.decayed_factors():
            factor.grad = None
        handle.penalty().backward()
        for member in handle.members:
            for slot in member.parametrization.decayed:
                factor = member.factors[slot]
                mask = member.parametrization.decay_mask(slot, factor)
                assert mask.shape == factor.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
                torch.testing.assert_close(factor.grad, handle.strength * mask * factor.detach())
                if factor.dim() == 1 and factor.numel() == dropped.numel():  # the gates: one per unit
                    assert torch.equal(mask, dropped)


def test_the_decay_masks_are_laid_out_once_a_reading_and_follow_each_reading():
    """The step hook asks every factor's decay mask on every step: it is laid out once per reading (the same
    tensor until the next one) and, after a reading that drops other atoms, laid out again from that reading
    (a unit group's gather, a sparse view), equal to the layout of the new dropped atoms."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    units = symopt.group_sparse(net, ["0.weight", "0.bias", "1.weight", "1.bias"], max_groups=3, total_steps=100)
    entries = symopt.sparse(net, "4.weight", max_nonzero=100, total_steps=100)
    opt = torch.optim.Adam(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    X, y = torch.randn(32, 1, 8, 8), torch.randint(0, 4, (32,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()

    def masks(handle):
        return [(m.parametrization, slot, m.factors[slot], m.parametrization.decay_mask(slot, m.factors[slot]))
                for m in handle.members for slot in m.parametrization.decayed]

    for _ in range(30):
        step()
    for handle in (units, entries):
        policy = handle.constraint.policy
        before, dropped = masks(handle), policy.dropped_atoms()
        assert all(a[3] is b[3] for a, b in zip(before, masks(handle)))  # (no reading between: kept)
        changed = False
        for _ in range(3 * policy.every):  # (readings: the dropped atoms change as the count falls)
            step()
            changed = changed or not torch.equal(policy.dropped_atoms(), dropped)
        assert changed and policy.trimming()
        for parametrization, slot, factor, mask in masks(handle):
            laid_out = parametrization.dropped_entries(slot, factor, policy.dropped_atoms().to(factor.dtype))
            assert torch.equal(mask, laid_out.expand_as(factor))


def test_kinds_without_a_trimmed_decay_keep_the_plain_one():
    """A rank budget and an N:M pattern decay every factor during the ramp (weight_decay = λ in their
    group, no mask): their kept sets are not the count's largest atoms of a mask."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).double()
    rank = symopt.low_rank(net, "0.weight", target_rank=2, total_steps=100)
    nm = symopt.constrain(net, "1.weight", symopt.NMSparse(2, 4, total_steps=100))
    opt = torch.optim.SGD(symopt.param_groups(net, lr=1e-2), lr=1e-2)
    X = torch.randn(16, 8, dtype=DT)
    for _ in range(30):
        opt.zero_grad()
        net(X).square().mean().backward()
        opt.step()
    for handle, group in zip((rank, nm), opt.param_groups):
        assert not handle.constraint.policy.trimming()
        assert group["weight_decay"] == handle.strength > 0
        assert all(handle.members[0].parametrization.decay_mask(i, handle.members[0].factors[i]) is None
                   for i in handle.members[0].parametrization.decayed)


def test_a_pooled_budget_trims_over_all_its_tensors():
    """One budget over two layers: the kept atoms are the count's largest over both, and each layer's
    mask is its slice of them."""
    torch.manual_seed(0)
    X, Y = _data()
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    handle = symopt.sparse(model, ["0.weight", "2.weight"], max_nonzero=40, total_steps=STEPS)
    handle.constraint.policy.every = 1  # a reading on every step: the last backward pass's is checked
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    _step_into_the_ramp(model, opt, 59)
    X, Y = _data()
    opt.zero_grad()
    _loss(model, X, Y).backward()
    policy = handle.constraint.policy
    theta = torch.cat([v.detach().reshape(-1) for v in handle.values()])
    count = scheduled_count(int(policy.step) - 1, theta.numel(), 40, *policy.ramp)
    dropped = policy.dropped_atoms()
    assert int((dropped == 0).sum()) == count
    assert torch.equal(dropped, (theta.abs() < theta.abs().topk(count).values[-1]).to(DT))
    start = 0
    for member in handle.members:
        u = member.factors[0]
        mask = member.parametrization.decay_mask(0, u)
        assert torch.equal(mask.reshape(-1), dropped[start:start + u.numel()])
        start += u.numel()


def test_after_the_landing_nothing_is_decayed():
    model, handle = _model(SPARSE)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    _step_into_the_ramp(model, opt, STEPS)
    policy = handle.constraint.policy
    assert policy.has_landed() and not policy.trimming() and handle.strength == 0.0
    assert opt.param_groups[0]["weight_decay"] == 0.0 and float(symopt.penalty(model)) == 0.0


def _budget_under(scaler_mode: str):
    """λ over the ramp of a Sparse budget trained by Adam with ``symopt.bind``: without gradient scaling
    ("none"), under a GradScaler of scale 2^10 handed to bind ("told"), or not handed to it ("untold")."""
    X, Y = _data()
    model, handle = _model(lambda m: symopt.sparse(m, "weight", max_nonzero=12, total_steps=STEPS))
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    scaler = None if scaler_mode == "none" else torch.amp.GradScaler("cpu", init_scale=2.0 ** 10,
                                                                      growth_interval=10 ** 6)
    symopt.bind(opt, scaler=scaler if scaler_mode == "told" else None)
    strengths = []
    for _ in range(100):
        _step(model, opt, scaler, X, Y)
        strengths.append(handle.strength)
    return strengths, model.weight.detach()


def test_a_budget_under_a_grad_scaler_reads_the_unscaled_gradients():
    """Told the scaler (``symopt.bind(opt, scaler=scaler)``), the budget's λ and the weights follow the
    unscaled run to rounding; not told, λ reads the gradients of the scaled loss and is about the scale
    (2^10) times too large."""
    plain, w_plain = _budget_under("none")
    told, w_told = _budget_under("told")
    with pytest.warns(UserWarning, match="GradScaler"):  # caught at the first step (test below)
        untold, _ = _budget_under("untold")
    assert plain[-1] > 0
    torch.testing.assert_close(torch.tensor(told), torch.tensor(plain), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(w_told, w_plain, rtol=1e-9, atol=1e-12)
    assert untold[-1] > 100 * plain[-1]


def _warnings_of(run) -> list[str]:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if "adaptive λ read during backward" in str(w.message)]


@pytest.mark.parametrize("bound", [False, True], ids=["param_groups", "bind"])
@pytest.mark.parametrize("register", [SPARSE, lambda m: symopt.low_rank(m, "weight", target_rank=2),
                                      lambda m: symopt.subspace(m, "weight", torch.ones(1, 72, dtype=DT))],
                         ids=["landing budget", "rank budget", "auto"])
def test_a_grad_scaler_nobody_named_is_caught_at_the_first_step(register, bound):
    """An adaptive λ under a GradScaler it was not told about reads gradients 2^10 times too large:
    the first step warns once, naming the fix; told (bind(scaler=)), or without a scaler but with the
    gradients clipped to a fifth, nothing is said; after SCALE_CHECK_STEPS steps the check's hooks
    are gone."""
    from symopt.decay import SCALE_CHECK_STEPS
    X, Y = _data()

    def run(mode: str):
        model, handle = _model(register)
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10 ** 6)
        if bound or mode == "told":
            symopt.bind(opt, scaler=scaler if mode == "told" else None)
        for _ in range(SCALE_CHECK_STEPS + 2):
            if mode == "clipped":
                opt.zero_grad()
                _loss(model, X, Y).backward()
                total = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2 * float(total))
                opt.step()
            else:
                _step(model, opt, scaler, X, Y)
        factors = handle.decayed_factors()
        assert all(not f._backward_hooks for f in factors)  # the check removed its hooks

    assert len(_warnings_of(lambda: run("untold"))) == 1
    assert _warnings_of(lambda: run("told")) == []
    assert _warnings_of(lambda: run("clipped")) == []


def test_an_unnamed_scaler_at_its_default_scale_kills_a_budgeted_layer():
    """Why the check above exists: at torch's default scale (2^16) a budget that reads the scaled
    gradients lands at a λ about 2^16 times too large and its decay drives every entry to 0 (max |w|
    below 1e-12 after 400 Adam steps, budget 12); told the scaler, the same run keeps its 12 entries."""
    X, Y = _data()

    def run(told: bool):
        model, handle = _model(lambda m: symopt.sparse(m, "weight", max_nonzero=12))
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10 ** 6)
        if told:
            symopt.bind(opt, scaler=scaler)
        for _ in range(400):
            _step(model, opt, scaler, X, Y)
        return model.weight.detach(), handle.strength

    with pytest.warns(UserWarning, match="GradScaler"):
        dead, lam_untold = run(False)
    alive, lam_told = run(True)
    assert float(dead.abs().max()) < 1e-12 and lam_untold > 1e4 * lam_told
    assert int((alive.abs() > 1e-3).sum()) == 12


def test_bind_refuses_what_is_not_a_scaler():
    model, _ = _model(SPARSE)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        symopt.bind(opt, scaler=2.0 ** 10)
    assert getattr(opt, "_symopt_binding", None) is None  # refused before anything was installed


@pytest.mark.parametrize("bound", [True, False])
def test_a_resumed_pooled_budget_trims_and_lands_the_same(bound):
    """model + optimizer state_dicts saved mid-ramp (between two readings) of a pooled budget: the
    dropped set travels in the state_dict, so the resumed run decays the same entries until its next
    reading and ends bit-identical, with or without ``symopt.bind`` (unbound, the optimizer's groups
    come back as plain dicts and the step hook finds them by their ``symopt_strength``)."""
    from helpers import resumed_matches

    X, Y = _data()

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6)).double()
        symopt.sparse(model, ["0.weight", "2.weight"], max_nonzero=40, total_steps=STEPS)
        opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
        if bound:
            symopt.bind(opt)
        return model, opt

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            _loss(model, X, Y).backward()
            opt.step()

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbound: λ's groups were replaced by load_state_dict (it says so)
        model, again = resumed_matches(build, run, 99, STEPS - 99)
    assert sum(int((m.weight != 0).sum()) for m in (again[0], again[2])) == 40
