"""WGQA and RandWGQA: the training form (T5 and decoder families), conversion in memory and streamed, fold, CLI."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import batch, make_t5
from helpers import assert_bit_identical, one_error_line, run, tensors
from tiny_decoders import IDS, make
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import hf_gqa
from hf_gqa import GQASpec, HeadMixer, WeightedKV
from hf_gqa.conversion.sizes import weighted_kv_parameters
from hf_gqa.conversion.streaming import save_streamed
from hf_gqa.families import FORM_MODEL_TYPES
from hf_gqa.modeling.configuration_wgqa_decoder import WGQA_FAMILIES
from hf_gqa.modeling.weighted_kv import LEARNED_SHAPES, WEIGHT_SHAPES, mix_weight

INPUTS = batch()
FAMILIES = ("t5", "llama", "qwen2")  # llama with attention_bias=True; qwen2 has k/v biases


def source(family: str):
    return make_t5("flan") if family == "t5" else make(family)


def logits(model):
    with torch.no_grad():
        return model(**INPUTS).logits if model.config.is_encoder_decoder else model(input_ids=IDS).logits


def mixers(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("mixer.weight")}


def perturb(model, seed: int = 0):
    """Move every mixing weight away from its initial value, so a fold has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, HeadMixer):
                module.weight.add_(torch.randn(module.weight.shape, generator=g) * 0.3)
    return model


def assert_close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# The training form at step 0, its weights and its gradients


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", LEARNED_SHAPES)
def test_at_init_wgqa_is_gqa_and_keeps_every_head(family, shape):
    model = source(family)
    gqa = hf_gqa.convert(model, groups=2)
    wgqa = hf_gqa.convert(model, groups=2, variant="wgqa", weights=shape)
    assert_close(logits(wgqa), logits(gqa))
    if family == "t5":
        assert type(wgqa) is hf_gqa.T5GQAForConditionalGeneration and wgqa.config.gqa_kv_weights == shape
        k = wgqa.decoder.block[1].layer[1].EncDecAttention.k
        assert isinstance(wgqa.encoder.block[0].layer[0].SelfAttention.k, torch.nn.Linear)  # not selected
        assert wgqa.config.gqa_kv_source_heads == {"decoder_self": 8, "cross": 8}
    else:
        assert type(wgqa).__name__ == f"{type(model).__name__.replace('ForCausalLM', 'WGQAForCausalLM')}"
        assert wgqa.config.model_type == f"{family}_wgqa" and wgqa.config.num_key_value_heads == 2
        k = wgqa.model.layers[1].self_attn.k_proj
        assert k.bias is not None
    d_in = k.in_features
    assert isinstance(k, WeightedKV) and k.weight.shape == (8 * 8, d_in) and k.out_features == 2 * 8
    assert k.mixer.weight.shape == {"scalar": (8,), "vector_out": (8, 8), "vector_in": (8, d_in)}[shape]
    assert torch.all(k.mixer.weight == 0.25)  # 1 / group size
    extra = sum(v.numel() for v in mixers(wgqa).values())
    assert extra == weighted_kv_parameters(wgqa.config.to_dict()) > 0
    assert wgqa.num_parameters() - extra == model.num_parameters()  # every original head kept


def test_a_constant_init_and_an_already_grouped_source():
    model = make("llama", kv_heads=4)  # a GQA checkpoint: its 4 heads are combined in pairs
    wgqa = hf_gqa.convert(model, groups=2, variant="wgqa", weights_init="0.5")
    assert torch.all(wgqa.model.layers[0].self_attn.v_proj.mixer.weight == 0.5)
    assert wgqa.config.gqa_kv_source_heads == {"self": 4} and wgqa.config.gqa_init == "0.5"
    assert_close(logits(wgqa), logits(hf_gqa.convert(model, groups=2)))  # 0.5 is the mean of a pair
    doubled = hf_gqa.convert(make("llama"), groups=2, variant="wgqa", weights_init=0.5)  # groups of 4: 2x the mean
    k = doubled.model.layers[0].self_attn.k_proj
    assert_close(k.grouped_weight(), 2 * mix_weight(k.weight, torch.full((8,), 0.25), 2, "scalar"))


