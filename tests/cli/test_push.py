"""`hf-gqa push FOLDER REPO`: any converted or uploaded folder to the Hub (tested up to the upload call, offline)."""

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from helpers import one_error_line, run
from huggingface_hub import ModelCard

from hf_gqa.conversion.cards import check_card


@pytest.fixture
def converted(t5_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "convert", t5_dir, "--groups", 2, "-o", out)
    assert code == 0, err
    return out


def test_push_uploads_a_converted_folder(converted, capsys, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))

    def upload_folder(self, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
        return "https://huggingface.co/me/tiny-gqa/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code, out, err = run(capsys, "push", converted, "me/tiny-gqa", "--private")
    assert code == 0, err
    assert calls["create"] == ("me/tiny-gqa", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"][0] == "me/tiny-gqa" and {"config.json", "model.safetensors", "README.md"} <= set(
        calls["upload"][1]
    )
    assert "pushed to me/tiny-gqa" in out


def test_push_refuses_what_is_not_a_checkpoint_folder_before_uploading(tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("uploaded"))
    code, _, err = run(capsys, "push", tmp_path / "missing", "me/x")
    assert code == 2 and "no such folder" in one_error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "push", tmp_path / "empty", "me/x")
    assert code == 2 and "no config.json" in one_error_line(err)


def test_push_offline_is_one_line_and_keeps_the_folder(converted, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "push", converted, "me/tiny-gqa")
    assert code == 2 and "kept" in one_error_line(err) and (converted / "config.json").is_file()


def mock_upload(monkeypatch) -> dict:
    """HfApi's create_repo and upload_folder replaced: what would be uploaded (file names, the card) is recorded."""
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))

    def upload_folder(self, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        calls["upload"] = (repo_id, folder, sorted(p.name for p in folder.iterdir()), kw)
        calls["card"] = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_rewrites_the_cards_loading_code_for_the_repo_and_keeps_its_metadata(
    t5_dir, tmp_path, capsys, monkeypatch
):
    source = Path(shutil.copytree(t5_dir, tmp_path / "src"))
    (source / "README.md").write_text(f"---\n{yaml.safe_dump({'license': 'gemma', 'language': ['en']})}---\n")
    out = tmp_path / "out"
    code, _, err = run(capsys, "convert", source, "--groups", 2, "-o", out)
    assert code == 0, err
    before = ModelCard.load(out / "README.md").data.to_dict()
    calls = mock_upload(monkeypatch)
    code, out_text, err = run(capsys, "push", out, "me/tiny-gqa")
    assert code == 0, err
    card = calls["card"]
    check_card(card)
    assert ModelCard(card).data.to_dict() == before  # license gemma, language, tags, pipeline_tag: unchanged
    assert 'from_pretrained("me/tiny-gqa", trust_remote_code=True)' in card and f'"{out}"' not in card
    assert "| variant | `gqa` |" in card  # the conversion's description is kept
    assert calls["upload"][0] == "me/tiny-gqa" and {"config.json", "model.safetensors", "README.md"} <= set(
        calls["upload"][2]
    )


RESULTS = {
    "eval_rouge1": 12.5,
    "eval_rouge2": 3.0,
    "eval_rougeL": 10.0,
    "eval_rougeLsum": 11.0,
    "eval_loss": 1.0,
    "train_steps": 3,
    "model": {"kv_cache_bytes_per_token": {"self": 128, "cross": 128}},
    "config": {"model_name_or_path": "tiny-org/tiny-t5", "validation_file": "eval.jsonl", "convert_variant": "gqa"},
}


@pytest.mark.parametrize("given", ["run folder", "model folder"])
def test_push_of_an_uptraining_run_uploads_its_model_with_the_results(converted, tmp_path, capsys, monkeypatch, given):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the source's card is not fetched
    run_dir = tmp_path / "run"
    shutil.copytree(converted, run_dir / "model")
    (run_dir / "model" / "README.md").unlink()  # a run of an older hf-gqa: no card
    (run_dir / "all_results.json").write_text(json.dumps(RESULTS))
    calls = mock_upload(monkeypatch)
    folder = run_dir if given == "run folder" else run_dir / "model"
    code, _, err = run(capsys, "push", folder, "me/tiny-gqa-uptrained")
    assert code == 0, err
    assert calls["upload"][1] == run_dir / "model" and "model.safetensors" in calls["upload"][2]
    data = ModelCard(calls["card"]).data
    assert data.base_model == "tiny-org/tiny-t5" and data.model_name == "me/tiny-gqa-uptrained"
    measured = {r.metric_type: r.metric_value for r in data.eval_results}
    assert measured["rouge1"] == 12.5 and measured["kv_cache_bytes_per_token_cross"] == 128
    assert measured["perplexity"] == pytest.approx(2.718281828459045)  # e ** 1.0


def test_push_uploads_a_card_hf_gqa_did_not_write_as_it_is(converted, capsys, monkeypatch):
    text = "---\nlicense: mit\n---\n\n# my own card\n"
    (converted / "README.md").write_text(text)
    calls = mock_upload(monkeypatch)
    code, _, err = run(capsys, "push", converted, "me/tiny-gqa")
    assert code == 0, err
    assert calls["card"] == text
