"""Hugging Face round trips (transformers is optional: these tests skip without it): a constrained model
refuses the plain save_pretrained that would lose its weights, symopt.save_pretrained / from_pretrained
keep values and factors bit-exactly, and exports reload with the model class's own from_pretrained."""

import copy
import json
import warnings

import pytest
import torch
from torch import Tensor

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


def test_plain_save_pretrained_of_a_constrained_model_keeps_the_values_and_the_exact_state(tmp_path):
    """The model's own save_pretrained, constraints registered: its weights file holds every constrained weight's
    value under its plain name beside the factors and the constraints' state. from_pretrained (no symopt) loads the
    values exactly; a model with the same constraints loads the file with a strict load_state_dict (the values set
    aside) and holds the same state; after finalize it is the model's own save_pretrained again."""
    from safetensors.torch import load_file

    model = _bert()
    _constrain(model)
    _train_a_little(model)
    model.save_pretrained(tmp_path / "both")
    plain = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "both").eval()
    for key, value in plain.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        assert torch.equal(value, getattr(model.get_submodule(prefix), leaf).detach()), key
    again = _bert()
    _constrain(again)
    again.load_state_dict(load_file(tmp_path / "both" / "model.safetensors"))  # (strict: nothing left over)
    for (key, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key
    symopt.finalize(model, force=True)  # no constraints left: the model's own save_pretrained again
    model.save_pretrained(tmp_path / "plain")
    assert not any(".parametrizations." in key for key in load_file(tmp_path / "plain" / "model.safetensors"))
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_a_budget_saved_on_its_ramp_reloads_with_its_last_reading_and_trains_on_alike(tmp_path):
    """A density budget saved halfway through its ramp holds its last reading's dropped atoms (the trimmed decay's),
    which a freshly registered budget has not yet: symopt.from_pretrained accepts them (it refused them as keys the
    constraints do not match), and both models' next steps are the same to the bit."""
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    register = lambda m: symopt.sparse(m, name, density=0.2, total_steps=40)  # noqa: E731

    def steps(model, count):
        opt = torch.optim.SGD(symopt.param_groups(model), lr=0.05)
        for _ in range(count):
            opt.zero_grad()
            model(IDS, labels=torch.tensor([0, 2])).loss.backward()
            opt.step()

    model = _bert()
    register(model)
    steps(model, 16)
    assert any(key.endswith(".dropped") for key in model.state_dict())
    symopt.save_pretrained(model, tmp_path)
    back = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path, constrain=register)
    for (key, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), key
    steps(model, 6)
    steps(back, 6)
    for (key, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), key


def test_a_float64_save_loads_in_float64_with_and_without_its_constraints(tmp_path):
    """symopt.from_pretrained of a directory without a layout defers to the class's own from_pretrained, which on
    transformers 4 loads float32 unless told otherwise: symopt asks for the saved dtype, so a float64 model comes back
    float64 and a resume with ``constrain=`` holds the saved factors to the bit (they had been rounded to float32)."""
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    register = lambda m: symopt.sparse(m, name, strength=1e-3)  # noqa: E731
    model = _bert().double()
    register(model)
    symopt.save_pretrained(model, tmp_path)
    plain = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path)
    assert plain.dtype == torch.float64 and symopt.list_constraints(plain) == []
    assert torch.equal(plain.get_parameter(name), model.get_submodule(name.rpartition(".")[0]).weight.detach())
    back = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path, constrain=register)
    assert back.dtype == torch.float64
    for (key, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), key
    assert symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path,
                                  dtype=torch.float32).dtype == torch.float32


def test_trainer_checkpoints_a_head_budget_and_resumes_it_bit_exactly(tmp_path):
    """transformers' Trainer, given symopt's parameter groups, trains a GPT-2 to a head budget: its checkpoints go
    through the model's save_pretrained, and resume_from_checkpoint at the first one ends where the uninterrupted
    run ends, every factor and the budget's state to the bit; the last checkpoint loads into a plain GPT-2 with
    the trained model's logits."""
    pytest.importorskip("accelerate")
    ids = torch.randint(0, 40, (64, 12), generator=torch.Generator().manual_seed(0))

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    def train(out, resume=None):
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
        handle = symopt.attention_heads(model, symopt.attention_blocks(model), max_heads=5, total_steps=40)
        optimizer = torch.optim.AdamW(symopt.param_groups(model, lr=1e-2, weight_decay=0.0), lr=1e-2)
        symopt.bind(optimizer)  # (a resume loads the optimizer's state, which replaces its groups)
        args = transformers.TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=40,
                                              save_steps=20, logging_steps=100, report_to=[], use_cpu=True,
                                              disable_tqdm=True)
        transformers.Trainer(model=model, args=args, train_dataset=Tokens(), optimizers=(optimizer, None)).train(
            resume_from_checkpoint=resume)
        return model.eval(), handle

    whole, handle = train(tmp_path / "whole")
    assert _kept(handle, 4) in ([2, 3], [3, 2], [1, 4], [4, 1])  # (the budget landed: 5 heads of 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, _ = train(tmp_path / "resumed", resume=str(tmp_path / "whole" / "checkpoint-20"))
    assert not [w for w in caught if "symopt" in str(w.message)]
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    plain = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "whole" / "checkpoint-40").eval()
    with torch.no_grad():
        assert torch.equal(plain(LLAMA_IDS).logits, whole(LLAMA_IDS).logits)


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


LLAMA_IDS = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(0))


def _adam(model, steps: int, ids, labels, **kwargs) -> None:
    """``steps`` Adam steps (lr 1e-2, symopt's decay groups) on one batch (``kwargs``: an encoder-decoder's
    decoder ids), then eval mode."""
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(ids, labels=labels, **kwargs).loss.backward()
        opt.step()
    model.eval()


def _kept(handle, per_layer: int | list[int]) -> list[int]:
    """The units each layer of a (landed) group budget kept (``per_layer``: the units of each, or of all alike)."""
    norms = handle.constraint.unit_norms([v.detach() for v in handle.values()])
    return [int((part > 0).sum()) for part in norms.split(per_layer)]


def _llama_trained_to_a_head_budget(max_heads: int, steps: int = 60, tie: bool = False):
    """A 2-layer LlamaForCausalLM (4 query heads on 2 k/v heads a layer) whose head budget over both layers
    landed under Adam; returns the model (eval mode) and the handle."""
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      attention_bias=True, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double()
    blocks = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    handle = symopt.attention_heads(model, blocks, max_heads=max_heads, total_steps=steps)
    _adam(model, steps, LLAMA_IDS, LLAMA_IDS)
    return model, handle


def _class_load(cls, path):
    """The class's own ``from_pretrained`` in the dtype it was saved in, evaluating: transformers 5 keeps that dtype
    by default, transformers 4 loads float32 unless told ``torch_dtype="auto"``."""
    kwargs = {} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": "auto"}
    return cls.from_pretrained(path, **kwargs).eval()


def _reloads_alike(small, cls, want, tmp_path, atol: float, ids=None, reload_atol: float = 0.0) -> None:
    """``small``'s logits on ``ids`` (LLAMA_IDS) are ``want``'s to ``atol``, and symopt's round trip through
    ``tmp_path`` reloads them bit for bit (to ``reload_atol`` where the loaded weights' alignment changes the order
    of a product's sums: see the T5 test)."""
    ids = LLAMA_IDS if ids is None else ids
    with torch.no_grad():
        got = small(ids).logits
        assert torch.allclose(got, want, atol=atol, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(cls, tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, got, atol=reload_atol, rtol=0)


def _landed(model, handle, per_layer: int, budget: int) -> tuple[list[int], Tensor]:
    """Train ``model`` 45 Adam steps past its head budget's landing (`_adam`); ``(units each layer kept, the
    logits on LLAMA_IDS)``, every layer keeping one at least and ``budget`` in all."""
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, per_layer)
    assert sum(kept) == budget and min(kept) >= 1
    with torch.no_grad():
        return kept, model(LLAMA_IDS).logits


def _compressed(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", symopt.ExportWarning)  # (also: "the outputs were not compared")
        return symopt.export(model, mode="compressed", **kwargs)


def test_a_head_budget_on_a_grouped_query_llama_lands_and_export_removes_its_heads(tmp_path):
    """Hugging Face's Llama blocks keep no head count (they reshape by head_dim) and use grouped-query
    attention (4 query heads on 2 k/v heads here): a head budget over both layers counts k/v heads, lands
    exactly under Adam, and export removes each layer's dead k/v heads with their query heads, checked on the
    model's own output (a ModelOutput beside its key/value cache) with the same logits. Every layer kept one
    k/v head, so export also lowers the config's counts (head_dim pinned), and the class's own
    save_pretrained / from_pretrained round-trip the smaller model."""
    model, handle = _llama_trained_to_a_head_budget(max_heads=2)
    assert handle.constraint.set_units == [2, 2]
    kept = _kept(handle, 2)
    assert kept == [1, 1]
    small = _compressed(model, example_input=LLAMA_IDS[:2])
    for layer, units in zip(small.model.layers, kept):
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (16 * units, 8 * units,
                                                                                                 16 * units)
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS).logits, model(LLAMA_IDS).logits, atol=1e-10)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads, small.config.head_dim) == (2, 1, 8)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)  # the original's stays
    small.save_pretrained(tmp_path)
    again = _class_load(transformers.LlamaForCausalLM, tmp_path)
    with torch.no_grad():
        assert torch.equal(again(LLAMA_IDS).logits, small(LLAMA_IDS).logits)


