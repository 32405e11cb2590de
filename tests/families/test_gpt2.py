"""GPT-2 -> GQA: the `gpt2_gqa` config/model classes and the `gpt2` adapter (fused Conv1D c_attn)."""

import ast
import hashlib
import inspect
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_decoders import GPT2_SMALL, make_gpt2
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from transformers.cache_utils import DynamicCache
from transformers.integrations import sdpa_attention
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

import hf_gqa
from hf_gqa import GPT2GQAConfig, GQASpec, convert_state_dict, plan_conversion
from hf_gqa.modeling import modeling_gpt2_gqa
from hf_gqa.modeling.modeling_gpt2_gqa import GPT2GQAAttention

SMALL = GPT2_SMALL
H, E, LAYERS, VOCAB = SMALL["n_head"], SMALL["n_embd"], SMALL["n_layer"], SMALL["vocab_size"]
D = E // H
IDS = torch.randint(2, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=1)


def logits(model, ids=IDS, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def pooled_oracle(model, groups: int):
    """The stock MHA GPT-2 with each K/V head replaced by its group's mean head (H heads kept)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key in [k for k in sd if k.endswith("attn.c_attn.weight") or k.endswith("attn.c_attn.bias")]:
        t = sd[key]
        for start in (E, 2 * E):  # the K and V column blocks
            block = t[..., start : start + E]
            pooled = block.reshape(*block.shape[:-1], groups, H // groups, D).mean(-2, keepdim=True)
            t[..., start : start + E] = pooled.expand(*block.shape[:-1], groups, H // groups, D).reshape(block.shape)
    return type(model).from_pretrained(None, config=model.config, state_dict=sd).eval()


@pytest.fixture(scope="module")
def source():
    return make_gpt2()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_groups_equal_heads_reproduce_the_source_exactly(source, attn):
    source.set_attn_implementation(attn)
    converted = hf_gqa.convert(source, variant="mha")
    converted.set_attn_implementation(attn)
    assert type(converted) is hf_gqa.GPT2GQALMHeadModel
    assert converted.config.model_type == "gpt2_gqa" and converted.config.num_key_value_heads == H
    diff = (logits(converted) - logits(source)).abs().max().item()
    assert diff < 1e-5, diff
    assert torch.equal(converted.generate(input_ids=IDS, **GEN), source.generate(input_ids=IDS, **GEN))


@pytest.mark.parametrize("groups", [4, 2, 1])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gqa_equals_the_pooled_mha_oracle(source, groups, attn):
    converted = hf_gqa.convert(source, groups=groups)
    reference = pooled_oracle(source, groups)
    for m in (converted, reference, source):
        m.set_attn_implementation(attn)
    w = converted.transformer.h[1].attn.c_attn.weight
    assert w.shape == (E, E + 2 * groups * D) and converted.transformer.h[1].attn.c_attn.bias.shape == (w.shape[1],)
    out, ref = logits(converted), logits(reference)
    assert (out - ref).abs().max().item() < 1e-5
    assert (out - logits(source)).abs().max() > 1e-3  # the conversion did change the model


def test_query_columns_are_kept_and_kv_columns_are_group_means(source):
    converted = hf_gqa.convert(source, groups=2)
    old, new = source.transformer.h[0].attn.c_attn, converted.transformer.h[0].attn.c_attn
    assert torch.equal(new.weight[:, :E], old.weight[:, :E]) and torch.equal(new.bias[:E], old.bias[:E])
    x = torch.randn(3, E)
    k_old = old(x)[:, E : 2 * E].view(3, 2, 4, D).mean(2)
    v_old = old(x)[:, 2 * E :].view(3, 2, 4, D).mean(2)
    k_new, v_new = new(x)[:, E:].split(2 * D, dim=-1)
    torch.testing.assert_close(k_new.view(3, 2, D), k_old, rtol=0, atol=2e-6)  # fp32 means of values up to ~3
    torch.testing.assert_close(v_new.view(3, 2, D), v_old, rtol=0, atol=2e-6)


def test_cache_holds_grouped_heads_and_generation_with_cache_equals_without(source):
    model = hf_gqa.convert(source, groups=2)
    out = model.generate(input_ids=IDS, **GEN, return_dict_in_generate=True)
    cache = out.past_key_values
    assert isinstance(cache, DynamicCache) and len(cache.layers) == LAYERS
    for layer in cache.layers:
        assert layer.keys.shape == layer.values.shape == (2, 2, IDS.shape[1] + GEN["max_new_tokens"] - 1, D)
    assert torch.equal(out.sequences, model.generate(input_ids=IDS, **GEN, use_cache=False))
    mha = source.generate(input_ids=IDS, **GEN, return_dict_in_generate=True).past_key_values
    assert mha.layers[0].keys.numel() == 4 * cache.layers[0].keys.numel()
    static = model.generate(input_ids=IDS, **GEN, cache_implementation="static", return_dict_in_generate=True)
    assert static.past_key_values.layers[0].keys.shape[1] == 2  # sized from config.num_key_value_heads
    assert torch.equal(static.sequences, out.sequences)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_incremental_decoding_equals_a_full_forward(source, attn):
    model = hf_gqa.convert(source, groups=2)
    model.set_attn_implementation(attn)
    full = logits(model)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        steps = [model(input_ids=IDS[:, :4], past_key_values=cache, use_cache=True).logits]
        for t in range(4, IDS.shape[1]):
            steps.append(model(input_ids=IDS[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert cache.layers[0].keys.shape[1] == 2
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


def test_eager_equals_sdpa_with_padding_and_output_attentions_has_query_heads(source):
    model = hf_gqa.convert(source, groups=2)
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0  # left padding
    model.set_attn_implementation("eager")
    eager = model(input_ids=IDS, attention_mask=mask, output_attentions=True)
    assert eager.attentions[0].shape == (2, H, IDS.shape[1], IDS.shape[1])
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        sdpa = model(input_ids=IDS, attention_mask=mask)
    keep = mask.bool()  # fully masked (padding) rows differ between eager and sdpa, in stock GPT-2 too
    torch.testing.assert_close(sdpa.logits[keep], eager.logits[keep], rtol=0, atol=1e-5)


def test_sdpa_reads_grouped_kv_in_place(source, monkeypatch):
    """SDPA gets G-head K/V (enable_gqa for the prompt, the same or folded queries when decoding): no repeat_kv."""
    model = hf_gqa.convert(source, groups=2)
    model.set_attn_implementation("sdpa")
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape, k.shape, kwargs.get("enable_gqa", False)))
        return real_sdpa(q, k, v, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("repeat_kv materialised H key/value heads")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(sdpa_attention, "repeat_kv", forbidden)
    monkeypatch.setattr(modeling_gpt2_gqa, "repeat_kv", forbidden)
    model.generate(input_ids=IDS, **GEN)
    assert calls and all(k[1] == 2 for _, k, _ in calls)
    assert any(q[2] > 1 and gqa for q, _, gqa in calls)  # prefill: enable_gqa


@pytest.mark.parametrize("groups", [8, 2])
def test_layer_scaling_and_reorder_and_upcast_attn(groups):
    source = make_gpt2(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    source.set_attn_implementation("eager")
    converted = hf_gqa.convert(source, groups=groups)
    converted.set_attn_implementation("eager")
    assert converted.config.reorder_and_upcast_attn and converted.config.scale_attn_by_inverse_layer_idx
    reference = source if groups == H else pooled_oracle(source, groups)
    reference.set_attn_implementation("eager")
    assert (logits(converted) - logits(reference)).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def saved(tmp_path_factory, source):
    model = hf_gqa.convert(source, groups=2)
    path = tmp_path_factory.mktemp("gqa") / "tiny-gpt2-gqa2"
    hf_gqa.save_converted(model, path)
    return path, logits(model)


def test_auto_classes_load_the_saved_folder(saved):
    path, expected = saved
    config = AutoConfig.from_pretrained(path)
    assert type(config) is GPT2GQAConfig and config.num_key_value_heads == 2 and config.gqa_source_model_type == "gpt2"
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model) is hf_gqa.GPT2GQALMHeadModel  # the installed classes, not remote code
    assert torch.equal(logits(model), expected)
    base = AutoModel.from_pretrained(path)
    assert type(base) is hf_gqa.GPT2GQAModel and base.h[0].attn.c_attn.weight.shape == (E, E + 4 * D)


def test_saved_folder_carries_full_auto_map_and_self_contained_code(saved):
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2_gqa" and config["architectures"] == ["GPT2GQALMHeadModel"]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert sorted(p.name for p in path.glob("*.py")) == ["configuration_gpt2_gqa.py", "modeling_gpt2_gqa.py"]
    for file in path.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                root = (node.module or "").split(".")[0]
                assert node.level == 1 or (
                    node.level == 0 and root in {"torch", "transformers", "huggingface_hub", "collections"}
                )
                assert node.level in (0, 1), f"{file.name}: relative import beyond siblings"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in {"torch", "transformers"} for a in node.names)


REMOTE = textwrap.dedent(
    """
    import sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    try:
        import hf_gqa
        raise SystemExit("hf_gqa was importable")
    except ImportError:
        pass
    from transformers import AutoModel, AutoModelForCausalLM
    path, ids, out = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3]
    try:
        AutoModelForCausalLM.from_pretrained(path)
        raise SystemExit("loaded without trust_remote_code")
    except ValueError:
        pass
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(AutoModel.from_pretrained(path, trust_remote_code=True)).__name__ == "GPT2GQAModel"
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, out)
    cache = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=1,
                           return_dict_in_generate=True).past_key_values
    assert cache.layers[0].keys.shape[1] == 2, cache.layers[0].keys.shape
    """
)


def test_trust_remote_code_without_hf_gqa(saved, tmp_path):
    path, expected = saved
    torch.save(IDS, tmp_path / "ids.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_checkpoint_keys_without_the_transformer_prefix(source):
    """GPT-2 checkpoints on disk (the Hub's `gpt2`) name tensors `h.0.attn...`, with old causal-mask buffers."""
    config = source.config.to_dict()
    config["architectures"] = ["GPT2LMHeadModel"]
    sd = {k.removeprefix("transformer."): v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # a buffer old checkpoints kept
    new_config, new_sd = convert_state_dict(config, sd, GQASpec(groups=2))
    assert new_sd.keys() == sd.keys()
    assert {k for k in sd if new_sd[k] is not sd[k]} == {
        f"h.{i}.attn.c_attn.{p}" for i in range(LAYERS) for p in ("weight", "bias")
    }
    assert new_sd["h.1.attn.c_attn.weight"].shape == (E, E + 4 * D)
    model = hf_gqa.GPT2GQALMHeadModel.from_pretrained(
        None, config=AutoConfig.for_model(**new_config), state_dict=new_sd
    ).eval()
    assert torch.equal(logits(model), logits(hf_gqa.convert(source, groups=2)))
    with pytest.raises(hf_gqa.HfGqaError, match="lacks tensors"):
        convert_state_dict(config, {k: v for k, v in sd.items() if k != "h.1.attn.c_attn.bias"}, GQASpec(groups=2))


def test_base_model_converts_to_gpt2_gqa_model():
    source = make_gpt2(GPT2Model)
    converted = hf_gqa.convert(source, groups=4)
    assert type(converted) is hf_gqa.GPT2GQAModel and converted.config.architectures == ["GPT2GQAModel"]
    reference = pooled_oracle(source, 4)
    with torch.no_grad():
        out, ref = converted(input_ids=IDS).last_hidden_state, reference(input_ids=IDS).last_hidden_state
    assert (out - ref).abs().max().item() < 1e-5


def test_reduce_a_gpt2_gqa_model_further_and_expand_it_back(source):
    gqa4 = hf_gqa.convert(source, groups=4)
    gqa2 = hf_gqa.convert(gqa4, groups=2)
    assert gqa2.config.num_key_value_heads == 2 and gqa2.config.gqa_source_model_type == "gpt2_gqa"
    # mean of equal-sized means: the same as pooling the source to 2 groups directly
    torch.testing.assert_close(logits(gqa2), logits(hf_gqa.convert(source, groups=2)), rtol=0, atol=1e-5)
    mha = hf_gqa.convert(gqa4, variant="mha")
    assert type(mha) is hf_gqa.GPT2GQALMHeadModel and mha.config.num_key_value_heads == H
    assert mha.transformer.h[0].attn.c_attn.weight.shape == (E, 3 * E)
    torch.testing.assert_close(logits(mha), logits(gqa4), rtol=0, atol=1e-5)  # expansion is exact
    back4 = hf_gqa.convert(gqa2, groups=4)  # expanding copies each head: exact
    assert back4.config.num_key_value_heads == 4
    torch.testing.assert_close(logits(back4), logits(gqa2), rtol=0, atol=1e-5)
    with pytest.raises(hf_gqa.HfGqaError, match="valid values: 1, 2, 4, 8"):
        hf_gqa.convert(source, groups=3)


def test_cross_attention_stays_multi_head():
    source = make_gpt2(add_cross_attention=True)
    encoder_states = torch.randn(2, 5, E, generator=torch.Generator().manual_seed(2))
    same = hf_gqa.convert(source, variant="mha")
    assert torch.equal(
        logits(same, encoder_hidden_states=encoder_states), logits(source, encoder_hidden_states=encoder_states)
    )
    model = hf_gqa.convert(source, groups=2)
    assert type(model.transformer.h[0].crossattention) is GPT2Attention
    full = logits(model, encoder_hidden_states=encoder_states)
    with torch.no_grad():
        out = model(input_ids=IDS[:, :-1], encoder_hidden_states=encoder_states, use_cache=True)
        last = model(
            input_ids=IDS[:, -1:], encoder_hidden_states=encoder_states, past_key_values=out.past_key_values
        ).logits
    cache = out.past_key_values
    assert cache.self_attention_cache.layers[0].keys.shape[1] == 2
    assert cache.cross_attention_cache.layers[0].keys.shape[1] == H
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-5)


def test_other_heads_are_refused_by_name():
    model = make_gpt2(GPT2ForSequenceClassification, num_labels=2, pad_token_id=1)
    with pytest.raises(hf_gqa.HfGqaError, match="GPT2ForSequenceClassification"):
        hf_gqa.convert(model, groups=2)


def test_plan_reports_heads_and_kv_cache_size(source):
    plan = plan_conversion(source.config.to_dict(), GQASpec(groups=2))
    assert plan.kv_heads == {"self": (H, 2)} and plan.approximate is None
    assert plan.architecture.num_heads(plan.config) == H
    assert plan.architecture.kv_cache_bytes_per_token(source.config.to_dict(), 2) == {"self": 2 * H * D * LAYERS * 2}
    assert plan.architecture.kv_cache_bytes_per_token(plan.config, 2) == {"self": 2 * 2 * D * LAYERS * 2}


def test_config_validates_head_counts():
    config = GPT2GQAConfig(n_head=8, n_embd=64)
    assert config.num_key_value_heads == 8 and config.kv_heads("self") == 8
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    with pytest.raises(ValueError, match="must divide n_head=8; valid values: \\[1, 2, 4, 8\\]"):
        GPT2GQAConfig(n_head=8, n_embd=64, num_key_value_heads=3)
    with pytest.raises(ValueError, match="must divide"):
        GPT2GQAAttention(GPT2GQAConfig(n_head=8, n_embd=64), layer_idx=0, num_key_value_heads=3)
    with pytest.raises(ValueError, match="self-attention only"):
        GPT2GQAAttention(GPT2GQAConfig(n_head=8, n_embd=64), is_cross_attention=True, layer_idx=0)


# The hash of the transformers `GPT2Attention.forward` that `GPT2GQAAttention.forward` was copied from. When this test
# fails, upstream changed: port the change into hf_gqa/modeling/modeling_gpt2_gqa.py, then update the hash.
UPSTREAM_FORWARD_SHA256 = "dfa1b3f0647749650b64ee3586257e91e8d2c5875d7abe378aae46f587702549"


def test_forward_copy_matches_upstream():
    source = inspect.getsource(GPT2Attention.forward)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_FORWARD_SHA256


def test_stock_gpt2_is_unchanged_by_import():
    assert GPT2Attention.forward.__qualname__ == "GPT2Attention.forward"
    assert GPT2LMHeadModel.__init__.__qualname__ == "GPT2LMHeadModel.__init__"
    assert type(make_gpt2().transformer.h[0].attn) is GPT2Attention