def test_gradients_reach_the_weights_and_every_head():
    llama = hf_gqa.convert(make("llama"), groups=2, variant="wgqa", weights="vector_in")
    for model in (llama, hf_gqa.convert(make_t5("flan"), groups=1, variant="wgqa")):
        model.train()
        if model.config.is_encoder_decoder:
            loss = model(**INPUTS, labels=INPUTS["decoder_input_ids"]).loss
        else:
            loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        weighted = [m for m in model.modules() if isinstance(m, WeightedKV)]
        assert weighted
        for module in weighted:
            assert torch.isfinite(module.mixer.weight.grad).all() and module.mixer.weight.grad.abs().sum() > 0
            per_head = module.weight.grad.reshape(module.num_heads, -1).abs().sum(-1)
            assert torch.all(per_head > 0)  # each original head learns


# Fold


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", LEARNED_SHAPES)
def test_fold_equals_the_training_form(family, shape):
    wgqa = perturb(hf_gqa.convert(source(family), groups=2, variant="wgqa", weights=shape))
    folded = hf_gqa.fold(wgqa)
    assert_close(logits(folded), logits(wgqa))
    assert not mixers(folded) and not any(isinstance(m, WeightedKV) for m in folded.modules())
    weighted = [m for m in wgqa.modules() if isinstance(m, WeightedKV)]
    folded_away = sum(3 * sum(p.numel() for p in m.parameters(recurse=False)) // 4 for m in weighted)  # 6 of 8 heads
    extra = weighted_kv_parameters(wgqa.config.to_dict())
    assert folded.num_parameters() == wgqa.num_parameters() - extra - folded_away
    if family == "t5":
        assert type(folded) is hf_gqa.T5GQAForConditionalGeneration and folded.config.gqa_kv_weights is None
        assert folded.config.gqa_variant == "wgqa" and folded.config.kv_heads("cross") == 2
        module, after = (
            wgqa.decoder.block[0].layer[0].SelfAttention.v,
            folded.decoder.block[0].layer[0].SelfAttention.v,
        )
    else:
        assert type(folded).__module__.startswith("transformers.models.")  # the stock class
        assert folded.config.model_type == family and folded.config.num_key_value_heads == 2
        assert "auto_map" not in folded.config.to_dict() or not folded.config.to_dict()["auto_map"]
        module, after = wgqa.model.layers[0].self_attn.v_proj, folded.model.layers[0].self_attn.v_proj
    # The fold against a hand-written weighted sum over each group's heads.
    w, m = module.weight.detach().reshape(8, 8, -1), module.mixer.weight.detach()
    m = m[:, None, None] if shape == "scalar" else m[:, :, None] if shape == "vector_out" else m[:, None, :]
    expected = (w * m).reshape(2, 4, 8, -1).sum(1).reshape(16, -1)
    assert_close(after.weight, expected, atol=1e-6)
    assert_close(module.fold().weight, after.weight, atol=0)
    if module.bias is not None:
        b = module.bias.detach().reshape(8, 8)
        s = module.mixer.weight.detach()
        s = s.mean(-1) if shape == "vector_in" else s
        expected_bias = (b * (s if s.dim() == 2 else s[:, None])).reshape(2, 4, 8).sum(1).reshape(16)
        assert_close(after.bias, expected_bias, atol=1e-6)


def test_fold_refuses_what_is_not_a_training_form():
    with pytest.raises(hf_gqa.HfGqaError, match="not a WGQA training form"):
        hf_gqa.fold(hf_gqa.convert(make("llama"), groups=2))


def test_every_decoder_family_has_a_training_form_that_starts_as_gqa_and_folds_back():
    wgqa_form_types = tuple(t for t, (family, form) in FORM_MODEL_TYPES.items() if form == "wgqa")
    assert wgqa_form_types == tuple(f"{t}_wgqa" for t in WGQA_FAMILIES)
    for family in WGQA_FAMILIES:
        model = make(family)
        wgqa = hf_gqa.convert(model, groups=2, variant="wgqa")
        assert_close(logits(wgqa), logits(hf_gqa.convert(model, groups=2)))
        folded = hf_gqa.fold(perturb(wgqa))
        assert type(folded) is type(model), family
        assert_close(logits(folded), logits(wgqa))


# RandWGQA


def test_randwgqa_is_reproducible_from_its_seed_and_independent_of_tensor_order():
    model = make("qwen2")
    one = mixers(hf_gqa.convert(model, groups=2, variant="randwgqa", seed=3))
    again = mixers(hf_gqa.convert(model, groups=2, variant="randwgqa", seed=3))
    other = mixers(hf_gqa.convert(model, groups=2, variant="randwgqa", seed=4))
    assert_bit_identical(one, again)
    assert all(not torch.equal(one[k], other[k]) for k in one)
    assert all(not torch.equal(one[k], one[j]) for k in one for j in one if k != j)  # one draw per tensor
    values = torch.cat([v.flatten() for v in one.values()])
    assert abs(values.mean()) < 0.5 and 0.6 < values.std() < 1.4  # N(0, 1)
    plan = hf_gqa.plan_conversion(model.config.to_dict(), GQASpec(variant="randwgqa", groups=2, seed=3))
    assert plan.config["gqa_init"] == "random"
    sd = model.state_dict()
    for key in reversed(list(one)):  # computed alone, in another order: the same
        assert torch.equal(plan.tensors.compute(key, sd.__getitem__), one[key])


# The cache, generation, save/load


def test_the_cache_holds_g_heads_and_generation_with_cache_equals_without():
    llama = perturb(hf_gqa.convert(make("llama"), groups=2, variant="wgqa", weights="vector_out"))
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    out = llama.generate(input_ids=IDS, return_dict_in_generate=True, **gen)
    assert out.past_key_values.layers[0].keys.shape[1] == 2
    assert torch.equal(out.sequences, llama.generate(input_ids=IDS, use_cache=False, **gen))

    t5 = perturb(hf_gqa.convert(make_t5("flan"), groups={"decoder_self": 2, "cross": 4}, variant="wgqa"))
    encoder_inputs = {k: v for k, v in INPUTS.items() if k != "decoder_input_ids"}
    out = t5.generate(**encoder_inputs, return_dict_in_generate=True, **gen)
    cache = out.past_key_values
    assert cache.self_attention_cache.layers[0].keys.shape[1] == 2
    assert cache.cross_attention_cache.layers[0].keys.shape[1] == 4
    assert torch.equal(out.sequences, t5.generate(**encoder_inputs, use_cache=False, **gen))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Perturbed T5 and Llama training forms, saved, with their logits."""
    root = tmp_path_factory.mktemp("wgqa")
    out = {}
    for family, model in (
        ("t5", hf_gqa.convert(make_t5("flan"), groups=2, variant="wgqa", weights="vector_in")),
        ("llama", hf_gqa.convert(make("llama"), groups=2, variant="randwgqa", weights="vector_out")),
    ):
        perturb(model)
        hf_gqa.save_converted(model, root / family)
        out[family] = (root / family, logits(model))
    return out


def test_the_training_forms_reload_with_the_auto_classes(saved):
    for family, auto in (("t5", AutoModelForSeq2SeqLM), ("llama", AutoModelForCausalLM)):
        path, expected = saved[family]
        config = json.loads((path / "config.json").read_text())
        assert config["gqa_kv_weights"] in WEIGHT_SHAPES and len(config["auto_map"]) >= 3
        assert type(AutoConfig.from_pretrained(path)).__module__.startswith("hf_gqa.")
        model = auto.from_pretrained(path)
        assert type(model).__module__.startswith("hf_gqa.")  # the installed classes, not remote code
        assert torch.equal(logits(model), expected)
    code = sorted(p.name for p in saved["llama"][0].glob("*.py"))
    assert code == [
        "configuration_wgqa_decoder.py",
        "family_forms.py",
        "modeling_wgqa_decoder.py",
        "weighted_kv.py",
    ]
    assert json.loads((saved["llama"][0] / "config.json").read_text())["model_type"] == "llama_wgqa"


REMOTE = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    checks = json.loads(sys.argv[1])
    for path, kind, out in checks["remote"]:
        auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
        try:
            auto.from_pretrained(path)
            raise SystemExit("loaded without trust_remote_code")
        except ValueError:
            pass
        model = auto.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert any(type(m).__name__ == "WeightedKV" for m in model.modules())
        inputs = torch.load(checks["inputs"])
        with torch.no_grad():
            logits = model(**inputs).logits if kind == "t5" else model(input_ids=inputs["ids"]).logits
        torch.save(logits, out)
    path, name, out = checks["stock"]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == name and type(model).__module__.startswith("transformers.models.")
    assert model.config.num_key_value_heads == 2
    with torch.no_grad():
        torch.save(model(input_ids=torch.load(checks["inputs"])["ids"]).logits, out)
    """
)