def test_a_global_head_budget_that_leaves_layers_unequal_round_trips_through_symopt(tmp_path):
    """A budget of 3 k/v heads over two layers of 2 leaves 1 and 2: no one config says that. The model's own
    save_pretrained refuses (from_pretrained would refuse the weights, or re-initialise them with
    ignore_mismatched_sizes=True); symopt.save_pretrained records the narrowed layers and
    symopt.from_pretrained rebuilds them (concrete or Auto class), tied embeddings tied again, with the same
    logits; a constraint registered on the export after the fact resumes from its factors."""
    model, handle = _llama_trained_to_a_head_budget(max_heads=3, tie=True)
    small = _compressed(model)  # checked on token ids symopt's probe builds from the input embeddings
    widths = sorted(layer.self_attn.k_proj.out_features for layer in small.model.layers)
    assert widths == [8, 16] and small.config.num_key_value_heads == 2
    with pytest.raises(ValueError, match="layers its config does not describe.*symopt.save_pretrained"):
        small.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    symopt.save_pretrained(small, tmp_path / "kept")
    assert (tmp_path / "kept" / "symopt_layout.json").exists()
    with torch.no_grad():
        want = small(LLAMA_IDS).logits
        for cls in (transformers.LlamaForCausalLM, transformers.AutoModelForCausalLM):
            back = symopt.from_pretrained(cls, tmp_path / "kept")
            assert not back.training and back.dtype == torch.float64
            assert back.lm_head.weight is back.model.embed_tokens.weight
            assert sorted(layer.self_attn.k_proj.out_features for layer in back.model.layers) == [8, 16]
            assert torch.equal(back(LLAMA_IDS).logits, want)
        assert symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path / "kept", dtype=torch.float32).dtype \
            == torch.float32
    with pytest.raises(ValueError, match="compressed layout.*only dtype=.*device_map"):
        symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path / "kept", device_map="cpu")
    with pytest.raises(ValueError, match="dtype must be a torch dtype.*'float61'"):
        symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path / "kept", dtype="float61")
    assert symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path / "kept", dtype="auto").dtype == torch.float64

    def constrain(m):
        symopt.sparse(m, "model.layers.0.mlp.up_proj.weight", strength=1e-3)

    constrain(small)
    symopt.save_pretrained(small, tmp_path / "constrained")
    back = symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path / "constrained", constrain=constrain)
    assert torch.equal(back.state_dict()["model.layers.0.mlp.up_proj.parametrizations.weight.original0"],
                       small.state_dict()["model.layers.0.mlp.up_proj.parametrizations.weight.original0"])


def test_a_factorised_bert_layer_round_trips_and_a_stale_layout_is_removed(tmp_path):
    """Export factorises a rank-2 intermediate layer into two Linears (a Sequential the config does not
    build): symopt.save_pretrained records it and from_pretrained rebuilds it; saving a plain model into
    the same directory later removes the stale layout file."""
    model = _bert()
    with pytest.warns(UserWarning, match="best rank-2 approximation"):
        symopt.low_rank(model, LOW_RANK, strength=1e-3, max_rank=2)
    small = symopt.export(model, mode="compressed")
    assert isinstance(small.bert.encoder.layer[0].intermediate.dense, torch.nn.Sequential)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path)
    assert [m.weight.shape for m in back.bert.encoder.layer[0].intermediate.dense] == [(2, 16), (32, 2)]
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, small.eval()(IDS).logits)
    symopt.save_pretrained(_bert(), tmp_path)
    assert not (tmp_path / "symopt_layout.json").exists()
    transformers.BertForSequenceClassification.from_pretrained(tmp_path)


def test_a_layer_symopt_cannot_record_is_refused_before_anything_is_written(tmp_path):
    model = _bert()
    symopt.sparse(model, "classifier.weight", strength=1e-3)
    with torch.no_grad():
        model.classifier.parametrizations.weight.original0[:, ::2] = 0
    small = symopt.export(model, mode="compressed", sparse_format="csr", force=True)
    with pytest.raises(ValueError, match="'classifier' is a SparseLinear.*torch.save"):
        symopt.save_pretrained(small, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_export_check_probes_a_hugging_face_model_with_token_ids():
    """Without example_input, export's check runs the model on token ids (its forward is not traced) and
    catches a rewrite that moved the logits."""
    from symopt import surgery
    model = _bert()
    ((ids,),) = surgery.probe_inputs(model)
    assert ids.dtype == torch.long and ids.shape == (2, 7) and int(ids.max()) < 60
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.classifier.bias.add_(1.0)
    assert surgery.verify(model, model) == (True, None)
    checked, problem = surgery.verify(model, broken)
    assert checked and "outputs['logits'] moved by 1" in problem


def test_a_global_ffn_neuron_budget_on_llama_lands_exports_narrower_mlps_and_reloads(tmp_path):
    """One budget of 40 neurons over two gated MLPs of 48 (a neuron: a gate row and an up row together):
    it lands under Adam; the model's forward does not trace, each MLP block does, so export narrows
    gate / up / down per block, checked on token ids; the layers its config does not describe round-trip
    through symopt.save_pretrained / from_pretrained."""
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double()
    steps = 60
    neurons = [[f"model.layers.{i}.mlp.gate_proj.weight", f"model.layers.{i}.mlp.up_proj.weight"] for i in range(2)]
    handle = symopt.group_sparse(model, neurons, max_groups=40, total_steps=steps)
    _adam(model, steps, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 48)
    assert sum(kept) == 40
    small = _compressed(model)
    assert [(layer.mlp.gate_proj.out_features, layer.mlp.up_proj.out_features, layer.mlp.down_proj.in_features,
             layer.mlp.intermediate_size) for layer in small.model.layers] == [(k, k, k, k) for k in kept]
    assert small.config.intermediate_size == 48  # (no one width to say)
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS).logits, model(LLAMA_IDS).logits, atol=1e-10)
        symopt.save_pretrained(small, tmp_path)
        back = symopt.from_pretrained(transformers.LlamaForCausalLM, tmp_path)
        assert torch.equal(back(LLAMA_IDS).logits, small(LLAMA_IDS).logits)


@pytest.mark.parametrize("family", ["OPT", "BART"])
def test_ffn_neurons_leave_layers_that_do_not_trace_through_their_fc1_fc2_pair(family, tmp_path):
    """OPT's and BART's layers compute their feed-forward inline (fc1, activation, fc2) in a forward torch.fx cannot
    trace, and no module around fc1 traces: a global neuron budget over fc1's rows and biases lands under Adam, and
    export narrows fc1 and fc2 as a pair (`FEED_FORWARD_PAIRS`), checked on the model's outputs; symopt's round trip
    reloads the narrower layers (no one config says both widths)."""
    torch.manual_seed(0)
    if family == "OPT":
        model = T.OPTForCausalLM(T.OPTConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             ffn_dim=48, max_position_embeddings=32, word_embed_proj_dim=32,
                                             pad_token_id=1)).double()
        kwargs, prefix = {}, "model.decoder.layers"
    else:
        model = T.BartForConditionalGeneration(T.BartConfig(
            vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=32)).double()
        kwargs, prefix = {"decoder_input_ids": LLAMA_IDS[:, :5].contiguous()}, "model.encoder.layers"
    neurons = [[f"{prefix}.{i}.fc1.weight", f"{prefix}.{i}.fc1.bias"] for i in range(2)]
    handle = symopt.group_sparse(model, neurons, max_groups=40, total_steps=40)
    _adam(model, 45, LLAMA_IDS, kwargs.get("decoder_input_ids", LLAMA_IDS), **kwargs)
    kept = _kept(handle, 48)
    assert sum(kept) == 40
    with torch.no_grad():
        want = model(LLAMA_IDS, **kwargs).logits
    small = _compressed(model, example_input=(LLAMA_IDS,) if not kwargs else None)
    narrowed = [small.get_submodule(f"{prefix}.{i}") for i in range(2)]
    assert [(layer.fc1.out_features, layer.fc2.in_features) for layer in narrowed] == [(k, k) for k in kept]
    with torch.no_grad():
        got = small(LLAMA_IDS, **kwargs).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(type(model), tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(LLAMA_IDS, **kwargs).logits, got, atol=1e-12, rtol=0)


def test_deberta_v2_ffn_neurons_leave_through_intermediate_and_output(tmp_path):
    """DeBERTa-v2's layer calls `intermediate` (dense, activation) and `output(intermediate, attention)` in a forward
    torch.fx cannot trace, with no one-input feed-forward method: the only module around `intermediate.dense` that
    traces is `intermediate`, whose output every unit reaches. Its dead neurons leave through the named pair
    `intermediate.dense` / `output.dense` (`FEED_FORWARD_PAIRS`), checked on the logits; symopt's round trip
    reloads the narrower layers."""
    config = T.DebertaV2Config(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=40, num_labels=3)
    torch.manual_seed(0)
    model = T.DebertaV2ForSequenceClassification(config).double().eval()
    names = [[f"deberta.encoder.layer.{i}.intermediate.dense.weight", f"deberta.encoder.layer.{i}.intermediate.dense.bias"]
             for i in range(2)]
    handle = symopt.group_sparse(model, names, strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[0, 5, 50, 60, 70]] = 0  # (2 neurons of layer 0, 3 of layer 1)
        want = model(IDS % 57 + 3).logits
    small = _compressed(model)
    assert [(layer.intermediate.dense.out_features, layer.output.dense.in_features)
            for layer in small.deberta.encoder.layer] == [(46, 46), (45, 45)]
    _reloads_alike(small, T.DebertaV2ForSequenceClassification, want, tmp_path, atol=1e-12, ids=IDS % 57 + 3,
                   reload_atol=1e-12)


FEED_FORWARD_MODELS = {
    "Llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**{**SMALL, "num_hidden_layers": 2}, num_key_value_heads=2)),
    "OPT": lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                ffn_dim=64, max_position_embeddings=32, word_embed_proj_dim=32,
                                                pad_token_id=1)),
    "GPT-2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                                    n_inner=64)),
    "Falcon": lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4, alibi=False, ffn_hidden_size=64,
                                                         max_position_embeddings=32)),
    "T5 gated": lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                                num_decoder_layers=1, num_heads=4,
                                                                feed_forward_proj="gated-gelu")),
}


