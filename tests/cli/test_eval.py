"""`hf-gqa eval`: perplexity and summary loss against oracles computed from the logits, two models side by side with
their ratios, the JSON, and one-line errors."""

import importlib.util
import json
import math

import pytest
import torch
from helpers import one_error_line, run
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    ViTConfig,
    ViTForImageClassification,
)

from hf_gqa.cli import main
from hf_gqa.cli.eval import column_names
from hf_gqa.core.measure import perplexity
from hf_gqa.io.texts import read_pairs

TEXTS = [
    "Grouped-query attention shares each key and value head among several query heads.",
    "The key-value cache grows with every token a decoder generates, and with every request served at once.",
    "Uptraining a converted checkpoint for a few percent of its pre-training steps recovers most of its quality.",
    "Short text.",
]
SUMMARIES = ["Key/value heads are shared.", "The cache grows.", "Uptraining recovers quality.", "Short."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-data") / "data.jsonl"
    rows = [{"text": t, "summary": s} for t, s in zip(TEXTS, SUMMARIES, strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def llama_gqa2(tiny_llama, tmp_path_factory):
    """`tiny_llama` (4 heads) converted to 2 key/value heads."""
    out = tmp_path_factory.mktemp("eval-models") / "llama-gqa2"
    assert main(["convert", str(tiny_llama), "-o", str(out), "--groups", "2"]) == 0
    return out


def causal_oracle(folder, texts, max_tokens):
    """exp(mean NLL) of each token after the first, from the logits."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    nll, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll += torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(nll / count), count


def seq2seq_oracle(folder, pairs, max_tokens):
    """exp(mean NLL) of the summary tokens, teacher-forced behind the decoder start token, from the logits."""
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    nll, count = 0.0, 0
    for text, summary in pairs:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
        labels = tokenizer(summary, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
        start = torch.tensor([[model.config.decoder_start_token_id]])
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=torch.cat([start, labels[:, :-1]], dim=1)).logits
        nll += torch.nn.functional.cross_entropy(logits[0].double(), labels[0], reduction="sum").item()
        count += labels.shape[1]
    return math.exp(nll / count), count


def test_perplexity_matches_an_oracle(capsys, tiny_llama, data, tmp_path):
    code, out, err = run(
        capsys, "eval", tiny_llama, "--data", data, "--samples", 3, "--max-tokens", 12, "--decode-tokens", 0,
        "--json", tmp_path / "eval.json",
    )  # fmt: skip
    assert code == 0, err
    (result,) = json.loads((tmp_path / "eval.json").read_text())["models"]
    expected, tokens = causal_oracle(tiny_llama, TEXTS[:3], max_tokens=12)
    assert (result["scores"], result["samples"], result["tokens"]) == ("text", 3, tokens)
    assert tokens == 3 * 11  # every text is longer than 12 tokens: truncated
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["loss"] == pytest.approx(math.log(expected), rel=1e-5)
    assert "decode_tokens_per_second" not in result and "decode" not in out  # --decode-tokens 0 skips it
    assert f"{expected:,.2f}" in out

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()  # the demo's perplexity is the same function
    assert perplexity(model, AutoTokenizer.from_pretrained(tiny_llama), TEXTS[:3], 12) == pytest.approx(expected)


def test_summary_loss_of_an_encoder_decoder_matches_an_oracle(capsys, t5_dir, data, tmp_path):
    code, out, err = run(
        capsys, "eval", t5_dir, "--data", data, "--max-tokens", 8, "--decode-tokens", 3, "--rounds", 1,
        "--json", tmp_path / "eval.json",
    )  # fmt: skip
    assert code == 0, err
    (result,) = json.loads((tmp_path / "eval.json").read_text())["models"]
    expected, tokens = seq2seq_oracle(t5_dir, list(zip(TEXTS, SUMMARIES, strict=True)), max_tokens=8)
    assert (result["scores"], result["samples"], result["tokens"]) == ("summaries", 4, tokens)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["kv_heads"] == {"encoder": 8, "decoder_self": 8, "cross": 8}
    assert set(result["kv_cache_bytes_per_token"]) == {"self", "cross"}
    assert result["decode_tokens_per_second"] > 0 and result["decode_speedup"] == 1
    assert "summaries" in out and "KV cache / token (cross)" in out


def test_two_models_side_by_side_with_ratios_against_the_first(capsys, tiny_llama, llama_gqa2, data, tmp_path):
    code, out, err = run(
        capsys, "eval", tiny_llama, llama_gqa2, "--data", data, "--samples", 2, "--decode-tokens", 4,
        "--rounds", 2, "--json", tmp_path / "eval.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (report["decode_new_tokens"], report["decode_prompt_tokens"], report["decode_rounds"]) == (4, 64, 2)
    mha, gqa = report["models"]
    assert (mha["model"], gqa["model"]) == (str(tiny_llama), str(llama_gqa2))
    assert (mha["kv_heads"], gqa["kv_heads"]) == ({"self": 4}, {"self": 2})
    assert mha["kv_cache_bytes_per_token"] == {"self": 2 * 2 * 32 * 4}  # K and V, 2 layers, 32 wide, float32
    assert gqa["kv_cache_bytes_per_token"]["self"] * 2 == mha["kv_cache_bytes_per_token"]["self"]
    for folder, result in ((tiny_llama, mha), (llama_gqa2, gqa)):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert result["parameters"] == model.num_parameters()
        assert result["perplexity"] == pytest.approx(causal_oracle(folder, TEXTS[:2], 256)[0], rel=1e-5)
    assert mha["decode_speedup"] == 1.0
    assert gqa["decode_speedup"] == pytest.approx(gqa["decode_tokens_per_second"] / mha["decode_tokens_per_second"])

    lines = out.splitlines()
    header = lines[1].split()  # under the line that says what was measured
    assert header == [tiny_llama.name, llama_gqa2.name]  # side by side, in order, by folder name
    ratio = next(line for line in lines if line.startswith("decode vs first")).split()
    assert ratio[-2:] == ["1.00x", f"{gqa['decode_speedup']:.2f}x"]
    assert "eval" in err  # the progress bar


def test_read_pairs_skips_rows_without_a_summary(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("body,abstract\nfirst text,first summary\nsecond text,\n,third summary\nfourth,4\n")
    assert read_pairs(str(path), "body", "abstract") == [("first text", "first summary"), ("fourth", "4")]


def test_read_pairs_reads_aclsum_summaries():
    if importlib.util.find_spec("aclsum") is None:
        pytest.skip("pip install --no-deps aclsum")
    pairs = read_pairs("aclsum:test", summary_column="outcome")
    whole = read_pairs("aclsum:test")
    assert len(pairs) == len(whole) and pairs[0][0] == whole[0][0]
    assert whole[0][1].endswith(pairs[0][1]) and len(whole[0][1]) > len(pairs[0][1])


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-bad")
    (folder / "texts.txt").write_text("one text\nanother\n")
    (folder / "no-summary.jsonl").write_text('{"text": "a text"}\n')
    (folder / "broken.jsonl").write_text('{"text": \n')
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32)
    ViTForImageClassification(config).save_pretrained(folder / "vit")
    return folder


@pytest.mark.parametrize(
    "model, source, extra, message",
    [
        ("llama", "missing.jsonl", [], "not found"),
        ("missing", "data", [], "no checkpoint folder"),
        ("vit", "data", [], "(vit) is not a language model"),
        ("llama", "broken.jsonl", [], "not JSON lines"),
        ("llama", "data", ["--text-column", "body"], "record 1 has no 'body' field"),
        ("t5", "texts.txt", [], "is encoder-decoder: it scores summaries"),
        ("t5", "no-summary.jsonl", [], "record 1 has no 'summary' field"),
        ("t5", "data", ["--summary-column", "abstract"], "record 1 has no 'abstract' field"),
        ("llama", "data", ["--samples", "0"], "--samples must be at least 1"),
        ("llama", "data", ["--json", "nowhere/eval.json"], "does not exist"),
        ("llama", "data", ["--device", "nonsense"], "unknown device"),
    ],
)
def test_errors_are_one_line(capsys, tiny_llama, t5_dir, data, bad_data, tmp_path, model, source, extra, message):
    models = {"llama": tiny_llama, "t5": t5_dir, "missing": tmp_path / "missing", "vit": bad_data / "vit"}
    source = data if source == "data" else tmp_path / source if source.startswith("missing") else bad_data / source
    extra = [str(tmp_path / a) if a.startswith("nowhere") else a for a in extra]
    code, out, err = run(capsys, "eval", tiny_llama, models[model], "--data", source, *extra)
    assert code == 2 and message in one_error_line(err), err
    assert "perplexity" not in out  # checked before anything is measured


def test_columns_are_named_by_folder_unless_two_share_a_name(tmp_path):
    for folder in ("a/model", "b/model", "c/other"):
        (tmp_path / folder).mkdir(parents=True)
    a, b, c = (str(tmp_path / f) for f in ("a/model", "b/model", "c/other"))
    assert column_names([a, c, "org/hub-model"]) == ["model", "other", "org/hub-model"]
    assert column_names([a, b]) == [a, b]
