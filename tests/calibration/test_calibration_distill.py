"""The end-to-end distillation that can follow the calibrated init (`--calibration-distill-steps`). Oracle: the KL
divergence of the source's and the converted model's next-token distributions, written out here."""

import json
import math

import pytest
import torch
from conftest import make_t5
from tiny_decoders import make

import hf_gqa
from hf_gqa.calibration.data import generated_batches
from hf_gqa.calibration.distill import distill
from hf_gqa.conversion.memory import convert_model
from hf_gqa.errors import HfGqaError
from hf_gqa.spec import GQASpec


def kl(source, model, ids) -> float:
    with torch.no_grad():
        p = source(input_ids=ids).logits.double().softmax(-1)
        q = model(input_ids=ids).logits.double().softmax(-1)
    return (p * (p.log() - q.log())).sum(-1).mean().item()


def converted_llama():
    """A tiny Llama, its MQA conversion (sharing no tensor with it) and the conversion's attention parameters."""
    source = make("llama", kv_heads=8)
    model = convert_model(source, GQASpec(groups=1))
    for param in model.parameters():
        param.data = param.data.clone()
    return source, model, [p for n, p in model.named_parameters() if "self_attn" in n]


def test_distillation_moves_only_the_converted_blocks_and_lowers_the_held_out_kl():
    source, model, params = converted_llama()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "self_attn" not in n}
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 96, (4, 32), generator=g)} for _ in range(6)]
    held_out = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(7))
    before_held_out = kl(source, model, held_out)
    before, after = distill(source, model, params, batches, steps=60, seed=0, progress=False)
    assert after < before
    assert kl(source, model, held_out) < before_held_out
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_distill_steps_are_checked_in_one_line():
    source = make("llama", kv_heads=8)
    with pytest.raises(HfGqaError, match="applies to --init calibrated only"):
        hf_gqa.convert(source, groups=2, init="activation", calibration_data="x.txt", calibration_distill_steps=5)
    with pytest.raises(HfGqaError, match="at least 0"):
        hf_gqa.convert(source, groups=2, init="calibrated", calibration_data="x.txt", calibration_distill_steps=-1)


def test_the_first_step_moves_every_parameter_by_the_learning_rate():
    """Adam's first step is lr * g / (|g| + eps): every entry with a gradient well above eps moves by lr."""
    source, model, params = converted_llama()
    start = [p.detach().clone() for p in params]
    batch = {"input_ids": torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(0))}
    model.zero_grad()
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        want = source(**batch).logits.float().log_softmax(-1)
    got = model(**batch).logits.float().log_softmax(-1)
    torch.nn.functional.kl_div(
        got.flatten(0, -2), want.flatten(0, -2), reduction="batchmean", log_target=True
    ).backward()
    grads = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)
    distill(source, model, params, [batch], steps=1, seed=0, progress=False, lr=2e-3)
    moved = 0
    for p, p0, g in zip(params, start, grads, strict=True):
        big = g.abs() > 1e-5  # (this tiny model's q/k gradients are about 1e-9, below Adam's eps)
        torch.testing.assert_close((p0 - p)[big], 2e-3 * g[big].sign(), rtol=0.02, atol=0)
        moved += bool(big.any())
    assert moved >= len(params) // 2


def test_distill_lr_reaches_the_distillation_and_is_checked(monkeypatch, tmp_path):
    from hf_gqa.conversion import calibrate

    seen = {}

    def spy(source, target, params, batches, steps, seed=0, progress=True, lr=None):
        seen.update(steps=steps, lr=lr)
        return 0.0, 0.0

    monkeypatch.setattr(calibrate, "distill", spy)
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: [])
    monkeypatch.setattr(calibrate, "_batches", lambda *a, **k: [])
    monkeypatch.setattr(calibrate, "generated_batches", lambda *a, **k: [])
    source = make("llama", kv_heads=8)
    options = dict(groups=2, init="calibrated", calibration_data="x.txt", tokenizer=object())
    hf_gqa.convert(source, **options, calibration_distill_steps=3, calibration_distill_lr=5e-4)
    assert seen == {"steps": 3, "lr": 5e-4}
    hf_gqa.convert(source, **options, calibration_distill_steps=2)
    assert seen == {"steps": 2, "lr": 1e-4}  # the default
    with pytest.raises(HfGqaError, match="--calibration-distill-lr must be positive"):
        hf_gqa.convert(source, **options, calibration_distill_steps=2, calibration_distill_lr=0)
    with pytest.raises(HfGqaError, match="--calibration-distill-lr applies with --calibration-distill-steps"):
        hf_gqa.convert(source, **options, calibration_distill_lr=1e-3)


class _Tokenizer:
    bos_token_id, eos_token_id = 1, 2


def fixed_distribution_phi(probs: dict[int, float]):
    """A tiny Phi whose next-token distribution is `probs` whatever the context: its final LayerNorm outputs zeros,
    so the logits are the lm_head's bias, set to log-probabilities (-inf elsewhere)."""
    model = make("phi", kv_heads=8)
    with torch.no_grad():
        model.model.final_layernorm.weight.zero_()
        model.model.final_layernorm.bias.zero_()
        model.lm_head.bias.fill_(-1e4)
        for token, p in probs.items():
            model.lm_head.bias[token] = math.log(p)
    return model


