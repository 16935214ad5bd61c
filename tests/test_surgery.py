"""export(mode="compressed") removes dead units through the traced graph (symopt/surgery.py): pooling,
Flatten, BatchNorm, residual additions, concatenations and functional forwards; every rewrite is checked
for exactness (outputs before == after) and every refusal says why."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import symopt
from symopt import ExportWarning
from helpers import Transposed

DT = torch.float64


def _kill(module, rows, bias=0.0):
    """Dead output units through the group-sparse factors (gate and ω), with a chosen bias."""
    plist = module.parametrizations.weight
    with torch.no_grad():
        plist.original0[rows] = 0
        plist.original1[rows] = 0
        if module.bias is not None and bias is not None:
            module.bias[rows] = bias


def _kill_units(layer, rows):
    """Dead output units of a unit group over a layer's weight and bias: the shared gates and the bias's ω."""
    with torch.no_grad():
        layer.parametrizations.weight.original0[rows] = 0
        layer.parametrizations.bias.original0[rows] = 0


def _quiet_export(net, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        return symopt.export(net, mode="compressed", **kwargs)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def digits_cnn():
    """The CNN of issue 21: conv(1→32)→ReLU→conv(32→64)→ReLU→MaxPool2d→Flatten→Linear on 8×8 digits."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 10))


def test_the_digits_cnn_with_half_its_channels_dead_shrinks_to_the_pruned_shapes():
    net = digits_cnn()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    symopt.group_sparse(net, "2.weight", dim=0, strength=1e-3)
    _kill(net[0], slice(0, 32, 2), bias=0.0)  # wholly dead: weight and bias (the padded conv2 sees 0)
    _kill(net[2], slice(1, 64, 2), bias=0.3)  # only the weights: relu(0.3) reaches the Linear as a constant
    small = _quiet_export(net)
    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels, small[6].in_features) == (16, 16, 32, 512)
    assert _params(small) == 9930
    x = torch.randn(7, 1, 8, 8)
    assert torch.allclose(small(x), net(x), atol=1e-5, rtol=0)


def test_a_dead_channel_behind_a_padded_conv_is_kept_when_its_constant_is_not_zero():
    net = digits_cnn()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    _kill(net[0], [0, 1, 2], bias=None)
    with torch.no_grad():
        net[0].bias[:3] = torch.tensor([0.4, -0.2, 0.0])  # relu: 0.4 (kept), 0 (removed), 0 (removed)
    with pytest.warns(ExportWarning, match=r"0.weight \(group_sparse\): 1 dead unit\(s\) kept: 1 because the "
                                           r"zero-padded Conv2d 2 would see 0 at the border instead of the constant 0.4"):
        small = symopt.export(net, mode="compressed")
    assert small[0].out_channels == 30
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(small(x), net(x), atol=1e-5, rtol=0)