@pytest.mark.parametrize("architecture", sorted(FEED_FORWARD_MODELS))
def test_one_neuron_budget_over_the_feed_forward_units_symopt_finds(architecture):
    """`symopt.feed_forward_units` lists each feed-forward block's hidden units by its layers' names; one budget of 70
    of the 128 neurons over all of them lands under Adam, every block keeping one at least, and export narrows each
    block to what it kept, with the logits."""
    torch.manual_seed(0)
    model = FEED_FORWARD_MODELS[architecture]().double()
    units = symopt.feed_forward_units(model)
    assert len(units) == 2
    handle = symopt.group_sparse(model, units, max_groups=70, total_steps=40)
    kwargs = {"decoder_input_ids": LLAMA_IDS[:, :5].contiguous()} if architecture == "T5 gated" else {}
    _adam(model, 45, LLAMA_IDS, kwargs.get("decoder_input_ids", LLAMA_IDS), **kwargs)
    kept = _kept(handle, 64)
    assert sum(kept) == 70 and min(kept) >= 1
    with torch.no_grad():
        want = model(LLAMA_IDS, **kwargs).logits
    small = _compressed(model, example_input=None if kwargs else (LLAMA_IDS,))
    widths = [small.get_submodule(names[0].rpartition(".")[0]) for names in units]
    assert [layer.weight.shape[layer.weight.shape.index(32) ^ 1] for layer in widths] == kept
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS, **kwargs).logits, want, atol=1e-10, rtol=0)


def test_per_layer_ffn_budgets_that_land_alike_rewrite_the_config_for_the_class_own_round_trip(tmp_path):
    """20 neurons of 48 in each layer: one config (intermediate_size=20) builds the export exactly, so export
    rewrites it and LlamaForCausalLM.from_pretrained loads the smaller model with the same logits."""
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double()
    steps = 40
    for i in range(2):
        symopt.group_sparse(model, [f"model.layers.{i}.mlp.gate_proj.weight", f"model.layers.{i}.mlp.up_proj.weight"],
                            max_groups=20, total_steps=steps)
    _adam(model, steps, LLAMA_IDS, LLAMA_IDS)
    small = _compressed(model)
    assert small.config.intermediate_size == 20 and model.config.intermediate_size == 48
    small.save_pretrained(tmp_path)
    again = _class_load(transformers.LlamaForCausalLM, tmp_path)
    assert [layer.mlp.down_proj.in_features for layer in again.model.layers] == [20, 20]
    with torch.no_grad():
        assert torch.equal(again(LLAMA_IDS).logits, small(LLAMA_IDS).logits)


def test_a_head_budget_on_bert_lands_exports_and_round_trips_through_symopt(tmp_path):
    """BERT keeps q, k, v in `attention.self` and the output projection in `attention.output.dense`, and its
    head count (and all_head_size) on `self`: attention_heads finds that layout from the block's name. A
    global budget of 3 heads of 8 lands under Adam; export removes the others from both children, lowers
    num_attention_heads and all_head_size where the block keeps them, and the logits do not move. BERT's
    config has no head_dim to pin (its head width is hidden_size / heads), so no config describes the export:
    the plain save refuses and symopt's round trip rebuilds it."""
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, num_labels=3, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double()
    blocks = ["bert.encoder.layer.0.attention", "bert.encoder.layer.1.attention"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    assert handle.constraint.attention_blocks[0]["projections"] == ("self.query", "self.key", "self.value",
                                                                    "output.dense")
    _adam(model, 45, IDS, torch.tensor([0, 2]))
    kept = _kept(handle, 4)
    assert sum(kept) == 3 and min(kept) >= 1
    small = _compressed(model)  # checked on token ids symopt's probe builds
    for layer, heads in zip(small.bert.encoder.layer, kept):
        attention = layer.attention
        assert (attention.self.query.out_features, attention.self.value.out_features,
                attention.output.dense.in_features) == (4 * heads, 4 * heads, 4 * heads)
        assert (attention.self.num_attention_heads, attention.self.all_head_size) == (heads, 4 * heads)
    with torch.no_grad():
        want = small(IDS).logits
        assert torch.allclose(want, model(IDS).logits, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="layers its config does not describe.*symopt.save_pretrained"):
        small.save_pretrained(tmp_path / "plain")
    symopt.save_pretrained(small, tmp_path / "kept")
    back = symopt.from_pretrained(transformers.BertForSequenceClassification, tmp_path / "kept")
    assert [(layer.attention.self.num_attention_heads, layer.attention.self.all_head_size)
            for layer in back.bert.encoder.layer] == [(heads, 4 * heads) for heads in kept]
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, want)


def _distilbert():
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=60, dim=16, n_layers=1, n_heads=4, hidden_dim=32, max_position_embeddings=32))


def _roberta():
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=40))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32, image_size=8,
        patch_size=4, num_channels=3))


def _phi():
    return transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40))


def _albert():
    return transformers.AlbertForMaskedLM(transformers.AlbertConfig(
        vocab_size=60, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40))


@pytest.mark.parametrize("build, block, example", [
    (_distilbert, "distilbert.transformer.layer.0.attention", IDS),  # q_lin, k_lin, v_lin, out_lin; n_heads
    (_phi, "model.layers.0.self_attn", IDS),  # (Phi-1 / Phi-2: q_proj, k_proj, v_proj, dense; reshaped by head_dim)
    (_albert, "albert_layers.0.attention", IDS),  # (query, key, value, dense in one block)
    (_roberta, "roberta.encoder.layer.0.attention", IDS % 57 + 3),  # BERT's layout (ids above the padding id)
    # (ViT's first layer: vit.layers.0 in transformers 5, vit.encoder.layer.0 before; attention / output.dense)
    (_vit, ".0.attention", torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))),
])
def test_attention_heads_finds_the_projections_of_other_hugging_face_encoders(build, block, example, tmp_path):
    """Each encoder's attention is found by its block's name alone; two dead heads of four leave every
    projection at export, checked by export's own probe (no example_input), with the same logits; symopt's layout
    saves the narrower blocks and loads them back to the same bits. DistilBERT before transformers 5 reshapes by
    its ``dim`` (dim // n_heads a head), which export lowers too."""
    torch.manual_seed(0)
    model = build().double().eval()
    block = next(name for name, _ in model.named_modules() if name.endswith(block))
    symopt.attention_heads(model, block, strength=1e-3)
    gates = next(p for n, p in model.named_parameters() if n.startswith(block) and n.endswith("original0"))
    with torch.no_grad():
        gates[[1, 2]] = 0
        want = model(example).logits
    width = model.get_submodule(block).get_submodule(symopt.list_constraints(model)[0].constraint.attention_blocks[0][
        "projections"][-1]).out_features
    small = _compressed(model)
    widths = [m.out_features for m in small.get_submodule(block).modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [width // 2] * 3 + [width]  # q, k, v lost two heads of 4; the output keeps the model width
    with torch.no_grad():
        assert torch.allclose(small(example).logits, want, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(type(model), tmp_path).eval()
    with torch.no_grad():
        got, want = back(example).logits, small(example).logits
    # (Phi's own save_pretrained / from_pretrained of an untouched model differs by 1e-16 too: same weights and
    # buffers, measured; every other model here reloads to the bit)
    assert torch.allclose(got, want, atol=1e-13, rtol=0) if build is _phi else torch.equal(got, want)


# Hugging Face causal LMs and encoders whose attention symopt reads by its layer names (built small, one layer):
# (build, the block, the call's keyword arguments). Their heads' export is checked below.
T = transformers


def _grouped_query(model_class, config_class, **extra):
    """A one-layer Llama-family model: 4 query heads on 2 k/v heads of width 8."""
    return model_class(config_class(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16, **extra))


SMALL = dict(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=32)

ARCHITECTURES = {
    "GPT-J": (lambda: T.GPTJForCausalLM(T.GPTJConfig(vocab_size=40, n_embd=32, n_layer=1, n_head=4, rotary_dim=4,
                                                     n_positions=16)), "transformer.h.0.attn", {}),
    "OPT": (lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, ffn_dim=64, max_position_embeddings=16,
                                                 word_embed_proj_dim=32, pad_token_id=1)),
            "model.decoder.layers.0.self_attn", {}),
    "Mistral": (lambda: _grouped_query(T.MistralForCausalLM, T.MistralConfig), "model.layers.0.self_attn", {}),
    "Qwen2": (lambda: _grouped_query(T.Qwen2ForCausalLM, T.Qwen2Config), "model.layers.0.self_attn", {}),
    "Gemma": (lambda: _grouped_query(T.GemmaForCausalLM, T.GemmaConfig, head_dim=8), "model.layers.0.self_attn", {}),
    "StableLM": (lambda: _grouped_query(T.StableLmForCausalLM, T.StableLmConfig), "model.layers.0.self_attn", {}),
    "OLMo": (lambda: _grouped_query(T.OlmoForCausalLM, T.OlmoConfig, pad_token_id=0), "model.layers.0.self_attn", {}),
    "BART": (lambda: T.BartForConditionalGeneration(T.BartConfig(
        vocab_size=40, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16)),
             "model.encoder.layers.0.self_attn", {"decoder_input_ids": LLAMA_IDS[:, :5]}),
    # (MPT: `Wqkv` in thirds; its model hands every block one ALiBi bias of a row per head, (heads, 1, keys))
    "MPT": (lambda: T.MptForCausalLM(T.MptConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)),
            "transformer.blocks.1.attn", {}),
    # (MPNet: its encoder computes a position bias of a row per head and hands it to every block positionally)
    "MPNet": (lambda: T.MPNetModel(T.MPNetConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=32)), "encoder.layer.1.attention.attn", {}),
    "Persimmon": (lambda: T.PersimmonForCausalLM(T.PersimmonConfig(**SMALL)), "model.layers.0.self_attn", {}),
    "Starcoder2": (lambda: _grouped_query(T.Starcoder2ForCausalLM, T.Starcoder2Config), "model.layers.0.self_attn", {}),
    "Cohere": (lambda: _grouped_query(T.CohereForCausalLM, T.CohereConfig), "model.layers.0.self_attn", {}),
    "Gemma-2": (lambda: _grouped_query(T.Gemma2ForCausalLM, T.Gemma2Config, head_dim=8), "model.layers.0.self_attn",
                {}),
    "Qwen3": (lambda: _grouped_query(T.Qwen3ForCausalLM, T.Qwen3Config, head_dim=8), "model.layers.0.self_attn", {}),
    "Granite": (lambda: _grouped_query(T.GraniteForCausalLM, T.GraniteConfig), "model.layers.0.self_attn", {}),
    "GPT-Neo": (lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=4,
                                                           attention_types=[[["global"], 1]],
                                                           max_position_embeddings=16)),
                "transformer.h.0.attn.attention", {}),
    "XLM": (lambda: T.XLMWithLMHeadModel(T.XLMConfig(vocab_size=40, emb_dim=32, n_layers=1, n_heads=4,
                                                     max_position_embeddings=16)), "transformer.attentions.0", {}),
    "ESM": (lambda: T.EsmModel(T.EsmConfig(**SMALL, pad_token_id=1, position_embedding_type="rotary")),
            "encoder.layer.0.attention", {}),
    "RoFormer": (lambda: T.RoFormerModel(T.RoFormerConfig(**SMALL, embedding_size=32)), "encoder.layer.0.attention", {}),
    "XLM-RoBERTa": (lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**SMALL)), "encoder.layer.0.attention", {}),
    "Marian": (lambda: T.MarianMTModel(T.MarianConfig(vocab_size=40, d_model=32, encoder_layers=1, decoder_layers=1,
                                                      encoder_attention_heads=4, decoder_attention_heads=4,
                                                      encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                      max_position_embeddings=16, pad_token_id=0,
                                                      decoder_start_token_id=0)),
               "model.decoder.layers.0.self_attn", {"decoder_input_ids": LLAMA_IDS[:, :5]}),
    "SigLIP text": (lambda: T.SiglipTextModel(T.SiglipTextConfig(**SMALL)), "encoder.layers.0.self_attn", {}),
    "CLIP text": (lambda: T.CLIPTextModel(T.CLIPTextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1,
                                                            num_attention_heads=4, intermediate_size=64,
                                                            max_position_embeddings=16)),
                  "encoder.layers.0.self_attn", {}),  # (under text_model. before transformers 5: found by its end)
}


