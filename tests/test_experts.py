"""A mixture of experts' feed-forward neurons (transformers 5's fused expert tensors): a unit is one hidden neuron of one
expert, its gate and up rows (and bias entries) in the ``(experts, outputs, inputs)`` producer, indexed over two axes;
group sparsity over them is the group lasso whose groups are those rows, budgets land, and export narrows the fused
tensors to the widest expert's live neurons."""

import copy
import warnings

import pytest
import torch
from torch import nn

import symopt
from symopt import ExportWarning
from symopt._layers import expert_layout

DT = torch.float64


class Experts(nn.Module):
    """Experts stored as transformers 5 stores them (the attributes its ``use_experts_implementation`` sets), every
    token through every expert, weighted by a softmax router: a dense, differentiable stand-in."""

    def __init__(self, experts=3, width=5, hidden=4, gated=True, transposed=False, interleaved=False, bias=False):
        super().__init__()
        factor = 2 if gated else 1
        self.producer = "gate_up_proj" if gated else "up_proj"
        shape = (experts, hidden, factor * width) if transposed else (experts, factor * width, hidden)
        self.register_parameter(self.producer, nn.Parameter(torch.randn(shape, dtype=DT) / 2))
        self.down_proj = nn.Parameter(torch.randn((experts, width, hidden) if transposed else (experts, hidden, width),
                                                  dtype=DT) / 2)
        if bias:
            self.register_parameter(f"{self.producer}_bias", nn.Parameter(torch.randn(experts, factor * width, dtype=DT) / 4))
            self.down_proj_bias = nn.Parameter(torch.randn(experts, hidden, dtype=DT) / 4)
        self.has_gate, self.is_transposed, self.is_concatenated, self.has_bias = gated, transposed, not interleaved, bias
        self.intermediate_dim = width

    def hidden(self, x, e):
        """Expert e's hidden activations of the tokens ``x``."""
        W = getattr(self, self.producer)[e]
        h = x @ W if self.is_transposed else x @ W.T
        if self.has_bias:
            h = h + getattr(self, f"{self.producer}_bias")[e]
        if not self.has_gate:
            return torch.relu(h)
        gate, up = (h[:, 0::2], h[:, 1::2]) if not self.is_concatenated else h.chunk(2, dim=-1)
        return nn.functional.silu(gate) * up

    def forward(self, x, routing):
        out = 0
        for e in range(routing.shape[1]):
            D = self.down_proj[e]
            y = self.hidden(x, e) @ (D if self.is_transposed else D.T)
            if self.has_bias:
                y = y + self.down_proj_bias[e]
            out = out + routing[:, e:e + 1] * y
        return out


class Mixture(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.experts = Experts(**kwargs)
        self.router = nn.Linear(self.experts.down_proj.shape[2 if self.experts.is_transposed else 1],
                                self.experts.down_proj.shape[0]).double()

    def forward(self, x):
        return self.experts(x, torch.softmax(self.router(x), dim=-1))


LAYOUTS = {
    "Mixtral": dict(),
    "GPT-OSS": dict(transposed=True, interleaved=True, bias=True),
    "transposed": dict(transposed=True),
    "no gate": dict(gated=False),
}


def _neuron_norms(module: Experts) -> torch.Tensor:
    """‖(gate row, up row, their bias entries)‖ of every neuron of every expert, by hand: (experts, width)."""
    W = getattr(module, module.producer).detach()
    rows = W.transpose(1, 2) if module.is_transposed else W  # (experts, outputs, inputs)
    squares = rows.square().sum(dim=2)
    if module.has_bias:
        squares = squares + getattr(module, f"{module.producer}_bias").detach().square()
    width = module.intermediate_dim
    if not module.has_gate:
        return squares.sqrt()
    pairs = squares[:, 0::2] + squares[:, 1::2] if not module.is_concatenated else squares[:, :width] + squares[:, width:]
    return pairs.sqrt()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_unit_is_one_neuron_of_one_expert(layout):
    model = Mixture(**LAYOUTS[layout])
    found = expert_layout(model.experts)
    assert found is not None and (found.experts, found.width) == (3, 5)
    units = symopt.feed_forward_units(model)
    assert units == [[f"experts.{name}" for name in found.producers]]  # (the router is no feed-forward)
    expected = _neuron_norms(model.experts).reshape(-1)
    x = torch.randn(7, 4, dtype=DT)
    before = model(x).detach()
    handle = symopt.group_sparse(model, units[0], strength=1e-3)
    assert handle.constraint.units == 15
    assert torch.allclose(handle.constraint.unit_norms(handle.values()), expected, atol=1e-14)
    assert torch.allclose(model(x), before, atol=1e-13)  # (registration keeps every value)


def test_the_layout_is_not_guessed_where_the_shapes_do_not_say_it():
    square = Experts(width=2, hidden=4)  # (3, 4, 4) and (3, 4, 2): untransposed only
    for attribute in ("has_gate", "is_transposed", "is_concatenated", "has_bias"):
        delattr(square, attribute)
    assert expert_layout(square).transposed is False
    both = Experts(width=4, hidden=8)  # (3, 8, 8), (3, 8, 4) read either way? no: transposed needs (3, 4, 16)
    del both.is_transposed
    assert expert_layout(both).transposed is False
    biased = Experts(bias=True)
    del biased.is_transposed  # (transformers 4's GPT-OSS: biases, alternating rows, nothing saying so)
    assert expert_layout(biased) is None
    assert expert_layout(nn.Linear(3, 3)) is None


def _fit_by_sgd(model: Mixture, x, y, steps=1500):
    opt = torch.optim.SGD(symopt.param_groups(model), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model.experts.hidden_rows(x) - y) ** 2).sum(1).mean()).backward()
        opt.step()


