"""t5_gqa weights that a checkpoint does not hold (from_pretrained with missing keys, models built on the meta device)
are initialised by stock T5's rules, as stock T5 initialises them."""

import math

import pytest
import torch
import transformers
from conftest import make_t5
from helpers import drop, initialised_on_meta, missing_mixers_start_at
from transformers import AutoModelForSeq2SeqLM

import hf_gqa
from hf_gqa.io.auto import model_class
from hf_gqa.modeling.modeling_t5_gqa import T5GQAForConditionalGeneration

ALL = ("encoder", "decoder_self", "cross")
HEADLESS = ["T5ForConditionalGeneration", "T5Model", "T5EncoderModel"]
HEADS = ["T5ForSequenceClassification", "T5ForTokenClassification", "T5ForQuestionAnswering"]


def t5_init_std(key: str, config) -> float | None:
    """The std T5's `_init_weights` draws a weight from (transformers' T5PreTrainedModel, written out here), None for
    weights it sets to a constant."""
    f, d_model, d_kv, d_ff, heads = (
        config.initializer_factor,
        config.d_model,
        config.d_kv,
        config.d_ff,
        config.num_heads,
    )
    rules = {
        "shared.weight": f,
        "embed_tokens.weight": f,  # the shared embedding, tied
        "lm_head.weight": f,
        ".q.weight": f * (d_model * d_kv) ** -0.5,
        ".k.weight": f * d_model**-0.5,
        ".v.weight": f * d_model**-0.5,
        ".o.weight": f * (heads * d_kv) ** -0.5,
        ".relative_attention_bias.weight": f * d_model**-0.5,
        ".wi.weight": f * d_model**-0.5,
        ".wi_0.weight": f * d_model**-0.5,
        ".wi_1.weight": f * d_model**-0.5,
        ".wo.weight": f * d_ff**-0.5,
        "classification_head.dense.weight": f * d_model**-0.5,
        "classification_head.out_proj.weight": f * d_model**-0.5,
        "classifier.weight": f,
        "qa_outputs.weight": f * d_model**-0.5,
    }
    return next((std for suffix, std in rules.items() if key.endswith(suffix)), None)


def missing_block_one(key: str) -> bool:
    """Keep everything but block 1 of each stack, the embeddings, the head and the decoder's relative bias."""
    lost = "block.1." in key or key in ("shared.weight", "lm_head.weight")
    return not lost and key != "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def test_missing_weights_are_drawn_as_stock_t5_draws_them(tmp_path):
    """With as many K/V heads as query heads, t5_gqa and stock T5 have the same parameters in the same order, so the
    same seed draws the same missing weights: bit for bit what stock T5's `_init_weights` gives."""
    source = make_t5("flan")
    source.save_pretrained(tmp_path / "stock")
    hf_gqa.convert(source, variant="mha", attention=ALL).save_pretrained(tmp_path / "gqa")
    dropped = drop(tmp_path / "stock", missing_block_one)
    assert drop(tmp_path / "gqa", missing_block_one) == dropped and len(dropped) > 20
    loaded = {}
    for name in ("stock", "gqa"):
        torch.manual_seed(0)
        loaded[name] = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / name).state_dict()
    for key in dropped:
        assert torch.equal(loaded["gqa"][key], loaded["stock"][key]), key


def assert_t5_statistics(state: dict, keys, config):
    checked = 0
    for key in keys:
        tensor = state[key].double()
        std = t5_init_std(key, config)
        if std is None:  # layer norms start at 1, biases at 0
            expected = 1.0 if key.endswith("layer_norm.weight") else 0.0
            assert torch.all(tensor == expected), key
            continue
        n = tensor.numel()
        # The sample std of n normal draws is within 5 standard errors (std / sqrt(2n)) of the true one.
        assert abs(tensor.std().item() / std - 1) < 5 / math.sqrt(2 * n), (key, tensor.std().item(), std)
        assert abs(tensor.mean().item()) < 5 * std / math.sqrt(n), key
        checked += 1
    assert checked


