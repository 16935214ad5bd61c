"""export(mode="dense" | "compressed"): exact constrained weights in plain modules; compressed layers
that are physically smaller and agree with the dense export; the original model is never touched."""

import copy
import importlib
import io
import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt import ExportWarning
from symopt.constraints.base import density_count

EXPORT = importlib.import_module("symopt.export")  # the module (symopt.export is the function)

DT = torch.float64


def _zero_rows(module, rows):
    """Make output units dead through the group-sparse factors (gate and ω)."""
    plist = module.parametrizations.weight
    with torch.no_grad():
        plist.original0[rows] = 0
        plist.original1[rows] = 0


def _mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    with pytest.warns(UserWarning, match="rank-3 approximation"):
        symopt.low_rank(net, "2.weight", strength=1e-3, max_rank=3)
    symopt.sparse(net, "4.weight", strength=1e-3)
    _zero_rows(net[0], slice(0, 16, 2))
    with torch.no_grad():
        net[0].bias.fill_(0.3)  # dead units emit relu(0.3) ≠ 0: must be folded into the consumer's bias
        u = net[4].parametrizations.weight.original0
        u[torch.rand(u.shape, generator=torch.Generator().manual_seed(1)) < 0.9] = 0
    return net


def test_dense_export_is_plain_exact_and_loads_into_the_original_architecture():
    net = _mlp()
    x = torch.randn(7, 10, dtype=DT)
    before = net(x).detach()
    dense = symopt.export(net)
    assert symopt.list_constraints(dense) == []
    assert torch.allclose(dense(x), before, atol=1e-12)
    assert int((dense[0].weight.abs().sum(1) == 0).sum()) == 8  # exact zeros, not small ones
    assert torch.linalg.matrix_rank(dense[2].weight) == 3
    fresh = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    fresh.load_state_dict(dense.state_dict())  # strict: same keys, plain names
    assert torch.equal(fresh(x), dense(x))
    # the constrained model itself is untouched and still trains
    assert len(symopt.list_constraints(net)) == 3 and torch.equal(net(x), before)
    net(x).sum().backward()


def test_finalize_on_a_deepcopy_leaves_the_original_working():
    """parametrize shares its generated class between a module and its deepcopy; removing on the copy
    must not delete the original's ``weight`` property."""
    net = nn.Sequential(nn.Linear(4, 3))
    symopt.sparse(net, "0.weight", strength=1e-3)
    symopt.finalize(copy.deepcopy(net), tol=0.0)
    assert net[0].weight.shape == (3, 4) and len(symopt.list_constraints(net)) == 1
    symopt.finalize(net, tol=0.0)
    assert type(net[0]) is nn.Linear


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_compressed_mlp_matches_dense_and_is_smaller(dtype, atol):
    net = _mlp().to(dtype)
    x = torch.randn(9, 10, dtype=dtype)
    dense = symopt.export(net)
    small = symopt.export(net, mode="compressed", sparse_format="csr")
    assert isinstance(small[0], nn.Linear) and small[0].out_features == 8  # 8 dead units removed
    assert isinstance(small[2], nn.Sequential) and small[2][0].in_features == 8  # consumer sliced
    assert [tuple(m.weight.shape) for m in small[2]] == [(3, 8), (12, 3)]  # rank 3 factors
    assert isinstance(small[4], symopt.SparseLinear)
    assert torch.allclose(small(x), dense(x), atol=atol, rtol=0)
    assert symopt.footprint(small, x, repeats=1).stored < 0.5 * symopt.footprint(dense, x, repeats=1).stored


def test_a_density_budget_that_landed_gets_csr_at_the_same_density_cut_off():
    """A ``density=0.1`` budget lands on round(0.1 · 65536) = 6554 non-zeros (0.10001): the cut-off of
    the same density must accept it (issue 21: the two disagreed by rounding)."""
    lin = nn.Linear(256, 256, bias=False)
    symopt.sparse(lin, "weight", strength=1e-3)
    with torch.no_grad():
        u = lin.parametrizations.weight.original0
        u.view(-1)[6554:] = 0
    assert int((lin.weight != 0).sum()) == 6554 == density_count(0.1, 65536)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(symopt.export(lin, mode="compressed", csr_max_density=0.1), symopt.SparseLinear)


def test_auto_without_a_cut_off_times_both_layouts_and_keeps_the_faster(monkeypatch):
    net = _mlp()
    monkeypatch.setattr(EXPORT, "_time_layouts", lambda dense, sparse: (1.0, 2.0))
    with pytest.warns(ExportWarning, match=r"4.weight \(sparse\): at density .* CSR measured 2.00× the dense"):
        assert type(symopt.export(net, mode="compressed")[4]) is nn.Linear
    monkeypatch.setattr(EXPORT, "_time_layouts", lambda dense, sparse: (2.0, 1.0))
    assert isinstance(symopt.export(net, mode="compressed")[4], symopt.SparseLinear)


