"""Coverage of real layers: Conv1d / Conv2d (low rank on the reshaped kernel, group sparsity on output
channels), Embedding, nn.MultiheadAttention, a hand-written attention whose bilinear form Q·Kᵀ is
low rank, tied input / output embeddings, a bare Parameter. Each: registration keeps the value,
training reaches the structure, export agrees with the trained model."""

import pytest
import torch
from torch import nn

import symopt

DT = torch.float64


def _fit(model, inputs, target, steps=300, lr=0.05):
    opt = torch.optim.SGD(symopt.param_groups(model, lr=lr), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        (model(inputs) - target).square().mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("conv, shape", [(nn.Conv1d, (8, 3, 12)), (nn.Conv2d, (8, 3, 7, 7))])
def test_conv_low_rank_kernel(conv, shape):
    """LowRank on a conv kernel acts on its (out, in·k…) matrix; a rank-1 teacher is recovered exactly."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=DT)
    teacher = nn.Sequential(conv(3, 6, 3, padding=1), nn.Tanh(), conv(6, 4, 3)).double()
    with torch.no_grad():
        U, S, Vh = torch.linalg.svd(teacher[2].weight.reshape(4, -1), full_matrices=False)
        teacher[2].weight.copy_((3 * S[0] * U[:, :1] @ Vh[:1]).reshape(teacher[2].weight.shape))
        teacher[0].weight.mul_(3)
    target = teacher(x).detach()
    net = nn.Sequential(conv(3, 6, 3, padding=1), nn.Tanh(), conv(6, 4, 3)).double()
    before = net(x).detach()
    symopt.low_rank(net, "2.weight", strength=0.03)
    assert torch.allclose(net(x), before, atol=1e-12)  # registration keeps the value
    _fit(net, x, target, steps=600)
    sigma = torch.linalg.svdvals(net[2].weight.detach().reshape(4, -1))
    assert float(sigma[1]) < 1e-8 < float(sigma[0]), sigma  # rank 1, exactly
    assert float((net(x) - target).square().mean()) < 0.05 * float(target.square().mean())
    small = symopt.export(net, mode="compressed", tol=1e-6)
    assert small[2][0].out_channels == 1
    assert torch.allclose(small(x), net(x), atol=1e-6, rtol=0)


def test_group_sparse_conv_channels_die_and_vanish_on_export():
    torch.manual_seed(0)
    x = torch.randn(16, 2, 8, 8, dtype=DT)
    teacher = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 1, 3)).double()
    with torch.no_grad():  # the teacher uses 3 channels
        teacher[0].weight[3:] = 0
        teacher[0].weight[:3] *= 4
        teacher[2].weight.mul_(4)
    target = teacher(x).detach()
    net = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 1, 3)).double()
    symopt.group_sparse(net, "0.weight", dim=0, strength=0.1)
    _fit(net, x, target, steps=600)
    norms = net[0].weight.detach().reshape(8, -1).norm(dim=1)
    dead = int((norms < 1e-6).sum())
    assert dead >= 2, norms
    small = symopt.export(net, mode="compressed", tol=1e-6)
    assert small[0].out_channels == 8 - dead and small[2].in_channels == 8 - dead
    assert torch.allclose(small(x), symopt.export(net, tol=1e-6)(x), atol=1e-10, rtol=0)


def test_embedding_sparse_rows_and_low_rank():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (64,))
    target = torch.randn(64, 8, dtype=DT)
    emb = nn.Embedding(30, 8).double()
    before = emb(ids).detach()
    symopt.group_sparse(emb, "weight", dim=0, strength=0.02)  # whole embedding rows switch off
    assert torch.allclose(emb(ids), before, atol=1e-12)
    _fit(emb, ids, target * 0.1, steps=300, lr=0.5)
    unused = sorted(set(range(30)) - set(ids.tolist()))
    assert unused and float(emb.weight[unused].abs().max()) < 1e-6  # rows never seen die exactly
    emb2 = nn.Embedding(30, 8).double()
    symopt.low_rank(emb2, "weight", strength=0.05)
    _fit(emb2, ids, target, steps=300, lr=0.5)
    assert int((torch.linalg.svdvals(emb2.weight.detach()) > 1e-6).sum()) < 8


def test_multihead_attention_projections():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    x = torch.randn(4, 5, 8, dtype=DT)
    before = mha(x, x, x)[0].detach()
    symopt.low_rank(mha, "out_proj.weight", strength=1e-2)
    symopt.group_sparse(mha, "in_proj_weight", dim=1, strength=1e-2)  # input features of Q, K and V together
    out, _ = mha(x, x, x)
    assert torch.allclose(out, before, atol=1e-12)
    out.square().mean().backward()
    mha.eval()
    with torch.no_grad():  # inference path of MultiheadAttention reads the parametrized tensors too
        assert torch.allclose(mha(x, x, x)[0], before, atol=1e-12)
    plain = nn.MultiheadAttention(8, 2, batch_first=True).double()
    plain.load_state_dict(symopt.export(mha).state_dict())
    plain.eval()
    assert torch.allclose(plain(x, x, x)[0], before, atol=1e-12)


class BilinearAttention(nn.Module):
    """Single-head attention with the score form written as one matrix: ``scores = x M xᵀ/√d``.

    ``M = W_Q W_Kᵀ`` is what queries and keys compute together; ``symopt.low_rank(…, "score")`` makes
    its factors the query / key projections and the decay their nuclear norm, so the head dimension
    is learned instead of chosen."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Parameter(torch.randn(dim, dim, dtype=DT) / dim)
        self.value = nn.Linear(dim, dim, bias=False).double()

    def forward(self, x):
        scores = x @ self.score @ x.transpose(-1, -2) / x.shape[-1] ** 0.5
        return torch.softmax(scores, dim=-1) @ self.value(x)


def test_hand_written_attention_learns_a_low_rank_score_form():
    torch.manual_seed(0)
    dim = 8
    teacher = BilinearAttention(dim)
    with torch.no_grad():
        q, k = torch.randn(dim, 2, dtype=DT), torch.randn(dim, 2, dtype=DT)
        teacher.score.copy_(q @ k.T)  # the teacher's heads use rank 2
    x = torch.randn(32, 6, dim, dtype=DT)
    target = teacher(x).detach()
    student = BilinearAttention(dim)
    with torch.no_grad():
        student.value.weight.copy_(teacher.value.weight)
    symopt.low_rank(student, "score", strength=2e-2)
    U, V = symopt.list_constraints(student)[0].members[0].factors
    assert U.shape == V.shape == (dim, dim)  # the factors are W_Q and W_K
    _fit(student, x, target, steps=800, lr=0.1)
    sigma = torch.linalg.svdvals(student.score.detach())
    assert float(sigma[2]) < 1e-6 * float(sigma[1]), sigma  # rank 2 like the teacher, exactly
    # the nuclear norm shrinks the two kept directions (bias of the penalty, not a misfit of rank)
    assert float((student(x) - target).square().mean()) < 0.4 * float(target.square().mean())


def test_tied_input_and_output_embeddings():
    torch.manual_seed(0)
    vocab, dim = 20, 6
    lm = nn.ModuleDict({"embed": nn.Embedding(vocab, dim), "head": nn.Linear(dim, vocab, bias=False)}).double()
    symopt.tie(lm, ["embed.weight", "head.weight"], strength="auto")
    ids = torch.randint(0, vocab, (40,))
    nxt = torch.roll(ids, -1)
    opt = torch.optim.SGD(symopt.param_groups(lm, lr=0.5), lr=0.5)
    for _ in range(1000):
        opt.zero_grad()
        nn.functional.cross_entropy(lm["head"](lm["embed"](ids)), nxt).backward()
        opt.step()
    gap = float((lm["embed"].weight - lm["head"].weight).abs().max())
    assert gap < 1e-8, gap  # exact penalty with λ above the multipliers: the two are one matrix
    dense = symopt.export(lm, tol=1e-6)
    assert torch.equal(dense["embed"].weight, dense["head"].weight)


def test_bare_parameter_in_a_custom_module():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.tensor([1.5, 0.01, -2.0, 0.02], dtype=DT))

        def forward(self, x):
            return x * self.gain

    m = Scale()
    symopt.sparse(m, "gain", strength=0.05)
    x = torch.randn(64, 4, dtype=DT)
    _fit(m, x, x * torch.tensor([1.5, 0.0, -2.0, 0.0], dtype=DT), steps=500, lr=0.2)
    assert torch.allclose(m.gain[[1, 3]], torch.zeros(2, dtype=DT), atol=1e-6)
    symopt.finalize(m, tol=1e-6)
    assert isinstance(m.gain, nn.Parameter) and m.gain[1] == 0 and m.gain[3] == 0
