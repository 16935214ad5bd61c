"""Attention heads as units: symopt.attention_heads groups each head's q / k / v rows, biases and output
columns under one gate; export removes dead heads from nn.MultiheadAttention exactly (outputs and the
attention weights it returns), with masks, both batch layouts and inside nn.TransformerEncoderLayer."""

import math
import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt import ExportWarning
from symopt._attention import HeadPrunedAttention
from symopt.constraints.budget import LAND_BEYOND
from helpers import Transposed, recorded_training

DT = torch.float64


def _kill_heads(attn, heads):
    """What training leaves on a dead head: its gate and every one of its factors at 0."""
    handle = [h for h in symopt.list_constraints(attn)][0]
    with torch.no_grad():
        handle.constraint.gates[heads] = 0.0
    return handle


def _refused_unchanged(model, error, match, *args, **kwargs) -> None:
    """``attention_heads(model, *args, **kwargs)`` raises ``error`` matching ``match``, and ``model`` has no constraint
    and the same state as before."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        symopt.attention_heads(model, *args, **kwargs)
    assert symopt.list_constraints(model) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def _quiet(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        return symopt.export(model, mode="compressed", **kwargs)


@pytest.mark.parametrize("batch_first", [True, False])
def test_dead_heads_leave_and_outputs_and_weights_are_unchanged(batch_first):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=batch_first).double().eval()
    handle = symopt.attention_heads(attn, strength=1e-3)
    assert handle.constraint.unit_norms(handle.values()).shape == (4,)
    _kill_heads(attn, [1, 3])
    assert "units 2/4" in handle.structure(handle.values())
    small = _quiet(attn)
    assert isinstance(small, HeadPrunedAttention) and small.num_heads == 2 and small.q.out_features == 8
    shape = (2, 6, 16) if batch_first else (6, 2, 16)
    q, k, v = (torch.randn(*shape, dtype=DT) for _ in range(3))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, -2:] = True
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    float_mask = torch.randn(6, 6, dtype=DT)
    for kwargs in (dict(), dict(key_padding_mask=padding), dict(attn_mask=causal), dict(attn_mask=float_mask),
                   dict(average_attn_weights=False), dict(need_weights=False)):
        want, got = attn(q, k, v, **kwargs), small(q, k, v, **kwargs)
        assert torch.allclose(got[0], want[0], atol=1e-12, rtol=0), kwargs
        if want[1] is not None:
            assert torch.allclose(got[1], want[1], atol=1e-12, rtol=0), kwargs
    x = torch.randn(6, 16, dtype=DT)  # unbatched input
    assert torch.allclose(small(x, x, x)[0], attn(x, x, x)[0], atol=1e-12)


def test_a_head_with_dead_values_only_writes_a_constant_that_is_folded():
    torch.manual_seed(1)
    attn = nn.MultiheadAttention(8, 2).double().eval()
    with torch.no_grad():
        attn.in_proj_weight[8 + 8: 8 + 8 + 4] = 0.0   # head 0's value rows (not its bias, not W_o)
        attn.in_proj_bias[16:20] = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=DT)
    symopt.attention_heads(attn, strength=1e-3)
    small = _quiet(attn)
    assert small.num_heads == 1
    x = torch.randn(5, 3, 8, dtype=DT)
    want, got = attn(x, x, x), small(x, x, x)
    assert torch.allclose(got[0], want[0], atol=1e-12) and torch.allclose(got[1], want[1], atol=1e-12)


def test_training_kills_heads_and_the_transformer_layer_still_runs_after_export():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True).double()
    symopt.attention_heads(layer, "self_attn", strength=0.02)
    x = torch.randn(32, 6, 16, dtype=DT)
    target = x + x.mean(1, keepdim=True).expand_as(x)  # one head (uniform attention) is enough
    opt = torch.optim.SGD(symopt.param_groups(layer), lr=0.05, momentum=0.9)
    for _ in range(800):
        opt.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()
    layer.eval()
    handle = symopt.list_constraints(layer)[0]
    norms = handle.constraint.unit_norms([v.detach() for v in handle.values()])
    dead = int((norms <= 1e-3).sum())
    assert 1 <= dead < 4, norms  # the decay removed whole heads, not all of them
    small, dense = _quiet(layer, tol=1e-3), symopt.export(layer, tol=1e-3)
    assert small.self_attn.num_heads == 4 - dead
    assert torch.allclose(small(x), dense(x), atol=1e-10)


def test_bad_inputs():
    with pytest.raises(TypeError, match="is a Linear, neither an nn.MultiheadAttention nor a block with four"):
        symopt.attention_heads(nn.Sequential(nn.Linear(2, 2)), "0")
    attn = nn.MultiheadAttention(8, 2, add_bias_kv=True).double()
    symopt.attention_heads(attn, strength=1e-3)
    _kill_heads(attn, [0])
    with pytest.warns(ExportWarning, match="add_bias_kv / add_zero_attn attend to extra keys; heads kept"):
        assert isinstance(symopt.export(attn, mode="compressed"), nn.MultiheadAttention)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_heads=0), "attention_heads: max_heads must be an int >= 1, got 0"),
    (dict(max_heads=2.5), "attention_heads: max_heads must be an int >= 1"),
    (dict(max_heads=4), r"max_heads=4 keeps every head \(4 in the block\).*give fewer than 4"),
    (dict(max_heads=9, total_steps=100), "max_heads=9 keeps every head"),
    (dict(total_steps=100), "total_steps schedules a head budget; give max_heads= too"),
    (dict(max_heads=2, ramp=(0.0, 0.25)), "give total_steps="),
])
def test_a_bad_head_budget_names_max_heads_and_changes_nothing(kwargs, match):
    """The head budget's errors speak of max_heads, the argument the caller gave (the unit group beneath
    calls it max_groups), and come before anything is registered."""
    _refused_unchanged(nn.MultiheadAttention(16, 4), ValueError, match, **kwargs)


class HandWritten(nn.Module):
    """The attention block people write: four Linear layers and a reshape by self.num_heads."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        split = lambda t: t.view(N, L, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(N, L, -1))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.attn = HandWritten()
        self.head = nn.Linear(16, 30)

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(x + self.attn(x))


