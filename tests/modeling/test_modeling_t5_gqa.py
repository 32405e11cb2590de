"""Numerical invariants of the t5_gqa model classes."""

import hashlib
import inspect

import pytest
import torch
from conftest import batch, make_mt5, make_t5
from transformers import T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention

import hf_gqa
from hf_gqa import GQASpec, T5GQAConfig, plan_conversion
from hf_gqa.core.grouping import regroup_heads
from hf_gqa.modeling import gqa_attention
from hf_gqa.modeling.modeling_t5_gqa import T5GQAAttention

ALL = ("encoder", "decoder_self", "cross")


def logits(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


def oracle(model, spec):
    """The source MHA model with every K/V head replaced by its group's pooled head (H heads kept)."""
    plan = plan_conversion(model.config.to_dict(), spec)
    sd = model.state_dict()
    converted = plan.convert_state_dict(sd)
    for block in plan.architecture.attention_blocks(model.config.to_dict()):
        before, after = plan.kv_heads.get(block.kind, (0, 0))
        for key in block.kv_keys if before != after else ():
            sd[key] = regroup_heads(converted[key], after, before)
    return type(model).from_pretrained(None, config=model.config, state_dict=sd).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_groups_equal_heads_reproduce_the_source_exactly(flavour, attn):
    source = make_t5(flavour, num_decoder_layers=2)  # stock T5 generate() fails on a deeper decoder (upstream bug)
    source.set_attn_implementation(attn)
    converted = hf_gqa.convert(source, variant="mha", attention=ALL)
    converted.set_attn_implementation(attn)
    assert type(converted).__name__ == "T5GQAForConditionalGeneration"
    inputs = batch()
    diff = (logits(converted, **inputs) - logits(source, **inputs)).abs().max().item()
    assert diff < 1e-5, diff
    enc = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(source.generate(**enc, **kwargs), converted.generate(**enc, **kwargs))


@pytest.mark.parametrize(
    "groups, attention", [(2, None), (1, None), ({"encoder": 2, "decoder_self": 4, "cross": 1}, ALL)]
)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gqa_equals_the_pooled_mha_oracle(flavour, groups, attention, attn):
    source = make_t5(flavour)
    spec = GQASpec(groups=groups, attention=attention)
    converted = hf_gqa.convert(source, groups=groups, attention=attention)
    reference = oracle(source, spec)
    for m in (converted, reference):
        m.set_attn_implementation(attn)
    inputs = batch()
    out, ref = logits(converted, **inputs), logits(reference, **inputs)
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert (out - logits(source, **inputs)).abs().max() > 1e-3  # the conversion did change the model


def test_mean_pooled_projection_is_the_group_mean():
    source = make_t5("flan")
    converted = hf_gqa.convert(source, groups=2)
    x = torch.randn(2, 5, 48)
    old = source.decoder.block[1].layer[0].SelfAttention.k(x).view(2, 5, 8, 8)
    new = converted.decoder.block[1].layer[0].SelfAttention.k(x).view(2, 5, 2, 8)
    torch.testing.assert_close(new, old.view(2, 5, 2, 4, 8).mean(3), rtol=0, atol=1e-6)
    enc_old = source.encoder.block[0].layer[0].SelfAttention.k.weight
    assert torch.equal(converted.encoder.block[0].layer[0].SelfAttention.k.weight, enc_old)


def test_cache_holds_grouped_heads_and_generation_with_cache_equals_without():
    source = make_t5("flan")
    model = hf_gqa.convert(source, groups={"decoder_self": 2, "cross": 4})
    inputs = {k: v for k, v in batch().items() if k != "decoder_input_ids"}
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    out = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
    cache = out.past_key_values
    assert len(cache.self_attention_cache.layers) == 3  # decoder depth, not the encoder's 2
    for layer in cache.self_attention_cache.layers:
        assert layer.keys.shape[1] == 2 and layer.values.shape[1] == 2
    for layer in cache.cross_attention_cache.layers:
        assert layer.keys.shape == (3, 4, 9, 8)
    no_cache = model.generate(**inputs, **kwargs, use_cache=False)
    assert torch.equal(out.sequences, no_cache)
    source = make_t5("flan", num_decoder_layers=2)
    model = hf_gqa.convert(source, groups={"decoder_self": 2, "cross": 4})
    mha_cache = source.generate(**inputs, **kwargs, return_dict_in_generate=True).past_key_values
    cache = model.generate(**inputs, **kwargs, return_dict_in_generate=True).past_key_values
    ratio = mha_cache.self_attention_cache.layers[0].keys.numel() / cache.self_attention_cache.layers[0].keys.numel()
    assert ratio == 4


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_incremental_decoding_equals_a_full_forward(attn):
    model = hf_gqa.convert(make_t5("t5"), groups=2, attention=ALL)
    model.set_attn_implementation(attn)
    inputs = batch()
    full = logits(model, **inputs)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    enc = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    steps = []
    with torch.no_grad():
        for t in range(inputs["decoder_input_ids"].shape[1]):
            out = model(
                encoder_outputs=enc,
                attention_mask=inputs["attention_mask"],
                decoder_input_ids=inputs["decoder_input_ids"][:, t : t + 1],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)


def test_eager_equals_sdpa_and_output_attentions_uses_eager():
    model = hf_gqa.convert(make_t5("flan"), groups=2)
    inputs = batch()
    model.set_attn_implementation("eager")
    eager = model(**inputs, output_attentions=True)
    assert eager.cross_attentions[0].shape == (3, 8, 5, 9)  # H query heads of attention weights
    model.set_attn_implementation("sdpa")
    sdpa = model(**inputs)
    torch.testing.assert_close(sdpa.logits, eager.logits, rtol=0, atol=1e-4)


def test_sdpa_reads_grouped_kv_in_place_for_padded_batches(monkeypatch):
    """SDPA gets G-head K/V with enable_gqa (prefill) or folded queries (decode); repeat_kv is never called."""
    model = hf_gqa.convert(make_t5("flan"), groups=2, attention=ALL)
    model.set_attn_implementation("sdpa")
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape, k.shape, kwargs.get("enable_gqa", False)))
        return real_sdpa(q, k, v, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("repeat_kv materialised H key/value heads")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(gqa_attention, "repeat_kv", forbidden)
    inputs = {k: v for k, v in batch().items() if k != "decoder_input_ids"}
    model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert calls and all(k[1] == 2 for _, k, _ in calls)
    assert any(q[2] > 1 and gqa for q, _, gqa in calls)  # prefill: enable_gqa
    assert any(q[1] == 2 and q[2] == 4 for q, _, _ in calls)  # decode: (b, G, H/G, d) queries


def test_mt5_and_encoder_only_models():
    source = make_mt5()
    converted = hf_gqa.convert(source, variant="mha", attention=ALL)
    inputs = batch()
    assert (logits(converted, **inputs) - logits(source, **inputs)).abs().max() < 1e-5
    assert converted.config.gqa_source_model_type == "mt5"

    from transformers import T5EncoderModel

    t5 = make_t5("flan")
    encoder = T5EncoderModel.from_pretrained(None, config=t5.config, state_dict=t5.state_dict()).eval()
    converted = hf_gqa.convert(encoder, groups=2, attention=("encoder",))
    assert type(converted).__name__ == "T5GQAEncoderModel"
    assert converted.encoder.block[0].layer[0].SelfAttention.k.out_features == 16
    with pytest.raises(hf_gqa.HfGqaError, match="no decoder_self attention"):
        hf_gqa.convert(encoder, groups=2)


def test_config_validates_head_counts():
    with pytest.raises(Exception, match="must divide num_heads=8; valid values: \\[1, 2, 4, 8\\]"):
        T5GQAConfig(num_heads=8, num_key_value_heads=3)
    config = T5GQAConfig(num_heads=8, num_key_value_heads=2)
    assert (config.cross_num_key_value_heads, config.encoder_num_key_value_heads) == (2, 8)
    with pytest.raises(ValueError, match="must divide"):
        T5GQAAttention(T5GQAConfig(num_heads=8), num_key_value_heads=3)


# The hash of the transformers `T5Attention.forward` that `T5GQAAttention.forward` was copied from. When this test
# fails, upstream changed: port the change into hf_gqa/modeling/modeling_t5_gqa.py, then update the hash.
UPSTREAM_FORWARD_SHA256 = "a57bc3ed209bb7a8f632de32228de63c0d8e0d287da630b45adbc1bff2568fbf"


def test_forward_copy_matches_upstream():
    source = inspect.getsource(T5Attention.forward)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_FORWARD_SHA256


def test_stock_t5_is_unchanged_by_import():
    assert T5ForConditionalGeneration.__init__.__qualname__ == "T5ForConditionalGeneration.__init__"
