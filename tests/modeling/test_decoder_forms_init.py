"""Weights that a checkpoint of a decoder form (`<family>_wgqa`, `<family>_routed`, `gpt2_gqa`) does not hold
(from_pretrained with missing keys, a model built on the meta device then `to_empty` + `init_weights`) are initialised
as the stock family initialises them, and hf-gqa's own tensors as after conversion: WGQA mixing weights at the mean
(1 / heads per group), DGQA's routing uniform with empty statistics. Loaded tensors are never touched."""

import math

import pytest
import torch
import transformers
from helpers import drop, initialised_on_meta, missing_mixers_start_at
from tiny_decoders import make, make_gpt2
from transformers import AutoModelForCausalLM

import hf_gqa

# (source family, hf-gqa variant): the WGQA training form, routed attention, and GPT-2's own GQA classes.
FORMS = [("llama", "wgqa"), ("qwen2", "wgqa"), ("llama", "dgqa"), ("qwen3", "dgqa"), ("gpt2", "gqa")]
IDS = [f"{family}-{variant}" for family, variant in FORMS]
HEADS = 8


def source(family: str):
    return make_gpt2() if family == "gpt2" else make(family)


def stock_init_std(key: str, config) -> float | None:
    """The std the stock family's `_init_weights` draws a weight from (transformers' rules, written out here), None
    for tensors it sets to a constant (norms 1, biases 0)."""
    std = config.initializer_range
    if key.endswith("bias") or "norm" in key or "ln_" in key:
        return None
    if config.model_type.startswith("gpt2") and key.endswith("c_proj.weight"):
        return std / math.sqrt(2 * config.n_layer)  # GPT-2's residual projections (attention and MLP)
    return std


def missing_layer_one(key: str) -> bool:
    """Keep everything but the layer-1 block (its attention with hf-gqa's tensors included)."""
    return ".layers.1." not in key and ".h.1." not in key