def test_hand_written_block_loses_its_dead_heads_and_its_head_count_goes_down():
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3)
    assert [m.qualname for m in handle.members][-1] == "attn.out_proj.weight"
    _kill_heads(model, [0, 2])
    with torch.no_grad():  # head 3: only its value rows dead; its value bias writes a constant (folded)
        handle.constraint.copies[4].original0[12:16] = 0.0   # ω of v_proj.weight, rows of head 3
    assert float(model.attn.v_proj.weight[12:16].abs().max()) == 0 and float(model.attn.v_proj.bias[12:16].abs().max()) > 0
    small = _quiet(model)  # compared on a probe built from the Embedding
    assert small.attn.num_heads == 1 and small.attn.q_proj.out_features == 4 and small.attn.out_proj.in_features == 4
    ids = torch.randint(0, 30, (3, 7))
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


def test_hand_written_block_without_a_head_count_attribute_is_refused_or_kept():
    block = HandWritten().double()
    del block.num_heads, block.head_dim
    with pytest.raises(ValueError, match="give heads="):
        symopt.attention_heads(block)
    symopt.attention_heads(block, heads=4)
    _kill_heads(block, [1])
    with pytest.warns(ExportWarning, match="keeps its head count in no attribute"):
        symopt.export(block, mode="compressed")


class ReshapedByHeadDim(HandWritten):
    """A block that keeps no head count, only its head width (as Hugging Face's Llama does): the count
    follows from the width at each forward."""

    def __init__(self, dim=16, heads=4):
        super().__init__(dim, heads)
        del self.num_heads

    def forward(self, x):
        N, L, _ = x.shape
        split = lambda t: t.view(N, L, -1, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(N, L, -1))


class GroupedQuery(nn.Module):
    """Grouped-query attention: 4 query heads, 2 k/v heads, each read by 2 query heads (k and v repeated)."""

    def __init__(self, dim=16, heads=4, kv_heads=2):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_proj, self.v_proj = nn.Linear(dim, kv_heads * self.head_dim), nn.Linear(dim, kv_heads * self.head_dim)

    def forward(self, x):
        N, L, _ = x.shape
        q = self.q_proj(x).view(N, L, self.num_heads, self.head_dim).transpose(1, 2)
        repeat = self.num_heads // self.num_kv_heads
        k, v = (t.view(N, L, self.num_kv_heads, self.head_dim).transpose(1, 2).repeat_interleave(repeat, dim=1)
                for t in (self.k_proj(x), self.v_proj(x)))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(N, L, -1))


class LMWith(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.embed, self.attn, self.head = nn.Embedding(30, 16), block, nn.Linear(16, 30)

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(x + self.attn(x))


def test_a_block_that_reshapes_by_its_head_dim_needs_no_head_count():
    """The count is q's width over head_dim; export removes dead heads with nothing to lower, and the
    rewrite is checked on the model's outputs."""
    torch.manual_seed(0)
    model = LMWith(ReshapedByHeadDim()).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3)
    assert handle.constraint.unit_norms(handle.values()).shape == (4,)
    _kill_heads(model, [0, 3])
    small = _quiet(model)
    assert small.attn.q_proj.out_features == 8 and small.attn.k_proj.out_features == 8
    ids = torch.randint(0, 30, (3, 7))
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


