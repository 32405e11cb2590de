"""`hf-gqa push FOLDER REPO`: any converted or uploaded folder to the Hub (tested up to the upload call, offline)."""

from pathlib import Path

import pytest
from helpers import one_error_line, run


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
