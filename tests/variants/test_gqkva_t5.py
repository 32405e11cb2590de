"""GQKVA on T5 (Javadi et al., 2023) against an oracle built by hand: the source T5 with each head's query and
key/value weights replaced by its groups' means and each head's relative position bias by the mean over the heads
that share its (query group, key/value group) pair."""

import pytest
import torch
from conftest import batch, make_t5
from transformers import T5ForConditionalGeneration

import hf_gqa

ALL = ("encoder", "decoder_self", "cross")
# Each converted kind: the attention modules it covers and the relative-bias table its layers read.
MODULES = {
    "encoder": ("encoder.block.{i}.layer.0.SelfAttention", "encoder.block.0.layer.0.SelfAttention"),
    "decoder_self": ("decoder.block.{i}.layer.0.SelfAttention", "decoder.block.0.layer.0.SelfAttention"),
    "cross": ("decoder.block.{i}.layer.1.EncDecAttention", None),  # cross-attention has no relative bias
}


def pooled_oracle(source: T5ForConditionalGeneration, gq: int, gkv: int, kinds) -> T5ForConditionalGeneration:
    """Written out head by head, independently of hf-gqa: H attention heads kept, each reading its query group's
    mean query rows, its key/value group's mean key and value rows, and its pair's mean relative-bias column."""
    config = source.config
    heads, d = config.num_heads, config.d_kv
    q_group = [h // (heads // gq) for h in range(heads)]
    kv_group = [h // (heads // gkv) for h in range(heads)]
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    original = source.state_dict()
    for kind in kinds:
        template, bias_module = MODULES[kind]
        layers = config.num_layers if kind == "encoder" else config.num_decoder_layers
        for i in range(layers):
            prefix = template.format(i=i)
            for proj, group in (("q", q_group), ("k", kv_group), ("v", kv_group)):
                weight = original[f"{prefix}.{proj}.weight"]
                new = sd[f"{prefix}.{proj}.weight"]
                for h in range(heads):
                    members = [m for m in range(heads) if group[m] == group[h]]
                    new[h * d : (h + 1) * d] = sum(weight[m * d : (m + 1) * d] for m in members) / len(members)
        if bias_module is not None:
            key = f"{bias_module}.relative_attention_bias.weight"
            table, new = original[key], sd[key]  # (buckets, H)
            for h in range(heads):
                pair = [m for m in range(heads) if q_group[m] == q_group[h] and kv_group[m] == kv_group[h]]
                new[:, h] = sum(table[:, m] for m in pair) / len(pair)
    return T5ForConditionalGeneration.from_pretrained(None, config=config, state_dict=sd).eval()


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits.double()


@pytest.mark.parametrize(
    "num_heads, gq, gkv, kinds",
    [
        (8, 4, 2, None),  # the case: each filled pair holds 2 heads of different biases
        (8, 2, 4, None),
        (8, 4, 2, ALL),  # the encoder's bias table too
        (12, 3, 2, ALL),  # pairs of 4 and of 2 heads
    ],
)
def test_gqkva_on_t5_equals_the_pooled_queries_keys_and_pair_bias_oracle(flavour, num_heads, gq, gkv, kinds):
    source = make_t5(flavour, num_heads=num_heads)
    inputs = batch()
    converted = hf_gqa.convert(source, variant="gqkva", q_groups=gq, groups=gkv, attention=kinds).eval()
    expected = logits(pooled_oracle(source, gq, gkv, kinds or ("decoder_self", "cross")), inputs)
    got = logits(converted, inputs)
    assert (got - logits(source, inputs)).abs().max() > 1e-2  # pooling changes the model
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_oracle_sees_a_pair_reading_one_head_bias():
    """The oracle's bias averaging matters: with only q/k/v pooled (every head its own bias), it differs."""
    source = make_t5("flan")
    inputs = batch()
    converted = logits(hf_gqa.convert(source, variant="gqkva", q_groups=4, groups=2).eval(), inputs)
    oracle = pooled_oracle(source, 4, 2, ("decoder_self", "cross"))
    with torch.no_grad():
        key = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        oracle.get_parameter(key).copy_(source.get_parameter(key))
    assert (converted - logits(oracle, inputs)).abs().max() > 1e-2
