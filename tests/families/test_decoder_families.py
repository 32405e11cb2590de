"""Decoder-only families: native `num_key_value_heads` families give stock checkpoints; GPT-NeoX becomes stock Phi."""

import subprocess
import sys

import pytest
import torch
from tiny_decoders import IDS, STOCK_LOAD, logits, make, make_neox
from transformers import GPTNeoXForCausalLM

import hf_gqa
from hf_gqa import GQASpec, plan_conversion
from hf_gqa.core.grouping import regroup_heads
from hf_gqa.families.decoders import QK_NORMS, NativeGQA

FAMILIES = NativeGQA.source_model_types


def has_qk_norm(model_type: str, config) -> bool:
    norm = QK_NORMS.get(model_type)
    return norm is not None and (norm.enabled_by is None or bool(getattr(config, norm.enabled_by)))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_converts_to_a_stock_model_that_groups_heads_like_transformers(model_type):
    source = make(model_type)
    assert torch.equal(logits(hf_gqa.convert(source, variant="mha")), logits(source))  # G == H: nothing changes
    converted, plan = hf_gqa.convert_model(source, GQASpec(groups=2), return_plan=True)
    assert type(converted) is type(source) and converted.config.num_key_value_heads == 2
    # Expanding copies each group's head to its members: equal iff transformers maps query head h to K/V head
    # h // (H/G), the contiguous grouping the converter assumes.
    expanded = hf_gqa.convert(converted, variant="mha")
    assert expanded.config.num_key_value_heads == 8
    torch.testing.assert_close(logits(expanded), logits(converted), rtol=0, atol=1e-6)
    assert (plan.approximate is not None) == has_qk_norm(model_type, source.config)


def pooled_oracle(source, groups: int):
    """The source with every K/V head (rows of k/v weights and biases) replaced by its group's mean: H heads kept."""
    sd = source.state_dict()
    heads, head_dim = source.config.num_attention_heads, NativeGQA.head_dim(source.config.to_dict())
    for key in list(sd):
        if ".k_proj." in key or ".v_proj." in key:
            sd[key] = regroup_heads(regroup_heads(sd[key], heads, groups), groups, heads)
        elif ".qkv_proj." in key:  # Phi-3: [Q | K | V] rows
            q, k, v = sd[key].split([heads * head_dim] * 3)
            sd[key] = torch.cat([q, *(regroup_heads(regroup_heads(t, heads, groups), groups, heads) for t in (k, v))])
    return type(source).from_pretrained(None, config=source.config, state_dict=sd).eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma", "phi3", "starcoder2", "mixtral"])
