"""A layer whose weight is narrow low rank computes its output through the factors without forming W = U Vᵀ
(`Constraint.thin_factors`, installed by registration: a Linear as x V Uᵀ, a convolution as r kernels then
a 1 × 1 one, an embedding as U's rows times Vᵀ): the same output and factor gradients as the formed
weight, the weight formed wherever something needs it (a budget's reading step, a watched forward, a
layer option), and the model's copies, checkpoints and removal unchanged."""

import copy
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import symopt
from helpers import DT, recorded_training

LOWRANK = sys.modules["symopt.constraints.lowrank"]


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(40, 30).double())
    with warnings.catch_warnings():  # (a random init truncated to the rank: said at registration)
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(net, "0.weight", **kwargs)
    return net


def _strength_course(net, loss, steps: int) -> list[float]:
    """λ of the layer after each of ``steps`` SGD steps on ``loss()``."""
    return recorded_training(net, loss, steps, lambda: net[0].parametrizations.weight[0].strength)


@pytest.fixture
def formed(monkeypatch):
    """Counts the times the layer forms W (LowRank.forward)."""
    calls = []
    real = LOWRANK.LowRank.forward

    def counting(self, *factors):
        calls.append(1)
        return real(self, *factors)

    monkeypatch.setattr(LOWRANK.LowRank, "forward", counting)
    return calls


def _dense_reference(net, x):
    """Output and factor gradients with W formed (nn.Linear's own forward)."""
    layer = net[0]
    out = nn.functional.linear(x, layer.weight, layer.bias)
    grads = torch.autograd.grad(out.square().sum(), [layer.parametrizations.weight.original0,
                                                     layer.parametrizations.weight.original1, layer.bias])
    return out.detach(), grads


def test_narrow_factors_give_the_formed_weights_output_and_gradients_without_forming_it(formed):
    net = _layer(strength=1e-3, max_rank=4)
    x = torch.randn(16, 40, dtype=DT, generator=torch.Generator().manual_seed(1))
    reference, reference_grads = _dense_reference(net, x)
    formed.clear()
    layer = net[0]
    out = net(x)
    grads = torch.autograd.grad(out.square().sum(), [layer.parametrizations.weight.original0,
                                                     layer.parametrizations.weight.original1, layer.bias])
    assert not formed, "the weight was formed"
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_full_width_factors_form_the_weight_only_where_the_batch_makes_that_cheaper(formed):
    """At full width (40 × 30, r = 30) the two thin products cost rows·r(m + n) = 2100·rows multiply-adds
    against rmn + rows·mn = 36000 + 1200·rows with W formed: thin up to 40 rows, formed from 41 (a
    batch's rows, here split over a leading axis too); either way the output and gradients are the
    formed weight's."""
    net = _layer(strength=1e-3)
    for shape, forms in (((40, 40), False), ((2, 20, 40), False), ((41, 40), True), ((3, 14, 40), True)):
        x = torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(1))
        _matches_the_formed_weight(net[0], x, formed, atol=1e-11, forms=forms)


def test_a_watched_forward_forms_the_weight(formed):
    net = _layer(strength=1e-3, max_rank=4)
    seen = []
    net[0].parametrizations.weight[0].register_forward_hook(lambda *args: seen.append(1))
    formed.clear()  # (registration formed W once)
    net(torch.randn(4, 40, dtype=DT))
    assert formed and seen