def test_auto_sparse_format_keeps_dense_above_the_density_threshold():
    net = _mlp()
    with pytest.warns(ExportWarning, match=r"4.weight \(sparse\): density .* > csr_max_density"):
        small = symopt.export(net, mode="compressed", csr_max_density=0.01)
    assert type(small[4]) is nn.Linear
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(symopt.export(net, mode="compressed", csr_max_density=0.5)[4], symopt.SparseLinear)


@pytest.mark.parametrize("conv, shape", [(nn.Conv1d, (2, 3, 11)), (nn.Conv2d, (2, 3, 9, 9))])
def test_compressed_conv_chain(conv, shape):
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 6, 3), nn.GELU(),
                        conv(6, 6, 3, padding=1), nn.ReLU(), conv(6, 4, 1)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)  # consumer unpadded: every dead channel goes
    with pytest.warns(UserWarning, match="rank-2"):
        symopt.low_rank(net, "2.weight", strength=1e-3, max_rank=2)
    symopt.group_sparse(net, "4.weight", dim=0, strength=1e-3)  # consumer 1×1, unpadded
    _zero_rows(net[0], [0, 1, 2])
    _zero_rows(net[4], [1, 4])
    x = torch.randn(*shape, dtype=DT)
    dense, small = symopt.export(net), symopt.export(net, mode="compressed")
    assert small[0].out_channels == 5 and small[2][0].in_channels == 5
    assert small[2][0].out_channels == 2 and small[2][1].kernel_size == (1,) * (len(shape) - 2)
    assert small[4].out_channels == 4 and small[6].in_channels == 4
    assert torch.allclose(small(x), dense(x), atol=1e-12, rtol=0)


def test_padded_consumer_keeps_dead_channels_with_a_nonzero_constant():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    _zero_rows(net[0], [0, 1])
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.5, -0.5, 0.1, 0.1]))  # relu: channel 0 emits 0.5, channel 1 emits 0
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    with pytest.warns(ExportWarning, match="1 because the zero-padded Conv2d 2 would see 0 at the border"):
        small = symopt.export(net, mode="compressed")
    assert small[0].out_channels == 3  # channel 1 removed, channel 0 kept (zero padding would see 0, not 0.5)
    assert torch.allclose(small(x), symopt.export(net)(x), atol=1e-12, rtol=0)


def test_low_rank_embedding_becomes_embedding_then_linear():
    emb = nn.Embedding(50, 16, padding_idx=0).double()
    with pytest.warns(UserWarning):
        symopt.low_rank(emb, "weight", strength=1e-3, max_rank=4)
    small = symopt.export(emb, mode="compressed")  # a constraint on the root module replaces the root
    assert isinstance(small, nn.Sequential) and small[0].embedding_dim == 4
    ids = torch.randint(0, 50, (3, 7))
    assert torch.allclose(small(ids), symopt.export(emb)(ids), atol=1e-12, rtol=0)


def test_unsupported_structures_stay_dense_with_one_warning_that_says_why():
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    symopt.group_sparse(net, "2.weight", dim=1, strength=1e-3)
    symopt.low_rank(net, "3.weight", strength=1e-3)  # full rank 2: factors are not smaller
    with torch.no_grad():
        net[2].bias.copy_(net[0].bias)
    symopt.tie(net, ["0.bias", "2.bias"], strength=1.0)  # linear kinds never warn
    _zero_rows(net[0], [0])
    with pytest.warns(ExportWarning) as record:
        small = symopt.export(net, mode="compressed")
    assert len(record) == 1
    message = str(record[0].message)
    assert "0.weight (group_sparse): 1 dead unit(s) kept: 1 because LayerNorm 1 uses it, " \
           "and symopt does not know how that op treats units" in message  # LayerNorm mixes the units
    assert "2.weight (group_sparse): only output units (dim=0)" in message
    assert "3.weight (low_rank): rank 2 of a 2×8 matrix" in message
    assert [type(m) for m in small] == [nn.Linear, nn.LayerNorm, nn.Linear, nn.Linear]


def test_sparse_linear_round_trips():
    W = torch.zeros(5, 4, dtype=DT)
    W[0, 1], W[3, 2] = 2.0, -1.0
    layer = symopt.SparseLinear(W, torch.arange(5, dtype=DT))
    x = torch.randn(2, 3, 4, dtype=DT)  # leading batch dims
    assert torch.allclose(layer(x), x @ W.T + torch.arange(5, dtype=DT), atol=1e-14)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    other = symopt.SparseLinear(torch.eye(5, 4, dtype=DT), torch.zeros(5, dtype=DT))
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert torch.equal(other(x), layer(x))
    assert symopt.footprint(layer, x, repeats=1).stored == 2 + 5