def test_generated_batches_sample_the_models_own_distribution():
    probs = {5: 0.6, 9: 0.3, 2: 0.1}  # 2 is EOS: never sampled (the sequences do not end early)
    model = fixed_distribution_phi(probs)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    batches = generated_batches(model, _Tokenizer(), samples=10, seq_len=201, seed=0, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert [b["input_ids"].shape for b in batches] == [(4, 201), (4, 201), (2, 201)]
    ids = torch.cat([b["input_ids"] for b in batches])
    assert (ids[:, 0] == 1).all()  # each sequence starts from BOS alone
    sampled = ids[:, 1:].flatten()
    assert set(sampled.tolist()) == {5, 9}
    # without EOS, token 5 has probability 0.6 / 0.9: 2,000 draws, 5 standard deviations either side (a temperature
    # of 0.5 would give 0.8, 13 standard deviations off)
    share, sd = (sampled == 5).float().mean().item(), math.sqrt(2 / 3 * 1 / 3 / len(sampled))
    assert abs(share - 2 / 3) < 5 * sd, share
    again = generated_batches(model, _Tokenizer(), samples=10, seq_len=201, seed=0, progress=False)
    other = generated_batches(model, _Tokenizer(), samples=10, seq_len=201, seed=1, progress=False)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other, strict=True))


def test_generated_batches_ignore_the_models_generation_config():
    model = fixed_distribution_phi({5: 0.5, 9: 0.5})
    model.generation_config.do_sample = False  # greedy would give one token only
    model.generation_config.top_k = 1
    ids = torch.cat([b["input_ids"] for b in generated_batches(model, _Tokenizer(), 4, 65, progress=False)])
    assert set(ids[:, 1:].flatten().tolist()) == {5, 9}


def test_generated_distillation_text_is_refused_where_it_cannot_be_made():
    class NoSpecialTokens:
        bos_token_id = eos_token_id = None

    with pytest.raises(HfGqaError, match="decoder-only"):
        generated_batches(make_t5(), _Tokenizer(), 4, 16, progress=False)
    with pytest.raises(HfGqaError, match="no BOS or EOS"):
        generated_batches(make("llama"), NoSpecialTokens(), 4, 16, progress=False)
    with pytest.raises(HfGqaError, match="tokenizer"):
        generated_batches(make("llama"), None, 4, 16, progress=False)


def test_distill_data_chooses_the_distillation_text(monkeypatch, tmp_path):
    from hf_gqa.conversion import calibrate

    seen = {}
    monkeypatch.setattr(calibrate, "distill", lambda s, t, p, batches, *a, **k: seen.update(batches=batches))
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: [])
    monkeypatch.setattr(calibrate, "_batches", lambda *a, **k: ["the calibration text"])
    monkeypatch.setattr(calibrate, "generated_batches", lambda *a, **k: ["generated", a[2:], k["seed"]])
    monkeypatch.setattr(calibrate, "calibration_batches", lambda *a, **k: ["read", a[2:], k["seed"]])
    source = make("llama", kv_heads=8)
    options = dict(groups=2, init="calibrated", calibration_data="x.txt", tokenizer=object(), seed=3)
    hf_gqa.convert(source, **options, calibration_distill_steps=2)  # the default for a decoder-only model
    assert seen["batches"] == ["generated", (32, 256), 3]
    hf_gqa.convert(make_t5(), **options, calibration_distill_steps=2)  # and for an encoder-decoder one
    assert seen["batches"] == ["the calibration text"]
    hf_gqa.convert(source, **options, calibration_distill_steps=2, calibration_distill_data="generated")
    assert seen["batches"] == ["generated", (32, 256), 3]
    hf_gqa.convert(
        source, **options, calibration_distill_steps=2, calibration_distill_data="news.jsonl", calibration_samples=8
    )
    assert seen["batches"] == ["read", ("news.jsonl", 8, 256), 3]
    with pytest.raises(HfGqaError, match="--calibration-distill-data applies with --calibration-distill-steps"):
        hf_gqa.convert(source, **options, calibration_distill_data="generated")


def test_distill_data_is_a_cli_flag(capsys, tmp_path):
    from helpers import one_error_line, run

    source = tmp_path / "llama"
    make("llama", kv_heads=8).save_pretrained(source)
    argv = ["convert", source, "--groups", 2, "--init", "calibrated", "--calibration-data", "x.txt"]
    code, _, err = run(capsys, *argv, "--calibration-distill-data", "generated", "-o", tmp_path / "out")
    assert code == 2 and "--calibration-distill-data applies with --calibration-distill-steps" in one_error_line(err)


def test_convert_cli_distils_on_generated_text_by_default(tiny_llama, tmp_path, capsys):
    """End to end, a decoder-only model with a real tokenizer (no BOS: sampling starts from EOS)."""
    from helpers import run

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"Line {i} of a calibration text about attention heads." for i in range(40)))
    out = tmp_path / "out"
    argv = ["convert", tiny_llama, "--groups", 2, "--init", "calibrated", "--calibration-data", text, "-o", out]
    argv += ["--calibration-samples", 4, "--calibration-seq-len", 16, "--calibration-steps", 2]
    code, _, err = run(capsys, *argv, "--calibration-distill-steps", 2)
    assert code == 0, err
    assert "sampling text from the source" in err and "distilling from the source" in err
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