MIXTURES = {
    "Mixtral": lambda: _grouped_query(T.MixtralForCausalLM, T.MixtralConfig, num_local_experts=2,
                                      num_experts_per_tok=1),
    "Qwen2-MoE": lambda: _grouped_query(T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig, num_experts=2, num_experts_per_tok=1,
                                        moe_intermediate_size=16, shared_expert_intermediate_size=16),
    "OLMoE": lambda: _grouped_query(T.OlmoeForCausalLM, T.OlmoeConfig, num_experts=2, num_experts_per_tok=1),
}


@pytest.mark.parametrize("architecture", sorted(MIXTURES))
def test_heads_of_mixture_of_experts_models_export(architecture):
    """Mixture-of-experts language models keep Llama-style attention (OLMoE with OLMo-2's whole-width q/k norms): a
    dead unit leaves with the logits. In float32: their experts' grouped products take no float64."""
    torch.manual_seed(0)
    model = MIXTURES[architecture]().eval()
    handle = symopt.attention_heads(model, "model.layers.0.self_attn", strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[0]] = 0
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert small.model.layers[0].self_attn.q_proj.out_features == 16
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS).logits, want, atol=1e-5, rtol=0)


EXPERT_MODELS = {
    "Mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**MOE, intermediate_size=24, num_local_experts=4)),
    "Qwen2-MoE": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**MOE, intermediate_size=64, num_experts=4,
                                                               moe_intermediate_size=24,
                                                               shared_expert_intermediate_size=16)),
    "OLMoE": lambda: T.OlmoeForCausalLM(T.OlmoeConfig(**MOE, intermediate_size=24, num_experts=4)),
    "GPT-OSS": lambda: T.GptOssForCausalLM(T.GptOssConfig(**MOE, head_dim=8, intermediate_size=24, num_local_experts=4,
                                                          sliding_window=8)),
    "Qwen3-MoE": lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**MOE, head_dim=8, intermediate_size=64, num_experts=4,
                                                               moe_intermediate_size=24)),
    # (a dense first layer, then routed experts beside a shared one, with latent attention)
    "DeepSeek-V3": lambda: T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
        **MOE, intermediate_size=64, n_routed_experts=4, moe_intermediate_size=24, n_shared_experts=1,
        first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
        n_group=1, topk_group=1)),
    "PhiMoE": lambda: T.PhimoeForCausalLM(T.PhimoeConfig(**MOE, intermediate_size=24, num_local_experts=4)),
    "GraniteMoE": lambda: T.GraniteMoeForCausalLM(T.GraniteMoeConfig(**MOE, intermediate_size=24, num_local_experts=4)),
}
MOE = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=16, num_experts_per_tok=2)


