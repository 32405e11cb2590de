"""Checkpoints written by hf-gqa 0.1.0 (tests/fixtures/v0.1.0, made by make_v0_1_0.py before the redesign) load,
fold and describe unchanged: the logits recorded by 0.1.0 are reproduced exactly."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import hf_gqa
from hf_gqa.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v0.1.0"
INPUTS = json.loads((FIXTURES / "inputs.json").read_text())
IDS = torch.tensor(INPUTS["input_ids"])
CASES = sorted(INPUTS["cases"])


def _load(path: Path):
    config = json.loads((path / "config.json").read_text())
    auto = AutoModelForSeq2SeqLM if config.get("is_encoder_decoder") else AutoModelForCausalLM
    return auto.from_pretrained(path).eval()


def _logits(model):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=IDS, decoder_input_ids=IDS[:, : INPUTS["decoder_len"]]).logits
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("name", CASES)
def test_a_0_1_0_checkpoint_loads_with_the_same_logits(name):
    expected = load_file(FIXTURES / name / "expected_logits.safetensors")
    assert torch.equal(_logits(_load(FIXTURES / name)), expected["logits"])


@pytest.mark.parametrize("name", [c for c in CASES if "folded_logits" in INPUTS["cases"][c]])
def test_a_0_1_0_training_form_folds_to_the_same_logits(name, tmp_path):
    expected = load_file(FIXTURES / name / "expected_logits.safetensors")["folded_logits"]
    assert torch.equal(_logits(hf_gqa.fold(_load(FIXTURES / name))), expected)
    assert main(["fold", str(FIXTURES / name), "-o", str(tmp_path / "folded")]) == 0  # streamed, shard by shard
    torch.testing.assert_close(_logits(_load(tmp_path / "folded")), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_info_describes_a_0_1_0_checkpoint(name, capsys):
    assert main(["info", str(FIXTURES / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == json.loads((FIXTURES / name / "config.json").read_text())["gqa_variant"]