@pytest.mark.parametrize("layout", ["Mixtral", "GPT-OSS", "transposed"])
def test_training_matches_the_group_lasso_of_cvxpy_over_expert_neurons(layout):
    """Least squares on every expert's producer outputs (a linear model of its weight and bias) + λ Σ over the
    (expert, neuron) groups of their rows' norm: the factored tensor trained by SGD reaches cvxpy's optimum, with
    dead neurons, on the row layout the experts say (gate and up rows concatenated, or alternating and transposed)."""
    cp = pytest.importorskip("cvxpy")
    model = Mixture(width=3, experts=2, **LAYOUTS[layout])
    experts, found = model.experts, expert_layout(model.experts)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=DT)
    truth = torch.randn(2, 6, 4, generator=g, dtype=DT)  # (experts, outputs, inputs)
    truth[0, found.kept_rows(torch.tensor([1]))] = 0.0  # expert 0's neuron 1, expert 1's neuron 2: no signal
    truth[1, found.kept_rows(torch.tensor([2]))] = 0.0
    y = torch.einsum("ni,eoi->neo", x, truth).reshape(50, -1) + 0.05 * torch.randn(50, 12, generator=g, dtype=DT)

    def rows(W):  # the producer as (experts, outputs, inputs)
        return W.transpose(1, 2) if experts.is_transposed else W

    def hidden_rows(inputs):
        out = torch.einsum("ni,eoi->neo", inputs, rows(getattr(experts, experts.producer)))
        if experts.has_bias:
            out = out + getattr(experts, f"{experts.producer}_bias")
        return out.reshape(inputs.shape[0], -1)

    experts.hidden_rows = hidden_rows
    lam = 0.2
    symopt.group_sparse(model, [f"experts.{n}" for n in found.producers], strength=lam)
    _fit_by_sgd(model, x, y)

    Wv = [cp.Variable((6, 4)) for _ in range(2)]
    bv = [cp.Variable(6) for _ in range(2)] if experts.has_bias else [0, 0]
    fitted = cp.hstack([x.numpy() @ Wv[e].T + (cp.reshape(bv[e], (1, 6), order="C") if experts.has_bias else 0)
                        for e in range(2)])
    penalty = 0
    for e in range(2):
        for j in range(3):
            index = found.kept_rows(torch.tensor([j])).tolist()
            parts = [cp.vec(Wv[e][index, :], order="C")] + ([bv[e][index]] if experts.has_bias else [])
            penalty = penalty + cp.norm(cp.hstack(parts), 2)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(fitted - y.numpy()) / 50 + lam * penalty)).solve()
    reference = torch.stack([torch.tensor(W.value) for W in Wv])
    trained = rows(getattr(experts, experts.producer)).detach()
    assert torch.allclose(trained, reference, atol=3e-4)
    neurons = _neuron_norms(experts)
    assert float(neurons[0, 1]) < 1e-6 and float(neurons[1, 2]) < 1e-6  # (dead at the optimum, and here)
    if experts.has_bias:
        assert torch.allclose(getattr(experts, f"{experts.producer}_bias").detach(),
                              torch.stack([torch.tensor(b.value) for b in bv]), atol=3e-4)


