"""`~` in the recipe's paths (command line or YAML) means the home folder everywhere, as on a shell command line."""

import pytest

pytest.importorskip("accelerate")

from hf_gqa.training.arguments import parse_args  # noqa: E402


def test_tilde_paths_from_yaml_and_the_command_line_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: ~/run\nresume_from_checkpoint: ~/run/checkpoints/step-2\ncache_dir: ~/cache\n")
    args = parse_args(["--config", str(config), "--model-name-or-path", "~/model", "--train-file", "~/t.jsonl"])
    assert args.output_dir == str(tmp_path / "run")
    assert args.resume_from_checkpoint == str(tmp_path / "run" / "checkpoints" / "step-2")
    assert (args.cache_dir, args.model_name_or_path) == (str(tmp_path / "cache"), str(tmp_path / "model"))
    assert args.train_file == str(tmp_path / "t.jsonl")