def assert_hf_gqa_state_at_start(state: dict, keys, heads_per_group: int) -> int:
    """hf-gqa's own tensors among `keys` as after conversion; how many there were."""
    seen = 0
    for key in keys:
        tensor = state[key]
        if key.endswith("mixer.weight"):
            assert torch.equal(tensor, torch.full_like(tensor, 1 / heads_per_group)), key
        elif key.endswith("routing.allocation"):
            groups = tensor.numel()
            assert tensor.tolist() == [HEADS // groups] * groups, key
        elif ".routing." in key:  # norm_sum, norm_count, norm_cache, cache_filled
            assert not tensor.any(), key
        else:
            continue
        seen += 1
    return seen


def assert_stock_statistics(state: dict, keys, config):
    checked = 0
    for key in keys:
        if key.endswith("mixer.weight") or ".routing." in key:
            continue
        tensor = state[key].double()
        std = stock_init_std(key, config)
        if std is None:
            expected = 0.0 if key.endswith("bias") else 1.0
            assert torch.all(tensor == expected), key
            continue
        n = tensor.numel()
        # The sample std of n normal draws is within 5 standard errors (std / sqrt(2n)) of the true one.
        assert abs(tensor.std().item() / std - 1) < 5 / math.sqrt(2 * n), (key, tensor.std().item(), std)
        assert abs(tensor.mean().item()) < 5 * std / math.sqrt(n), key
        checked += 1
    assert checked


@pytest.mark.parametrize(("family", "variant"), FORMS, ids=IDS)
@pytest.mark.parametrize("auto", ["AutoModelForCausalLM", "AutoModel"])
def test_a_model_built_on_the_meta_device_is_initialised_as_the_stock_family(family, variant, auto):
    """With as many K/V groups as heads, the form and the stock family have the same weights in the same order, so
    the same seed draws them bit for bit the same; hf-gqa's own tensors start as after conversion."""
    src = source(family)
    config = hf_gqa.convert(src, variant=variant, groups=HEADS).config
    states = {}
    for name, cfg in (("stock", src.config), ("form", config)):
        model = initialised_on_meta(getattr(transformers, auto).from_config, cfg, trust_remote_code=False, seed=0)
        states[name] = model.state_dict()
    assert type(model).__module__.startswith("hf_gqa")
    stock, form = states["stock"], states["form"]
    for key in stock:
        assert torch.equal(form[key], stock[key]), key
    extra = form.keys() - stock.keys()
    assert assert_hf_gqa_state_at_start(form, extra, heads_per_group=1) == len(extra)
    if variant != "gqa":
        assert extra  # the mixers, or the routing state


@pytest.mark.parametrize(("family", "variant"), FORMS, ids=IDS)
def test_missing_weights_are_drawn_as_the_stock_family_draws_them(tmp_path, family, variant):
    src = source(family)
    src.save_pretrained(tmp_path / "stock")
    hf_gqa.convert(src, variant=variant, groups=HEADS).save_pretrained(tmp_path / "form")
    dropped = drop(tmp_path / "stock", missing_layer_one)
    dropped_form = drop(tmp_path / "form", missing_layer_one)
    assert set(dropped) <= set(dropped_form) and len(dropped) >= 4
    loaded = {}
    for name in ("stock", "form"):
        torch.manual_seed(0)
        loaded[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict()
    for key in dropped:
        assert torch.equal(loaded["form"][key], loaded["stock"][key]), key
    extra = sorted(set(dropped_form) - set(dropped))
    assert assert_hf_gqa_state_at_start(loaded["form"], extra, heads_per_group=1) == len(extra)


@pytest.mark.parametrize(("family", "variant"), FORMS, ids=IDS)
def test_missing_grouped_weights_follow_the_stock_rules_and_loaded_ones_are_kept(tmp_path, family, variant):
    """Groups of 4: missing weights follow the family's rules (written out above), missing mixers start at 1/4 and
    missing routing state at the uniform allocation; what the checkpoint holds loads as it is."""
    model = hf_gqa.convert(source(family), variant=variant, groups=2)
    kept = {}
    with torch.no_grad():  # layer 0 keeps values no initialisation gives
        for key, tensor in model.state_dict().items():
            if (".layers.0." in key or ".h.0." in key) and tensor.is_floating_point():
                tensor.copy_(torch.full_like(tensor, 0.375))
                kept[key] = tensor.clone()
            elif key.endswith("routing.allocation") and ".layers.0." in key:
                tensor.copy_(torch.tensor([3, 5]))
                kept[key] = tensor.clone()
    model.save_pretrained(tmp_path / "form")
    dropped = drop(tmp_path / "form", missing_layer_one)
    torch.manual_seed(0)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "form")
    assert type(loaded).__module__.startswith("hf_gqa")
    state = loaded.state_dict()
    own = assert_hf_gqa_state_at_start(state, dropped, heads_per_group=4)
    assert own == {"wgqa": 2, "dgqa": 5, "gqa": 0}[variant]  # k and v mixers; five routing buffers
    assert_stock_statistics(state, dropped, loaded.config)
    for key, value in kept.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(("weights_init", "expected"), [(0.5, 0.5), (-1.25, -1.25), ("mean", 0.25)])
def test_missing_mixers_start_at_the_declared_initial_value(tmp_path, weights_init, expected):
    """A checkpoint converted with `--weights-init 0.5` records it (`gqa_init: "0.5"`): a mixer it lacks starts there,
    as the converted ones did; `mean` (groups of 4) starts at 1/4."""
    model = hf_gqa.convert(make("llama"), variant="wgqa", groups=2, weights_init=weights_init)
    dropped, built = missing_mixers_start_at(
        tmp_path / "form", model, AutoModelForCausalLM, lambda key: ".layers.1." in key, expected
    )
    assert dropped == 2 and built == 4