def test_grouped_query_attention_units_are_kv_heads_with_their_query_heads():
    """4 query heads on 2 k/v heads: 2 units, each a k/v head's rows and its 2 query heads' q rows and output
    columns; export removes a dead unit's q rows (2 heads), k / v rows (1 head) and output columns, lowers both
    counts, and folds a unit whose value rows alone are dead into the output bias."""
    torch.manual_seed(0)
    model = LMWith(GroupedQuery()).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3)
    maps = dict(zip([m.qualname for m in handle.members], handle.constraint.unit_maps))
    assert maps["attn.q_proj.weight"].tolist() == [0] * 8 + [1] * 8
    assert maps["attn.k_proj.weight"].tolist() == [0] * 4 + [1] * 4 == maps["attn.v_proj.bias"].tolist()
    assert maps["attn.out_proj.weight"].tolist() == [0] * 8 + [1] * 8
    _kill_heads(model, [1])
    small = _quiet(model)
    assert (small.attn.num_heads, small.attn.num_kv_heads) == (2, 1)
    assert (small.attn.q_proj.out_features, small.attn.k_proj.out_features, small.attn.out_proj.in_features) == (8, 4, 8)
    ids = torch.randint(0, 30, (3, 7))
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)
    # unit 0's value rows dead, its value bias alive: each of its query heads writes W_o,h b_v, folded
    block = GroupedQuery().double().eval()
    lm = LMWith(block).double().eval()
    handle = symopt.attention_heads(lm, "attn", strength=1e-3)
    position = [m.qualname for m in handle.members].index("attn.v_proj.weight")
    with torch.no_grad():
        handle.constraint.copies[position].original0[:4] = 0.0
    small = _quiet(lm)
    assert (small.attn.num_heads, small.attn.num_kv_heads, small.attn.v_proj.out_features) == (2, 1, 4)
    assert torch.allclose(small(ids), lm(ids), atol=1e-12, rtol=0)


def test_a_head_budget_on_grouped_query_attention_lands_and_exports():
    """max_heads counts units (k/v heads): 1 of 2 lands exactly under Adam, and export keeps that unit's
    2 query heads and 1 k/v head with the same outputs."""
    torch.manual_seed(0)
    steps = 120
    model = LMWith(GroupedQuery()).double()
    handle = symopt.attention_heads(model, "attn", max_heads=1, total_steps=steps)
    ids = torch.randint(0, 30, (16, 7), generator=torch.Generator().manual_seed(0))
    loss = lambda: nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 30), ids[:, 1:].reshape(-1))  # noqa: E731
    alive = [int((norms > 0).sum()) for norms in _head_norms_while_training(model, loss, handle, steps)]
    land = round(0.75 * steps)
    assert alive[0] == 2 and all(a == 1 for a in alive[land - 1:])
    model.eval()
    small = _quiet(model)
    assert (small.attn.num_heads, small.attn.num_kv_heads, small.attn.k_proj.out_features) == (2, 1, 4)
    assert torch.allclose(small(ids), model(ids), atol=1e-10)


def test_multi_query_attention_units_are_query_heads_with_k_and_v_whole():
    """One k/v head read by every query head: a unit per k/v head would be the whole block, so a unit is a query
    head (its q rows and output columns) and k, v are no unit's; export removes dead query heads from q and the
    output layer, keeps k and v whole and the k/v count at 1, and lowers the head count."""
    torch.manual_seed(0)
    model = LMWith(GroupedQuery(kv_heads=1)).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3, kv_heads=1)
    assert [m.qualname for m in handle.members] == ["attn.q_proj.weight", "attn.q_proj.bias", "attn.out_proj.weight"]
    assert handle.constraint.unit_maps[0].tolist() == [h for h in range(4) for _ in range(4)]
    _kill_heads(model, [0, 2])
    ids = torch.randint(0, 30, (3, 7))
    small = _quiet(model)
    assert (small.attn.num_heads, small.attn.num_kv_heads) == (2, 1)
    assert (small.attn.q_proj.out_features, small.attn.k_proj.out_features, small.attn.v_proj.out_features,
            small.attn.out_proj.in_features) == (8, 4, 4, 8)
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


def _kv_of_three_heads():
    """k / v of 3 heads of width 4 beside q's 4 heads: 12 does not divide 16."""
    block = GroupedQuery()
    block.k_proj, block.v_proj = nn.Linear(16, 12), nn.Linear(16, 12)
    return block


@pytest.mark.parametrize("build, kwargs, match", [
    (_kv_of_three_heads, {}, "whole number of those heads"),
    (ReshapedByHeadDim, {"heads": 2}, "disagrees with .*head_dim=4"),
])
def test_attention_heads_refuses_widths_and_counts_that_do_not_fit_and_changes_nothing(build, kwargs, match):
    _refused_unchanged(build(), ValueError, match, **kwargs)