@pytest.mark.parametrize("architecture", sorted(EXPERT_MODELS))
def test_a_neuron_budget_over_experts_lands_and_export_narrows_them(architecture, tmp_path):
    """`feed_forward_units` lists a mixture's experts beside its dense feed-forwards (Qwen2-MoE's shared expert); one
    budget lands under Adam and export narrows each block, with the logits, and symopt's round trip reloads it. In
    transformers 5 the experts are fused 3-d tensors: a unit is one neuron of one expert (GPT-OSS's rows alternate,
    transposed, with biases), and each layer's experts narrow to its widest expert's live neurons, rounded up to 8 as
    grouped matrix products need. In transformers 4 (a ModuleList of dense experts) each expert narrows to its own.
    In float32: the experts' grouped products take no float64."""
    from symopt._layers import expert_layout, outputs_first

    torch.manual_seed(0)
    model = EXPERT_MODELS[architecture]()
    units = symopt.feed_forward_units(model)
    if not any("expert" in name for names in units for name in names):
        pytest.skip(f"this transformers' {architecture} keeps experts in a layout symopt does not read (transformers "
                    "4's GPT-OSS alternates its gate and up rows without saying so; its GraniteMoE holds them as "
                    "input_linear / output_linear)")
    blocks = [names[0].rpartition(".")[0] for names in units]
    layouts = [expert_layout(model.get_submodule(block)) for block in blocks]
    sizes = [found.experts * found.width if found else outputs_first(model.get_submodule(block)).shape[0]
             for found, block in zip(layouts, blocks)]
    handle = symopt.group_sparse(model, units, max_groups=6 * len(units), total_steps=40)
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, sizes)
    assert sum(kept) == 6 * len(units) and min(kept) >= 1
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    for names, block, found, count in zip(units, blocks, layouts, kept):
        narrowed = small.get_submodule(block)
        if found is None:
            assert outputs_first(narrowed).shape[0] == count
            continue
        live = int(_neurons_alive(model, names, found).sum(dim=1).max())
        own = getattr(narrowed, "intermediate_dim", getattr(narrowed, "intermediate_size", None))
        assert expert_layout(narrowed).width == min(24, -(-live // 8) * 8) == own
    dense = symopt.export(model)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    _reloads_alike(small, type(model), want, tmp_path, atol=1e-5)


@pytest.mark.parametrize("architecture, width_name", [("Mixtral", "intermediate_size"),
                                                       ("Qwen2-MoE", "moe_intermediate_size")])
def test_equal_experts_per_layer_rewrite_the_config_for_the_class_own_round_trip(architecture, width_name, tmp_path):
    """8 of 24 neurons in every expert of every layer (`equal_experts=True`, a budget per layer): every layer's fused
    tensors narrow to 8, one config (its experts' width 8) builds the export exactly, so export rewrites it and the
    class's own from_pretrained loads the smaller model with the same logits."""
    from symopt._layers import expert_layout

    torch.manual_seed(0)
    model = EXPERT_MODELS[architecture]()
    experts = [names for names in symopt.feed_forward_units(model) if "experts" in names[0]]
    if not expert_layout(model.get_submodule(experts[0][0].rpartition(".")[0])):
        pytest.skip(f"this transformers' {architecture} keeps a ModuleList of dense experts")
    for names in experts:
        symopt.group_sparse(model, names, max_groups=32, total_steps=40, equal_experts=True)
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert getattr(small.config, width_name) == 8 and getattr(model.config, width_name) == 24
    small.save_pretrained(tmp_path)
    again = _class_load(type(model), tmp_path)
    assert [expert_layout(layer.mlp.experts).width for layer in again.model.layers] == [8, 8]
    with torch.no_grad():
        assert torch.allclose(again(LLAMA_IDS).logits, want, atol=1e-5, rtol=0)


def test_an_expert_budget_saved_on_its_ramp_resumes_bit_exactly(tmp_path):
    """A Mixtral whose equal-experts budget is half-way up its ramp, saved with `symopt.save_pretrained` (factors,
    gates, λ and the budget's state) and loaded with ``constrain=``: 20 more Adam steps from the reload (the
    optimizer's state saved beside) end bitwise where the uninterrupted run ends."""
    from symopt._layers import expert_layout

    def build():
        torch.manual_seed(0)
        model = EXPERT_MODELS["Mixtral"]()
        register(model)
        return model

    def register(model):
        for names in symopt.feed_forward_units(model):
            symopt.group_sparse(model, names, max_groups=32, total_steps=40, equal_experts=True)

    if not any(expert_layout(module) for module in EXPERT_MODELS["Mixtral"]().modules()):
        pytest.skip("this transformers' Mixtral keeps a ModuleList of dense experts")
    model = build()
    opt = torch.optim.Adam(symopt.param_groups(model, lr=1e-2), lr=1e-2)

    def steps(model, opt, count):
        for _ in range(count):
            opt.zero_grad()
            model(LLAMA_IDS, labels=LLAMA_IDS).loss.backward()
            opt.step()

    steps(model, opt, 20)
    symopt.save_pretrained(model, tmp_path)
    saved_opt = copy.deepcopy(opt.state_dict())
    back = symopt.from_pretrained(type(model), tmp_path, constrain=register).train()
    back_opt = torch.optim.Adam(symopt.param_groups(back, lr=1e-2), lr=1e-2)
    back_opt.load_state_dict(saved_opt)
    symopt.bind(back_opt)  # (load_state_dict replaced the groups that follow λ)
    steps(model, opt, 20)
    steps(back, back_opt, 20)
    assert symopt.landed(back) and symopt.landed(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def _neurons_alive(model, names, found):
    """(experts, width): whether each neuron of each expert of a constrained experts block is alive."""
    owner, _, tensor = names[0].rpartition(".")
    rows = getattr(model.get_submodule(owner), tensor).detach()
    rows = rows.transpose(1, 2) if found.transposed else rows
    alive = rows.ne(0).any(dim=2)
    return alive[:, 0::2] | alive[:, 1::2] if found.interleaved else alive[:, :found.width] | alive[:, found.width:]


def _first_output(output):
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_attention_heads_export_across_hugging_face_architectures(architecture):
    """Each architecture's attention is found by its block's name; with one unit dead export narrows q, k and v and
    the output layer's inputs (export's own probe checks the rewrite, which would warn and keep the heads), and the
    model's outputs do not move."""
    build, block, kwargs = ARCHITECTURES[architecture]
    if architecture in ("CLIP text", "MPT") and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"transformers 4's {architecture} fills its causal mask with float32's minimum, which a float64 "
                    "model's forward cannot convert")
    if architecture == "SigLIP text" and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4's SigLIP attention reshapes its heads' outputs to its input's width, so no head "
                    "can leave (export's check keeps them, with a warning)")
    torch.manual_seed(0)
    model = build().double().eval()
    block = next(name for name, _ in model.named_modules() if name.endswith(block))
    handle = symopt.attention_heads(model, block, strength=1e-3)
    units = handle.constraint.gates.numel()
    with torch.no_grad():
        handle.constraint.gates[[units - 1]] = 0
        want = _first_output(model(LLAMA_IDS, **kwargs))
    q_before = [m.out_features for m in model.get_submodule(block).modules() if isinstance(m, torch.nn.Linear)][0]
    small = _compressed(model)
    q_after = [m.out_features for m in small.get_submodule(block).modules() if isinstance(m, torch.nn.Linear)][0]
    assert q_after == q_before * (units - 1) // units
    with torch.no_grad():
        assert torch.allclose(_first_output(small(LLAMA_IDS, **kwargs)), want, atol=1e-10, rtol=0)


def test_t5_heads_land_export_with_their_position_bias_rows_and_round_trip(tmp_path):
    """T5's first block of each stack computes a position bias of a row per head and hands it to the later blocks
    (a cross-attention's first block hands on zeros). A global budget over the encoder's and the decoder's self- and
    cross-attention lands under Adam; export narrows each block, which then uses its kept heads' rows while every
    later block still gets the whole bias: the logits (with padding too) and greedy generation are the model's, and
    symopt's layout reinstalls the hooks on reload."""
    config = T.T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                        decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(config).double()
    blocks = [f"{stack}.block.{i}.layer.{j}.{kind}" for stack, j, kind in (
        ("encoder", 0, "SelfAttention"), ("decoder", 0, "SelfAttention"), ("decoder", 1, "EncDecAttention"))
        for i in range(2)]
    assert symopt.attention_blocks(model) == [blocks[i] for i in (0, 1, 2, 4, 3, 5)]  # (module order)
    handle = symopt.attention_heads(model, blocks, max_heads=14, total_steps=40)
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS[:, :6].contiguous())
    kept = _kept(handle, 4)
    assert sum(kept) == 14 and min(kept) >= 1 and max(kept) < 4  # (every block loses a head here)
    mask = torch.ones_like(LLAMA_IDS)
    mask[0, -3:] = 0
    decoder_ids = LLAMA_IDS[:, :5]
    with torch.no_grad():
        want = [model(input_ids=LLAMA_IDS, attention_mask=m, decoder_input_ids=decoder_ids).logits for m in (None, mask)]
        generated = model.generate(LLAMA_IDS, attention_mask=mask, max_new_tokens=6, do_sample=False)
    small = _compressed(model)  # (export's own probe, given decoder ids for an encoder-decoder, checks each block)
    assert [small.get_submodule(b).q.out_features for b in blocks] == [8 * k for k in kept]
    assert [small.get_submodule(b).n_heads for b in blocks] == kept
    with torch.no_grad():
        got = [small(input_ids=LLAMA_IDS, attention_mask=m, decoder_input_ids=decoder_ids).logits for m in (None, mask)]
        assert all(torch.allclose(g, w, atol=1e-10, rtol=0) for g, w in zip(got, want))
        assert torch.equal(small.generate(LLAMA_IDS, attention_mask=mask, max_new_tokens=6, do_sample=False), generated)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(T.T5ForConditionalGeneration, tmp_path).eval()
    with torch.no_grad():
        # (to rounding, not to the bit: the loaded weights sit at other memory alignments, which change the
        # matrix products' order of summation; measured, the same as cloning them does not)
        assert torch.allclose(back(input_ids=LLAMA_IDS, decoder_input_ids=decoder_ids).logits, got[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("version, q_lora_rank", [("V3", 8), ("V2", None)])
def test_multi_head_latent_attention_loses_whole_heads_and_keeps_the_latent(version, q_lora_rank, tmp_path):
    """DeepSeek's multi-head latent attention expands k and v per head from one shared latent (`kv_b_proj`) and
    takes q from the input (`q_proj`, V2-Lite) or from a low-rank pair (`q_a_proj`, `q_b_proj`, V3): a unit is a
    head, its q rows, its `kv_b_proj` rows (k without position, then v) and its `o_proj` columns; the latent's
    layers stay. A global budget of 5 of 8 heads lands under Adam; export narrows the three layers per block and
    lowers `num_heads`, with the logits; symopt's round trip reloads it."""
    config_class = getattr(T, f"Deepseek{version}Config", None)
    if config_class is None:
        pytest.skip(f"this transformers has no DeepSeek-{version}")
    config = config_class(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64,
                          q_lora_rank=q_lora_rank, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4,
                          v_head_dim=8, n_routed_experts=2, first_k_dense_replace=2)
    torch.manual_seed(0)
    model = getattr(T, f"Deepseek{version}ForCausalLM")(config).double()
    blocks = symopt.attention_blocks(model)
    assert blocks == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    with pytest.raises(ValueError, match="latent attention.*drop packing= and kv_heads="):
        symopt.attention_heads(model, blocks, max_heads=5, total_steps=40, kv_heads=1)
    assert symopt.list_constraints(model) == []
    handle = symopt.attention_heads(model, blocks, max_heads=5, total_steps=40)
    q_name = "q_proj" if q_lora_rank is None else "q_b_proj"
    assert handle.constraint.attention_blocks[0]["projections"] == (q_name, "kv_b_proj", "o_proj")
    kept, want = _landed(model, handle, per_layer=4, budget=5)
    small = _compressed(model)
    assert [(getattr(layer.self_attn, q_name).out_features, layer.self_attn.kv_b_proj.out_features,
             layer.self_attn.o_proj.in_features, layer.self_attn.num_heads, layer.self_attn.kv_a_proj_with_mqa.out_features)
            for layer in small.model.layers] == [(12 * k, 16 * k, 8 * k, k, 12) for k in kept]
    _reloads_alike(small, getattr(T, f"Deepseek{version}ForCausalLM"), want, tmp_path, atol=1e-10, reload_atol=1e-12)


def test_codegen_heads_leave_one_local_head_of_every_shard_at_a_time(tmp_path):
    """CodeGen splits `qkv_proj`'s outputs into model-parallel shards (its local heads' q, then v, then k in each) and
    numbers its heads shard by shard: a unit is one local head of every shard, so that export keeps the shards alike.
    A global budget of 3 of the 4 units lands under Adam; export narrows `qkv_proj` and `out_proj`, lowers
    `num_attention_heads` (and, on transformers 5, the `embed_dim` its shards are sized by), with the logits; symopt's
    round trip reloads it."""
    config = T.CodeGenConfig(vocab_size=40, n_embd=64, n_layer=2, n_head=8, rotary_dim=4, n_positions=16, n_ctx=16)
    torch.manual_seed(0)
    model = T.CodeGenForCausalLM(config).double()
    blocks = symopt.attention_blocks(model)
    assert blocks == ["transformer.h.0.attn", "transformer.h.1.attn"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    info = handle.constraint.attention_blocks[0]
    assert (info["fused"], info["shards"], info["units"]) == ("per shard", 4, 2)
    # (shard s holds local heads 0, 1 of q, then of v, then of k, each 8 wide: unit j is local head j of each)
    assert handle.constraint.unit_maps[0].tolist() == ([0] * 8 + [1] * 8) * 12
    assert handle.constraint.unit_maps[1].tolist() == ([0] * 8 + [1] * 8) * 4  # (out_proj: qkv_proj has no bias)
    kept, want = _landed(model, handle, per_layer=2, budget=3)
    small = _compressed(model)
    assert [(layer.attn.qkv_proj.out_features, layer.attn.out_proj.in_features, layer.attn.num_attention_heads)
            for layer in small.transformer.h] == [(96 * k, 32 * k, 4 * k) for k in kept]
    _reloads_alike(small, T.CodeGenForCausalLM, want, tmp_path, atol=1e-10)


def _same_logits_and_reloaded(model, small, ids, kept, config_width: str, tmp_path) -> None:
    """The exported ``small`` computes ``model``'s logits; where both layers kept one width, the config's
    ``config_width`` says it and the class's own save / load round-trips, else symopt's layout records the
    narrower layers; either way the reloaded model's logits are the same bits."""
    with torch.no_grad():
        want = small(ids).logits
        assert torch.allclose(want, model(ids).logits, atol=1e-10, rtol=0)
    if kept[0] == kept[1]:
        assert getattr(small.config, config_width) == kept[0]
        small.save_pretrained(tmp_path)
        back = _class_load(type(model), tmp_path)
    else:
        symopt.save_pretrained(small, tmp_path)
        back = symopt.from_pretrained(type(model), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, want)


def test_a_global_ffn_neuron_budget_on_bert_lands_and_exports_narrower_feed_forwards(tmp_path):
    """BERT's feed-forward is split over two sibling blocks (`intermediate.dense` then `output.dense`, with
    the residual and LayerNorm), and neither the model nor its layer traces; the layer's
    `feed_forward_chunk` does (Hugging Face's convention for BERT-derived layers), so export plans the
    neurons there: a budget of 20 of 64 neurons over both layers lands under Adam, both Linears narrow, the
    logits do not move, and where the layers kept the same width the config's intermediate_size says it
    (the class's own save / load round trip)."""
    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, num_labels=3, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double()
    layers = [[f"bert.encoder.layer.{i}.intermediate.dense.weight", f"bert.encoder.layer.{i}.intermediate.dense.bias"]
              for i in range(2)]
    handle = symopt.group_sparse(model, layers, max_groups=20, total_steps=40)
    _adam(model, 45, IDS, torch.tensor([0, 2]))
    kept = _kept(handle, 32)
    assert sum(kept) == 20
    small = _compressed(model)
    assert [(layer.intermediate.dense.out_features, layer.output.dense.in_features)
            for layer in small.bert.encoder.layer] == [(k, k) for k in kept]
    _same_logits_and_reloaded(model, small, IDS, kept, "intermediate_size", tmp_path)


def test_a_head_budget_on_gpt2_fused_attention_lands_exports_and_round_trips_through_symopt(tmp_path):
    """GPT-2 keeps q, k and v as the thirds of one transposed Conv1D (`c_attn`, weight (in, 3·width)) and
    reads its head count and split width from `num_heads` / `split_size`: attention_heads finds that layout
    from the block's name. A global budget of 3 heads of 8 lands under Adam; export narrows both Conv1D
    layers (their own class, nf / nx lowered) and both counts, with the same logits. GPT-2's config derives
    the head width from n_embd / n_head, so no config describes fewer heads: the plain save refuses, and
    symopt's layout records the Conv1D layers and rebuilds them."""
    import json

    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double()
    blocks = ["transformer.h.0.attn", "transformer.h.1.attn"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    assert handle.constraint.attention_blocks[0]["projections"] == ("c_attn", "c_proj")
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 4)
    assert sum(kept) == 3 and min(kept) >= 1
    small = _compressed(model)  # checked on token ids symopt's probe builds
    for layer, heads in zip(small.transformer.h, kept):
        attn = layer.attn
        assert type(attn.c_attn) is transformers.pytorch_utils.Conv1D
        assert (attn.c_attn.nf, attn.c_attn.weight.shape[1], attn.c_proj.nx, attn.c_proj.weight.shape[0]) == \
            (24 * heads, 24 * heads, 8 * heads, 8 * heads)
        assert (attn.num_heads, attn.split_size) == (heads, 8 * heads)
    with torch.no_grad():
        want = small(LLAMA_IDS).logits
        assert torch.allclose(want, model(LLAMA_IDS).logits, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="layers its config does not describe.*symopt.save_pretrained"):
        small.save_pretrained(tmp_path / "plain")
    symopt.save_pretrained(small, tmp_path / "kept")
    saved = json.loads((tmp_path / "kept" / "symopt_layout.json").read_text())
    assert saved["modules"]["transformer.h.0.attn.c_attn"] == {"type": "Conv1D",
                                                                "arguments": {"nf": 24 * kept[0], "nx": 32}}
    back = symopt.from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "kept")
    assert [layer.attn.num_heads for layer in back.transformer.h] == kept
    with torch.no_grad():
        assert torch.equal(back(LLAMA_IDS).logits, want)


def test_a_global_ffn_neuron_budget_on_gpt2_lands_and_exports_narrower_conv1d_layers(tmp_path):
    """GPT-2's feed-forward is two transposed Conv1D layers (a neuron is a column of `c_fc`'s weight, its
    bias entry and a row of `c_proj`'s) around the tanh form of GELU. group_sparse's default axis there is
    the weight's columns; a budget of 40 of 128 neurons over both layers lands under Adam, export narrows
    both layers of each MLP (traced in the block, fx keeping each Conv1D one call) with the same logits, and
    where the layers kept the same width the config's n_inner says it (the class's own round trip), else
    symopt's layout records the Conv1D layers."""
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double()
    layers = [[f"transformer.h.{i}.mlp.c_fc.weight", f"transformer.h.{i}.mlp.c_fc.bias"] for i in range(2)]
    handle = symopt.group_sparse(model, layers, max_groups=40, total_steps=40)
    assert handle.constraint.dims == [1, 0, 1, 0]
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 64)
    assert sum(kept) == 40
    small = _compressed(model)
    assert [(block.mlp.c_fc.nf, block.mlp.c_proj.nx, tuple(block.mlp.c_proj.weight.shape)) for block in small.transformer.h] \
        == [(k, k, (k, 32)) for k in kept]
    _same_logits_and_reloaded(model, small, LLAMA_IDS, kept, "n_inner", tmp_path)


VISION_TABLES = {
    "Swin": lambda: T.SwinForImageClassification(T.SwinConfig(image_size=16, patch_size=4, num_channels=3,
                                                              embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                                              window_size=2, num_labels=3)),
    "BEiT": lambda: T.BeitForImageClassification(T.BeitConfig(image_size=16, patch_size=4, hidden_size=32,
                                                              num_hidden_layers=2, num_attention_heads=4,
                                                              intermediate_size=64, use_relative_position_bias=True,
                                                              num_labels=3)),
}


@pytest.mark.parametrize("architecture", sorted(VISION_TABLES))
def test_heads_take_their_columns_of_a_learned_relative_position_table_along(architecture, tmp_path):
    """Swin and BEiT learn a relative-position bias table of a column per head (Swin's inside the attention block;
    BEiT's in the block itself on transformers 4, in the layer holding it on 5, which hands the bias on as the
    attention mask). Export keeps the kept heads' columns with their q, k, v rows, the logits do not move, and
    symopt's layout records the narrowed table of the model's own module (not a layer it rebuilds): the reload
    computes the same logits."""
    torch.manual_seed(0)
    model = VISION_TABLES[architecture]().double().eval()
    blocks = symopt.attention_blocks(model)
    assert len(blocks) == 2
    handle = symopt.attention_heads(model, blocks, strength=1e-3)
    heads = handle.constraint.set_units
    with torch.no_grad():
        # (block 0: head 0; block 1: heads 1 and 2: no one config says both, so the layout records them)
        handle.constraint.gates[[0, heads[0] + 1, heads[0] + 2]] = 0
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(pixels).logits
    tables = {name: p.shape[-1] for name, p in model.named_parameters() if name.endswith("relative_position_bias_table")}
    small = _compressed(model, example_input=(pixels,))
    assert {name: p.shape[-1] for name, p in small.named_parameters()
            if name.endswith("relative_position_bias_table")} == {
        name: n - (1 if index == 0 else 2) for index, (name, n) in enumerate(tables.items())}
    with torch.no_grad():
        got = small(pixels).logits
        assert torch.allclose(got, want, atol=1e-12, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    saved = json.loads((tmp_path / "symopt_layout.json").read_text())
    assert sorted(saved["shapes"]) == sorted(name.rpartition(".")[0] for name in tables)
    back = symopt.from_pretrained(type(model), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(pixels).logits, got)


def test_olmo2_whole_width_q_and_k_norms_are_narrowed_with_the_heads(tmp_path):
    """OLMo-2 normalises all heads' q (and k) together by an RMS norm before splitting them into heads. A dead unit's
    outputs are 0: export keeps the norms' kept entries and rescales the kept outputs by √(kept / all) and the norms'
    weights by the inverse, which leaves every normalised value as it was. In float32 (OLMo-2's norms compute in
    float32 whatever the model's dtype) the logits agree to float32's rounding; symopt's round trip reloads it."""
    config = T.Olmo2Config(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = T.Olmo2ForCausalLM(config).eval()
    handle = symopt.attention_heads(model, symopt.attention_blocks(model), strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[0]] = 0  # (block 0's first unit: 2 query heads and their k/v head)
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    first, second = (layer.self_attn for layer in small.model.layers)
    assert (first.q_proj.out_features, first.q_norm.weight.shape[0], first.k_norm.weight.shape[0]) == (16, 16, 8)
    assert (second.q_proj.out_features, second.q_norm.weight.shape[0]) == (32, 32)
    _reloads_alike(small, T.Olmo2ForCausalLM, want, tmp_path, atol=1e-5)


def test_a_position_table_shared_by_every_layer_gives_each_block_its_kept_heads_rows(tmp_path):
    """BEiT's shared relative-position bias (one table for every layer, held by the model) reaches every block with a
    row per head (transformers 4: as ``relative_position_bias``; 5: added into its attention mask). Two blocks lose
    different heads: each takes its kept heads' rows of the bias it is handed (the table keeps every column, the
    other layers read it), the logits do not move, and symopt's round trip rebuilds the hooks."""
    config = T.BeitConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, use_shared_relative_position_bias=True, num_labels=3)
    torch.manual_seed(0)
    model = T.BeitForImageClassification(config).double().eval()
    blocks = symopt.attention_blocks(model)
    handle = symopt.attention_heads(model, blocks, strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[0, 4 + 2, 4 + 3]] = 0  # (block 0: head 0; block 1: heads 2 and 3)
        handle.constraint.gates[[1]] *= 5  # (a head whose bias row matters: the rows must be the kept heads')
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(pixels).logits
    small = _compressed(model, example_input=(pixels,))
    assert [small.get_submodule(b).get_submodule(_q_projection(small, b)).out_features for b in blocks] == [24, 16]
    assert [p.shape[-1] for n, p in small.named_parameters() if n.endswith("relative_position_bias_table")] == [4]
    with torch.no_grad():
        got = small(pixels).logits
        assert torch.allclose(got, want, atol=1e-12, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(type(model), tmp_path)
    with torch.no_grad():
        assert torch.equal(back(pixels).logits, got)


def _q_projection(model, block) -> str:
    """The name of the first Linear layer of ``block`` (its q projection)."""
    return next(name for name, m in model.get_submodule(block).named_modules() if isinstance(m, torch.nn.Linear))


def test_a_layout_records_narrowed_tensors_of_a_module_it_does_not_rebuild():
    """A model's own module (not a layer type symopt rebuilds) whose parameter or buffer export narrowed is recorded
    by those tensors' shapes; the rebuild gives the module the config builds tensors of those shapes, and the
    weights load into them."""
    from symopt import layout

    class Table(torch.nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(5, heads))
            self.register_buffer("index", torch.arange(heads))

    class Net(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.bias = Table(config["heads"])
            self.out = torch.nn.Linear(4, 2)

    small = Net({"heads": 4})
    small.bias.table = torch.nn.Parameter(torch.randn(5, 3))
    small.bias.index = torch.arange(3)
    saved = layout.record(small)
    assert saved["shapes"] == {"bias": {"table": [5, 3], "index": [3]}} and saved["modules"] == {}
    again = Net({"heads": 4})
    layout.rebuild(again, json.loads(json.dumps(saved)))
    again.load_state_dict(small.state_dict())
    assert torch.equal(again.bias.table, small.bias.table) and again.bias.table.requires_grad
    assert torch.equal(again.bias.index, small.bias.index)


def test_a_saved_layout_naming_a_layer_this_environment_cannot_build_is_refused_by_name():
    from symopt import layout
    model = _bert()
    saved = {"modules": {"classifier": {"type": "Imaginary", "arguments": {}}}, "attributes": {}}
    with pytest.raises(ValueError, match="holds a layer of type Imaginary, which this environment cannot build"):
        layout.rebuild(model, saved)
    conv1d = {"modules": {"classifier": {"type": "Conv1D", "arguments": {"nf": 3, "nx": 16}}}, "attributes": {}}
    layout.rebuild(model, conv1d)  # (an optional library's layer, imported on first use)
    assert type(model.classifier) is transformers.pytorch_utils.Conv1D and model.classifier.weight.shape == (16, 3)


def test_a_head_budget_on_gpt_neox_per_head_packed_attention_lands_and_round_trips(tmp_path):
    """GPT-NeoX (Pythia) packs head h's q, k and v side by side in `query_key_value` and reshapes by its
    `head_size` (no head count kept): attention_heads reads that packing from the layer names, a global budget
    of 3 heads of 8 lands under Adam, export narrows `query_key_value` / `dense` with the same logits (nothing
    to lower), and symopt's layout round-trips it (the config derives head_size from the head count)."""
    config = transformers.GPTNeoXConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=16, attention_bias=True)
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).double()
    blocks = ["gpt_neox.layers.0.attention", "gpt_neox.layers.1.attention"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    assert handle.constraint.attention_blocks[0]["fused"] == "per head"
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 4)
    assert sum(kept) == 3 and min(kept) >= 1
    small = _compressed(model)
    assert [(layer.attention.query_key_value.out_features, layer.attention.dense.in_features)
            for layer in small.gpt_neox.layers] == [(24 * k, 8 * k) for k in kept]
    with torch.no_grad():
        want = small(LLAMA_IDS).logits
        assert torch.allclose(want, model(LLAMA_IDS).logits, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(transformers.GPTNeoXForCausalLM, tmp_path)
    with torch.no_grad():
        assert torch.equal(back(LLAMA_IDS).logits, want)


def test_phi3_fused_grouped_query_heads_land_export_and_round_trip(tmp_path):
    """Phi-3 packs q, then k, then v in one `qkv_proj`, k and v narrower (grouped-query attention: 4 query heads on
    2 k/v heads here), and splits its outputs at `config.num_attention_heads × head_dim`, the config every block
    shares. A global head budget of 3 k/v heads (with their query heads) lands under Adam; export narrows
    `qkv_proj` / `o_proj` per block, lowers `num_key_value_heads`, and gives a narrowed block a config of its own
    with its counts, so the logits are the model's; symopt's layout records those counts and the reloaded model
    computes the same bits. The model's own config is left as it was."""
    config = transformers.Phi3Config(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).double()
    blocks = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    info = handle.constraint.attention_blocks[0]
    assert (info["fused"], info["heads"], info["units"], info["kv_count_attribute"]) == ("thirds", 4, 2,
                                                                                       "num_key_value_heads")
    kept, want = _landed(model, handle, per_layer=2, budget=3)
    small = _compressed(model)
    layers = [layer.self_attn for layer in small.model.layers]
    assert [(a.qkv_proj.out_features, a.o_proj.in_features, a.num_key_value_heads) for a in layers] == [
        (32 * k, 16 * k, k) for k in kept]
    assert [a.config.num_attention_heads for a in layers] == [2 * k for k in kept]
    assert small.config.num_attention_heads == 4 and config.num_attention_heads == 4
    with torch.no_grad():
        got = small(LLAMA_IDS).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(transformers.Phi3ForCausalLM, tmp_path)
    with torch.no_grad():
        assert torch.equal(back(LLAMA_IDS).logits, got)


def test_falcon_grouped_query_heads_packed_per_k_v_head_land_export_and_round_trip(tmp_path):
    """Falcon's new decoder architecture packs, for each k/v head, its query heads' q, then its k, then its v in one
    `query_key_value` (the "per head" packing under grouped-query attention, its k/v count read from the block's
    `num_kv_heads`). A global budget of 3 of the 4 units lands under Adam; export narrows both layers per block and
    lowers `num_heads` and `num_kv_heads`, with the model's logits. Falcon's config derives `head_dim` (a read-only
    property) from the hidden size, so no config describes the narrower blocks: symopt's layout records them and
    the reload computes the same bits."""
    config = transformers.FalconConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_kv_heads=2, new_decoder_architecture=True, alibi=False,
                                       max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.FalconForCausalLM(config).double()
    blocks = ["transformer.h.0.self_attention", "transformer.h.1.self_attention"]
    handle = symopt.attention_heads(model, blocks, max_heads=3, total_steps=40)
    info = handle.constraint.attention_blocks[0]
    assert (info["fused"], info["heads"], info["units"], info["kv_count_attribute"]) == ("per head", 4, 2,
                                                                                       "num_kv_heads")
    assert handle.constraint.unit_maps[0].tolist() == [0] * 32 + [1] * 32  # (2 query heads, k, v: 4 × 8 rows a unit)
    kept, want = _landed(model, handle, per_layer=2, budget=3)
    small = _compressed(model)
    layers = [layer.self_attention for layer in small.transformer.h]
    assert [(a.query_key_value.out_features, a.dense.in_features, a.num_heads, a.num_kv_heads) for a in layers] == [
        (32 * k, 16 * k, 2 * k, k) for k in kept]
    assert small.config.num_attention_heads == 4
    _reloads_alike(small, transformers.FalconForCausalLM, want, tmp_path, atol=1e-10)


def test_gpt_bigcode_heads_are_read_per_head_under_gpt2_names():
    """GPTBigCode (StarCoder's family) names its fused layers as GPT-2 does (c_attn, c_proj) but, with every head's
    own k and v, packs head h's q, k, v side by side: its units are read per head (in thirds they would mix heads,
    and export would find the rewrite moved the logits), and export removes two dead heads with the logits."""
    config = transformers.GPTBigCodeConfig(vocab_size=40, n_embd=32, n_layer=1, n_head=4, n_positions=16,
                                           multi_query=False)
    torch.manual_seed(0)
    model = transformers.GPTBigCodeForCausalLM(config).double().eval()
    handle = symopt.attention_heads(model, "transformer.h.0.attn", strength=1e-3)
    assert handle.constraint.attention_blocks[0]["fused"] == "per head"
    assert handle.constraint.unit_maps[0].tolist() == [h for h in range(4) for _ in range(24)]
    with torch.no_grad():
        handle.constraint.gates[[1, 2]] = 0
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    attention = small.transformer.h[0].attn
    assert (attention.c_attn.out_features, attention.c_proj.in_features, attention.num_heads) == (48, 16, 2)
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS).logits, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_deberta_v2_heads_take_their_relative_position_projections_along(shared, tmp_path):
    """DeBERTa-v2 keeps q, k, v as `self.query_proj` … and the output in `output.dense`; its disentangled attention
    projects the relative-position embeddings per head, with q's and k's own layers (`share_att_key`, as
    DeBERTa-v3) or with `pos_query_proj` / `pos_key_proj` of its own, whose rows a unit then takes too. Export
    narrows every one of them with the logits, and symopt's round trip reloads them."""
    config = T.DebertaV2Config(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=40, relative_attention=True,
                               pos_att_type=["p2c", "c2p"], share_att_key=shared, position_buckets=8,
                               max_relative_positions=16, num_labels=3)
    torch.manual_seed(0)
    model = T.DebertaV2ForSequenceClassification(config).double().eval()
    blocks = symopt.attention_blocks(model)
    assert blocks == ["deberta.encoder.layer.0.attention", "deberta.encoder.layer.1.attention"]
    handle = symopt.attention_heads(model, blocks, strength=1e-3)
    members = [m.qualname.rsplit(".", 2)[-2] for m in handle.members]
    assert ("pos_key_proj" in members and "pos_query_proj" in members) is not shared
    with torch.no_grad():
        handle.constraint.gates[[1, 4, 7]] = 0  # (block 0: head 1; block 1: heads 0 and 3)
        want = model(IDS % 57 + 3).logits
    small = _compressed(model)
    for layer, heads in zip(small.deberta.encoder.layer, (3, 2)):
        attention = layer.attention.self
        narrowed = [attention.query_proj, attention.key_proj, attention.value_proj] + (
            [] if shared else [attention.pos_key_proj, attention.pos_query_proj])
        assert [p.out_features for p in narrowed] == [8 * heads] * len(narrowed)
        assert attention.num_attention_heads == heads
    _reloads_alike(small, T.DebertaV2ForSequenceClassification, want, tmp_path, atol=1e-12, ids=IDS % 57 + 3,
                   reload_atol=1e-12)


def test_multi_query_gemma_loses_query_heads_and_round_trips(tmp_path):
    """Gemma-2B's attention reads one k/v head from every query head: a unit is a query head, so a head budget can
    bind (a unit per k/v head would be the whole block). A global budget of 5 of the 8 query heads lands under
    Adam; export narrows q_proj and o_proj, keeps k_proj and v_proj, lowers num_key_value_groups (the repeat of the
    one k/v head), with the logits; symopt's round trip reloads it. Per-layer budgets that keep 2 heads each let the
    model's config say it (num_attention_heads 2, num_key_value_heads 1), and the class's own save round-trips."""
    config = T.GemmaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=8, intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = T.GemmaForCausalLM(config).double()
    blocks = symopt.attention_blocks(model)
    handle = symopt.attention_heads(model, blocks, max_heads=5, total_steps=40)
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 4)
    assert sum(kept) == 5 and min(kept) >= 1
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    layers = [layer.self_attn for layer in small.model.layers]
    assert [(a.q_proj.out_features, a.k_proj.out_features, a.o_proj.in_features, a.num_key_value_groups)
            for a in layers] == [(8 * k, 8, 8 * k, k) for k in kept]
    with torch.no_grad():
        got = small(LLAMA_IDS).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path / "global")
    back = symopt.from_pretrained(T.GemmaForCausalLM, tmp_path / "global")
    with torch.no_grad():
        assert torch.allclose(back(LLAMA_IDS).logits, got, atol=1e-12, rtol=0)
    torch.manual_seed(0)
    model = T.GemmaForCausalLM(config).double().eval()
    for block in blocks:
        gates = symopt.attention_heads(model, block, strength=1e-3).constraint.gates
        with torch.no_grad():
            gates[[0, 3]] = 0
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (2, 1)
    small.save_pretrained(tmp_path / "plain")
    again = _class_load(T.GemmaForCausalLM, tmp_path / "plain")
    assert [layer.self_attn.q_proj.out_features for layer in again.model.layers] == [16, 16]
    with torch.no_grad():
        # (1e-6, not the bit: an untouched float64 Gemma reloaded by its own class differs by 8e-8 too, measured)
        assert torch.allclose(again(LLAMA_IDS).logits, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["falcon", "gpt_bigcode"])