def test_remote_code_without_hf_gqa_and_the_folded_llama_in_plain_transformers(saved, tmp_path):
    folded = hf_gqa.fold(AutoModelForCausalLM.from_pretrained(saved["llama"][0]))
    hf_gqa.save_converted(folded, tmp_path / "folded")
    assert not list((tmp_path / "folded").glob("*.py"))
    torch.save({**INPUTS, "ids": IDS}, tmp_path / "inputs.pt")
    checks = {
        "inputs": str(tmp_path / "inputs.pt"),
        "remote": [[str(saved[f][0]), f, str(tmp_path / f"{f}.pt")] for f in ("t5", "llama")],
        "stock": [str(tmp_path / "folded"), "LlamaForCausalLM", str(tmp_path / "stock.pt")],
    }
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, json.dumps(checks)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for family in ("t5", "llama"):
        assert torch.equal(torch.load(tmp_path / f"{family}.pt"), saved[family][1])
    assert_close(torch.load(tmp_path / "stock.pt"), saved["llama"][1])


# Streaming


@pytest.mark.parametrize("variant", ["wgqa", "randwgqa"])
def test_streamed_training_form_and_fold_equal_in_memory_bit_for_bit(tmp_path, variant):
    model = make("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    spec = GQASpec(variant=variant, groups=2, weights="vector_out", seed=7)
    result = save_streamed(tmp_path / "src", tmp_path / "streamed", spec, max_shard_size="60KB", progress=False)
    assert result.plan.config["model_type"] == "llama_wgqa"
    assert {p.name for p in (tmp_path / "streamed").glob("*.py")} == {
        "configuration_wgqa_decoder.py",
        "family_forms.py",
        "modeling_wgqa_decoder.py",
        "weighted_kv.py",
    }
    in_memory = hf_gqa.convert(str(tmp_path / "src"), groups=2, variant=variant, weights="vector_out", seed=7)
    in_memory.save_pretrained(tmp_path / "memory")
    assert_bit_identical(tensors(tmp_path / "streamed"), tensors(tmp_path / "memory"))
    assert all(v.dtype == torch.bfloat16 for k, v in tensors(tmp_path / "streamed").items() if "mixer" in k)

    hf_gqa.fold_to_folder(tmp_path / "streamed", tmp_path / "folded", progress=False)
    hf_gqa.fold_to_folder(tmp_path / "memory", tmp_path / "folded-in-memory", in_memory=True)
    assert_bit_identical(tensors(tmp_path / "folded"), tensors(tmp_path / "folded-in-memory"))
    assert not list((tmp_path / "folded").glob("*.py"))
    assert json.loads((tmp_path / "folded" / "config.json").read_text())["model_type"] == "llama"
    assert "Folded from the WGQA training form" in (tmp_path / "folded" / "README.md").read_text()


def test_streamed_t5_training_form_equals_in_memory(tmp_path):
    make_t5("flan").save_pretrained(tmp_path / "src", max_shard_size="60KB")
    spec = GQASpec(variant="randwgqa", groups=2, attention=("encoder", "decoder_self", "cross"), weights="scalar")
    save_streamed(tmp_path / "src", tmp_path / "streamed", spec, progress=False)
    in_memory = hf_gqa.convert(
        str(tmp_path / "src"), groups=2, variant="randwgqa", attention=("encoder", "decoder_self", "cross")
    )
    streamed = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "streamed")
    assert_bit_identical(streamed.state_dict(), in_memory.state_dict())
    assert len(mixers(streamed)) == 2 * (2 + 3 + 3)  # k and v of every encoder, decoder and cross attention