def test_a_budget_forms_the_weight_on_its_reading_steps_only_and_counts_every_step(formed):
    """A rank budget reads θ's gradient one step in four (`READ_EVERY`): those steps form W, the
    others do not, and λ follows the same course as with W formed on every step."""
    x = torch.randn(32, 40, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.randn(32, 30, dtype=DT, generator=torch.Generator().manual_seed(3))

    def train(net):
        course = _strength_course(net, lambda: (net(x) - y).square().mean(), steps=13)
        return course, int(net[0].parametrizations.weight[0].policy.step)

    factored = _layer(max_rank=8, target_rank=2)
    formed.clear()
    course, steps = train(factored)
    reads = len(formed)
    always = _layer(max_rank=8, target_rank=2)
    del always[0].forward  # (nn.Linear's own forward: W formed on every step)
    formed.clear()
    reference, reference_steps = train(always)
    assert steps == reference_steps == 13
    assert 0 < reads < len(formed) == 13  # the first step and one in four after it
    assert course == pytest.approx(reference, rel=1e-9)


def test_a_scheduled_strength_never_forms_the_weight_and_counts_every_step(formed):
    """A schedule reads no gradient (λ is schedule(step)): every step is factored, and the step count,
    so λ's course, is the one with W formed."""
    x = torch.randn(8, 40, dtype=DT, generator=torch.Generator().manual_seed(4))

    def train(net):
        return _strength_course(net, lambda: net(x).square().mean(), steps=5)

    schedule = lambda step: 1e-3 * (step + 1)  # noqa: E731
    factored = _layer(max_rank=4, strength=symopt.Scheduled(schedule))
    formed.clear()
    course = train(factored)
    assert not formed
    always = _layer(max_rank=4, strength=symopt.Scheduled(schedule))
    del always[0].forward
    assert course == train(always) == [1e-3 * (k + 2) for k in range(5)]


def test_deepcopy_state_dict_and_removal_keep_the_layer_working():
    net = _layer(strength=1e-3, max_rank=4)
    x = torch.randn(5, 40, dtype=DT)
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone[0].parametrizations.weight.original0.mul_(2.0)  # the copy's factors, not the original's
    torch.testing.assert_close(clone(x), nn.functional.linear(x, clone[0].weight, clone[0].bias))
    assert not torch.allclose(clone(x), net(x))
    # (torch.save of a whole parametrized model is refused by torch itself: checkpoints are state_dicts)
    restored = _layer(seed=5, strength=1e-3, max_rank=4)
    restored.load_state_dict(net.state_dict())
    torch.testing.assert_close(restored(x), net(x))
    expected = net(x).detach()
    symopt.attach.remove(net[0], "weight")
    assert "forward" not in vars(net[0])
    torch.testing.assert_close(net(x), expected)


def _two_layers(seed=0, **kwargs):
    """40 → 30 → 20, both weights in one pooled rank budget (narrow factors: r(m + n) ≤ mn)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(net, ["0.weight", "2.weight"], **kwargs)
    return net


def _weights(net):
    """The layers' weights and biases (U Vᵀ: the factors themselves are defined up to the signs a landing's
    SVD picks)."""
    with torch.no_grad():
        return [t.clone() for layer in net if isinstance(layer, nn.Linear) for t in (layer.weight, layer.bias)]


def _formed_always(net):
    """nn.Linear's own forward on every constrained layer: W formed on every step (the reference)."""
    for layer in net:
        if isinstance(layer, nn.Linear) and "forward" in vars(layer):
            del layer.forward
    return net