def test_fused_multi_query_heads_land_query_heads_and_keep_the_k_v_head(family, tmp_path):
    """Falcon-7B (`multi_query`, the old decoder architecture) and StarCoder (GPTBigCode with `multi_query`) fuse q
    for every head and the one k/v head every query head reads into one layer. A unit per k/v head would be the
    whole block: a unit is a query head, and the k and v outputs are shared (`SHARED`: not gated, not decayed, kept
    by the landing). A global budget of 5 of the 8 query heads lands under Adam; export narrows the fused layer to
    the kept heads' q outputs and the whole k/v head, the output layer's inputs likewise, lowers the counts, with
    the logits; symopt's round trip reloads it."""
    if family == "falcon":
        config = transformers.FalconConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           multi_query=True, new_decoder_architecture=False, alibi=False,
                                           max_position_embeddings=16, bos_token_id=0, eos_token_id=1)
        cls, fused, out = transformers.FalconForCausalLM, "query_key_value", "dense"
    else:
        config = transformers.GPTBigCodeConfig(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                               multi_query=True, bos_token_id=0, eos_token_id=1)
        cls, fused, out = transformers.GPTBigCodeForCausalLM, "c_attn", "c_proj"
    torch.manual_seed(0)
    model = cls(config).double()
    blocks = symopt.attention_blocks(model)
    assert len(blocks) == 2
    handle = symopt.attention_heads(model, blocks, max_heads=5, total_steps=40)
    info = handle.constraint.attention_blocks[0]
    assert (info["heads"], info["units"], info["shared_kv"]) == (4, 4, True)
    assert handle.constraint.unit_maps[0].tolist() == [h for h in range(4) for _ in range(8)] + [-1] * 16
    attention = [model.get_submodule(b) for b in blocks]
    kv_before = [getattr(a, fused).weight.detach()[32:].clone() for a in attention]
    _adam(model, 45, LLAMA_IDS, LLAMA_IDS)
    kept = _kept(handle, 4)
    assert sum(kept) == 5 and min(kept) >= 1
    for a, before in zip(attention, kv_before):  # (the k/v head trained on, undecayed)
        after = getattr(a, fused).weight.detach()[32:]
        assert bool(after.norm(dim=1).gt(0).all()) and not torch.equal(after, before)
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    layers = [small.get_submodule(b) for b in blocks]
    # (Falcon keeps no num_key_value_groups before transformers 5)
    assert [(getattr(a, fused).out_features, getattr(a, out).in_features, a.num_heads,
             getattr(a, "num_key_value_groups", a.num_heads)) for a in layers] == [(8 * k + 16, 8 * k, k, k) for k in kept]
    with torch.no_grad():
        got = small(LLAMA_IDS).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(cls, tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(LLAMA_IDS).logits, got, atol=1e-12, rtol=0)


