"""Hugging Face round trips (transformers is optional: these tests skip without it): a constrained model
refuses the plain save_pretrained that would lose its weights, symopt.save_pretrained / from_pretrained
keep values and factors bit-exactly, and exports reload with the model class's own from_pretrained."""

import warnings

import pytest
import torch

import symopt

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

LOW_RANK = "bert.encoder.layer.0.intermediate.dense.weight"


def _bert():
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def _constrain(model):
    symopt.low_rank(model, LOW_RANK, strength=1e-3, max_rank=16)
    symopt.sparse(model, "classifier.weight", strength=1e-3)
    symopt.group_sparse(model, "bert.encoder.layer.1.output.dense.weight", dim=0, strength=1e-3)


IDS = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(0))


def _train_a_little(model):
    opt = torch.optim.SGD(symopt.param_groups(model), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        model(IDS, labels=torch.tensor([0, 2])).loss.backward()
        opt.step()


def test_plain_save_pretrained_refuses_while_constraints_exist(tmp_path):
    model = _bert()
    _constrain(model)
    with pytest.raises(ValueError, match="this model has symopt constraints.*symopt.save_pretrained"):
        model.save_pretrained(tmp_path / "lost")
    assert not (tmp_path / "lost").exists()
    symopt.finalize(model, force=True)  # no constraints left: the model's own save_pretrained again
    model.save_pretrained(tmp_path / "plain")
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_symopt_round_trip_keeps_values_and_factors_bit_exactly(tmp_path):
    model = _bert()
    _constrain(model)
    _train_a_little(model)
    logits = model(IDS).logits.detach()
    symopt.save_pretrained(model, tmp_path)
    assert len(symopt.list_constraints(model)) == 3  # the model itself is untouched
    plain = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()  # anyone can load it
    # (the same θ, bit for bit, below; the logits to rounding: symopt computes a layer through its factors where
    # that is cheaper, (x ωᵀ)·s for the group-sparse one, the plain model x (s·ω)ᵀ, and which way rounds to the
    # same float32 depends on the CPU's kernels: equal on an AMD EPYC, one ulp apart on an Intel Xeon)
    torch.testing.assert_close(plain(IDS).logits, logits, rtol=1e-6, atol=1e-7)
    for key, value in plain.state_dict().items():  # every tensor the plain model loaded is symopt's value exactly
        prefix, _, leaf = key.rpartition(".")
        assert torch.equal(value, getattr(model.get_submodule(prefix), leaf).detach()), key
    back = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path, constrain=_constrain).eval()
    assert torch.equal(back(IDS).logits, logits) and len(symopt.list_constraints(back)) == 3
    for (key, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), key
    _train_a_little(model)  # resuming gives the same next steps
    _train_a_little(back)
    assert torch.equal(back(IDS).logits, model(IDS).logits)


def test_from_pretrained_refuses_constraints_that_do_not_match(tmp_path):
    model = _bert()
    _constrain(model)
    symopt.save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="do not match the saved ones"):
        symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path,
                               constrain=lambda m: symopt.sparse(m, "classifier.weight", strength=1e-3))


def test_dense_export_reloads_with_the_class_from_pretrained_bit_exactly(tmp_path):
    model = _bert()
    _constrain(model)
    _train_a_little(model)
    dense = symopt.export(model, force=True)
    dense.save_pretrained(tmp_path)
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(again(IDS).logits, dense.eval()(IDS).logits)


def test_safetensors_plain_checkpoint_loads_into_a_constrained_model(tmp_path):
    from safetensors.torch import load_file, save_file
    model = _bert()
    expected = model(IDS).logits.detach()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "plain.safetensors")
    other = _bert()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    _constrain(other)
    other.load_state_dict(load_file(tmp_path / "plain.safetensors"))  # plain keys into the factors
    assert torch.allclose(other(IDS).logits, expected, atol=1e-5)


def test_save_pretrained_needs_a_hugging_face_model(tmp_path):
    with pytest.raises(TypeError, match="has no save_pretrained"):
        symopt.save_pretrained(torch.nn.Linear(2, 2), tmp_path)


def test_a_head_budget_on_a_grouped_query_llama_lands_and_export_removes_its_heads():
    """Hugging Face's Llama blocks keep no head count (they reshape by head_dim) and use grouped-query
    attention (4 query heads on 2 k/v heads here): a head budget over both layers counts k/v heads, lands
    exactly under Adam, and export removes each layer's dead k/v heads with their query heads, checked on the
    model's own output (a ModelOutput beside its key/value cache) with the same logits."""
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      attention_bias=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double()
    blocks = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    steps = 60
    handle = symopt.attention_heads(model, blocks, max_heads=2, total_steps=steps)
    assert handle.constraint.set_units == [2, 2]
    ids = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    norms = handle.constraint.unit_norms([v.detach() for v in handle.values()])
    assert int((norms > 0).sum()) == 2
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", symopt.ExportWarning)
        small = symopt.export(model, mode="compressed", example_input=ids[:2])
    kept = [int((part > 0).sum()) for part in norms.split(2)]
    for layer, units in zip(small.model.layers, kept):
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (16 * units, 8 * units,
                                                                                                 16 * units)
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, model(ids).logits, atol=1e-10)