@pytest.mark.parametrize("width", [8, None], ids=["narrow", "full-width"])
def test_a_landing_rank_budget_lands_on_the_same_step_and_course_with_the_weight_unformed(formed, width):
    """A budget with total_steps has a forward pre-hook (the landing). It acts on the factors in place
    (`acts_on_factors`), so the layer still skips W between readings; the landing comes at the same
    step with the same factors as with W formed every step, and after it (λ = 0, nothing watched) W is
    never formed. Fails if the landing's hook is not run on the factored path (no landing: the run
    cannot finalize) or if a step is not counted (a later landing, another course). At full width (r =
    30) the 32-row batch makes the thin products the cheaper too."""
    x = torch.randn(32, 40, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.randn(32, 30, dtype=DT, generator=torch.Generator().manual_seed(3))

    def train(net, steps):
        course = _strength_course(net, lambda: (net(x) - y).square().mean(), steps)
        return course, net[0].parametrizations.weight[0].policy.has_landed()

    factored = _layer(max_rank=width, target_rank=2, total_steps=10, ramp=(0.0, 0.5))
    formed.clear()
    course, landed = train(factored, steps=10)
    reads = len(formed)
    params = _weights(factored)  # (reading the weight forms it: after the count)
    formed.clear()
    train(factored, steps=4)  # after the landing
    assert not formed, "W formed after the landing"
    reference = _formed_always(_layer(max_rank=width, target_rank=2, total_steps=10, ramp=(0.0, 0.5)))
    formed.clear()
    ref_course, ref_landed = train(reference, steps=10)
    assert landed and ref_landed
    assert 0 < reads < len(formed)
    assert course == pytest.approx(ref_course, rel=1e-9)
    for got, want in zip(params, _weights(reference)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    symopt.finalize(factored)  # default arguments: the landed rank holds exactly
    assert torch.linalg.matrix_rank(factored[0].weight) <= 2


@pytest.mark.parametrize("total_steps", [None, 10])
def test_a_pooled_rank_budget_skips_w_between_readings_and_counts_each_step_once(formed, total_steps):
    """One rank budget over two narrow layers: each layer's output stands for its θ on the steps the
    pool reads nothing, the pool counts one step per backward pass (not one per layer), and λ, the
    landing and the factors follow the course with W formed every step."""
    x = torch.randn(32, 40, dtype=DT, generator=torch.Generator().manual_seed(4))
    y = torch.randn(32, 20, dtype=DT, generator=torch.Generator().manual_seed(5))
    kwargs = dict(max_rank=6, target_rank=5) if total_steps is None else \
        dict(max_rank=6, target_rank=5, total_steps=total_steps, ramp=(0.0, 0.6))

    def train(net):
        pool = net[0].parametrizations.weight[0].group
        course = recorded_training(net, lambda: (net(x) - y).square().mean(), 12, lambda: pool.strength)
        return course, int(pool.policy.step)

    formed.clear()
    factored = _two_layers(**kwargs)
    course, steps = train(factored)
    reads = len(formed)
    params = _weights(factored)  # (reading the weights forms them: after the count)
    formed.clear()
    reference = _formed_always(_two_layers(**kwargs))
    ref_course, ref_steps = train(reference)
    ref_params = _weights(reference)
    assert 0 < reads < len(formed)
    assert steps == ref_steps == (12 if total_steps is None else 6)  # (a landed budget stops counting)
    assert course == pytest.approx(ref_course, rel=1e-9)
    for got, want in zip(params, ref_params):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_foreign_pre_hook_forms_the_weight(formed):
    """A pre-hook symopt does not know may expect the forward that follows: W is formed for it."""
    net = _layer(strength=1e-3, max_rank=4)
    seen = []
    net[0].parametrizations.weight[0].register_forward_pre_hook(lambda *args: seen.append(1))
    formed.clear()
    net(torch.randn(4, 40, dtype=DT))
    assert formed and seen == [1]


def test_a_pooled_rank_budget_reads_leading_singular_values_without_a_full_svd(monkeypatch):
    """A pool's reading asks each tensor's own kind for its k + 1 leading atoms (`top_dual_atoms`: a
    matrix's from its tracked range), not every atom of each matrix from a full SVD (four full SVDs of
    512 × 512 a reading made a pool of two layers 3.9× the plain step)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(160, 128), nn.ReLU(), nn.Linear(128, 160)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(net, ["0.weight", "2.weight"], max_rank=24, target_rank=6)
    x = torch.randn(64, 160, dtype=DT, generator=torch.Generator().manual_seed(6))
    full_svds = []
    real_svd = torch.linalg.svd

    def watched(A, *args, **kwargs):
        if min(A.shape[-2:]) >= 128:
            full_svds.append(tuple(A.shape))
        return real_svd(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", watched)
    pool = net[0].parametrizations.weight[0].group
    recorded_training(net, lambda: (net(x) - x).square().mean(), 9, lambda: pool.strength)
    assert int(pool.policy.step) == 9 and pool.strength > 0
    assert full_svds == []


def _matches_the_formed_weight(layer, x, formed, atol=1e-12, forms=False):
    """``layer(x)`` through the factors (the weight never formed; with ``forms``, formed) and the factors'
    and bias's gradients of its squared sum equal those of the class's own forward, which forms the
    weight."""
    params = [layer.parametrizations.weight.original0, layer.parametrizations.weight.original1]
    params += [] if getattr(layer, "bias", None) is None else [layer.bias]
    want = type(layer).forward(layer, x)
    want_grads = torch.autograd.grad(want.square().sum(), params)
    formed.clear()
    got = layer(x)
    grads = torch.autograd.grad(got.square().sum(), params)
    assert bool(formed) == forms, "the weight was formed" if formed else "the weight was not formed"
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=atol)


CONVS = [
    (nn.Conv1d, dict(in_channels=12, out_channels=16, kernel_size=5, stride=2, padding=3, dilation=2), (3, 12, 40)),
    (nn.Conv2d, dict(in_channels=12, out_channels=16, kernel_size=3, padding="same", padding_mode="reflect",
                     bias=False), (2, 12, 9, 11)),
    (nn.Conv2d, dict(in_channels=12, out_channels=20, kernel_size=(3, 2), stride=(2, 1), padding=1,
                     padding_mode="circular"), (2, 12, 10, 8)),
    (nn.Conv3d, dict(in_channels=6, out_channels=8, kernel_size=3, padding=1), (2, 6, 5, 6, 7)),
]


@pytest.mark.parametrize("cls, kwargs, shape", CONVS)
def test_a_narrow_low_rank_convolution_gives_the_formed_kernels_output_and_gradients_without_forming_it(
        formed, cls, kwargs, shape):
    """A convolution whose kernel is narrow low rank (the (c_out, c_in·k) view at r(m + n) ≤ mn) runs as a
    convolution with r output channels, kernel Vᵀ, under the layer's own stride, padding, padding mode and
    dilation, then a 1 × 1 one with U and the bias: the output and every gradient of the formed kernel's."""
    torch.manual_seed(0)
    conv = cls(**kwargs).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(conv, "weight", strength=1e-3, max_rank=3)
    x = torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    _matches_the_formed_weight(conv, x, formed, atol=1e-11)


def test_grouped_or_full_width_convolutions_form_the_kernel(formed):
    """Groups split the kernel's input channels, which the two-stage product does not: such a layer keeps
    its own forward; a kernel at full width (two thin products would cost more) forms it."""
    torch.manual_seed(0)
    grouped = nn.Conv2d(8, 8, 3, groups=2).double()
    wide = nn.Conv2d(4, 6, 1).double()  # (a 6 × 4 view: rank 3 costs 30 > 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(grouped, "weight", strength=1e-3, max_rank=2)
        symopt.low_rank(wide, "weight", strength=1e-3, max_rank=3)
    assert "forward" not in vars(grouped)
    formed.clear()
    grouped(torch.randn(1, 8, 5, 5, dtype=DT))
    wide(torch.randn(1, 4, 5, 5, dtype=DT))
    assert len(formed) == 2


def test_a_convolution_that_applies_its_weight_its_own_way_keeps_its_forward(formed):
    """A subclass whose ``_conv_forward`` transforms the kernel (weight standardisation; here scaled to unit
    norm, which the r kernels' own norm would not give) must see the kernel itself, not the factors' r
    kernels: it keeps its own forward."""

    class Scaled(nn.Conv2d):
        def _conv_forward(self, input, weight, bias):
            return super()._conv_forward(input, weight / weight.norm(), bias)

    torch.manual_seed(0)
    conv = Scaled(12, 16, 3).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(conv, "weight", strength=1e-3, max_rank=3)
    x = torch.randn(1, 12, 6, 6, dtype=DT)
    assert "forward" not in vars(conv)
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight / conv.weight.norm(), conv.bias))