class Fused(nn.Module):
    """GPT-2's attention layout: q, k and v as the thirds of one projection's outputs (``c_attn``), split by
    ``split_size``, reshaped by ``num_heads``; ``c_proj`` the output. ``layer`` builds each projection."""

    def __init__(self, layer, dim=16, heads=4):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = heads, dim // heads, dim
        self.c_attn, self.c_proj = layer(dim, 3 * dim), layer(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        q, k, v = (t.view(N, L, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in self.c_attn(x).split(self.split_size, dim=2))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.c_proj((weights @ v).transpose(1, 2).reshape(N, L, -1))


class FusedPerHead(nn.Module):
    """GPT-NeoX's attention layout: head h's q, k and v side by side in one projection's outputs
    (``query_key_value``), reshaped by its ``head_size`` (no head count kept); ``dense`` the output."""

    def __init__(self, layer, dim=16, heads=4):
        super().__init__()
        self.head_size = dim // heads
        self.query_key_value, self.dense = layer(dim, 3 * dim), layer(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        q, k, v = self.query_key_value(x).view(N, L, -1, 3 * self.head_size).transpose(1, 2).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_size ** 0.5, dim=-1)
        return self.dense((weights @ v).transpose(1, 2).reshape(N, L, -1))


class OwnPerHead(nn.Module):
    """A user's own per-head packed block (BLOOM's layout), under names no table knows: ``packing=`` says it."""

    def __init__(self, layer, dim=16, heads=4):
        super().__init__()
        self.n_head = heads
        self.qkv, self.mix = layer(dim, 3 * dim), layer(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        q, k, v = self.qkv(x).view(N, L, self.n_head, -1).transpose(1, 2).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.mix((weights @ v).transpose(1, 2).reshape(N, L, -1))


LAYERS = {"Linear": nn.Linear, "transposed": lambda fan_in, fan_out: Transposed(fan_out, fan_in)}
# (block, its fused and output layers' names, where head h's q / k / v outputs start, its count attributes,
# what the caller passes)
PACKINGS = {"thirds": (Fused, ("c_attn", "c_proj"), lambda h, third: 16 * third + 4 * h, ("num_heads", "split_size"),
                       {}),
            "per head": (FusedPerHead, ("query_key_value", "dense"), lambda h, third: 12 * h + 4 * third, (), {}),
            "per head, told": (OwnPerHead, ("qkv", "mix"), lambda h, third: 12 * h + 4 * third, ("n_head",),
                               dict(projections=("qkv", "mix"), packing="per head"))}



class OwnFusedGrouped(nn.Module):
    """A user's own fused grouped-query block in thirds (4 query heads' q, then 2 k/v heads' k, then their v) under
    names no table knows and no k/v count symopt reads: its k/v heads follow from ``wqkv``'s width and ``n_heads``."""

    def __init__(self, dim=16, heads=4, kv_heads=2):
        super().__init__()
        self.n_heads, self.head_dim = heads, dim // heads
        self.wqkv, self.wo = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim), nn.Linear(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        inner = self.n_heads * self.head_dim
        kv = (self.wqkv.out_features - inner) // 2
        q, k, v = self.wqkv(x).split([inner, kv, kv], dim=2)
        q = q.view(N, L, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = (t.view(N, L, kv // self.head_dim, self.head_dim).transpose(1, 2)
                .repeat_interleave(inner // kv, dim=1) for t in (k, v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.wo((weights @ v).transpose(1, 2).reshape(N, L, -1))


class PerGroupFused(nn.Module):
    """InternLM2's fused grouped-query layout: for each of 2 k/v heads, its 2 query heads' q, then its k, then its v,
    side by side in ``wqkv``; the counts in ``num_heads`` and ``num_key_value_heads``."""

    def __init__(self, dim=16, heads=4, kv_heads=2):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wqkv, self.wo = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim), nn.Linear(dim, dim)

    def forward(self, x):
        N, L, _ = x.shape
        groups = self.num_heads // self.num_key_value_heads
        packed = self.wqkv(x).view(N, L, self.num_key_value_heads, groups + 2, self.head_dim)
        q = packed[..., :groups, :].reshape(N, L, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (packed[..., j, :].transpose(1, 2).repeat_interleave(groups, dim=1) for j in (-2, -1))
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.wo((weights @ v).transpose(1, 2).reshape(N, L, -1))


# (block, what the caller passes, the unit of each wqkv output, the value outputs of unit 0, the counts after export)
USERS_GROUPED = {
    "thirds, kv_heads told": (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=2),
                              [0] * 8 + [1] * 8 + [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4, slice(24, 28), ("n_heads",)),
    "per group, count kept": (PerGroupFused, dict(projections=("wqkv", "wo"), packing="per head"),
                              [0] * 16 + [1] * 16, slice(12, 16), ("num_heads", "num_key_value_heads")),
}


@pytest.mark.parametrize("layout", sorted(USERS_GROUPED))
def test_a_users_fused_grouped_query_block_loses_whole_units(layout):
    """A fused grouped-query layer under the user's names: a unit is a k/v head's k and v outputs and its query
    heads' q outputs (in thirds, or side by side per k/v head as InternLM2 packs them) and their output columns;
    export removes a dead unit from both layers, lowers the counts, and folds a unit whose value outputs alone are
    dead into the output bias, with the model's outputs unchanged."""
    build, told, units, values, counts = USERS_GROUPED[layout]
    torch.manual_seed(0)
    model = LMWith(build()).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3, **told)
    maps = dict(zip([m.qualname for m in handle.members], handle.constraint.unit_maps))
    assert maps["attn.wqkv.weight"].tolist() == units == maps["attn.wqkv.bias"].tolist()
    assert maps["attn.wo.weight"].tolist() == [0] * 8 + [1] * 8
    _kill_heads(model, [1])
    ids = torch.randint(0, 30, (3, 7))
    small = _quiet(model)
    assert [getattr(small.attn, c) for c in counts] == [2, 1][:len(counts)]
    assert (small.attn.wqkv.out_features, small.attn.wo.in_features) == (16, 8)
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)
    lm = LMWith(build()).double().eval()
    handle = symopt.attention_heads(lm, "attn", strength=1e-3, **told)
    with torch.no_grad():  # unit 0's value outputs only (original1 of wqkv.weight's copy: its rows; original0 the gates)
        handle.constraint.copies[0].original1[values] = 0.0
    small = _quiet(lm)
    assert (small.attn.wqkv.out_features, small.attn.wo.in_features) == (16, 8)
    assert torch.allclose(small(ids), lm(ids), atol=1e-12, rtol=0)


@pytest.mark.parametrize("build, told", [
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=1)),
    (PerGroupFused, dict(projections=("wqkv", "wo"), packing="per head")),
])
def test_a_users_fused_multi_query_block_loses_query_heads_and_keeps_the_k_v_head(build, told):
    """One k/v head fused after every query head's q (in thirds, or per group: the same layout with one group): a
    unit is a query head, its q outputs and output columns; the k and v outputs are no unit's (-1) and stay. Export
    removes two dead heads' q outputs and columns, keeps the k/v head, lowers the count, with the outputs."""
    torch.manual_seed(0)
    model = LMWith(build(kv_heads=1)).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3, **told)
    maps = dict(zip([m.qualname for m in handle.members], handle.constraint.unit_maps))
    assert maps["attn.wqkv.weight"].tolist() == [h for h in range(4) for _ in range(4)] + [-1] * 8
    assert maps["attn.wo.weight"].tolist() == [h for h in range(4) for _ in range(4)]
    assert handle.constraint.units == 4
    _kill_heads(model, [1, 2])
    ids = torch.randint(0, 30, (3, 7))
    small = _quiet(model)
    count = "n_heads" if build is OwnFusedGrouped else "num_heads"
    assert (getattr(small.attn, count), small.attn.wqkv.out_features, small.attn.wo.in_features) == (2, 16, 8)
    assert torch.equal(small.attn.wqkv.weight[8:], model.attn.wqkv.weight[16:])  # (the k/v head, whole)
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


def test_a_head_budget_on_a_per_group_fused_block_lands_and_exports():
    """max_heads=1 of 2 units on InternLM2's layout lands exactly under Adam; export keeps that unit's 2 query heads
    and its k/v head, with the same outputs."""
    torch.manual_seed(0)
    steps = 120
    model = LMWith(PerGroupFused()).double()
    handle = symopt.attention_heads(model, "attn", projections=("wqkv", "wo"), packing="per head", max_heads=1,
                                    total_steps=steps)
    ids = torch.randint(0, 30, (16, 7), generator=torch.Generator().manual_seed(0))
    loss = lambda: nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 30), ids[:, 1:].reshape(-1))  # noqa: E731
    alive = [int((norms > 0).sum()) for norms in _head_norms_while_training(model, loss, handle, steps)]
    assert alive[0] == 2 and all(a == 1 for a in alive[round(0.75 * steps) - 1:])
    model.eval()
    small = _quiet(model)
    assert (small.attn.num_heads, small.attn.num_key_value_heads, small.attn.wqkv.out_features) == (2, 1, 16)
    assert torch.allclose(small(ids), model(ids), atol=1e-10)


