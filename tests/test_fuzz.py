"""A seeded random fuzz of registration and assignment (slow suite): random verbs, shapes (empty, 0-d,
1-d to 4-d), dtypes (half to double, int, complex), devices (cpu, meta), values (with NaN / Inf), options
(strengths that are negative, NaN, strings, budgets too large) and assignments afterwards. Every call
either works or raises a clean ValueError / TypeError that leaves the module as it was; anything else
is a crash. docs/robustness.md quotes the counts of ``python tests/test_fuzz.py``."""

from __future__ import annotations

import collections
import random
import sys

import pytest
import torch
from torch import nn

import symopt

CONFIGURATIONS = 1000


class Holder(nn.Module):
    def __init__(self, tensors):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_parameter(f"p{i}", nn.Parameter(t, requires_grad=t.is_floating_point() or t.is_complex()))


def _value(rng: random.Random, shape, dtype, device):
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    if dtype.is_floating_point or dtype.is_complex:
        value = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if value.numel() and rng.random() < 0.15:
            value.view(-1)[rng.randrange(value.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        return value
    return torch.randint(-3, 4, shape, generator=gen, dtype=dtype)


def _strength(rng: random.Random):
    return rng.choice([None, 1e-3, 0.5, 2.0, -1.0, 0.0, float("nan"), "auto", "big", True])


def _call(rng: random.Random, model: Holder, shape):
    verb = rng.choice(["sparse", "group_sparse", "low_rank", "subspace", "fixed_zeros", "nonnegative", "tie"])
    strength = _strength(rng)
    numel = 1
    for s in shape:
        numel *= s
    if verb == "sparse":
        extra = rng.choice([{}, {"max_nonzero": rng.randrange(-1, numel + 3)}, {"density": rng.choice([0.1, 1.5, 0.0])}])
        return verb, lambda: symopt.sparse(model, "p0", strength, **extra)
    if verb == "nonnegative":
        return verb, lambda: symopt.nonnegative(model, "p0", strength)
    if verb == "group_sparse":
        dim = rng.choice([None, 0, 1, -1, 5])
        return verb, lambda: symopt.group_sparse(model, "p0", dim=dim, strength=strength)
    if verb == "low_rank":
        return verb, lambda: symopt.low_rank(model, "p0", strength, max_rank=rng.choice([None, 1, 2, 100, 0]))
    gen = torch.Generator().manual_seed(rng.randrange(2**31))  # the fuzz's own stream, not torch's global one
    if verb == "subspace":
        cols = numel if rng.random() < 0.8 else numel + 1
        A = torch.randn(rng.randrange(1, 3), max(cols, 1), generator=gen, dtype=torch.float64)
        return verb, lambda: symopt.subspace(model, "p0", A, strength="auto" if strength is None else strength)
    if verb == "fixed_zeros":
        mask = torch.rand(shape, generator=gen) < 0.5 if rng.random() < 0.8 else torch.zeros(shape)
        return verb, lambda: symopt.fixed_zeros(model, "p0", mask, strength="auto" if strength is None else strength)
    return verb, lambda: symopt.tie(model, rng.choice([["p0", "p1"], ["p0", "p0"], ["p0", "nope"], "p0"]),
                                    strength="auto" if strength is None else strength)


def _state(model):
    return {k: (v.shape, v.dtype, v.device, v.detach().clone() if v.device.type != "meta" else None)
            for k, v in model.state_dict().items()}


def _same(before, after) -> bool:
    if before.keys() != after.keys():
        return False
    for key, (shape, dtype, device, value) in before.items():
        s, d, dev, v = after[key]
        if (s, d, dev) != (shape, dtype, device):
            return False
        if value is not None and not torch.equal(value.nan_to_num(), v.nan_to_num()):
            return False
    return True


def run(configurations: int = CONFIGURATIONS, seed: int = 0):
    """Counts of the outcomes, and the crashes (what raised something else, or changed a refused module)."""
    rng = random.Random(seed)
    counts, crashes = collections.Counter(), []
    for case in range(configurations):
        shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 5)))
        dtype = rng.choice([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.complex64])
        device = rng.choice(["cpu"] * 9 + ["meta"])
        model = Holder([_value(rng, shape, dtype, device), _value(rng, shape, dtype, device)])
        verb, call = _call(rng, model, shape)
        before = _state(model)
        try:
            call()
        except (ValueError, TypeError) as err:
            counts[f"refused ({type(err).__name__})"] += 1
            if not _same(before, _state(model)) or symopt.list_constraints(model):
                crashes.append((case, verb, shape, dtype, device, f"refused but changed the module: {err}"))
            continue
        except Exception as err:  # noqa: BLE001 - what the fuzz is looking for
            counts["crashed"] += 1
            crashes.append((case, verb, shape, dtype, device, f"{type(err).__name__}: {err}"))
            continue
        counts["registered"] += 1
        # An assignment afterwards: right, wrong shape, or NaN.
        member = symopt.list_constraints(model)[0].members[0]
        current = member.value.detach()
        new = rng.choice([current.clone(), torch.zeros(shape + (2,), dtype=current.dtype),
                          torch.full_like(current, float("nan"))])
        before = _state(model)
        try:
            with torch.no_grad():
                setattr(member.module, member.tensor, new)
            counts["assignment accepted"] += 1
        except (ValueError, TypeError):
            counts["assignment refused"] += 1
            if not _same(before, _state(model)):
                crashes.append((case, verb, shape, dtype, device, "a refused assignment changed the module"))
        except Exception as err:  # noqa: BLE001
            counts["crashed"] += 1
            crashes.append((case, verb, shape, dtype, device, f"assignment: {type(err).__name__}: {err}"))
    return counts, crashes


@pytest.mark.slow
def test_fuzz_registration_and_assignment():
    counts, crashes = run()
    assert not crashes, "\n".join(map(str, crashes[:20]))
    assert counts["registered"] > 50 and sum(v for k, v in counts.items() if k.startswith("refused")) > 300


if __name__ == "__main__":
    counts, crashes = run(int(sys.argv[1]) if len(sys.argv) > 1 else CONFIGURATIONS)
    print(dict(counts))
    for crash in crashes[:40]:
        print(crash)
