"""The activation and calibrated inits (hf_gqa.calibration), against oracles that do not use the code under test:
sources built so that a group's K/V heads are exact transforms of one another (then the function survives pooling
to one head exactly: the source's own logits are the oracle), and the block outputs of the source on held-out data."""

import json

import pytest
import torch
from conftest import make_t5
from helpers import random_batches, run
from tiny_decoders import logits, make

import hf_gqa
from hf_gqa.calibration.fit import calibrate
from hf_gqa.conversion.memory import convert_model
from hf_gqa.errors import HfGqaError
from hf_gqa.spec import GQASpec

GEN = torch.Generator().manual_seed(0)


def complex_plane_scaled(rows: torch.Tensor, rotary: int, g: torch.Generator) -> torch.Tensor:
    """Rows of a key head with each RoPE plane (dims j, j + r/2) multiplied by a random complex number."""
    half = rotary // 2
    c = torch.randn(half, generator=g, dtype=torch.float64) + 1j * torch.randn(half, generator=g, dtype=torch.float64)
    z = (rows[:half].double() + 1j * rows[half:rotary].double()) * c[:, None]
    out = rows.clone()
    out[:half], out[half:rotary] = z.real.to(rows.dtype), z.imag.to(rows.dtype)
    return out


def tie_heads_llama(model):
    """Head 1's key = head 0's key times a complex scale per RoPE plane; value 1 = R @ value 0 (R invertible)."""
    g = torch.Generator().manual_seed(1)
    d = model.config.head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.k_proj.weight[d : 2 * d] = complex_plane_scaled(attn.k_proj.weight[:d], d, g)
            r = torch.randn(d, d, generator=g) + 2 * torch.eye(d)
            attn.v_proj.weight[d : 2 * d] = r @ attn.v_proj.weight[:d]
    return model


def test_activation_init_is_exact_where_heads_are_rope_plane_scales_of_each_other():
    source = tie_heads_llama(make("llama", kv_heads=2, num_attention_heads=4, attention_bias=False))
    spec = GQASpec(groups=1, init="mean")
    mean, plan = convert_model(source, spec, return_plan=True)
    fitted = convert_model(source, spec)
    calibrate(source, fitted, plan.kv_heads, random_batches(96, n=4), "activation", progress=False)
    want = logits(source)
    assert (logits(mean) - want).abs().max() > 1e-2  # pooling alone loses the function
    torch.testing.assert_close(logits(fitted), want, atol=2e-4, rtol=1e-4)


def test_activation_init_is_exact_for_t5_heads_that_are_linear_maps_of_each_other():
    source = make_t5("flan", num_heads=4)
    g = torch.Generator().manual_seed(2)
    d = source.config.d_kv
    with torch.no_grad():
        for name, module in source.named_modules():
            if name.endswith(("SelfAttention", "EncDecAttention")) and name.startswith("decoder"):
                for h in range(1, 4):
                    a = torch.randn(d, d, generator=g) + 2 * torch.eye(d)
                    module.k.weight[h * d : (h + 1) * d] = a @ module.k.weight[:d]
                    b = torch.randn(d, d, generator=g) + 2 * torch.eye(d)
                    module.v.weight[h * d : (h + 1) * d] = b @ module.v.weight[:d]
    spec = GQASpec(groups=1, init="mean")
    mean, plan = convert_model(source, spec, return_plan=True)
    fitted = convert_model(source, spec)
    batches = random_batches(128, n=4, encoder_decoder=True)
    calibrate(source, fitted, plan.kv_heads, batches, "activation", progress=False)
    inputs = random_batches(128, n=1, encoder_decoder=True, seed=5)[0]
    with torch.no_grad():
        want = source(**inputs).logits
        assert (mean(**inputs).logits - want).abs().max() > 1e-3
        torch.testing.assert_close(fitted(**inputs).logits, want, atol=2e-4, rtol=1e-4)