def test_a_config_whose_head_dim_is_read_only_is_left_as_it_was():
    """Where every block kept the same heads, export asks whether the model's config could say so; Falcon's
    `head_dim` is a read-only property (hidden size over heads) that cannot say the kept width: the config stays,
    and the export still computes the model's logits (the attempt raised AttributeError before)."""
    config = transformers.FalconConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_kv_heads=2, new_decoder_architecture=True, alibi=False,
                                       max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.FalconForCausalLM(config).double().eval()
    for i in range(2):
        handle = symopt.attention_heads(model, f"transformer.h.{i}.self_attention", strength=1e-3)
        with torch.no_grad():
            handle.constraint.gates[[1]] = 0
    with torch.no_grad():
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert [layer.self_attention.num_heads for layer in small.transformer.h] == [2, 2]
    assert (small.config.num_attention_heads, small.config.num_kv_heads) == (4, 2)
    with torch.no_grad():
        assert torch.allclose(small(LLAMA_IDS).logits, want, atol=1e-10, rtol=0)


def test_phi3_blocks_that_keep_the_same_heads_share_a_config_that_says_so(tmp_path):
    """Where every Phi-3 block kept the same k/v heads, the model's config with those counts (and head_dim, which
    Phi-3 reads where its config has one) builds exactly the export: it replaces the model's, every block shares it
    again, and the class's own save_pretrained / from_pretrained round-trip the same logits."""
    config = transformers.Phi3Config(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).double().eval()
    handles = [symopt.attention_heads(model, f"model.layers.{i}.self_attn", strength=1e-3) for i in range(2)]
    with torch.no_grad():
        for handle, dead in zip(handles, (0, 1)):
            handle.constraint.gates[[dead]] = 0
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads, small.config.head_dim) == (2, 1, 8)
    assert all(layer.self_attn.config is small.config and not hasattr(layer.self_attn, "symopt_config_heads")
               for layer in small.model.layers)
    with torch.no_grad():
        got = small(LLAMA_IDS).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    small.save_pretrained(tmp_path)
    back = _class_load(transformers.Phi3ForCausalLM, tmp_path)
    with torch.no_grad():
        assert torch.equal(back(LLAMA_IDS).logits, got)


