"""Experiment tracking through Accelerate's trackers (`report_to`), beside the run's own CSV/JSONL logs, and the
recipe's `push_to_hub` (tested up to the upload call, offline)."""

import json
import math
from types import SimpleNamespace

import pytest
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker
from huggingface_hub import HfApi, ModelCard
from recipe_fixtures import argv, run

from hf_gqa.conversion.cards import check_card
from hf_gqa.errors import HfGqaError
from hf_gqa.training.arguments import parse_args
from hf_gqa.training.trackers import known_trackers, resolve_report_to

pytest.importorskip("datasets")
pytest.importorskip("rouge_score")

TENSORBOARD = known_trackers().get("tensorboard", False)


class Recorder(GeneralTracker):
    """A tracker that keeps what Accelerate hands it (registered under `name` for one test)."""

    name = "hf_gqa_test_recorder"
    requires_logging_directory = True
    calls: dict = {}

    def __init__(self, run_name, logging_dir, **kwargs):
        super().__init__()
        Recorder.calls.update(start=(run_name, str(logging_dir)), logs=[])

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        Recorder.calls["config"] = values

    def log(self, values, step=None, **kwargs):
        Recorder.calls["logs"].append((step, values))

    def finish(self):
        Recorder.calls["finished"] = True


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, Recorder.name, Recorder)
    Recorder.calls = {}
    return Recorder


def args(**values):
    return SimpleNamespace(**{"report_to": None, "tensorboard": None, **values})


def test_report_to_reads_as_transformers_report_to(recorder):
    assert resolve_report_to(args(report_to=["none"])) == []
    assert resolve_report_to(args(report_to="hf_gqa_test_recorder")) == ["hf_gqa_test_recorder"]
    assert resolve_report_to(args(report_to=["all"])) == [name for name, ok in known_trackers().items() if ok]
    assert resolve_report_to(args()) == (["tensorboard"] if TENSORBOARD else [])  # the old default
    with pytest.raises(HfGqaError, match="choose from all, none, "):
        resolve_report_to(args(report_to=["tensorbored"]))
    with pytest.raises(HfGqaError, match="cannot be combined"):
        resolve_report_to(args(report_to=["none", "hf_gqa_test_recorder"]))
    missing = [name for name, ok in known_trackers().items() if not ok]
    if missing:
        with pytest.raises(HfGqaError, match="not installed"):
            resolve_report_to(args(report_to=[missing[0]]))


def test_the_old_tensorboard_field_is_a_deprecated_alias(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("tensorboard: true\n")
    with pytest.warns(FutureWarning, match="report_to: tensorboard"):
        assert resolve_report_to(parse_args(["--config", str(config)])) == (["tensorboard"] if TENSORBOARD else [])
    config.write_text("tensorboard: false\n")
    with pytest.warns(FutureWarning):
        assert resolve_report_to(parse_args(["--config", str(config)])) == []
    config.write_text("tensorboard: true\nreport_to: wandb\n")
    with pytest.raises(HfGqaError, match="give --report-to only"):
        resolve_report_to(parse_args(["--config", str(config)]))


def test_recipe_run_logs_to_the_trackers_and_pushes_its_model_with_a_results_card(
    recipe, recorder, tiny_t5, cnndm, datasets_cache, tmp_path, monkeypatch
):
    uploads = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: uploads.setdefault("create", (repo_id, kw)))

    def upload_folder(self, repo_id, folder_path, **kw):
        uploads["upload"] = (repo_id, folder_path, sorted(p.name for p in tmp_path.joinpath(folder_path).iterdir()))
        uploads["card"] = tmp_path.joinpath(folder_path, "README.md").read_text()
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    output = tmp_path / "run"
    trackers = [Recorder.name, *(["tensorboard"] if TENSORBOARD else [])]
    extra = ["--convert-variant", "gqa", "--groups", "2", "--source-prefix", "summarize: ", "--max-train-steps", "2",
             "--checkpointing-steps", "0", "--report-to", *trackers, "--push-to-hub", "--hub-model-id",
             "me/tiny-t5-gqa-uptrained", "--hub-private"]  # fmt: skip
    assert run(recipe, argv(tiny_t5, output, cnndm, datasets_cache, *extra)) == 0

    # the run's own logs, which `hf-gqa report` reads, are still written
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert (output / "train_log.csv").is_file() and (output / "eval_log.csv").is_file()
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    # every record reached the tracker, at its step, with the run's options as its configuration
    assert Recorder.calls["start"] == ("hf-gqa", str(output / "runs"))
    assert Recorder.calls["config"]["convert_variant"] == "gqa" and Recorder.calls["config"]["groups"] == 2
    logged = {(step, key): value for step, values in Recorder.calls["logs"] for key, value in values.items()}
    for record in records:
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, int | float) and math.isfinite(value):
                assert logged[(record["step"], f"{record['kind']}/{key}")] == value
    assert Recorder.calls["finished"]
    if TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = list((output / "runs" / "hf-gqa").glob("events.out.tfevents.*"))
        assert events
        scalars = EventAccumulator(str(events[0])).Reload()
        losses = [(e.step, e.value) for e in scalars.Scalars("train/loss")]
        expected = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
        assert [s for s, _ in losses] == [s for s, _ in expected]
        assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)

    # the final model, its tokenizer and its card went to the Hub repo
    results = json.loads((output / "all_results.json").read_text())
    assert uploads["create"] == ("me/tiny-t5-gqa-uptrained", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo, folder, names = uploads["upload"]
    assert repo == "me/tiny-t5-gqa-uptrained" and folder == str(output / "model")
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= set(names)
    card = check_card(uploads["card"])
    assert card.data.model_name == "me/tiny-t5-gqa-uptrained" and card.data.pipeline_tag == "text2text-generation"
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert measured[key] == results[f"eval_{key}"]
    assert measured["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert measured["kv_cache_bytes_per_token_self"] == results["model"]["kv_cache_bytes_per_token"]["self"]
    assert "Base model: none recorded" in uploads["card"]  # tiny_t5 is a local folder with no Hub id
    assert ModelCard.load(output / "model" / "README.md").content == uploads["card"]


def test_push_to_hub_needs_a_repo_id(recipe, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text('{"article": "a", "highlights": "b"}\n')
    common = ["--model-name-or-path", "x", "--train-file", str(data), "--output-dir", str(tmp_path / "o")]
    assert run(recipe, [*common, "--push-to-hub"]) == 2
    assert "--push-to-hub needs --hub-model-id" in capsys.readouterr().err
    assert run(recipe, [*common, "--report-to", "tensorbored"]) == 2
    assert "--report-to 'tensorbored'" in capsys.readouterr().err