@pytest.mark.parametrize("groups", [2, 1])
def test_gqa_equals_the_pooled_keys_oracle(model_type, groups):
    source = make(model_type)
    converted = hf_gqa.convert(source, groups=groups)
    torch.testing.assert_close(logits(converted), logits(pooled_oracle(source, groups)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_the_cache_holds_g_heads_and_generation_matches_without_cache(model_type):
    converted = hf_gqa.convert(make(model_type), groups=2)
    out = converted.generate(
        input_ids=IDS, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True
    )
    assert out.past_key_values.layers[0].keys.shape[1] == 2
    no_cache = converted.generate(input_ids=IDS, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(out.sequences, no_cache)


def test_expand_then_reduce_reproduces_a_gqa_model():
    source = make("llama", kv_heads=2)
    expanded = hf_gqa.convert(source, variant="mha")
    assert expanded.config.num_key_value_heads == 8
    torch.testing.assert_close(logits(expanded), logits(source), rtol=0, atol=1e-6)
    back = hf_gqa.convert(expanded, groups=2)
    torch.testing.assert_close(logits(back), logits(source), rtol=0, atol=1e-6)
    with pytest.raises(hf_gqa.HfGqaError, match="valid values: 1, 2, 4, 8"):
        hf_gqa.convert(source, groups=3)
    config = dict(source.config.to_dict(), num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(
        hf_gqa.HfGqaError, match="cannot be reached from the 4 key/value heads.*valid values: 1, 2, 4, 12"
    ):
        plan_conversion(config, GQASpec(groups=6))


def test_per_head_norm_modules_are_pooled_with_their_heads():
    source = make("stablelm")
    converted = hf_gqa.convert(source, groups=2)
    attn_before, attn_after = source.model.layers[0].self_attn, converted.model.layers[0].self_attn
    assert len(attn_after.k_layernorm.norms) == 2
    expected = torch.stack([n.weight for n in attn_before.k_layernorm.norms[:4]]).mean(0)
    torch.testing.assert_close(attn_after.k_layernorm.norms[0].weight, expected)
    olmo2 = make("olmo2")
    norm = hf_gqa.convert(olmo2, groups=2).model.layers[1].self_attn.k_norm.weight
    assert norm.shape == (2 * 8,)


def test_a_tensor_layout_the_family_does_not_have_is_refused_by_name():
    source = make("llama")
    sd = {k.replace("k_proj", "qk_proj"): v for k, v in source.state_dict().items()}
    with pytest.raises(
        hf_gqa.HfGqaError, match=r"lacks tensors .* e\.g\. model\.layers\.0\.self_attn\.k_proj\.weight"
    ):
        hf_gqa.convert_state_dict(source.config.to_dict(), sd, GQASpec(groups=2))
    with pytest.raises(hf_gqa.HfGqaError, match="model_type 'falcon' is not supported"):
        plan_conversion({"model_type": "falcon"}, GQASpec(groups=2))


# GPT-NeoX / Pythia -> stock Phi


def test_gpt_neox_is_re_expressed_exactly_as_phi():
    source = make_neox()
    phi, plan = hf_gqa.convert_model(source, GQASpec(variant="mha"), return_plan=True)
    assert type(phi).__name__ == "PhiForCausalLM" and plan.reexpressed_from == "gpt_neox"
    torch.testing.assert_close(logits(phi), logits(source), rtol=0, atol=1e-5)
    source64 = make_neox(torch.float64)
    assert (logits(hf_gqa.convert(source64, variant="mha")) - logits(source64)).abs().max() < 1e-12


def test_gpt_neox_gqa_equals_its_pooled_keys_oracle():
    source = make_neox()
    converted = hf_gqa.convert(source, groups=2)
    assert type(converted).__name__ == "PhiForCausalLM" and converted.config.num_key_value_heads == 2
    sd = source.state_dict()
    for key in [k for k in sd if "query_key_value" in k]:  # [q|k|v] per head: pool the k and v of each group
        t = sd[key].reshape(8, 3, 8, *sd[key].shape[1:]).clone()
        for part in (1, 2):
            rows = t[:, part].reshape(64, *sd[key].shape[1:])
            t[:, part] = regroup_heads(regroup_heads(rows, 8, 2), 2, 8).reshape(t[:, part].shape)
        sd[key] = t.reshape(sd[key].shape)
    oracle = GPTNeoXForCausalLM.from_pretrained(None, config=source.config, state_dict=sd).eval()
    torch.testing.assert_close(logits(converted), logits(oracle), rtol=0, atol=1e-5)


def test_gpt_neox_without_parallel_residual_is_refused():
    source = make_neox(use_parallel_residual=False)
    with pytest.raises(hf_gqa.HfGqaError, match="use_parallel_residual=False"):
        hf_gqa.convert(source, groups=2)


@pytest.mark.parametrize("source", ["llama", "gpt_neox"])
def test_output_is_a_stock_checkpoint(tmp_path, source):
    model = make_neox() if source == "gpt_neox" else make("llama")
    converted = hf_gqa.convert(model, variant="mqa")
    hf_gqa.save_converted(converted, tmp_path / "mqa")
    assert not list((tmp_path / "mqa").glob("*.py"))
    assert "auto_map" not in (tmp_path / "mqa" / "config.json").read_text()
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOAD, str(tmp_path / "mqa"), type(converted).__name__],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_remote_code_family_list_matches_the_adapter():
    from hf_gqa.modeling.configuration_wgqa_decoder import WGQA_FAMILIES

    assert set(WGQA_FAMILIES) == set(NativeGQA.source_model_types) - {"phi3"}  # Phi-3's fused qkv has no WGQA form
