"""Layer 0 — ``nn.MultiheadAttention``'s forward with some heads removed (built by [`export`][symopt.export]).

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``num_heads · head_dim = embed_dim``),
so a model with fewer heads but the same embedding needs a module of its own. This one computes
exactly what the original did: the same projections restricted to the kept heads, softmax attention
with the same scale ``1/√head_dim``, masks, dropout and batch layout, and the output projection's
columns of the kept heads. A removed head still shapes the attention *weights* the original returns
(``need_weights=True`` averages over every head), so its query / key rows are kept aside and used only
when weights are asked for; its value path, which is zero or a constant folded into the output bias,
is gone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import forward_arguments


class HeadPrunedAttention(nn.Module):
    """Multi-head attention over the kept heads of an ``nn.MultiheadAttention`` (same call signature).

    Args:
        mha: the original module (its weights are copied).
        keep: indices of the heads to keep (ascending).
        out_bias: the output projection's bias with the removed heads' constant outputs folded in.

    Examples:
        >>> import torch
        >>> from symopt._attention import HeadPrunedAttention
        >>> mha = torch.nn.MultiheadAttention(8, 4).eval()
        >>> with torch.no_grad():
        ...     mha.out_proj.weight[:, 2:4] = 0            # head 1 writes nothing
        >>> small = HeadPrunedAttention(mha, [0, 2, 3], mha.out_proj.bias.detach()).eval()
        >>> x = torch.randn(5, 2, 8)
        >>> torch.allclose(small(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    # nn.TransformerEncoderLayer reads these to decide on its fused fast path (which needs the
    # original module's packed weights): they send it to the ordinary path, which calls forward().
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, mha: nn.MultiheadAttention, keep, out_bias: Tensor | None) -> None:
        super().__init__()
        E, H = mha.embed_dim, mha.num_heads
        d = E // H
        self.embed_dim, self.heads_before, self.head_dim = E, H, d
        self.num_heads = len(keep)
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        keep = torch.as_tensor(list(keep), dtype=torch.long)
        dead = torch.tensor([h for h in range(H) if h not in set(keep.tolist())], dtype=torch.long)
        self.register_buffer("kept_heads", keep, persistent=False)
        self.register_buffer("removed_heads", dead, persistent=False)
        if mha._qkv_same_embed_dim:
            q_w, k_w, v_w = mha.in_proj_weight.detach().chunk(3)
        else:
            q_w, k_w, v_w = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        biases = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        rows = (keep[:, None] * d + torch.arange(d)).reshape(-1)
        ghost = (dead[:, None] * d + torch.arange(d)).reshape(-1)
        kw = dict(device=q_w.device, dtype=q_w.dtype)
        self.q = nn.Linear(q_w.shape[1], rows.numel(), bias=biases[0] is not None, **kw)
        self.k = nn.Linear(k_w.shape[1], rows.numel(), bias=biases[1] is not None, **kw)
        self.v = nn.Linear(v_w.shape[1], rows.numel(), bias=biases[2] is not None, **kw)
        self.out = nn.Linear(rows.numel(), E, bias=out_bias is not None, **kw)
        with torch.no_grad():
            for layer, w, b in ((self.q, q_w, biases[0]), (self.k, k_w, biases[1]), (self.v, v_w, biases[2])):
                layer.weight.copy_(w[rows])
                if b is not None:
                    layer.bias.copy_(b[rows])
            self.out.weight.copy_(mha.out_proj.weight.detach()[:, rows])
            if out_bias is not None:
                self.out.bias.copy_(out_bias)
        # the removed heads' query / key rows: only for the attention weights, when asked for
        zero = torch.zeros(0, **kw)
        self.register_buffer("ghost_q_weight", q_w[ghost].clone())
        self.register_buffer("ghost_k_weight", k_w[ghost].clone())
        self.register_buffer("ghost_q_bias", biases[0][ghost].clone() if biases[0] is not None else zero)
        self.register_buffer("ghost_k_bias", biases[1][ghost].clone() if biases[1] is not None else zero)

    def _split(self, x: Tensor, heads: int) -> Tensor:  # (N, L, heads·d) → (N, heads, L, d)
        N, L, _ = x.shape
        return x.reshape(N, L, heads, self.head_dim).transpose(1, 2)

    def _mask(self, attn_mask, key_padding_mask, is_causal, N, L, S, dtype, device) -> Tensor | None:
        """The additive mask of every original head (float, -inf where masked), broadcastable to
        (N, H_before, L, S) and no larger than the masks given make it: (1, 1, L, S) for a 2-d mask, (N, 1, 1, S)
        for padding alone; None without a mask. (The full (N, H_before, L, S) mask, formed on every call, was most
        of the exported attention's time: 33 MB a layer for 256 windows of 64 characters and 8 heads.)"""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=device).triu(1)
        mask = None
        for m, shape in ((attn_mask, None), (key_padding_mask, "padding")):
            if m is None:
                continue
            if shape == "padding":
                m = m.reshape(N, 1, 1, S)
            elif m.dim() == 2:
                m = m.reshape(1, 1, L, S)
            else:
                m = m.reshape(N, self.heads_before, L, S)
            additive = (torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
                        if m.dtype == torch.bool else m.to(dtype))
            mask = additive if mask is None else mask + additive
        return mask

    @staticmethod
    def _of_heads(mask: Tensor | None, heads: Tensor) -> Tensor | None:
        """``mask`` (see `_mask`) for the original heads ``heads`` only."""
        return mask if mask is None or mask.shape[1] == 1 else mask[:, heads]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        unbatched = query.dim() == 2
        batch_axis = 0 if self.batch_first else 1
        if unbatched:
            query, key, value = (t.unsqueeze(batch_axis) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._split(self.q(query), self.num_heads), self._split(self.k(key), self.num_heads), \
            self._split(self.v(value), self.num_heads)
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout if self.training else 0.0
        causal_only = is_causal and attn_mask is None and key_padding_mask is None
        mask = None if causal_only and not need_weights else self._mask(
            attn_mask, key_padding_mask, is_causal, N, L, S, query.dtype, query.device)
        if not need_weights:
            # (torch's fused attention, as nn.MultiheadAttention itself takes when no weights are asked for)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=self._of_heads(mask, self.kept_heads),
                                                      dropout_p=dropout, is_causal=causal_only, scale=scale)
        else:
            scores = q @ k.transpose(-2, -1) * scale
            kept = self._of_heads(mask, self.kept_heads)
            weights = torch.softmax(scores if kept is None else scores + kept, dim=-1)
            attended = F.dropout(weights, dropout, self.training) @ v  # (N, H', L, d)
        out = self.out(attended.transpose(1, 2).reshape(N, L, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(batch_axis)
        if not need_weights:
            return out, None
        every = weights.new_zeros(N, self.heads_before, L, S)
        every[:, self.kept_heads] = weights
        if self.removed_heads.numel():
            gq = self._split(F.linear(query, self.ghost_q_weight, self.ghost_q_bias if self.ghost_q_bias.numel() else None),
                             self.removed_heads.numel())
            gk = self._split(F.linear(key, self.ghost_k_weight, self.ghost_k_bias if self.ghost_k_bias.numel() else None),
                             self.removed_heads.numel())
            ghost = gq @ gk.transpose(-2, -1) * scale
            removed = self._of_heads(mask, self.removed_heads)
            every[:, self.removed_heads] = torch.softmax(ghost if removed is None else ghost + removed, dim=-1)
        every = every.mean(dim=1) if average_attn_weights else every
        return out, every.squeeze(0) if unbatched else every

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, heads {self.num_heads} of {self.heads_before} "
                f"(kept {self.kept_heads.tolist()}), head_dim={self.head_dim}, batch_first={self.batch_first}")


# --- ALiBi: per-head attention biases the model builds for every block ---------------------------------------
# BLOOM's model builds one ALiBi tensor per forward, (batch · heads, 1, keys): a slope per head from the config's
# head count, and passes it to every attention block (`alibi=`). A block whose heads export removed must read the
# rows of its kept heads only. The kept heads are kept on the block as a string attribute (a scalar, so that
# `symopt.layout` records it and `symopt.from_pretrained` sets it again), read by a forward pre-hook.
ALIBI_HEADS = "symopt_alibi_heads"


def _alibi_position(block: nn.Module) -> int | None:
    """The position of ``alibi`` among ``block``'s forward's arguments, None where it takes none."""
    names = forward_arguments(block)
    return names.index("alibi") if "alibi" in names else None


def takes_alibi(block: nn.Module) -> bool:
    """Whether ``block``'s forward takes an ``alibi`` argument (BLOOM's attention)."""
    return _alibi_position(block) is not None


def _kept_heads(module: nn.Module, attribute: str) -> tuple[list[int], int]:
    """``(kept heads, heads before)`` from the module's ``attribute`` (`ALIBI_HEADS`, `POSITION_BIAS_HEADS`:
    ``"0,3/4"``)."""
    kept, before = getattr(module, attribute).split("/")
    return [int(h) for h in kept.split(",")], int(before)


def _kept_heads_value(module: nn.Module, attribute: str, kept: Sequence[int], heads: int) -> str:
    """The ``attribute`` string for ``module`` keeping its heads ``kept`` of ``heads``; where an export narrowed it
    before, ``kept`` counts its heads now and the string keeps counting in the model's original heads."""
    kept = [int(h) for h in kept]
    if getattr(module, attribute, None) is not None:
        before, heads = _kept_heads(module, attribute)
        kept = [before[h] for h in kept]
    return f"{','.join(map(str, kept))}/{heads}"


def keep_alibi_rows(block: nn.Module, kept: Sequence[int], heads: int) -> None:
    """From now on ``block`` reads only the ALiBi rows of its heads ``kept`` (of ``heads``, its head count before
    this export). A block narrowed before keeps counting in the model's original heads.

    Examples:
        >>> import torch
        >>> class Block(torch.nn.Module):
        ...     def forward(self, x, alibi=None):
        ...         return alibi
        >>> block = Block()
        >>> keep_alibi_rows(block, [0, 2], 4)
        >>> block(None, alibi=torch.arange(8.0).reshape(8, 1, 1)).reshape(-1).tolist()  # 2 samples × 4 heads
        [0.0, 2.0, 4.0, 6.0]
    """
    setattr(block, ALIBI_HEADS, _kept_heads_value(block, ALIBI_HEADS, kept, heads))
    install_alibi_rows(block)


def install_alibi_rows(block: nn.Module) -> None:
    """The forward pre-hook that hands ``block`` its kept heads' ALiBi rows (once per block)."""
    if not any(hook is _alibi_rows for hook in block._forward_pre_hooks.values()):
        block.register_forward_pre_hook(_alibi_rows, with_kwargs=True)


def _alibi_rows(block: nn.Module, args: tuple, kwargs: dict):
    kept, heads = _kept_heads(block, ALIBI_HEADS)
    at = _alibi_position(block)
    alibi = kwargs.get("alibi") if "alibi" in kwargs or at >= len(args) else args[at]
    if alibi is None:
        return None
    rows = alibi.reshape(-1, heads, *alibi.shape[1:])[:, kept].reshape(-1, *alibi.shape[1:])
    if "alibi" in kwargs or at >= len(args):
        return args, {**kwargs, "alibi": rows}
    return (*args[:at], rows, *args[at + 1:]), kwargs


# --- Position biases handed from block to block: T5 ----------------------------------------------------------
# T5's attention adds a position bias of one row per head, (batch or 1, heads, queries, keys), to its scores. The
# first block of a stack computes it (from its `relative_attention_bias` Embedding, a column per head; a
# cross-attention without one makes zeros) and returns it; the stack hands it to every later block, which uses it
# as given and returns it again. A block whose heads export removed must use its kept heads' rows and still hand
# the later blocks every row: a forward pre-hook gives it its rows of a bias it is given (the full one kept
# aside), a forward hook on its Embedding hands it its columns of one it computes (the Embedding keeps every
# column), and a forward hook puts the full bias back in its output (second of its outputs, in transformers 4
# and 5; transformers 4 adds the attention mask to a bias a block computes before handing it on, and so does the
# hook). MPT's model builds one ALiBi bias, (heads, 1, keys), and hands it to every block, which returns none:
# the pre-hook alone serves it; so does MPNet's encoder's relative-position bias, which its attention hands the
# block by position, not by keyword. BEiT's shared relative-position bias (one table the model holds for every layer)
# reaches each block as a (1, heads, queries, keys) ``relative_position_bias`` (transformers 4) or added into its
# ``attention_mask`` (5): the pre-hook takes the kept heads' rows of it, and of a mask only where it has a row per
# head (a mask broadcast over the heads stays). The kept heads live in a string attribute on the block and on its
# Embedding, as for ALiBi.
POSITION_BIAS_HEADS = "symopt_position_bias_heads"
# the arguments by which a block may be handed a bias of a row per head, in the order looked for
PER_HEAD_BIAS_ARGUMENTS = ("position_bias", "relative_position_bias", "attention_mask")
_POSITION_BIAS_OUTPUT = 1  # (T5Attention returns (attn_output, position_bias, ...))


def takes_position_bias(block: nn.Module) -> bool:
    """Whether ``block``'s forward takes a per-head ``position_bias`` argument (T5's attention)."""
    return "position_bias" in forward_arguments(block)


def takes_per_head_bias(block: nn.Module) -> bool:
    """Whether ``block``'s forward takes an argument that may hold a row per head (`PER_HEAD_BIAS_ARGUMENTS`: BEiT's
    shared relative-position bias, handed on as such or inside the attention mask)."""
    return any(name in forward_arguments(block) for name in PER_HEAD_BIAS_ARGUMENTS)


def keep_position_bias_rows(block: nn.Module, kept: Sequence[int], heads: int) -> None:
    """From now on ``block`` uses only the position-bias rows of its heads ``kept`` (of ``heads``, its count before
    this export) and still hands later blocks the whole bias. A block narrowed before keeps counting in the
    model's original heads."""
    value = _kept_heads_value(block, POSITION_BIAS_HEADS, kept, heads)
    setattr(block, POSITION_BIAS_HEADS, value)
    install_position_bias_rows(block)
    embedding = getattr(block, "relative_attention_bias", None)
    if isinstance(embedding, nn.Embedding):
        setattr(embedding, POSITION_BIAS_HEADS, value)
        install_position_bias_rows(embedding)


def install_position_bias_rows(module: nn.Module) -> None:
    """The hooks that narrow ``module``'s position bias (a block) or its bias columns (its Embedding), once."""
    if isinstance(module, nn.Embedding):
        if not any(hook is _kept_bias_columns for hook in module._forward_hooks.values()):
            module.register_forward_hook(_kept_bias_columns)
        return
    if not any(hook is _kept_bias_rows for hook in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_kept_bias_rows, with_kwargs=True)
        module.register_forward_hook(_whole_bias_out, with_kwargs=True)


def _kept_bias_columns(embedding: nn.Module, args: tuple, output: Tensor) -> Tensor:
    kept, _ = _kept_heads(embedding, POSITION_BIAS_HEADS)
    narrowed = output[..., kept]
    embedding.__dict__["_symopt_whole_bias"] = (narrowed, output)  # (for the block's `_whole_bias_out`)
    return narrowed


def _kept_bias_rows(block: nn.Module, args: tuple, kwargs: dict):
    # (by keyword, as T5's stack hands it, or by position, as MPNet's attention does)
    names = forward_arguments(block)
    name = next((n for n in PER_HEAD_BIAS_ARGUMENTS if n in names or n in kwargs), PER_HEAD_BIAS_ARGUMENTS[0])
    at = names.index(name) if name in names else len(args)
    by_keyword = name in kwargs or at >= len(args)
    bias = kwargs.get(name) if by_keyword else args[at]
    if bias is None:
        return None
    kept, heads = _kept_heads(block, POSITION_BIAS_HEADS)
    if name != "position_bias" and (not isinstance(bias, Tensor) or bias.dim() != 4 or bias.shape[1] != heads):
        return None  # (BEiT's bias or mask: only where it has a row per head of the model's original count)
    rows = bias[:, kept] if bias.dim() == 4 else bias[kept]  # (T5: (batch or 1, heads, q, k); MPT: (heads, 1, k))
    block.__dict__["_symopt_whole_bias"] = (rows, bias)
    if by_keyword:
        return args, {**kwargs, name: rows}
    return (*args[:at], rows, *args[at + 1:]), kwargs


def _whole_bias_out(block: nn.Module, args: tuple, kwargs: dict, output):
    kept, heads = _kept_heads(block, POSITION_BIAS_HEADS)
    given = block.__dict__.pop("_symopt_whole_bias", None)
    embedding = getattr(block, "relative_attention_bias", None)
    computed = embedding.__dict__.pop("_symopt_whole_bias", None) if isinstance(embedding, nn.Module) else None
    if not isinstance(output, tuple) or len(output) <= _POSITION_BIAS_OUTPUT:
        return None
    out = output[_POSITION_BIAS_OUTPUT]
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[1] != len(kept):
        return None
    if given is not None:  # (the rows it was handed: the whole bias goes on)
        whole = given[1] if out is given[0] else None
    elif computed is not None:  # (its Embedding's columns, as compute_bias lays them out)
        whole = _as_handed_on(out, computed[0].permute([2, 0, 1]).unsqueeze(0),
                              computed[1].permute([2, 0, 1]).unsqueeze(0), kwargs.get("mask"))
    else:  # (zeros it made: a cross-attention's)
        whole = _as_handed_on(out, out.new_zeros(1, len(kept), *out.shape[2:]),
                              out.new_zeros(1, heads, *out.shape[2:]), kwargs.get("mask"))
    if whole is None:
        return None  # (a bias this hook does not recognise: export's check of the outputs decides)
    return (*output[:_POSITION_BIAS_OUTPUT], whole, *output[_POSITION_BIAS_OUTPUT + 1:])


def _as_handed_on(out: Tensor, narrowed: Tensor, whole: Tensor, mask: Tensor | None) -> Tensor | None:
    """``whole``, the bias of every head, as a block hands on the bias ``narrowed`` of its kept heads that it made
    itself, where ``out`` is what it handed on: ``narrowed`` itself, or (transformers 4, which adds the attention
    mask to a bias a block makes) ``narrowed`` plus ``mask``; None where ``out`` is neither."""
    if torch.equal(out, narrowed):
        return whole
    if mask is None or not torch.equal(out, narrowed + mask[:, :, :, : out.shape[-1]]):
        return None
    return whole + mask[:, :, :, : whole.shape[-1]]


# --- Head counts read from the model's shared config ---------------------------------------------------------
# Phi-3's attention splits its fused qkv_proj outputs at `self.config.num_attention_heads × head_dim`, the config
# every block shares: a block whose heads export removed gets a config of its own with its counts, and keeps them
# in a string attribute (`"num_attention_heads=2,num_key_value_heads=1"`, a scalar `symopt.layout` records), from
# which `symopt.from_pretrained` gives the rebuilt block its own config again.
CONFIG_HEADS = "symopt_config_heads"


def set_own_config_counts(block: nn.Module, counts: dict[str, int] | str) -> None:
    """Give ``block`` a copy of its ``config`` with ``counts`` (``{field: value}``, or the `CONFIG_HEADS` string)
    set, and record them in its `CONFIG_HEADS` attribute.

    Examples:
        >>> import types, torch
        >>> shared = types.SimpleNamespace(num_attention_heads=4)
        >>> block = torch.nn.Module()
        >>> block.config = shared
        >>> set_own_config_counts(block, {"num_attention_heads": 2})
        >>> block.config.num_attention_heads, shared.num_attention_heads, block.symopt_config_heads
        (2, 4, 'num_attention_heads=2')
    """
    import copy

    if isinstance(counts, str):
        counts = {field: int(value) for field, value in (item.split("=") for item in counts.split(","))}
    own = copy.deepcopy(block.config)
    for field, value in counts.items():
        setattr(own, field, value)
    block.config = own
    setattr(block, CONFIG_HEADS, ",".join(f"{field}={value}" for field, value in counts.items()))


# What `symopt.layout.rebuild` does after setting one of these attributes on a module of a rebuilt model: the hooks
# and the own config they stand for come back with them.
ON_REBUILD = {ALIBI_HEADS: lambda module, value: install_alibi_rows(module),
              POSITION_BIAS_HEADS: lambda module, value: install_position_bias_rows(module),
              CONFIG_HEADS: set_own_config_counts}