@pytest.mark.parametrize("build, kwargs, error, match", [
    (OwnFusedGrouped, dict(projections=("wqkv", "wo")), ValueError,
     r"32 outputs, not 3 × the 16 inputs of 'wo'.*give kv_heads="),
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=1), ValueError,
     r"'wqkv' of '' has 32 outputs, but kv_heads=1 of 4 gives q, k, v 16 \+ 2 × 4 = 24"),
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=3), ValueError,
     "kv_heads=3 does not divide the 4 query heads"),
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=0), ValueError, "kv_heads=0 must be a positive int"),
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=True), ValueError,
     "kv_heads=True must be a positive int"),
    (OwnFusedGrouped, dict(projections=("wqkv", "wo"), kv_heads=2.0), ValueError,
     "kv_heads=2.0 must be a positive int"),
    (GroupedQuery, dict(kv_heads=1), ValueError, r"kv_heads=1, but 'k_proj' of '' has 8 outputs: 2 k/v heads"),
    (lambda: nn.MultiheadAttention(16, 4), dict(kv_heads=2), ValueError,
     "nn.MultiheadAttention, whose k and v have all 4 heads: drop kv_heads"),
])
def test_a_bad_kv_heads_is_refused_by_name_and_nothing_changes(build, kwargs, error, match):
    _refused_unchanged(build(), error, match, **kwargs)


def test_kv_heads_that_agree_with_the_layers_change_nothing():
    """kv_heads= equal to what the block says (separate layers' k width, an nn.MultiheadAttention's heads, a fused
    block's own k/v count) gives the units the block gives without it."""
    for build, kwargs, kv in ((GroupedQuery, {}, 2), (lambda: nn.MultiheadAttention(16, 4), {}, 4),
                              (PerGroupFused, dict(projections=("wqkv", "wo"), packing="per head"), 2)):
        plain = symopt.attention_heads(build(), **kwargs).constraint.unit_maps
        told = symopt.attention_heads(build(), kv_heads=kv, **kwargs).constraint.unit_maps
        assert all(torch.equal(a, b) for a, b in zip(plain, told))