def _embedding(**options):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12, **options).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(emb, "weight", strength=1e-3, max_rank=3)
    return emb


def test_a_narrow_low_rank_embedding_picks_factor_rows_without_forming_the_table(formed):
    """An embedding table U Vᵀ gives the rows the indices pick as U's rows times Vᵀ: the output and the
    factors' gradients of the formed table (repeated indices accumulate into U's rows as into W's)."""
    emb = _embedding()
    _matches_the_formed_weight(emb, torch.tensor([[0, 3, 3, 49], [7, 0, 12, 3]]), formed)


@pytest.mark.parametrize("options", [dict(padding_idx=0), dict(max_norm=1.0), dict(scale_grad_by_freq=True)])
def test_an_embedding_whose_options_need_the_table_forms_it(formed, options):
    """A padding row's gradient is held at 0 (its factors' would not be), max_norm renormalises rows of the
    table in place, frequency scaling is the table's: the layer forms W and gives what nn.Embedding gives."""
    emb = _embedding(**options)
    idx = torch.tensor([0, 3, 3, 7])
    plain = nn.Embedding(50, 12, **options).double()
    with torch.no_grad():
        plain.weight.copy_(emb.weight)
    formed.clear()
    out = emb(idx)
    assert formed
    torch.testing.assert_close(out, plain(idx), rtol=1e-12, atol=1e-12)


