"""A tiny transformer language model on a generated corpus, with tied input / output embeddings
(``symopt.tie``) and low-rank attention (``symopt.low_rank`` on each head's bilinear score form
``M = W_Q W_Kᵀ``, so the factors *are* the query / key projections and the decay, their nuclear norm,
chooses the head dimension).

The corpus comes from a random second-order Markov source over 16 tokens (each pair of tokens has
two likely successors), so the best possible loss — its conditional entropy — is known.
Optimisers: AdamW (decoupled decay 0.01) for the unconstrained weights, Adam with coupled decay for
symopt's factors (AdamW's decoupled decay would not induce the penalties).

    python examples/tiny_transformer_lm.py [--steps 1500]

Prints validation loss against the entropy floor, parameters, the rank of each score form and the
gap between the tied embeddings, for the constrained model and the same model without constraints.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import symopt

VOCAB, CONTEXT, DIM, HEADS = 16, 32, 32, 2


def corpus(sequences: int, seed: int = 0):
    """Token sequences from a fixed random order-2 source, and the source's conditional entropy."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, VOCAB, (VOCAB, VOCAB, 2), generator=g)
    probs = torch.tensor([0.75, 0.25])
    tokens = torch.empty(sequences, CONTEXT + 1, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, VOCAB, (sequences, 2), generator=g)
    for t in range(2, CONTEXT + 1):
        choice = torch.multinomial(probs, sequences, replacement=True, generator=g)
        tokens[:, t] = successors[tokens[:, t - 2], tokens[:, t - 1], choice]
    same = successors[..., 0] == successors[..., 1]  # both successors equal: a certain next token
    entropy = float((~same).float().mean()) * -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    return tokens, entropy


class BilinearHead(nn.Module):
    """One causal attention head whose scores are ``x M xᵀ/√d`` with a free ``M`` (d×d)."""

    def __init__(self):
        super().__init__()
        self.score = nn.Parameter(torch.randn(DIM, DIM) / DIM)
        self.value = nn.Linear(DIM, DIM // HEADS, bias=False)

    def forward(self, x):
        scores = x @ self.score @ x.transpose(1, 2) / DIM ** 0.5
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ self.value(x)


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.position = nn.Parameter(0.1 * torch.randn(CONTEXT, DIM))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(DIM), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.heads = nn.ModuleList(BilinearHead() for _ in range(HEADS))
        self.mix = nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(self.embed.weight)  # start tied

    def forward(self, ids):
        x = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.norm1(x)
        x = x + self.mix(torch.cat([head(h) for head in self.heads], dim=-1))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm3(x))


def constrain(model: TinyLM, rank_strength: float, tie_strength: float) -> None:
    for i in range(HEADS):
        symopt.low_rank(model, f"heads.{i}.score", strength=rank_strength)
    symopt.tie(model, ["embed.weight", "head.weight"], strength=tie_strength)


def optimisers(model, lr):
    groups = symopt.param_groups(model, lr=lr, weight_decay=0.01)
    factors = [g for g in groups if "symopt_strength" in g]  # coupled decay = the induced penalties
    rest = [g for g in groups if "symopt_strength" not in g]
    opts = [torch.optim.AdamW(rest, lr=lr)]
    if factors:
        opts.append(torch.optim.Adam(factors, lr=lr))
    return opts


def loss_on(model, tokens):
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def train(model, train_tokens, steps, batch=64, lr=3e-3):
    opts = optimisers(model, lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = torch.randint(0, len(train_tokens), (batch,), generator=g)
        for opt in opts:
            opt.zero_grad()
        loss_on(model, train_tokens[rows]).backward()
        for opt in opts:
            opt.step()
    return model


def describe(model, val_tokens, tol=1e-4):
    with torch.no_grad():
        val = float(loss_on(model, val_tokens))
        ranks = [int((torch.linalg.svdvals(h.score) > tol).sum()) for h in model.heads]
        gap = float((model.embed.weight - model.head.weight).abs().max())
    return val, ranks, gap


def main(steps: int = 1500, sequences: int = 2000) -> dict:
    tokens, entropy = corpus(sequences + 200)
    train_tokens, val_tokens = tokens[:sequences], tokens[sequences:]
    rows = {}
    plain = train(TinyLM(), train_tokens, steps)
    rows["plain (untied, full M)"] = (*describe(plain, val_tokens), sum(p.numel() for p in plain.parameters()))
    model = TinyLM()
    constrain(model, rank_strength=1e-2, tie_strength=1e-2)
    train(model, train_tokens, steps)
    val, ranks, gap = describe(model, val_tokens)
    compact = symopt.export(model, tol=1e-4, force=True)  # snap: exact ties and ranks
    stored = (sum(p.numel() for p in compact.parameters()) - compact.head.weight.numel()  # one tied matrix
              - sum(max(0, DIM * DIM - r * 2 * DIM) for r in ranks))  # M stored as rank-r factors where smaller
    rows["symopt (tied, low-rank M)"] = (float(loss_on(compact, val_tokens).detach()), ranks, gap, stored)
    print(f"tiny transformer LM, {VOCAB} tokens, context {CONTEXT}, d={DIM}, {HEADS} heads, {steps} steps; "
          f"entropy floor {entropy:.4f} nats\n")
    print(f"{'model':<28}{'val loss':>10}{'score ranks':>13}{'max|E − H|':>12}{'params':>8}")
    for name, (val, ranks, gap, params) in rows.items():
        print(f"{name:<28}{val:>10.4f}{str(ranks):>13}{gap:>12.1e}{params:>8}")
    rows["entropy"] = entropy
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    main(parser.parse_args().steps)