def test_a_constraint_that_does_not_hold_refuses_and_changes_nothing():
    lin = nn.Linear(4, 3).double()
    symopt.fixed_zeros(lin, "weight", torch.eye(3, 4, dtype=torch.bool), strength=1.0)
    with torch.no_grad():
        lin.parametrizations.weight.original1.add_(1.0)  # the masked entries' factors: far from the set
        lin.parametrizations.weight.original2.add_(1.0)
    before = lin.weight.detach().clone()
    with pytest.raises(ValueError, match="finalize refused"):
        symopt.export(lin, mode="compressed")
    assert torch.equal(lin.weight, before) and len(symopt.list_constraints(lin)) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="tiny"), "mode must be one of"),
    (dict(sparse_format="coo"), "sparse_format must be one of"),
    (dict(csr_max_density=1.5), r"csr_max_density must be None or a number in \[0, 1\]"),
    (dict(tol=-1.0), "tol must be a finite number"),
])
def test_bad_arguments(kwargs, match):
    lin = nn.Linear(3, 2)
    symopt.sparse(lin, "weight", strength=1e-3)
    with pytest.raises(ValueError, match=match):
        symopt.export(lin, **kwargs)
    assert len(symopt.list_constraints(lin)) == 1


def test_bad_model_and_repeats():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        symopt.export(torch.zeros(3))
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        symopt.footprint(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)


def test_per_channel_prelu_loses_the_entries_of_removed_units():
    net = nn.Sequential(nn.Linear(4, 6), nn.PReLU(6), nn.Linear(6, 2)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=1e-3)
    _zero_rows(net[0], [0, 1])
    with torch.no_grad():
        net[0].bias.copy_(torch.linspace(-1, 1, 6))  # unit 0 emits prelu(-1) = -0.25·slope: folded
        net[1].weight.copy_(torch.linspace(0.1, 0.6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = symopt.export(net, mode="compressed")
    x = torch.randn(3, 4, dtype=DT)
    assert small[0].out_features == 4 and small[1].num_parameters == 4 and small[2].in_features == 4
    assert torch.allclose(small(x), symopt.export(net)(x), atol=1e-12, rtol=0)


class _InlineFeedForward(nn.Module):
    """A block whose forward torch.fx cannot trace (it branches on a value) with its feed-forward inline, fc1, an
    activation, fc2, as OPT's and BART's layers have it."""

    def __init__(self, activation):
        super().__init__()
        self.fc1, self.fc2, self.activation = nn.Linear(6, 10), nn.Linear(10, 6), activation

    def forward(self, x):
        if float(x.abs().sum()) >= 0:  # (a data-dependent branch: no trace)
            x = x + self.fc2(self.activation(self.fc1(x)))
        return x


@pytest.mark.parametrize("activation, removed", [(nn.ReLU(), True), (nn.Sigmoid(), False)])
def test_dead_neurons_of_an_untraced_fc1_fc2_pair_leave_only_where_the_outputs_stay(activation, removed):
    """Where nothing traces around fc1, its dead units (rows and biases 0) leave through the fc1 / fc2 pair, checked on
    the outputs: with ReLU (0 → 0) they go; with a sigmoid (0 → ½ still reaches fc2) the check undoes it, says so,
    and the model is the one it was."""
    torch.manual_seed(0)
    block = _InlineFeedForward(activation).double().eval()
    handle = symopt.group_sparse(block, ["fc1.weight", "fc1.bias"], strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[1, 4, 7]] = 0
    x = torch.randn(3, 6, dtype=torch.float64)
    want = block(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = symopt.export(block, mode="compressed", example_input=(x,))
    notes = " ".join(str(w.message) for w in caught if issubclass(w.category, ExportWarning))
    assert (small.fc1.out_features, small.fc2.in_features) == ((7, 7) if removed else (10, 10))
    assert ("units kept" in notes) is not removed
    assert torch.allclose(small(x), want, atol=1e-12, rtol=0)


def test_dead_weight_rows_of_an_untraced_fc1_with_a_bias_are_kept_with_the_reason():
    """fc1's weight alone in the group: its dead rows still emit the activation of their bias, so they stay, and the
    warning says why and what to group."""
    torch.manual_seed(0)
    block = _InlineFeedForward(nn.ReLU()).double().eval()
    symopt.group_sparse(block, "fc1.weight", dim=0, strength=1e-3)
    _zero_rows(block.fc1, [1, 4])
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.warns(ExportWarning, match=r"2 dead unit\(s\) kept: their bias entries are not 0.*its bias"):
        small = symopt.export(block, mode="compressed", example_input=(x,))
    assert small.fc1.out_features == 10
    assert torch.allclose(small(x), block(x), atol=1e-12, rtol=0)


def test_a_layer_called_twice_keeps_its_dead_units_and_says_why():
    """A layer the graph calls twice (weights shared across two uses) has units no rewrite can follow: they stay, and
    the warning says so (before, nothing was said)."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    torch.manual_seed(0)
    model = Twice().double()
    handle = symopt.group_sparse(model, ["fc.weight", "fc.bias"], strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[1]] = 0
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.warns(ExportWarning, match="fc.weight .*dead units are kept: the graph calls it 2 times"):
        small = symopt.export(model, mode="compressed", example_input=(x,))
    assert small.fc.out_features == 4 and torch.allclose(small(x), model(x), atol=1e-12)