def block_errors(source, model, inputs, prefixes) -> dict[str, float]:
    """Relative MSE of each block's output against the source's block, both on the source's block inputs."""
    captured = {}

    def grab(prefix):
        def hook(module, args, kwargs, output):
            captured[prefix] = (args, kwargs, output[0])

        return hook

    handles = [source.get_submodule(p).register_forward_hook(grab(p), with_kwargs=True) for p in prefixes]
    with torch.no_grad():
        source(**inputs, use_cache=False)
        for h in handles:
            h.remove()
        errors = {}
        for p in prefixes:
            args, kwargs, want = captured[p]
            got = model.get_submodule(p)(*args, **kwargs)[0]
            errors[p] = ((got - want).pow(2).mean() / want.pow(2).mean()).item()
    return errors


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_calibrated_and_activation_beat_mean_on_held_out_block_outputs(family):
    """T5: decoder self- and cross-attention. The calibrated fit never ends worse than it started (in sample)."""
    if family == "t5":
        source, vocab = make_t5("flan"), 128
        spec = GQASpec(groups=1, init="mean", attention=["decoder_self", "cross"])
    else:
        source, vocab = make("llama", kv_heads=8), 96
        spec = GQASpec(groups=1, init="mean")
    ed = family == "t5"
    models = {}
    for init in ("mean", "activation", "calibrated"):
        model, plan = convert_model(source, spec, return_plan=True)
        if init != "mean":
            batches = random_batches(vocab, n=8, length=32, encoder_decoder=ed)
            reports = calibrate(source, model, plan.kv_heads, batches, init, steps=25, lr=1e-3, progress=False)
            if init == "calibrated":
                layers = source.config.num_decoder_layers if ed else source.config.num_hidden_layers
                assert len(reports) == layers * len(plan.kv_heads)  # every converted block
                assert all(r.loss_after <= r.loss_before for r in reports)
        models[init] = model
    prefixes = [n for n, m in source.named_modules() if n.endswith(("SelfAttention", "EncDecAttention", "self_attn"))]
    prefixes = [p for p in prefixes if not p.startswith("encoder")]
    held_out = random_batches(vocab, n=1, encoder_decoder=ed, seed=9)[0]
    errors = {init: block_errors(source, m, held_out, prefixes) for init, m in models.items()}
    for p in prefixes:
        assert errors["calibrated"][p] < errors["mean"][p] and errors["activation"][p] < errors["mean"][p], (p, errors)


def test_options_are_checked_in_one_line():
    source = make("llama", kv_heads=8)
    with pytest.raises(HfGqaError, match="needs --calibration-data"):
        hf_gqa.convert(source, groups=2, init="calibrated")
    with pytest.raises(HfGqaError, match="applies to --init aligned, activation and calibrated only"):
        hf_gqa.convert(source, groups=2, calibration_steps=5)
    with pytest.raises(HfGqaError, match="applies to gqa and mqa only"):
        hf_gqa.convert(source, groups=2, variant="wgqa", init="calibrated", calibration_data="x.txt")


@pytest.mark.parametrize("model_type", ["helium", "qwen3", "gemma3_text"])
def test_activation_init_refuses_what_its_closed_form_cannot_compensate(model_type):
    """Helium pairs RoPE dims 2j, 2j + 1 (not rotate_half's j, j + r/2); Qwen3 and Gemma 3 normalise each query and
    key head with one shared norm weight after the projection: a per-plane key scale cannot move into the queries."""
    source = make(model_type, kv_heads=8)
    with pytest.raises(HfGqaError, match=f"--init activation: {model_type} (rotates interleaved|normalises)"):
        hf_gqa.convert(source, groups=2, init="activation", calibration_data="x.txt")


@pytest.mark.parametrize("init", ["aligned", "activation", "calibrated"])
def test_convert_cli_calibrates_on_a_text_file_and_writes_the_stock_layout(t5_dir, tmp_path, capsys, init):
    from transformers import AutoModelForSeq2SeqLM

    text = tmp_path / "calibration.jsonl"
    words = "the model reads a sentence about heads and keys and values while the cache stays small".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (40,), generator=g)) for _ in range(20)]
    text.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    out = tmp_path / init
    extra = ["--calibration-steps", "5"] if init == "calibrated" else []
    code, _, err = run(capsys, "convert", t5_dir, "--groups", "2", "--init", init, "--calibration-data", text,
                       "--calibration-samples", "4", "--calibration-seq-len", "32", *extra, "-o", out)  # fmt: skip
    assert code == 0, err
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.gqa_init == init and model.config.num_key_value_heads == 2
    mean = hf_gqa.convert(t5_dir, groups=2)
    assert not torch.equal(model.decoder.block[0].layer[0].SelfAttention.k.weight,
                           mean.decoder.block[0].layer[0].SelfAttention.k.weight)  # fmt: skip
    code, _, err = run(capsys, "convert", t5_dir, "--groups", "2", "--init", init, "-o", tmp_path / "x")
    assert code == 2 and "needs --calibration-data" in err and not (tmp_path / "x").exists()