class HeadWidthFromDim(nn.Module):
    """DistilBERT's attention before transformers 5: q_lin … out_lin, a head ``dim // n_heads`` wide."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.n_heads, self.dim = heads, dim
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        N, L, _ = x.shape
        q, k, v = (layer(x).view(N, L, self.n_heads, self.dim // self.n_heads).transpose(1, 2)
                   for layer in (self.q_lin, self.k_lin, self.v_lin))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (self.dim // self.n_heads) ** 0.5, dim=-1)
        return self.out_lin((weights @ v).transpose(1, 2).reshape(N, L, -1))


class ModelWidthDim(HeadWidthFromDim):
    """The same projections, a head width from the weights, and ``dim`` the model's width (its output's)."""

    def forward(self, x):
        N, L, _ = x.shape
        q, k, v = (layer(x).view(N, L, self.n_heads, -1).transpose(1, 2) for layer in (self.q_lin, self.k_lin, self.v_lin))
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.out_lin((weights @ v).transpose(1, 2).reshape(N, L, -1)).view(N, L, self.dim)


@pytest.mark.parametrize("build, dim_after", [(HeadWidthFromDim, 8), (ModelWidthDim, 16)])
def test_a_dim_attribute_is_lowered_only_where_the_rewrite_needs_it(build, dim_after):
    """A block reshaping by ``dim // n_heads`` (DistilBERT before transformers 5) exports with ``dim`` lowered to
    the kept heads' width; where ``dim`` is the model's width the first rewrite already holds and it stays."""
    torch.manual_seed(0)
    model = LMWith(build()).double().eval()
    symopt.attention_heads(model, "attn", strength=1e-3)
    _kill_heads(model, [1, 2])
    ids = torch.randint(0, 30, (3, 7))
    small = _quiet(model)
    assert (small.attn.n_heads, small.attn.dim, small.attn.q_lin.out_features) == (2, dim_after, 8)
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


@pytest.mark.parametrize("packing", sorted(PACKINGS))
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_fused_qkv_block_loses_its_dead_heads_from_both_projections(layer, packing):
    """A head's unit is its three slices of the fused outputs (q, k, v at offsets 0, dim, 2·dim as GPT-2 packs
    them, or side by side at 3·h·head_dim as GPT-NeoX does, or as the caller's packing= says; the weight's rows
    for a Linear, its columns for a transposed layer) and its inputs of the output projection; export removes
    dead heads from both layers (a transposed one keeps its class, with nf / nx lowered) and lowers num_heads
    and split_size where the block keeps them; a head whose value outputs alone are dead writes a constant,
    folded."""
    build, (fused, out), start, counts, told = PACKINGS[packing]
    torch.manual_seed(0)
    model = LMWith(build(LAYERS[layer])).double().eval()
    handle = symopt.attention_heads(model, "attn", strength=1e-3, **told)
    assert [m.qualname for m in handle.members] == [f"attn.{fused}.weight", f"attn.{fused}.bias", f"attn.{out}.weight"]
    axis = 0 if layer == "Linear" else 1
    _kill_heads(model, [1, 2])
    with torch.no_grad():  # head 3's value outputs only
        handle.constraint.copies[0].original1.narrow(axis, start(3, 2), 4).zero_()  # (original0: the gates)
    weight = getattr(model.attn, fused).weight
    for head, dead in ((0, False), (1, True), (2, True), (3, False)):
        for third in range(3):
            block = weight.narrow(axis, start(head, third), 4)
            assert (float(block.abs().max()) == 0) == (dead or head == 3 and third == 2)
    ids = torch.randint(0, 30, (3, 7))
    small = _quiet(model)
    qkv, o = getattr(small.attn, fused), getattr(small.attn, out)
    kind = nn.Linear if layer == "Linear" else Transposed
    assert type(qkv) is kind and type(o) is kind and [getattr(small.attn, c) for c in counts] == [1, 4][:len(counts)]
    assert tuple(qkv.weight.shape) == ((12, 16) if layer == "Linear" else (16, 12))
    assert tuple(o.weight.shape) == ((16, 4) if layer == "Linear" else (4, 16))
    if layer != "Linear":
        assert (qkv.nf, qkv.nx, o.nf, o.nx) == (12, 16, 16, 4)
    assert torch.allclose(small(ids), model(ids), atol=1e-12, rtol=0)


def test_a_per_head_block_under_other_names_is_read_in_thirds_unless_packing_says():
    """Names outside the table give no packing: without packing= the fused outputs are read in thirds (GPT-2's),
    which for a per-head layout puts head 0's unit on head 0's q, head 1's q and the first of head 2's q
    outputs; packing="per head" reads head 0 as outputs 0..11, as the block computes it."""
    guessed = symopt.attention_heads(LMWith(OwnPerHead(nn.Linear)), "attn", projections=("qkv", "mix"))
    assert guessed.constraint.attention_blocks[0]["fused"] == "thirds"
    assert guessed.constraint.unit_maps[0][:16].tolist() == [h for h in range(4) for _ in range(4)]
    told = symopt.attention_heads(LMWith(OwnPerHead(nn.Linear)), "attn", projections=("qkv", "mix"),
                                  packing="per head")
    assert told.constraint.attention_blocks[0]["fused"] == "per head"
    heads_of_outputs = told.constraint.unit_maps[0]
    assert heads_of_outputs.tolist() == [h for h in range(4) for _ in range(12)]


@pytest.mark.parametrize("block,kwargs,match", [
    (lambda: OwnPerHead(nn.Linear), dict(projections=("qkv", "mix"), packing="interleaved"),
     r"packing='interleaved' is not a fused projection's packing; give 'thirds'.*or 'per head'"),
    (lambda: nn.MultiheadAttention(16, 4), dict(packing="thirds"),
     r"packing='thirds' describes a fused q\|k\|v layer.*is an nn.MultiheadAttention.*drop packing"),
    (lambda: HandWritten(), dict(packing="per head"),
     r"packing='per head' describes a fused q\|k\|v layer; 'HandWritten' has separate ones \(q_proj, k_proj, "
     r"v_proj, out_proj\): drop packing"),
])
def test_a_bad_packing_is_refused_by_name_and_nothing_changes(block, kwargs, match):
    _refused_unchanged(block(), ValueError, match, **kwargs)


def test_a_fused_block_with_other_widths_or_layers_is_refused_and_nothing_changes():
    block = Fused(nn.Linear)
    block.c_attn = nn.Linear(16, 32)  # k and v only (cross-attention): no q third
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(ValueError, match="32 outputs, not 3 × the 16 inputs of 'c_proj'"):
        symopt.attention_heads(block)
    with pytest.raises(TypeError, match=r"projections=\('c_attn', 'nowhere'\).*fused q\|k\|v projection"):
        symopt.attention_heads(block, projections=("c_attn", "nowhere"))
    with pytest.raises(ValueError, match="5 heads do not divide the 16 inputs"):
        symopt.attention_heads(Fused(nn.Linear), heads=5)
    assert symopt.list_constraints(block) == []
    assert all(torch.equal(block.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("where", ["torch", "hand-written"])
def test_a_head_budget_lands_exactly_and_export_keeps_that_many_heads(where):
    """max_heads=2 of 4 with total_steps: from the landing on exactly 2 heads are non-zero across their
    q, k, v rows, biases and output columns, under Adam; export keeps 2 heads with the same outputs."""
    torch.manual_seed(0)
    steps = 200
    if where == "torch":
        model = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True).double()
        handle = symopt.attention_heads(model, "self_attn", max_heads=2, total_steps=steps)
        x = torch.randn(32, 6, 16, dtype=DT)
        target = x + x.mean(1, keepdim=True).expand_as(x)
        loss = lambda: ((model(x) - target) ** 2).mean()  # noqa: E731
    else:
        model = TinyLM().double()
        handle = symopt.attention_heads(model, "attn", max_heads=2, total_steps=steps)
        ids = torch.randint(0, 30, (16, 7), generator=torch.Generator().manual_seed(0))
        loss = lambda: nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 30), ids[:, 1:].reshape(-1))  # noqa: E731
    alive = [int((norms > 0).sum()) for norms in _head_norms_while_training(model, loss, handle, steps)]
    land = round(0.75 * steps)
    assert alive[land - 2] == 4 and all(a == 2 for a in alive[land - 1:])
    model.eval()
    small = _quiet(model)
    heads = small.self_attn.num_heads if where == "torch" else small.attn.num_heads
    assert heads == 2
    probe = x if where == "torch" else ids
    assert torch.allclose(small(probe), model(probe), atol=1e-10)


def _head_norms_while_training(model, loss, handle, steps):
    """Adam (lr 1e-2, ``symopt.param_groups``) on ``loss()`` for ``steps`` steps; the heads' joint norms
    after each."""
    return recorded_training(model, loss, steps, lambda: handle.constraint.unit_norms([v.detach() for v in handle.values()]),
                             optimizer=torch.optim.Adam)


class TwoBlockLM(nn.Module):
    """Two hand-written attention blocks in a row (residual), for a head budget over both."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.first, self.second = HandWritten(), HandWritten()
        self.head = nn.Linear(16, 30)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.first(x)
        return self.head(x + self.second(x))


@pytest.mark.parametrize("where", ["torch", "hand-written"])
def test_one_head_budget_over_two_blocks_lands_and_export_removes_each_blocks_heads(where):
    """max_heads=3 over the 4 + 4 heads of two blocks (nn.MultiheadAttention in two Transformer layers,
    or two hand-written blocks), total_steps: from the landing on exactly 3 heads are alive over both,
    each block keeps at least one, and export removes every block's dead heads with the same outputs."""
    torch.manual_seed(0)
    steps = 160
    if where == "torch":
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double()
        blocks = ["layers.0.self_attn", "layers.1.self_attn"]
        x = torch.randn(32, 6, 16, dtype=DT)
        target = x + x.mean(1, keepdim=True).expand_as(x)
        loss = lambda: ((model(x) - target) ** 2).mean()  # noqa: E731
        probe = x
    else:
        model = TwoBlockLM().double()
        blocks = ["first", "second"]
        ids = torch.randint(0, 30, (16, 7), generator=torch.Generator().manual_seed(0))
        loss = lambda: nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 30), ids[:, 1:].reshape(-1))  # noqa: E731
        probe = ids
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=steps)
    assert handle.constraint.set_units == [4, 4]
    alive = [[int((part > 0).sum()) for part in norms.split(4)]
             for norms in _head_norms_while_training(model, loss, handle, steps)]
    land = round(0.75 * steps)
    # every head until the ramp's count falls below 8 / 1.5; then they land on the way (at most 1.5 × the
    # count alive, 6 of 8 just before the landing), and from the landing on exactly 3, one block at least each
    assert sum(alive[0]) == 8 and 3 < sum(alive[land - 2]) <= math.ceil(LAND_BEYOND * 4)
    assert all(sum(a) == 3 and min(a) >= 1 for a in alive[land - 1:])
    model.eval()
    small = _quiet(model, example_input=probe[:2])
    heads = [small.get_submodule(b).num_heads for b in blocks]
    assert heads == alive[-1]
    assert torch.allclose(small(probe), model(probe), atol=1e-10)