def test_a_forward_set_on_the_instance_is_kept(formed):
    """A layer whose forward was replaced on the instance (by another library, or by hand) keeps it: the
    factored forward is installed only over the class's own."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 30).double()
    calls = []

    def own_forward(x):
        calls.append(1)
        return nn.functional.linear(x, layer.weight, layer.bias)

    layer.forward = own_forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(layer, "weight", strength=1e-3, max_rank=4)
    formed.clear()
    layer(torch.randn(3, 40, dtype=DT))
    assert calls == [1] and formed


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 5, 3), (2, 3, 9, 7)),
    (nn.Conv2d(3, 5, (3, 2), stride=(2, 3), padding=(1, 2), dilation=(2, 1)), (4, 3, 11, 10)),
    (nn.Conv2d(3, 5, 3, padding="same", dilation=2), (1, 3, 6, 6)),
    (nn.Conv2d(3, 5, 5, padding="valid", padding_mode="reflect"), (2, 3, 8, 9)),
    (nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular", stride=2), (3, 7, 7)),  # unbatched
    (nn.Conv1d(2, 4, 4, stride=3, padding=2), (5, 2, 17)),
    (nn.Conv3d(2, 3, 2, stride=(1, 2, 2)), (2, 2, 4, 5, 6)),
    (nn.Linear(6, 4), (3, 5, 6)),
    (nn.Embedding(10, 4), (3, 7)),
])
def test_the_cost_models_rows_are_the_layers_output_rows(layer, shape):
    """`thin_factors`' cost model counts the rows the weight is applied to: a convolution's output
    positions over the batch (stride, padding of every kind, dilation, an unbatched input), a Linear's
    input rows, an embedding's indices; each equal to the layer's own output rows."""
    attach = sys.modules["symopt.attach"]
    x = (torch.randint(0, 10, shape) if isinstance(layer, nn.Embedding) else torch.randn(*shape))
    out = layer(x)
    width = layer.embedding_dim if isinstance(layer, nn.Embedding) else (
        layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
    assert attach._product_rows(layer, x) == out.numel() // width


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out_features=st.integers(2, 24), in_features=st.integers(2, 24), width=st.integers(1, 24),
       rows=st.integers(0, 70), conv=st.booleans())
def test_any_layer_goes_through_its_factors_exactly_where_that_costs_less(formed, out_features, in_features, width,
                                                                          rows, conv):
    """For any shape, factor width and number of input rows, the layer forms W exactly where the cost
    model says the thin products cost more (rows·r(m + n) > rmn + rows·mn on the m × n matrix view), and
    its output and gradients are the formed weight's either way. A convolution (1 × 1 here) counts its
    output positions as rows. (`formed` is cleared before each example's forward.)"""
    assume(rows > 0 or not conv)  # (torch's own Conv2d refuses an input of spatial size 0, with W or without)
    torch.manual_seed(0)
    layer = (nn.Conv2d(in_features, out_features, 1) if conv else nn.Linear(in_features, out_features)).double()
    r = min(width, out_features, in_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        symopt.low_rank(layer, "weight", strength=1e-3, max_rank=r)
    x = torch.randn(*((1, in_features, 1, rows) if conv else (rows, in_features)), dtype=DT,
                    generator=torch.Generator().manual_seed(1))
    m, n = out_features, in_features
    thin = rows * r * (m + n) <= r * m * n + rows * m * n
    _matches_the_formed_weight(layer, x, formed, atol=1e-11, forms=not thin)