def test_a_fused_grouped_query_layer_under_other_names_is_read_from_its_kv_count_or_kv_heads():
    """Under names not known for grouped-query attention (GPT-2's here), narrower k and v are read from the block's
    own k/v head count (Phi-3's num_key_value_heads) or from kv_heads=, to the same units as under Phi-3's names;
    with neither, 2 × the inner width could be a cross-attention's k and v: refused, naming kv_heads."""
    config = transformers.Phi3Config(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=2)

    def phi3(renamed: bool):
        model = transformers.Phi3ForCausalLM(config)
        attention = model.model.layers[0].self_attn
        if renamed:
            attention.c_attn, attention.c_proj = attention.qkv_proj, attention.o_proj
        return model, attention

    own_names = phi3(False)[0]
    want = symopt.attention_heads(own_names, "model.layers.0.self_attn").constraint.unit_maps
    model, attention = phi3(True)
    counted = symopt.attention_heads(model, "model.layers.0.self_attn", projections=("c_attn", "c_proj"))
    assert all(torch.equal(a, b) for a, b in zip(counted.constraint.unit_maps, want))
    assert counted.constraint.attention_blocks[0]["kv_count_attribute"] == "num_key_value_heads"
    model, attention = phi3(True)
    del attention.num_key_value_heads
    with pytest.raises(ValueError, match=r"64 outputs, not 3 × the 32 inputs of 'c_proj'.*give kv_heads="):
        symopt.attention_heads(model, "model.layers.0.self_attn", projections=("c_attn", "c_proj"))
    assert symopt.list_constraints(model) == []
    told = symopt.attention_heads(model, "model.layers.0.self_attn", projections=("c_attn", "c_proj"), kv_heads=2)
    assert all(torch.equal(a, b) for a, b in zip(told.constraint.unit_maps, want))


def test_bloom_heads_leave_with_their_alibi_rows_and_round_trip(tmp_path):
    """BLOOM packs q, k, v per head as GPT-NeoX does, and its model builds one ALiBi tensor (a slope per head
    of the config's count) for every block: export narrows each block and hands it its kept heads' rows, so
    the logits are the model's; the config keeps the original count (the slopes depend on it) and symopt's
    layout records the kept heads, so the reloaded model computes the same bits. A second export of the
    exported model keeps counting in the original heads."""
    config = transformers.BloomConfig(vocab_size=40, hidden_size=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(config).double().eval()
    handles = [symopt.attention_heads(model, f"transformer.h.{i}.self_attention", strength=1e-3) for i in range(2)]
    assert handles[0].constraint.attention_blocks[0]["fused"] == "per head"
    with torch.no_grad():
        handles[0].constraint.gates[[1, 2]] = 0
        handles[1].constraint.gates[[0]] = 0
        want = model(LLAMA_IDS).logits
    small = _compressed(model)
    assert [block.self_attention.query_key_value.out_features for block in small.transformer.h] == [48, 72]
    assert [block.self_attention.num_heads for block in small.transformer.h] == [2, 3]
    assert small.config.n_head == 4
    with torch.no_grad():
        got = small(LLAMA_IDS).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    with pytest.raises(Exception, match="symopt.save_pretrained"):
        small.save_pretrained(tmp_path / "own")
    symopt.save_pretrained(small, tmp_path)
    back = symopt.from_pretrained(transformers.BloomForCausalLM, tmp_path).double().eval()
    with torch.no_grad():
        assert torch.equal(back(LLAMA_IDS).logits, got)
    handle = symopt.attention_heads(small, "transformer.h.1.self_attention", strength=1e-3)
    with torch.no_grad():
        handle.constraint.gates[[0]] = 0  # (its first kept head: the original head 1)
        want = small(LLAMA_IDS).logits
    smaller = _compressed(small)
    assert smaller.transformer.h[1].self_attention.num_heads == 2
    with torch.no_grad():
        assert torch.allclose(smaller(LLAMA_IDS).logits, want, atol=1e-10, rtol=0)