def test_a_head_budget_over_blocks_refuses_bad_names_and_changes_nothing():
    model = TwoBlockLM()
    _refused_unchanged(model, ValueError, r"attention_heads: max_heads=1 is below the 2 blocks .* max_heads >= 2",
                       ["first", "second"], max_heads=1)
    _refused_unchanged(model, ValueError, "a list of block names", ["first", 2], max_heads=3)


def test_the_exported_attention_forms_no_mask_per_head():
    """The exported attention's additive mask is no larger than the masks given (a 2-d mask once, padding
    once per sample), and a causal call without a mask forms none: the full (N, heads, L, S) mask it formed
    on every call was most of its time (benchmarks/RESULTS.md). Outputs stay nn.MultiheadAttention's."""
    torch.manual_seed(2)
    attn = nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    symopt.attention_heads(attn, strength=1e-3)
    _kill_heads(attn, [0, 2])
    small = _quiet(attn)
    N, L = 3, 7
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[1, -3:] = True
    mask = small._mask(causal, None, False, N, L, L, DT, "cpu")
    assert mask.shape == (1, 1, L, L) and torch.equal(mask.isinf(), causal.reshape(1, 1, L, L))
    assert small._mask(None, padding, False, N, L, L, DT, "cpu").shape == (N, 1, 1, L)
    assert small._mask(causal, padding, False, N, L, L, DT, "cpu").shape == (N, 1, L, L)
    assert small._mask(None, None, False, N, L, L, DT, "cpu") is None
    x = torch.randn(N, L, 16, dtype=DT)
    want = attn(x, x, x, attn_mask=causal, need_weights=False)[0]
    for kwargs in (dict(attn_mask=causal), dict(is_causal=True), dict(attn_mask=causal, is_causal=True)):
        assert torch.allclose(small(x, x, x, need_weights=False, **kwargs)[0], want, atol=1e-12, rtol=0), kwargs
    both = attn(x, x, x, attn_mask=causal, key_padding_mask=padding)
    got = small(x, x, x, attn_mask=causal, key_padding_mask=padding)
    assert torch.allclose(got[0], both[0], atol=1e-12, rtol=0) and torch.allclose(got[1], both[1], atol=1e-12, rtol=0)