# Training, then fold


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_a_short_uptraining_then_fold_loads_with_the_auto_classes(tmp_path, family):
    model = hf_gqa.convert(source(family), groups=2, variant="wgqa")
    model.train()
    before = {k: v.clone() for k, v in mixers(model).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        if family == "t5":
            loss = model(**INPUTS, labels=INPUTS["decoder_input_ids"]).loss
        else:
            loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(v, before[k]) for k, v in mixers(model).items())  # the weights were learned
    model.eval()
    folded = hf_gqa.fold(model)
    assert_close(logits(folded), logits(model))
    folded.save_pretrained(tmp_path / "folded")
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "folded")
    assert type(reloaded) is type(folded) and torch.equal(logits(reloaded), logits(folded))


# CLI


def test_cli_convert_info_fold(tmp_path, capsys):
    make("llama").save_pretrained(tmp_path / "src")
    code, out, err = run(
        capsys, "convert", tmp_path / "src", "--variant", "wgqa", "-g", 2, "--weights", "vector_out",
        "--weights-init", "mean", "-o", tmp_path / "wgqa",
    )  # fmt: skip
    assert code == 0, err
    extra = 2 * 2 * 8 * 8  # layers x (k, v) x heads x head_dim
    assert "WGQA weights (vector_out)" in out and f"{extra:,}" in out and "hf-gqa fold" in out
    assert "LlamaWGQAForCausalLM (shard by shard)" in out
    card = (tmp_path / "wgqa" / "README.md").read_text()
    assert "WGQA training form" in card and "trust_remote_code=True" in card

    code, out, _ = run(capsys, "info", tmp_path / "wgqa", "--json")
    info = json.loads(out)
    assert info["kv_weights"] == "vector_out" and info["extra_parameters"] == extra
    assert info["kv_heads"] == {"self": 2} and info["kv_source_heads"] == {"self": 8}
    code, out, _ = run(capsys, "info", tmp_path / "wgqa")
    assert "learned sums of 8" in out and "extra parameters" in out

    code, out, err = run(capsys, "fold", tmp_path / "wgqa", "-o", tmp_path / "folded")
    assert code == 0, err
    assert "LlamaForCausalLM (shard by shard)" in out and "plain transformers" in out
    code, out, _ = run(capsys, "info", tmp_path / "folded", "--json")
    info = json.loads(out)
    assert info["model_type"] == "llama" and info["kv_heads"] == {"self": 2} and "kv_weights" not in info
    assert info["variant"] == "wgqa" and info["loads_with"] == "plain transformers"

    # A training form as a convert source is folded first.
    code, out, err = run(capsys, "convert", tmp_path / "wgqa", "-g", 1, "-o", tmp_path / "mqa")
    assert code == 0, err
    assert "folded before the conversion" in out and not list((tmp_path / "mqa").glob("*.py"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "mqa")
    assert type(reloaded).__name__ == "LlamaForCausalLM" and reloaded.config.num_key_value_heads == 1

    code, out, _ = run(capsys, "list")
    assert "wgqa" in out and "randwgqa" in out


def test_cli_yaml_keys_and_t5(tmp_path, capsys):
    make_t5("flan").save_pretrained(tmp_path / "src")
    (tmp_path / "spec.yaml").write_text(
        f"source: {tmp_path / 'src'}\noutput: {tmp_path / 'out'}\nvariant: wgqa\ngroups: 4\n"
        "weights: vector_in\nweights-init: 0.5\n"
    )
    code, out, err = run(capsys, "convert", "--config", tmp_path / "spec.yaml", "--in-memory")
    assert code == 0, err
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert model.config.gqa_kv_weights == "vector_in" and model.config.gqa_init == "0.5"
    assert torch.all(model.decoder.block[0].layer[0].SelfAttention.k.mixer.weight == 0.5)
    code, out, err = run(capsys, "fold", tmp_path / "out", "-o", tmp_path / "folded", "--in-memory")
    assert code == 0, err
    assert "T5GQAForConditionalGeneration (in memory)" in out
    folded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "folded")
    assert folded.config.gqa_kv_weights is None
    assert_close(logits(folded), logits(model))