class ResidualNet(nn.Module):
    """stem conv → [conv-BN-ReLU-conv-BN] + skip → ReLU → adaptive avg pool → flatten → Linear."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(out + x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _residual(dead_in_both):
    torch.manual_seed(0)
    net = ResidualNet().double()
    for bn in (net.bn1, net.bn2):  # trained-looking running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    for name in ("stem", "conv1", "conv2"):
        symopt.group_sparse(net, f"{name}.weight", dim=0, strength=1e-3)
    _kill(net.conv1, [0, 3], bias=0.0)
    with torch.no_grad():
        net.bn1.bias[[0, 3]] = 0.0
        net.bn1.running_mean[[0, 3]] = 0.0  # a dead conv1 channel leaves BN1 as exactly 0
    _kill(net.stem, [2, 5] if dead_in_both else [2], bias=0.0)
    _kill(net.conv2, [2, 5], bias=None)  # the residual group: channel c of stem and of conv2 (through BN2)
    return net


def test_residual_block_with_batchnorm_loses_a_channel_only_from_every_branch_at_once():
    net = _residual(dead_in_both=True)
    small = _quiet_export(net)
    assert (small.conv1.out_channels, small.bn1.num_features, small.conv2.in_channels) == (6, 6, 6)
    assert (small.stem.out_channels, small.conv2.out_channels, small.bn2.num_features,
            small.conv1.in_channels, small.head.in_features) == (6, 6, 6, 6, 6)
    x = torch.randn(4, 3, 6, 6, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


def test_residual_channel_alive_in_one_branch_keeps_it_in_all_and_says_so():
    net = _residual(dead_in_both=False)  # stem channel 5 lives: conv2's dead channel 5 must stay
    with pytest.warns(ExportWarning, match=r"conv2.weight \(group_sparse\): 1 dead unit\(s\) kept: 1 because a "
                                           "unit joined to it by a residual addition is alive"):
        small = symopt.export(net, mode="compressed")
    assert small.stem.out_channels == small.conv2.out_channels == small.head.in_features == 7
    x = torch.randn(4, 3, 6, 6, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


class Branches(nn.Module):
    """Two conv branches concatenated along channels, a functional forward and x.view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv1d(2, 4, 3), nn.Conv1d(2, 6, 3, padding=1)
        self.mix = nn.Conv1d(10, 5, 1)
        self.out = nn.Linear(5 * 3, 2)

    def forward(self, x):
        a = torch.tanh(self.left(x))
        b = F.gelu(self.right(x))[..., 1:-1]  # slicing the length axis keeps units apart, but symopt blocks it
        c = F.leaky_relu(self.mix(torch.cat([a, b], dim=1)[:, :10]), 0.1)
        return self.out(F.max_pool1d(c, 2).view(c.size(0), -1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv1d(2, 4, 3), nn.Conv1d(2, 6, 3)
        self.mix = nn.Conv1d(10, 5, 1)
        self.out = nn.Linear(5 * 3, 2)

    def forward(self, x):
        y = torch.cat([torch.tanh(self.left(x)), F.gelu(self.right(x))], dim=1)
        c = F.leaky_relu(self.mix(y), 0.1)
        return self.out(F.max_pool1d(c, 2).view(c.size(0), -1))


def test_concatenation_shifts_the_units_after_it_and_functional_forwards_are_followed():
    torch.manual_seed(0)
    net = Concat().double()
    for name in ("left", "right", "mix"):
        symopt.group_sparse(net, f"{name}.weight", dim=0, strength=1e-3)
    _kill(net.left, [1], bias=None)    # emits tanh(b): folded into mix's bias (1×1, unpadded)
    _kill(net.right, [0, 5], bias=None)
    _kill(net.mix, [4], bias=None)      # emits leaky_relu(b) → pool → flatten: 3 features of the Linear
    small = _quiet_export(net, example_input=torch.randn(2, 2, 8, dtype=DT))
    assert (small.left.out_channels, small.right.out_channels, small.mix.in_channels) == (3, 4, 7)
    assert (small.mix.out_channels, small.out.in_features) == (4, 12)
    x = torch.randn(3, 2, 8, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


def test_ops_symopt_does_not_understand_block_the_units_they_touch():
    torch.manual_seed(0)
    net = Branches().double()
    for name in ("left", "right"):
        symopt.group_sparse(net, f"{name}.weight", dim=0, strength=1e-3)
    _kill(net.left, [1], bias=None)
    _kill(net.right, [0], bias=None)
    with pytest.warns(ExportWarning) as record:
        small = symopt.export(net, mode="compressed", example_input=torch.randn(2, 2, 8, dtype=DT))
    message = str(record[0].message)
    assert "left.weight (group_sparse): 1 dead unit(s) kept: 1 because call_function 'cat'" in message
    assert "right.weight (group_sparse): 1 dead unit(s) kept: 1 because call_function 'getitem'" in message
    x = torch.randn(3, 2, 8, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.b(torch.relu(self.a(x)))


def test_a_model_fx_cannot_trace_stays_dense_and_the_warning_names_the_trace_error():
    net = Untraceable().double()
    symopt.group_sparse(net, "a.weight", dim=0, strength=1e-3)
    _kill(net.a, [0])
    with pytest.warns(ExportWarning, match=r"a.weight \(group_sparse\): torch.fx cannot trace Untraceable \(TraceError"):
        small = symopt.export(net, mode="compressed")
    assert small.a.out_features == 6


class UntraceableAroundAnMLP(nn.Module):
    """A model fx cannot trace (data-dependent control flow) around a block it can."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.head(self.mlp(x))


def test_where_the_model_does_not_trace_the_block_around_the_units_is_rewritten():
    """The dead hidden units of the MLP go (the block traces); the MLP's own outputs leave the block, so a
    dead one stays, and the warning says why."""
    net = UntraceableAroundAnMLP().double()
    symopt.group_sparse(net, "mlp.0.weight", dim=0, strength=1e-3)
    symopt.group_sparse(net, "mlp.2.weight", dim=0, strength=1e-3)
    _kill(net.mlp[0], [1, 4])
    _kill(net.mlp[2], [0])
    with pytest.warns(ExportWarning, match=r"mlp.2.weight \(group_sparse\): 1 dead unit\(s\) kept: 1 because .*output"):
        small = symopt.export(net, mode="compressed")
    assert (small.mlp[0].out_features, small.mlp[2].in_features, small.mlp[2].out_features) == (4, 4, 3)
    for sign in (1.0, -1.0):  # both branches of the forward
        x = sign * torch.rand(5, 4, dtype=DT)
        assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


def test_a_block_rewritten_without_the_model_graph_is_undone_when_no_input_can_check_it():
    """The same model taking a dict: no probe fits, and the block's forward alone does not show how the
    model calls it, so the units stay (and the warning asks for example_input); with it they go."""
    class DictInput(UntraceableAroundAnMLP):
        def forward(self, batch):
            return super().forward(batch["x"])

    net = DictInput().double()
    symopt.group_sparse(net, "mlp.0.weight", dim=0, strength=1e-3)
    _kill(net.mlp[0], [1, 4])
    with pytest.warns(ExportWarning, match=r"mlp.0.weight \(group_sparse\): units kept: .*pass example_input="):
        small = symopt.export(net, mode="compressed")
    assert small.mlp[0].out_features == 6
    checked = symopt.export(net, mode="compressed", example_input=({"x": torch.rand(3, 4, dtype=DT)},))
    assert checked.mlp[0].out_features == 4


def test_units_that_reach_the_output_or_a_shape_read_are_kept():
    class ShapeReader(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) * h.shape[1]

    net = ShapeReader().double()
    symopt.group_sparse(net, "a.weight", dim=0, strength=1e-3)
    _kill(net.a, [0])
    with pytest.warns(ExportWarning, match="its shape is read by call_function 'getitem'"):
        assert symopt.export(net, mode="compressed").a.out_features == 6
    out = nn.Sequential(nn.Linear(4, 6), nn.ReLU()).double()
    symopt.group_sparse(out, "0.weight", dim=0, strength=1e-3)
    _kill(out[0], [0])
    with pytest.warns(ExportWarning, match="it is an output of the model"):
        assert symopt.export(out, mode="compressed")[0].out_features == 6


def test_batchnorm_without_running_statistics_blocks_with_its_reason():
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Linear(6, 2)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    _kill(net[0], [0])
    with pytest.warns(ExportWarning, match="BatchNorm1d 1 has no running statistics"):
        assert symopt.export(net, mode="compressed")[0].out_features == 6


def test_a_rewrite_whose_outputs_moved_is_undone_and_reported(monkeypatch):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    _kill(net[0], [0, 1], bias=0.5)
    original = symopt.surgery.Edit

    def wrong_constant(role, module, position, unit, block=1, const=0.0):  # a surgery that forgets the fold
        return original(role, module, position, unit, block, 0.0)

    monkeypatch.setattr(symopt.surgery, "Edit", wrong_constant)
    with pytest.warns(ExportWarning, match=r"0.weight \(group_sparse\): units kept, its outputs moved by"):
        small = symopt.export(net, mode="compressed")
    assert small[0].out_features == 6
    x = torch.randn(3, 4, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


def test_example_input_must_be_a_tensor_or_tuple_and_is_checked_before_anything():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    with pytest.raises(TypeError, match="example_input must be a tensor or a tuple"):
        symopt.export(net, mode="compressed", example_input=[1, 2])
    assert len(symopt.list_constraints(net)) == 1


def test_without_a_probe_the_warning_says_outputs_were_not_compared():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x, y):
            return self.b(torch.relu(self.a(x + y)))

    net = TwoInputs().double()
    symopt.group_sparse(net, "a.weight", dim=0, strength=1e-3)
    _kill(net.a, [0], bias=0.2)
    with pytest.warns(ExportWarning, match="outputs were not compared"):
        small = symopt.export(net, mode="compressed")
    x, y = torch.randn(2, 3, 4, dtype=DT)
    assert small.a.out_features == 5 and torch.allclose(small(x, y), net(x, y), atol=1e-12, rtol=0)
    _quiet_export(net, example_input=(x, y))


@pytest.mark.parametrize("seed", range(6))
def test_random_chains_stay_exact(seed):
    """Random conv / pool / norm / activation chains with random dead channels and biases."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    widths = [3] + [int(torch.randint(3, 7, (1,), generator=g)) for _ in range(3)]
    layers = []
    for i in range(3):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, padding=pick([0, 1])))
        layers.append(pick([nn.ReLU(), nn.Tanh(), nn.GELU(), nn.BatchNorm2d(widths[i + 1]), nn.Identity()]))
        layers.append(pick([nn.Identity(), nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(1)]))
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(widths[-1] * 4, 3)]
    torch.manual_seed(seed)
    net = nn.Sequential(*layers).double().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    for i in (0, 3, 6):
        symopt.group_sparse(net, f"{i}.weight", dim=0, strength=1e-3)
        rows = (torch.rand(widths[i // 3 + 1], generator=g) < 0.5).nonzero().squeeze(1)
        _kill(net[i], rows, bias=None)
        with torch.no_grad():
            net[i].bias[rows[: len(rows) // 2]] = 0.0  # some wholly dead, some emitting act(bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportWarning)  # the padded consumers keep some, with reasons
        small = symopt.export(net, mode="compressed", example_input=torch.randn(2, 3, 12, 12, dtype=DT))
    x = torch.randn(4, 3, 12, 12, dtype=DT)
    assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)
    assert _params(small) < _params(symopt.export(net))  # something went in every draw


def test_grouped_convolutions_are_kept_with_their_reason_and_stay_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(3)).double()
    net(torch.randn(1, 2, 6, 6, dtype=DT))  # materialise the lazy layer
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)   # consumed by a grouped conv
    symopt.group_sparse(net, "2.weight", dim=0, strength=1e-3)   # itself grouped
    _kill(net[0], [0, 5], bias=0.0)
    _kill(net[2], [1], bias=0.0)
    with pytest.warns(ExportWarning) as record:
        small = symopt.export(net, mode="compressed")
    message = str(record[0].message)
    assert "0.weight (group_sparse): 2 dead unit(s) kept: 2 because Conv2d 2 uses it" in message
    assert "2.weight (group_sparse): grouped convolutions are not rewritten" in message
    x = torch.randn(3, 2, 6, 6, dtype=DT)
    assert small[0].out_channels == 8 and torch.allclose(small(x), net(x), atol=1e-12, rtol=0)


class TokenEncoder(nn.Module):
    """Token ids → logits through torch's own encoder layers, whose forward fx cannot trace (it branches on
    its inputs for the fast path); only their feed-forward (``_ff_block``) traces."""

    def __init__(self, norm_first: bool, activation: str):
        super().__init__()
        self.embed = nn.Embedding(11, 16)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 4, 24, dropout=0.1, batch_first=True,
                                                               norm_first=norm_first, activation=activation)
                                    for _ in range(2))
        self.out = nn.Linear(16, 11)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


@pytest.mark.parametrize("norm_first, activation", [(True, "relu"), (False, "gelu")])
def test_a_torch_transformer_layer_loses_its_dead_feed_forward_neurons(norm_first, activation):
    """A neuron budget on nn.TransformerEncoderLayer's linear1 (rows and bias, one group): the model does not
    trace, nor does the layer, but its registered feed-forward part does, so export narrows linear1 and
    linear2 and checks the model's outputs on token ids its probe builds (no example_input): the same
    outputs in eval mode. A neuron whose weight row is dead but whose bias is not emits act(b): folded into
    linear2's bias."""
    torch.manual_seed(0)
    net = TokenEncoder(norm_first, activation).double()
    symopt.group_sparse(net, [["layers.0.linear1.weight", "layers.0.linear1.bias"]], strength=1e-3)
    symopt.group_sparse(net, "layers.1.linear1.weight", dim=0, strength=1e-3)
    _kill_units(net.layers[0].linear1, [0, 1, 2, 3, 5, 7])
    _kill(net.layers[1].linear1, [4, 9, 10], bias=0.3)  # a dead row, a live bias: a constant act(0.3)
    ids = torch.randint(0, 11, (3, 7))
    net.eval()
    small = _quiet_export(net)
    assert [(layer.linear1.out_features, layer.linear2.in_features) for layer in small.layers] == [(18, 18), (21, 21)]
    with torch.no_grad():
        assert torch.allclose(small(ids), net(ids), atol=1e-12, rtol=0)
    assert not symopt.list_constraints(small)


def test_a_torch_decoder_layer_loses_its_dead_feed_forward_neurons_when_an_input_checks_it():
    """A model around nn.TransformerDecoderLayer traces, but fx records the layer as one call (torch.nn's own
    modules are leaves of its trace), so its feed-forward part is planned on its own. The model takes
    (tgt, memory): no probe fits, so that rewrite is undone without example_input, and kept with it."""
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True)

        def forward(self, tgt, memory):
            return self.layer(tgt, memory)

    torch.manual_seed(0)
    model = Decoder().double().eval()
    symopt.group_sparse(model, ["layer.linear1.weight", "layer.linear1.bias"], strength=1e-3)
    _kill_units(model.layer.linear1, [2, 6])
    with pytest.warns(ExportWarning, match=r"linear1.weight \(group_sparse\): units kept: .*pass example_input="):
        kept = symopt.export(model, mode="compressed")
    assert kept.layer.linear1.out_features == 12
    tgt, memory = torch.randn(2, 5, 8, dtype=DT), torch.randn(2, 3, 8, dtype=DT)
    small = _quiet_export(model, example_input=(tgt, memory))
    assert (small.layer.linear1.out_features, small.layer.linear2.in_features) == (10, 10)
    with torch.no_grad():
        assert torch.allclose(small(tgt, memory), model(tgt, memory), atol=1e-12, rtol=0)