@pytest.mark.parametrize("groups", [2, 1])
def test_missing_grouped_weights_follow_t5_init_rules(tmp_path, groups):
    source = make_t5("flan")
    hf_gqa.convert(source, groups=groups, attention=ALL).save_pretrained(tmp_path / "gqa")
    dropped = drop(tmp_path / "gqa", missing_block_one)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "gqa")
    assert isinstance(model, T5GQAForConditionalGeneration)
    assert model.decoder.block[1].layer[0].SelfAttention.k.out_features == groups * 8
    assert_t5_statistics(model.state_dict(), dropped, model.config)


@pytest.mark.parametrize("name", HEADLESS + HEADS)
def test_a_model_built_on_the_meta_device_is_initialised_as_stock_t5(name):
    """`with torch.device("meta")`, then `to_empty` and `init_weights`: every weight (task heads included) as stock
    T5 draws it."""
    source = make_t5("flan")
    config = hf_gqa.convert(source, variant="mha", attention=ALL).config
    source.config.num_labels = config.num_labels = 2
    states = {}
    for cls, cfg in ((getattr(transformers, name), source.config), (model_class(name.replace("T5", "T5GQA")), config)):
        model = initialised_on_meta(cls, cfg, seed=0)
        states[cls.__module__.startswith("hf_gqa")] = model.state_dict()
    gqa, stock = states[True], states[False]
    assert gqa.keys() == stock.keys()
    for key in stock:
        assert torch.equal(gqa[key], stock[key]), key
    assert_t5_statistics(gqa, list(gqa), config)


def test_missing_wgqa_mixers_start_at_the_mean_and_dgqa_state_at_uniform(tmp_path):
    """hf-gqa's own parameters and buffers inside the stacks: WGQA mixing weights at 1 / (heads per group), DGQA's
    allocation uniform and its statistics empty, where the checkpoint lacks them; loaded ones are kept."""
    source = make_t5("flan")
    hf_gqa.convert(source, variant="wgqa", groups=2).save_pretrained(tmp_path / "wgqa")
    mixers = drop(tmp_path / "wgqa", lambda k: not (k.endswith("mixer.weight") and "block.0." in k))
    assert len(mixers) == 4  # decoder block 0: self and cross, k and v
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "wgqa").state_dict()
    for key in mixers:
        assert torch.equal(loaded[key], torch.full_like(loaded[key], 2 / 8)), key
    dgqa = hf_gqa.convert(source, variant="dgqa", groups=2)
    kept = dgqa.decoder.block[1].layer[0].SelfAttention.routing
    kept.allocation.copy_(torch.tensor([3, 5]))
    kept.norm_sum.fill_(7.0)
    dgqa.save_pretrained(tmp_path / "dgqa")
    state = drop(tmp_path / "dgqa", lambda k: not (".routing." in k and "block.0." in k))
    assert len(state) == 10  # decoder block 0: self and cross, five buffers each
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "dgqa").state_dict()
    for key in state:
        expected = torch.tensor([4, 4]) if key.endswith("allocation") else torch.zeros_like(loaded[key])
        assert torch.equal(loaded[key], expected), key
    prefix = "decoder.block.1.layer.0.SelfAttention.routing"
    assert loaded[f"{prefix}.allocation"].tolist() == [3, 5] and loaded[f"{prefix}.norm_sum"].tolist() == [7.0, 7.0]


@pytest.mark.parametrize(("weights_init", "expected"), [(0.5, 0.5), (-1.25, -1.25), ("mean", 2 / 8)])
def test_missing_t5_mixers_start_at_the_declared_initial_value(tmp_path, weights_init, expected):
    """As the decoder forms do: a T5 training form converted with `--weights-init 0.5` records it (`gqa_init`), and a
    mixer its checkpoint lacks, or one built from the config, starts there, as the converted ones did."""
    model = hf_gqa.convert(make_t5("flan"), variant="wgqa", groups=2, weights_init=weights_init)
    dropped, built = missing_mixers_start_at(
        tmp_path / "wgqa", model, AutoModelForSeq2SeqLM, lambda key: "block.0." in key, expected
    )
    assert dropped == 4 and built > 0