def _adam(model: Mixture, steps: int) -> torch.Tensor:
    """``steps`` Adam steps (lr 1e-2, symopt's decay groups) on one fixed regression batch; returns its inputs."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 4, generator=g, dtype=DT), torch.randn(64, 4, generator=g, dtype=DT)
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2))
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return x


def _train_to_budget(model: Mixture, budget: int, steps: int = 60):
    handle = symopt.group_sparse(model, symopt.feed_forward_units(model)[0], max_groups=budget, total_steps=steps)
    return handle, _adam(model, steps)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_budget_over_expert_neurons_lands_and_export_narrows_every_expert(layout):
    model = Mixture(width=24, **LAYOUTS[layout])
    handle, x = _train_to_budget(model, budget=9)
    norms = _neuron_norms(model.experts)
    assert int((norms > 0).sum()) == 9  # the budget, exactly
    live = int((norms > 0).sum(dim=1).max())
    dense = symopt.export(model)  # (default arguments: the landed budget holds)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        small = symopt.export(model, mode="compressed", example_input=(x,))
    width = -(-live // 8) * 8  # the widest expert's live neurons, rounded up for grouped matrix products
    assert width < 24 and small.experts.intermediate_dim == width
    found = expert_layout(small.experts)
    assert (found.width, found.experts) == (width, 3)
    assert torch.allclose(small(x), dense(x), atol=1e-12)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    assert torch.equal(_neuron_norms(small.experts).gt(0).sum(dim=1), norms.gt(0).sum(dim=1))  # each its own


def test_a_string_names_the_expert_neurons_and_a_budget_counts_them():
    model = Mixture(width=6)
    handle = symopt.group_sparse(model, "experts.gate_up_proj", max_groups=4)
    assert handle.constraint.units == 18 and handle.constraint.budget == 4


def test_export_keeps_neurons_whose_bias_is_not_zero_and_says_why():
    model = Mixture(width=16, bias=True)
    handle = symopt.group_sparse(model, "experts.gate_up_proj", strength=1e-3)  # (the bias left out of the group)
    with torch.no_grad():
        handle.constraint.gates[:40] = 0.0  # neurons 0..12 of expert 0, 0..12 of expert 1, 0..13 of expert 2 dead
    with pytest.warns(ExportWarning, match=r"dead expert neuron\(s\) kept: their bias entries are not 0"):
        small = symopt.export(model, mode="compressed", example_input=(torch.randn(5, 4, dtype=DT),))
    assert small.experts.intermediate_dim == 16


def test_export_undoes_a_narrowing_that_moves_the_outputs():
    """An activation that does not map 0 to 0 (a sigmoid): a dead neuron still adds its down column's share, and
    export's check of the outputs keeps every neuron."""
    model = Mixture(width=16, gated=False)
    model.experts.hidden = lambda x, e, self=model.experts: torch.sigmoid(x @ self.up_proj[e].T)
    handle = symopt.group_sparse(model, "experts.up_proj", strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[:40] = 0.0
    with pytest.warns(ExportWarning, match="expert neurons kept"):
        small = symopt.export(model, mode="compressed", example_input=(torch.randn(5, 4, dtype=DT),))
    assert small.experts.up_proj.shape == (3, 16, 4)


@pytest.mark.parametrize("dim, match", [
    ((1, 0), "must be distinct and in increasing order"),
    ((0, 0), "must be distinct and in increasing order"),
    ((0, 5), "out of range"),
])
def test_bad_unit_axes_change_nothing(dim, match):
    model = Mixture()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        symopt.group_sparse(model, ["experts.gate_up_proj", "experts.down_proj"], dim=[dim, 2])
    assert symopt.list_constraints(model) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_shared_indices_are_refused_over_two_axes():
    from symopt.constraints.unit_groups import SHARED, UnitGroups

    model = Mixture()
    ids = torch.arange(30)
    ids[3] = SHARED
    with pytest.raises(ValueError, match="units over several axes do not take"):
        symopt.constrain(model, ["experts.gate_up_proj"], UnitGroups([(0, 1)], 1e-3, unit_maps=[ids]))
    assert symopt.list_constraints(model) == []


@pytest.mark.parametrize("layout", ["Mixtral", "GPT-OSS"])
def test_equal_experts_each_keep_their_share_and_export_to_exactly_that_width(layout):
    model = Mixture(width=24, **LAYOUTS[layout])
    names = symopt.feed_forward_units(model)[0]
    handle = symopt.group_sparse(model, names, max_groups=24, total_steps=60, equal_experts=True)
    x = _adam(model, 60)
    assert _neuron_norms(model.experts).gt(0).sum(dim=1).tolist() == [8, 8, 8]
    dense = symopt.export(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        small = symopt.export(model, mode="compressed", example_input=(x,))
    assert expert_layout(small.experts).width == 8 and handle.constraint.equal_parts == 3
    assert torch.allclose(small(x), dense(x), atol=1e-12)


def test_equal_experts_keep_the_largest_of_each_expert_at_the_landing():
    model = Mixture(width=4)
    handle = symopt.group_sparse(model, "experts.gate_up_proj", max_groups=3, equal_experts=True)
    norms = torch.tensor([9.0, 8, 7, 6, 0.1, 0.2, 0.3, 0.4, 5, 1, 1, 1], dtype=DT)
    assert handle.constraint.keep_mask(norms).nonzero().reshape(-1).tolist() == [0, 7, 8]  # (not 0, 1, 2)


@pytest.mark.parametrize("names, kwargs, match", [
    (["experts.gate_up_proj"], dict(max_groups=10, equal_experts=True), "a multiple of the 3 experts"),
    (["experts.gate_up_proj"], dict(strength=1e-3, equal_experts=True), "give max_groups="),
    (["router.weight", "router.bias"], dict(max_groups=2, equal_experts=True), "mixtures of experts' producer tensors"),
    ("router.weight", dict(max_groups=2, equal_experts=True), "mixtures of experts' producer tensors"),
])
def test_bad_equal_experts_change_nothing(names, kwargs, match):
    model = Mixture()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        symopt.group_sparse(model, names, **kwargs)
    assert symopt.list_constraints(model) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_equal_experts_spare_each_expert_its_share_on_the_ramp():
    """The trimmed decay of the ramp spares the units the landing will keep: each expert's largest share, even where
    one expert's weights are three times the others' (a ranking over all of them would spare that expert whole)."""
    model = Mixture(width=24)
    with torch.no_grad():
        model.experts.gate_up_proj[0] *= 3
    handle = symopt.group_sparse(model, "experts.gate_up_proj", max_groups=24, total_steps=100, equal_experts=True)
    _adam(model, 30)
    spared = (handle.constraint.policy.dropped_atoms() == 0).view(3, 24).sum(dim=1).tolist()
    assert max(spared) - min(spared) <= 1 and 24 < sum(spared) < 72


def _two_mixtures(**kwargs) -> nn.Sequential:
    torch.manual_seed(0)
    first, second = Mixture(**kwargs), Mixture(**kwargs)
    return nn.Sequential(first, second)


def test_one_budget_over_two_layers_of_equal_experts_lets_training_share_it_between_the_layers():
    """`equal_experts=True` over two layers (one list each): every expert of a layer keeps as many neurons as its
    layer's others, the layers' counts add up to the budget, each keeps some, and export narrows each layer's fused
    tensors to its count (rounded up to 8)."""
    model = _two_mixtures(width=24)
    units = symopt.feed_forward_units(model)
    assert units == [["0.experts.gate_up_proj"], ["1.experts.gate_up_proj"]]
    handle = symopt.group_sparse(model, units, max_groups=3 * 16, total_steps=60, equal_experts=True)
    x = _adam(model, 60)
    counts = [_neuron_norms(layer.experts).gt(0).sum(dim=1).tolist() for layer in model]
    assert all(len(set(c)) == 1 and c[0] >= 1 for c in counts) and sum(c[0] for c in counts) == 16, counts
    dense = symopt.export(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        small = symopt.export(model, mode="compressed", example_input=(x,))
    assert [expert_layout(layer.experts).width for layer in small] == [min(24, -(-c[0] // 8) * 8) for c in counts]
    assert torch.allclose(small(x), dense(x), atol=1e-12) and handle.constraint.equal_parts == 3


def test_equal_slots_rank_each_layers_rth_neurons_by_their_mean_over_the_experts():
    model = _two_mixtures(width=3)
    handle = symopt.group_sparse(model, symopt.feed_forward_units(model), max_groups=9, equal_experts=True)
    first = torch.tensor([9.0, 1, 1, 8, 1, 1, 7, 6, 1], dtype=DT)  # (3 experts of 3: slot 2's mean is 8/3)
    second = torch.tensor([5.0, 4, 0, 5, 4, 0, 5, 4, 0], dtype=DT)  # (slot 2's mean is 4: it beats the first's)
    keep = handle.constraint.keep_mask(torch.cat([first, second])).view(2, 3, 3)
    assert keep.sum(dim=2).tolist() == [[1, 1, 1], [2, 2, 2]]
    assert keep[0].nonzero()[:, 1].tolist() == [0, 0, 0] and keep[1, :, 2].sum() == 0


def test_equal_experts_over_layers_of_different_expert_counts_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(Mixture(), Mixture(experts=2))
    with pytest.raises(ValueError, match="the same number of experts in each"):
        symopt.group_sparse(model, symopt.feed_forward_units(model), max_groups=12, equal_experts=True)
    assert symopt.list_constraints(model) == []