def test_a_layer_that_runs_inside_an_opaque_module_is_named_in_the_warning():
    """Before, a producer the traced graph never called (inside a module fx records as one call, with no
    traceable part) was left dense without a word; now the warning says why."""
    class Opaque(nn.Module):  # a module of torch.nn's namespace is a leaf of fx's trace
        __module__ = "torch.nn.modules.opaque"

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 6)

        def forward(self, x):
            if float(x.sum()) > 1e9:
                return x
            return self.inner(x)

    net = nn.Sequential(Opaque(), nn.ReLU(), nn.Linear(6, 2)).double()
    symopt.group_sparse(net, "0.inner.weight", dim=0, strength=1e-3)
    _kill(net[0].inner, [1])
    with pytest.warns(ExportWarning, match=r"0.inner.weight \(group_sparse\): it runs inside a module that "
                                           r"torch.fx records as one call"):
        small = symopt.export(net, mode="compressed", example_input=(torch.randn(3, 4, dtype=DT),))
    assert small[0].inner.out_features == 6


def test_a_registered_part_that_hides_a_use_of_its_units_is_caught_by_the_output_check():
    """A block registers a part, but its forward also reads the hidden layer's output elsewhere: the dead
    units' rewrite moves the model's outputs, so it is undone and the warning says so."""
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 6), nn.Linear(6, 4)

        def forward(self, x):
            if float(x.sum()) > 1e9:  # data-dependent: fx cannot trace this forward
                return x
            return self.part(x) + self.up(x)[:, :4]  # up's units 0-3 also go straight to the output

        def part(self, x):
            return self.down(torch.relu(self.up(x)))

    from symopt import surgery

    surgery.register_traceable_part(Leaky, "part")
    try:
        torch.manual_seed(0)
        block = Leaky().double()
        symopt.group_sparse(block, ["up.weight", "up.bias"], strength=1e-3)
        _kill_units(block.up, [1, 5])
        with pytest.warns(ExportWarning, match=r"up.weight \(group_sparse\): units kept, .*output"):
            kept = symopt.export(block, mode="compressed", example_input=(torch.randn(3, 4, dtype=DT),))
        assert kept.up.out_features == 6
    finally:
        surgery.TRACEABLE_PARTS.pop(Leaky)