def test_attention_blocks_lists_the_blocks_attention_heads_reads():
    """The blocks found in module order, each once (not again inside one found, not the layer holding it), a block
    with unknown layer names left out; the list gives one head budget over all of them."""
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    assert symopt.attention_blocks(encoder) == ["layers.0.self_attn", "layers.1.self_attn"]
    model = nn.Sequential(LMWith(HandWritten()), LMWith(GroupedQuery()), LMWith(OwnFusedGrouped()))
    assert symopt.attention_blocks(model) == ["0.attn", "1.attn"]  # (the third needs projections= and kv_heads=)
    assert symopt.attention_blocks(HandWritten()) == [""]
    handle = symopt.attention_heads(encoder, symopt.attention_blocks(encoder), max_heads=3, total_steps=10)
    assert handle.constraint.unit_norms(handle.values()).numel() == 8
    with pytest.raises(TypeError, match="attention_blocks: model must be an nn.Module"):
        symopt.attention_blocks("layers.0.self_attn")


@pytest.mark.parametrize("name, error, match", [
    ("layers.0.self_atn", ValueError, r"TransformerEncoder has no module 'layers.0.self_atn'; the attention blocks "
                                      r"symopt reads here \(symopt.attention_blocks\(model\)\): 'layers.0.self_attn', "
                                      r"'layers.1.self_attn'"),
    (["layers.0.self_attn", "layers.2.self_attn"], ValueError, "has no module 'layers.2.self_attn'"),
    ("layers.0", TypeError, r"'layers.0' is a TransformerEncoderLayer, neither .*\. The attention blocks symopt reads "
                            r"here \(symopt.attention_blocks\(model\)\): 'layers.0.self_attn'"),
    (3, TypeError, "name must be a block's dotted name or a list of them, got int"),
])
def test_a_wrong_block_name_is_refused_with_the_blocks_there_are(name, error, match):
    """A typo in a block's name, or a module that is not an attention block, is refused with the blocks that
    `attention_blocks` finds (the fix), before anything changes."""
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    _refused_unchanged(model, error, match, name, max_heads=2)
