"""Model cards: `huggingface_hub.ModelCard` metadata, checked offline against the Hub's spec, and what a converted
checkpoint's card inherits from its source (base model, licence, datasets, languages) for a Hub source, a local
source with and without a recorded Hub id, and sources under their own licence terms (Llama 2, Gemma, other)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import run
from huggingface_hub import ModelCard
from tiny_decoders import make

from hf_gqa.conversion.cards import check_card, eval_results, uptrained_card
from hf_gqa.errors import HfGqaError


def write_card(folder: Path, metadata: dict) -> None:
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(metadata)}---\n\n# the source\n", encoding="utf-8")


def converted_card(capsys, source, out: Path, *extra) -> dict:
    """Convert `source` with hf-gqa convert; the output card's metadata, after it passed `check_card` and loads
    back through `ModelCard.load`."""
    code, _, err = run(capsys, "convert", source, *(extra or ("--groups", 2)), "-o", out)
    assert code == 0, err
    text = (out / "README.md").read_text(encoding="utf-8")
    check_card(text)
    return ModelCard.load(out / "README.md").data.to_dict()


@pytest.fixture
def local_t5(t5_dir, tmp_path):
    """A copy of the tiny T5 that a test may give a card or a config field."""
    return Path(shutil.copytree(t5_dir, tmp_path / "local-t5"))


@pytest.fixture
def llama_dir(tmp_path):
    path = tmp_path / "tiny-llama"
    make("llama", kv_heads=8).save_pretrained(path)
    return path


def test_hub_source_is_the_base_model_and_its_card_is_inherited(hub_cache, tmp_path, capsys):
    snapshot = next((tmp_path / "hub" / "models--tiny-org--tiny-t5" / "snapshots").iterdir())
    write_card(snapshot, {"license": "apache-2.0", "language": ["en", "de"], "datasets": ["allenai/c4"]})
    meta = converted_card(capsys, hub_cache, tmp_path / "mqa", "--variant", "mqa")
    assert meta["base_model"] == "tiny-org/tiny-t5" and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0" and "license_name" not in meta
    assert meta["language"] == ["en", "de"] and meta["datasets"] == ["allenai/c4"]
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text2text-generation"  # t5_gqa: the Hub cannot infer it
    assert {"hf-gqa", "gqa", "mqa", "t5_gqa"} <= set(meta["tags"])
    text = (tmp_path / "mqa" / "README.md").read_text()
    assert "the Hub id it was converted from" in text and "trust_remote_code=True" in text


@pytest.mark.parametrize("recorded", ["_name_or_path", "hub-cache-folder"])
def test_local_source_with_a_recorded_hub_id(local_t5, tmp_path, capsys, recorded):
    source = local_t5
    if recorded == "_name_or_path":  # what transformers 4's save_pretrained wrote
        config = json.loads((local_t5 / "config.json").read_text())
        (local_t5 / "config.json").write_text(json.dumps({**config, "_name_or_path": "google/flan-t5-small"}))
    else:  # a snapshot folder of the Hub cache, given as a local path
        source = tmp_path / "cache" / "models--google--flan-t5-small" / "snapshots" / ("a" * 40)
        shutil.copytree(local_t5, source)
    meta = converted_card(capsys, source, tmp_path / "out")
    assert meta["base_model"] == "google/flan-t5-small" and meta["base_model_relation"] == "finetune"
    text = (tmp_path / "out" / "README.md").read_text()
    expected = "`_name_or_path`" if recorded == "_name_or_path" else "the Hub cache folder"
    assert expected in text


def test_local_source_without_a_hub_id_says_so(local_t5, tmp_path, capsys):
    meta = converted_card(capsys, local_t5, tmp_path / "out")
    assert "base_model" not in meta and "base_model_relation" not in meta and "license" not in meta
    assert meta["pipeline_tag"] == "text2text-generation" and "gqa" in meta["tags"]
    text = (tmp_path / "out" / "README.md").read_text()
    assert "Base model: none recorded" in text and str(local_t5) in text
    assert "License: none found" in text


def test_other_terms_without_a_link_or_a_hub_id_are_kept(local_t5, tmp_path, capsys):
    write_card(local_t5, {"license": "other", "license_name": "my-terms"})
    meta = converted_card(capsys, local_t5, tmp_path / "out")
    assert (meta["license"], meta["license_name"], meta.get("license_link")) == ("other", "my-terms", None)
    assert "no link to its terms given" in (tmp_path / "out" / "README.md").read_text()


GATED = {
    "llama2": ({"license": "llama2"}, {"license": "llama2"}),
    "gemma": ({"license": "gemma"}, {"license": "gemma"}),
    # the Hub's form for terms it has no identifier for; a link relative to the source repo is made absolute
    "other": (
        {"license": "other", "license_name": "Llama 2 Community License", "license_link": "LICENSE"},
        {
            "license": "other",
            "license_name": "llama-2-community-license",
            "license_link": "https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/LICENSE",
        },
    ),
    # an identifier the Hub does not know: kept as the licence's name, linked to the source's page
    "unknown": (
        {"license": "acme-model-terms"},
        {
            "license": "other",
            "license_name": "acme-model-terms",
            "license_link": "https://huggingface.co/meta-llama/Llama-2-7b-hf",
        },
    ),
}


@pytest.mark.parametrize("path", ["streamed", "in-memory"])
@pytest.mark.parametrize("terms", sorted(GATED))
def test_a_gated_licence_is_never_dropped(llama_dir, tmp_path, capsys, terms, path):
    source_card, expected = GATED[terms]
    write_card(llama_dir, {**source_card, "language": "en"})
    config = json.loads((llama_dir / "config.json").read_text())
    (llama_dir / "config.json").write_text(json.dumps({**config, "_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    extra = ["--in-memory"] if path == "in-memory" else []
    meta = converted_card(capsys, llama_dir, tmp_path / "out", "--groups", 2, *extra)
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf" and meta["pipeline_tag"] == "text-generation"
    assert meta["language"] == ["en"]
    assert "inherited from the source's model card" in (tmp_path / "out" / "README.md").read_text()


def test_fold_keeps_the_training_forms_provenance(hub_cache, tmp_path, capsys):
    snapshot = next((tmp_path / "hub" / "models--tiny-org--tiny-t5" / "snapshots").iterdir())
    write_card(snapshot, {"license": "gemma"})
    form = tmp_path / "wgqa"
    converted_card(capsys, hub_cache, form, "--variant", "wgqa", "--groups", 2)
    code, _, err = run(capsys, "fold", form, "-o", tmp_path / "folded")
    assert code == 0, err
    meta = ModelCard.load(tmp_path / "folded" / "README.md").data.to_dict()
    check_card((tmp_path / "folded" / "README.md").read_text())
    assert meta["base_model"] == "tiny-org/tiny-t5" and meta["license"] == "gemma" and "wgqa" in meta["tags"]


BAD_CARDS = [
    ("base_model: ./my-folder\n", "is not a Hub id"),
    ("base_model: a/b\nbase_model_relation: distilled\n", "base_model_relation"),
    ("base_model_relation: finetune\n", "needs a base_model"),
    ("license: llama-2\n", "not a Hub licence identifier"),
    ("license: other\nlicense_link: https://x.org/terms\n", "needs a license_name"),
    ("license: other\nlicense_name: My Terms\nlicense_link: https://x.org\n", "license_name"),
    ("pipeline_tag: summarisation\n", "is not a Hub task"),
    ("tags: [gqa, 7]\n", "tags must be a list of strings"),
    (
        "model-index:\n- name: m\n  results:\n  - task: {type: summarization}\n    dataset: {name: d, type: d}\n"
        "    metrics:\n    - {type: rouge1, value: high}\n",
        "is not a finite number",
    ),
]


@pytest.mark.parametrize("metadata, problem", BAD_CARDS)
def test_check_card_names_what_breaks_the_hub_spec(metadata, problem):
    with pytest.raises(HfGqaError, match=problem):
        check_card(f"---\n{metadata}---\n\n# a card\n")


def test_check_card_takes_a_valid_card():
    text = (
        "---\nbase_model: meta-llama/Llama-2-7b-hf\nbase_model_relation: finetune\nlicense: llama2\n"
        "library_name: transformers\npipeline_tag: text-generation\ntags: [gqa]\nlanguage: [en]\n---\n\n# ok\n"
    )
    assert check_card(text).data.license == "llama2"


RESULTS = {
    "eval_rouge1": 41.5,
    "eval_rouge2": 18.25,
    "eval_rougeL": 29.0,
    "eval_rougeLsum": 38.75,
    "eval_loss": 2.0,
    "eval_samples": 40,
    "train_steps": 300,
    "hf_gqa_version": "0.1.0",
    "model": {"model_type": "t5_gqa", "kv_cache_bytes_per_token": {"self": 4096, "cross": 2048}},
    "config": {
        "model_name_or_path": "google-t5/t5-small",
        "convert_variant": "gqa",
        "dataset_name": "abisee/cnn_dailymail",
        "dataset_config_name": "3.0.0",
        "eval_split": "validation",
        "learning_rate": 0.001,
    },
}


def test_uptrained_card_holds_the_measured_results(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the source's card is not fetched
    config = {"model_type": "t5_gqa", "is_encoder_decoder": True, "auto_map": {"AutoConfig": "x.Y"}}
    text = uptrained_card(config, RESULTS, "me/t5-small-gqa-uptrained")
    card = check_card(text)
    meta = card.data.to_dict()
    assert meta["base_model"] == "google-t5/t5-small" and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["abisee/cnn_dailymail"] and meta["pipeline_tag"] == "text2text-generation"
    assert card.data.model_name == "me/t5-small-gqa-uptrained"
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert measured == {
        "rouge1": 41.5,
        "rouge2": 18.25,
        "rougeL": 29.0,
        "rougeLsum": 38.75,
        "perplexity": pytest.approx(7.38905609893065),  # e ** 2.0, the eval loss
        "kv_cache_bytes_per_token_self": 4096,
        "kv_cache_bytes_per_token_cross": 2048,
    }
    first = card.data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_config, first.dataset_split) == (
        "summarization",
        "abisee/cnn_dailymail",
        "3.0.0",
        "validation",
    )
    assert '"learning_rate": 0.001' in text and 'from_pretrained("me/t5-small-gqa-uptrained"' in text
    assert eval_results({"config": {}}) == []
    assert eval_results({"eval_rouge1": float("nan"), "eval_loss": float("inf"), "config": {}}) == []


@pytest.mark.parametrize("variant", ["simgqa", "wgqa"])
def test_the_mean_form_card_says_no_weights_are_learned(llama_dir, tmp_path, capsys, variant):
    """SimGQA regrouped while uptraining (`gqa_kv_weights: mean`) keeps every K/V head and averages each group: its
    card names the mean and the SimGQARegroup hook, never learned weights; WGQA's card keeps its learned weights."""
    extra = ["--regroup-every", "2"] if variant == "simgqa" else []
    converted_card(capsys, llama_dir, tmp_path / "out", "--variant", variant, "--groups", 2, *extra)
    text = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "hf-gqa fold" in text
    meta = ModelCard.load(tmp_path / "out" / "README.md").data.to_dict()
    code, _, err = run(capsys, "fold", tmp_path / "out", "-o", tmp_path / "folded")
    assert code == 0, err
    folded = (tmp_path / "folded" / "README.md").read_text(encoding="utf-8")
    check_card(folded)
    folded_meta = ModelCard.load(tmp_path / "folded" / "README.md").data.to_dict()
    if variant == "simgqa":
        assert "learned" not in text and "plain mean of the heads it holds" in text and "SimGQARegroup" in text
        assert "learned" not in folded and "the plain mean of the heads it held" in folded
        assert "wgqa" not in meta["tags"] + folded_meta["tags"]
    else:
        assert "learned weights combine each group's heads" in text and "learned key/value weights" in folded
        assert "wgqa" in meta["tags"] and "wgqa" in folded_meta["tags"]


@pytest.mark.parametrize("path", ["streamed", "in-memory"])
def test_the_sources_licence_files_travel_with_the_converted_model(llama_dir, tmp_path, capsys, path):
    """Llama 2's terms require its licence and use policy to ship with the model: both conversion paths copy them."""
    terms = {"LICENSE": "the licence", "USE_POLICY.md": "the use policy", "NOTICE.txt": "a notice"}
    for name, text in terms.items():
        (llama_dir / name).write_text(text, encoding="utf-8")
    extra = ["--in-memory"] if path == "in-memory" else []
    converted_card(capsys, llama_dir, tmp_path / "out", "--groups", 2, *extra)
    for name, text in terms.items():
        assert (tmp_path / "out" / name).read_text(encoding="utf-8") == text, name