def test_register_traceable_part_refuses_what_is_not_a_module_method():
    from symopt import surgery

    with pytest.raises(TypeError, match="must be an nn.Module class"):
        surgery.register_traceable_part(nn.Linear(2, 2), "forward")
    with pytest.raises(TypeError, match="TransformerEncoderLayer has no method '_mlp'"):
        surgery.register_traceable_part(nn.TransformerEncoderLayer, "_mlp")
    assert surgery.TRACEABLE_PARTS[nn.TransformerEncoderLayer] == "_ff_block"


class GPTStyleMLP(nn.Module):
    """GPT-2's feed-forward: two transposed layers (weights stored inputs × outputs, as its Conv1D) around
    the tanh form of GELU written out (x ** 3, scalar products and sums), inside a residual."""

    def __init__(self, width=8, inner=24):
        super().__init__()
        self.c_fc, self.c_proj = Transposed(inner, width), Transposed(width, inner)

    def forward(self, x):
        h = self.c_fc(x)
        h = 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * (h + 0.044715 * torch.pow(h, 3.0))))
        return x + self.c_proj(h)


def test_transposed_layers_lose_dead_units_through_gpt2s_activation_with_constants_folded():
    """Units of a transposed layer are its weight's columns (group_sparse's default axis there): dead ones
    leave both layers, each keeping its class with nf / nx lowered, and what a dead unit with a live bias
    emits (gelu_tanh(b)) is folded into the next layer's bias; the outputs do not move."""
    torch.manual_seed(0)
    net = nn.Sequential(GPTStyleMLP(), GPTStyleMLP()).double()
    handles = [symopt.group_sparse(net, f"{i}.c_fc.weight", strength=1e-3) for i in range(2)]
    assert [h.constraint.dim for h in handles] == [1, 1]
    assert handles[0].constraint.group_norms(net[0].c_fc.weight).shape == (24,)
    with torch.no_grad():
        for block, dead in zip(net, ([0, 3, 4, 9], [1, 2, 20, 21, 22])):
            block.c_fc.parametrizations.weight.original1[:, dead] = 0
            block.c_fc.bias[dead] = torch.linspace(-0.7, 0.9, len(dead), dtype=torch.float64)
    net.eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    small = _quiet_export(net, example_input=x)
    assert [(type(b.c_fc), b.c_fc.nf, b.c_fc.weight.shape[1], b.c_proj.nx, b.c_proj.weight.shape[0]) for b in small] \
        == [(Transposed, 20, 20, 20, 20), (Transposed, 19, 19, 19, 19)]
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-12, rtol=0)
