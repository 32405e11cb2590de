"""Decoder families with native `num_key_value_heads`: the output is a stock checkpoint."""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import hf_gqa
from hf_gqa.grouping import regroup_heads

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8)


def make(family: str, kv_heads: int = 8):
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=kv_heads)).eval()
    model = Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=kv_heads)).eval()
    with torch.no_grad():  # Qwen2 has k/v biases: make them matter
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.normal_()
            layer.self_attn.v_proj.bias.normal_()
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_mha_is_exact_and_gqa_equals_the_pooled_oracle(family):
    source = make(family)
    same = hf_gqa.convert(source, variant="mha")
    assert torch.equal(logits(same, IDS), logits(source, IDS))
    converted = hf_gqa.convert(source, groups=2)
    assert type(converted) is type(source) and converted.config.num_key_value_heads == 2
    sd = source.state_dict()
    for key in list(sd):
        if ".k_proj." in key or ".v_proj." in key:
            sd[key] = regroup_heads(regroup_heads(sd[key], 8, 2), 2, 8)
    oracle = type(source).from_pretrained(None, config=source.config, state_dict=sd).eval()
    torch.testing.assert_close(logits(converted, IDS), logits(oracle, IDS), rtol=0, atol=1e-5)
    cache = converted.generate(
        input_ids=IDS, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True
    )
    assert cache.past_key_values.layers[0].keys.shape[1] == 2
    no_cache = converted.generate(input_ids=IDS, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cache.sequences, no_cache)


def test_expand_then_reduce_reproduces_a_gqa_model():
    source = make("llama", kv_heads=2)
    expanded = hf_gqa.convert(source, variant="mha")
    assert expanded.config.num_key_value_heads == 8
    torch.testing.assert_close(logits(expanded, IDS), logits(source, IDS), rtol=0, atol=1e-6)
    back = hf_gqa.convert(expanded, groups=2)
    torch.testing.assert_close(logits(back, IDS), logits(source, IDS), rtol=0, atol=1e-6)
    with pytest.raises(hf_gqa.HfGqaError, match="valid values: 1, 2, 4, 8"):
        hf_gqa.convert(source, groups=3)


STOCK_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["hf_gqa"] = None
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 1
    """
)


def test_output_is_a_stock_checkpoint(tmp_path):
    converted = hf_gqa.convert(make("llama"), variant="mqa")
    hf_gqa.save_converted(converted, tmp_path / "mqa")
    assert not list((tmp_path / "mqa").glob("*.py"))
    assert "auto_map" not in (tmp_path / "mqa" / "config.json").read_text()
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOAD, str(tmp_path / "mqa")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