@pytest.mark.parametrize(
    "family, argv, message",
    [
        ("llama", ["-g", 2, "--weights", "vector_in"], "apply to wgqa and randwgqa and simwgqa only, not to 'gqa'"),
        ("llama", ["--variant", "wgqa", "-g", 2, "--weights-init", "half"], "--weights-init must be mean or a number"),
        ("llama", ["--variant", "randwgqa", "-g", 2, "--weights-init", "0.5"], "randwgqa draws its weights from N"),
        ("llama", ["--variant", "wgqa"], "--groups is required for variant 'wgqa'"),
        ("llama", ["--variant", "wgqa", "-g", 2, "--init", "first"], "--init applies to gqa and mqa"),
        ("llama", ["--variant", "wgqa", "-g", 3], "does not divide the 8 heads"),
        ("llama-gqa2", ["--variant", "wgqa", "-g", 4], "so G must divide 2; valid values: 1, 2"),
        ("phi3", ["--variant", "wgqa", "-g", 2], "phi3 fuses q, k and v into one projection"),
        ("gpt2", ["--variant", "wgqa", "-g", 2], "gpt2 has no WGQA training form"),
        ("llama", ["fold"], "is not a WGQA training form"),
        ("llama", ["fold", "no -o"], "-o/--output is required"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, capsys, family, argv, message):
    if family == "gpt2":
        from tiny_decoders import make_gpt2

        make_gpt2().save_pretrained(tmp_path / "src")
    else:
        make(family.removesuffix("-gqa2"), kv_heads=2 if family.endswith("-gqa2") else 8).save_pretrained(
            tmp_path / "src"
        )
    if argv[0] == "fold":
        argv = ["fold", tmp_path / "src"] + ([] if "no -o" in argv else ["-o", tmp_path / "out"])
    else:
        argv = ["convert", tmp_path / "src", "-o", tmp_path / "out", *argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_spec_and_config_validation():
    with pytest.raises(hf_gqa.HfGqaError, match="unknown --weights 'matrix'"):
        hf_gqa.convert(make("llama"), groups=2, variant="wgqa", weights="matrix")
    config = hf_gqa.T5GQAConfig(num_heads=8, num_key_value_heads=2, gqa_kv_weights="scalar")
    assert config.kv_source_heads("decoder_self") is None  # weights without heads: nothing is weighted
    with pytest.raises(ValueError, match="gqa_kv_weights"):
        hf_gqa.T5GQAConfig(num_heads=8, num_key_value_heads=2, gqa_kv_weights="matrix")
    with pytest.raises(ValueError, match="must divide num_heads=8 and be a multiple of the 2"):
        hf_gqa.T5GQAConfig(
            num_heads=8, num_key_value_heads=2, gqa_kv_weights="scalar", gqa_kv_source_heads={"decoder_self": 3}
        )
    with pytest.raises(ValueError, match="multiple of num_key_value_heads=4"):
        AutoConfig.for_model(
            "llama_wgqa", num_attention_heads=8, num_key_value_heads=4, gqa_kv_source_heads={"self": 2}
        )


def test_peft_lora_with_the_mixers_as_modules_to_save_then_fold():
    peft = pytest.importorskip("peft")
    model = hf_gqa.convert(make("llama"), groups=2, variant="wgqa")
    config = peft.LoraConfig(
        r=4, target_modules=["q_proj", "o_proj"], modules_to_save=["mixer"], task_type="CAUSAL_LM"
    )
    tuned = peft.get_peft_model(model, config)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert sum("mixer" in n for n in trainable) == 4 and all("lora_" in n or "mixer" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        tuned(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with pytest.raises(hf_gqa.HfGqaError, match="merge_and_unload"):
        hf_gqa.fold(tuned)
    merged = tuned.merge_and_unload().eval()
    assert not torch.all(merged.model.layers[0].self_attn.k_proj.mixer.weight == 0.25)  # the trained copy
    folded = hf_gqa.fold(merged)
    assert type(folded).__name__ == "LlamaForCausalLM"
    assert_close(logits(folded), logits(merged))
