"""Transposed ties (decoder = encoderᵀ): θ_j = θ_1ᵀ + u_j ⊙ v_j, exact like any tie, and exported as one
shared parameter (a plain parametrize view for the transposed copy)."""

import pytest
import torch
from torch import nn

import symopt

DT = torch.float64


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(12, 4), nn.Linear(4, 12)

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


def _model():
    torch.manual_seed(0)
    return AutoEncoder().double()


def test_shapes_decide_the_orientation_and_values_are_kept():
    net = _model()
    enc, dec = net.enc.weight.detach().clone(), net.dec.weight.detach().clone()
    handle = symopt.tie(net, ["enc.weight", "dec.weight"], strength=1.0)
    assert handle.constraint.transposed == [False, True]
    assert torch.equal(net.enc.weight, enc) and torch.allclose(net.dec.weight, dec, atol=1e-15)
    assert "1 transposed" in handle.structure(handle.values())
    new = torch.randn(4, 12, dtype=DT)
    net.enc.weight = new  # the anchor moves, the transposed copy keeps its own value
    assert torch.allclose(net.enc.weight, new) and torch.allclose(net.dec.weight, dec, atol=1e-14)
    assert handle.violation(handle.values()) == pytest.approx(float((dec - new.T).norm()) / 2 ** 0.5, rel=1e-12)


def test_training_ties_the_decoder_to_the_encoder_transpose_exactly_and_export_shares_one_matrix():
    net = _model()
    symopt.tie(net, ["enc.weight", "dec.weight"], strength=0.05)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 4, generator=g, dtype=DT) @ torch.randn(4, 12, generator=g, dtype=DT)
    opt = torch.optim.SGD(symopt.param_groups(net), lr=0.05, momentum=0.9)
    for _ in range(1500):
        opt.zero_grad()
        ((net(X) - X) ** 2).mean().backward()
        opt.step()
    gap = float((net.dec.weight - net.enc.weight.T).abs().max())
    assert gap < 1e-6  # the copies meet: the mirrors' fixed point θ_dec = θ_encᵀ
    dense, small = symopt.export(net), symopt.export(net, mode="compressed")
    assert small.dec.parametrizations.weight.original is small.enc.weight  # stored once
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in dense.parameters()) - 48
    assert torch.allclose(small(X), dense(X), atol=1e-12, rtol=0)
    small(X).sum().backward()  # one gradient for the shared matrix, from both uses
    assert small.enc.weight.grad is not None


def test_untransposed_tie_exports_to_the_same_parameter_object():
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    symopt.tie(net, ["0.weight", "2.weight"], strength=1.0)
    with torch.no_grad():
        net[2].parametrizations.weight.original0.zero_()  # u ⊙ v = 0: the copies are equal
    small = symopt.export(net, mode="compressed")
    assert small[2].weight is small[0].weight


def test_square_matrices_tie_as_transposes_only_when_asked():
    net = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)).double()
    handle = symopt.tie(net, ["0.weight", "1.weight"], strength=1.0, transpose=True)
    assert handle.constraint.transposed == [False, True]
    with torch.no_grad():
        net[1].parametrizations.weight.original0.zero_()
    assert torch.equal(net[1].weight, net[0].weight.T)


@pytest.mark.parametrize("names, kwargs, match", [
    (["enc.weight", "enc.bias"], {}, r"'enc.bias' has shape \(4,\) but 'enc.weight' has shape \(4, 12\); tied tensors "
                                     r"must have the anchor's shape \(4, 12\) or its transpose"),
    (["enc.weight", "dec.weight"], dict(transpose=False), "has shape"),
    (["enc.bias", "dec.bias"], dict(transpose=True), "transpose=True needs 'dec.bias' to be the transpose"),
])
def test_shapes_that_match_in_no_orientation_are_refused_before_anything_changes(names, kwargs, match):
    net = _model()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        symopt.tie(net, names, strength=1.0, **kwargs)
    assert symopt.list_constraints(net) == [] and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_transpose_must_be_a_bool():
    with pytest.raises(TypeError, match="transpose must be None"):
        symopt.Tied(1.0, transpose="yes")
