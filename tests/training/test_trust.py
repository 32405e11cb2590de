"""What `--hooks` and `--resume-from-checkpoint` may run (issue 12, items 11 and 12): nothing but a `TrainingHook`
subclass, and no pickle from a checkpoint folder unless `--trust-checkpoint` says the folder is trusted.

The checkpoint tests share one short run (two steps, a checkpoint after each) and resume from copies of its
checkpoints, tampered with.
"""

import json
import os
import pickle
import shutil

import pytest
import torch
from recipe_fixtures import argv, run, train_losses

from hf_gqa.errors import HfGqaError
from hf_gqa.training import TrainingHook, build_hooks, parse_hook_spec
from hf_gqa.training.checkpoint import STATE_FILE, check_checkpoint, save_checkpoint

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")

COMMON = ("--convert-variant", "gqa", "--groups", "2", "--max-train-steps", "2", "--checkpointing-steps", "1",
          "--checkpoints-total-limit", "5", "--decode-benchmark-tokens", "0", "--max-eval-samples", "2")  # fmt: skip


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("uptrain_summarization: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


class MakeDir:
    """A pickle that, when loaded, creates a folder: the stand-in for any code a crafted pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


# ---------------------------------------------------------------------------------------------------------------
# --hooks: resolve the class, check it is a TrainingHook, only then call it


@pytest.mark.parametrize(
    "spec",
    [
        "subprocess:run(args='touch {marker}', shell=True)",
        "os:system(command='touch {marker}')",
        "os:mkdir(path='{marker}')",
        "os:remove(path='{victim}')",
        "shutil:rmtree(path='{folder}')",
        "collections:OrderedDict(x=1)",  # a class, but not a training hook
        "hf_gqa.core.hooks:run_hooks(hooks=[], state=None)",  # a function next to the hooks
    ],
)
def test_a_hook_spec_that_is_not_a_training_hook_calls_nothing(tmp_path, spec):
    marker, victim, folder = tmp_path / "created", tmp_path / "victim", tmp_path / "folder"
    victim.write_text("keep me")
    folder.mkdir()
    with pytest.raises(HfGqaError, match="is not a training hook"):
        build_hooks([spec.format(marker=marker, victim=victim, folder=folder)])
    assert not marker.exists() and victim.is_file() and folder.is_dir()


def test_hook_arguments_are_literals_only(tmp_path):
    marker = tmp_path / "created"
    for spec in (
        f"SimGQARegroup(every=__import__('os').mkdir('{marker}'))",
        "SimGQARegroup(**{'every': 2})",
        "SimGQARegroup(every=2, every=3)",
    ):
        with pytest.raises(HfGqaError, match="key=literal"):
            parse_hook_spec(spec)
    assert not marker.exists()
    (hook,) = build_hooks(["hf_gqa.variants.simgqa:SimGQARegroup(every=3)"])
    assert hook.every == 3


def test_the_recipe_refuses_a_non_hook_before_building_anything(recipe, tiny_t5, cnndm, datasets_cache, tmp_path,
                                                                capsys):  # fmt: skip
    marker = tmp_path / "created"
    output = tmp_path / "out"
    code = run(recipe, argv(tiny_t5, output, cnndm, datasets_cache, "--max-train-steps", "1",
                            "--hooks", f"subprocess:run(args='touch {marker}', shell=True)"))  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "subprocess:run" in line and "not a training hook" in line
    assert not marker.exists() and not output.exists()


# ---------------------------------------------------------------------------------------------------------------
# --resume-from-checkpoint: no pickle is loaded unless the folder is trusted


@pytest.fixture(scope="module")
def finished(recipe, tiny_t5, cnndm, datasets_cache, tmp_path_factory):
    """A finished two-step run with a checkpoint after each step."""
    output = tmp_path_factory.mktemp("trust") / "run"
    assert run(recipe, argv(tiny_t5, output, cnndm, datasets_cache, *COMMON)) == 0
    return output


def copy_checkpoint(finished, tmp_path, step: int = 1):
    return shutil.copytree(finished / "checkpoints" / f"step-{step}", tmp_path / f"step-{step}")


def resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint, *extra):
    args = argv(tiny_t5, output, cnndm, datasets_cache, *COMMON, "--resume-from-checkpoint", str(checkpoint), *extra)
    return run(recipe, args)


def test_a_checkpoint_holds_no_pickle_of_hf_gqa_and_resumes_exactly(recipe, tiny_t5, cnndm, datasets_cache,
                                                                    finished, tmp_path):  # fmt: skip
    checkpoint = finished / "checkpoints" / "step-1"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        STATE_FILE, "model.safetensors", "optimizer.bin", "rng_state_0.safetensors", "scheduler.bin"
    ]  # fmt: skip
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["progress"]["step"] == 1 and state["hooks"] == {}
    output = tmp_path / "resumed"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint) == 0
    assert train_losses(output) == train_losses(finished)[1:]  # step 2, bit for bit
    first, second = (json.loads((d / "all_results.json").read_text()) for d in (finished, output))
    assert first["eval_loss"] == second["eval_loss"]


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl",
                                  "pytorch_model.bin", "sampler.bin", "extra/notes.pt"])  # fmt: skip
def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_run(recipe, tiny_t5, cnndm, datasets_cache, finished,
                                                             tmp_path, capsys, name):  # fmt: skip
    checkpoint = copy_checkpoint(finished, tmp_path)
    marker = tmp_path / "ran"
    (checkpoint / name).parent.mkdir(exist_ok=True)
    (checkpoint / name).write_bytes(pickle.dumps(MakeDir(marker)))
    output = tmp_path / "out"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint) == 2
    line = one_error_line(capsys.readouterr().err)
    assert name in line and "--trust-checkpoint" in line
    assert not marker.exists() and not output.exists()


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin"])
def test_a_crafted_optimizer_file_is_loaded_weights_only(recipe, tiny_t5, cnndm, datasets_cache, finished, tmp_path,
                                                         capsys, name):  # fmt: skip
    checkpoint = copy_checkpoint(finished, tmp_path)
    marker = tmp_path / "ran"
    torch.save({"state": MakeDir(marker)}, checkpoint / name)  # the format accelerate writes, with a payload
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "out", checkpoint) == 2
    line = one_error_line(capsys.readouterr().err)
    assert name in line and "--trust-checkpoint" in line
    assert not marker.exists()


def legacy_layout(checkpoint):
    """Turn a checkpoint into the layout hf-gqa wrote before it saved its state as JSON: the progress counter and the
    hooks' states pickled by accelerate as custom_checkpoint_0.pkl and custom_checkpoint_1.pkl."""
    state_file = checkpoint / STATE_FILE
    if state_file.exists():
        state = json.loads(state_file.read_text())
        torch.save(state["progress"], checkpoint / "custom_checkpoint_0.pkl")
        torch.save(state["hooks"], checkpoint / "custom_checkpoint_1.pkl")
        state_file.unlink()
    return checkpoint


def test_a_checkpoint_of_an_older_hf_gqa_needs_trust(recipe, tiny_t5, cnndm, datasets_cache, finished, tmp_path,
                                                     capsys):  # fmt: skip
    checkpoint = legacy_layout(copy_checkpoint(finished, tmp_path))
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "refused", checkpoint) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "custom_checkpoint_0.pkl" in line and "--trust-checkpoint" in line
    assert not (tmp_path / "refused").exists()
    output = tmp_path / "trusted"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint, "--trust-checkpoint") == 0
    assert train_losses(output) == train_losses(finished)[1:]


def test_trust_lets_an_unknown_pickle_stay_without_loading_it(recipe, tiny_t5, cnndm, datasets_cache, finished,
                                                              tmp_path):  # fmt: skip
    checkpoint = copy_checkpoint(finished, tmp_path, step=2)
    marker = tmp_path / "ran"
    (checkpoint / "notes.pkl").write_bytes(pickle.dumps(MakeDir(marker)))
    output = tmp_path / "out"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint, "--trust-checkpoint") == 0
    assert not marker.exists()  # trusted, but still not a file hf-gqa loads


class TensorState(TrainingHook):
    def state_dict(self):
        return {"weights": torch.zeros(2)}


def test_a_hook_state_that_is_not_json_data_is_refused_before_writing(tmp_path):
    with pytest.raises(HfGqaError, match="TensorState: state_dict\\(\\) must return JSON data"):
        save_checkpoint(None, tmp_path, 1, hooks=[TensorState()])  # fails before the accelerator is used
    assert not (tmp_path / "checkpoints").exists()


def test_old_torch_cannot_load_weights_only_safely(finished, monkeypatch):
    from hf_gqa.training import checkpoint as module

    monkeypatch.setattr(module, "TORCH_VERSION", "2.5.1")
    with pytest.raises(HfGqaError, match=r"torch 2\.5\.1.*--trust-checkpoint"):
        check_checkpoint(finished / "checkpoints" / "step-1")
    check_checkpoint(finished / "checkpoints" / "step-1", trust=True)


# ---------------------------------------------------------------------------------------------------------------
# Corrupt checkpoints, and folders that are not checkpoints (issue 12, item 6)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write_state(checkpoint, edit):
    state = json.loads((checkpoint / STATE_FILE).read_text())
    edit(state)
    (checkpoint / STATE_FILE).write_text(json.dumps(state))


@pytest.mark.parametrize(
    "damage,needles",
    [
        (lambda c: truncate(c / "model.safetensors"), ["model.safetensors", "corrupt"]),
        (lambda c: (c / "model.safetensors").write_bytes(os.urandom(64)), ["model.safetensors", "corrupt"]),
        (lambda c: truncate(c / "optimizer.bin"), ["optimizer.bin", "corrupt"]),
        (lambda c: (c / "scheduler.bin").write_bytes(b"not a zip"), ["scheduler.bin", "corrupt"]),
        (lambda c: (c / "optimizer.bin").unlink(), ["incomplete", "optimizer.bin"]),
        (lambda c: (c / "model.safetensors").unlink(), ["incomplete", "model.safetensors"]),
        (lambda c: (c / "rng_state_0.safetensors").write_bytes(b"{}"), ["rng_state_0.safetensors", "corrupt"]),
        (lambda c: (c / STATE_FILE).write_text("{not json"), [STATE_FILE, "not valid JSON"]),
        (lambda c: (c / STATE_FILE).write_bytes(b'{"format": "caf\xe9"}'), [STATE_FILE, "not UTF-8"]),
        (lambda c: (c / STATE_FILE).write_text("[]"), [STATE_FILE, "not hf-gqa's checkpoint state"]),
        (lambda c: write_state(c, lambda s: s["progress"].update(step="two")), [STATE_FILE, "step", "'two'"]),
        (lambda c: write_state(c, lambda s: s["progress"].update(step=True)), [STATE_FILE, "step"]),
        (lambda c: write_state(c, lambda s: s["progress"].update(loss_sum=None)), [STATE_FILE, "loss_sum"]),
        (lambda c: write_state(c, lambda s: s["progress"].update(extra=1)), [STATE_FILE, "unknown field 'extra'"]),
        (lambda c: write_state(c, lambda s: s.update(hooks=[1])), [STATE_FILE, "hooks"]),
        (lambda c: write_state(c, lambda s: s.update(version=99)), [STATE_FILE, "version 99"]),
    ],
)
def test_a_corrupt_checkpoint_is_one_line(recipe, tiny_t5, cnndm, datasets_cache, finished, tmp_path, capsys,
                                          damage, needles):  # fmt: skip
    checkpoint = copy_checkpoint(finished, tmp_path)
    damage(checkpoint)
    output = tmp_path / "out"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, output, checkpoint) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(checkpoint) in line, line
    for needle in needles:
        assert needle in line, line
    assert not output.exists()  # refused before anything was built or written


def test_a_checkpoint_of_another_model_is_one_line(recipe, tiny_t5, cnndm, datasets_cache, finished, tmp_path,
                                                   capsys):  # fmt: skip
    checkpoint = finished / "checkpoints" / "step-1"
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "out", checkpoint, "--groups", "4") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "model.safetensors" in line and "does not fit this run's model" in line and "size mismatch" in line


def test_a_model_folder_or_an_empty_one_is_not_a_checkpoint(recipe, tiny_t5, cnndm, datasets_cache, finished,
                                                            tmp_path, capsys):  # fmt: skip
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "out", tiny_t5) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tiny_t5) in line and "is a model folder" in line and "--model-name-or-path" in line
    (tmp_path / "empty").mkdir()
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "out", tmp_path / "empty") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is not a checkpoint of recipes/uptrain_summarization.py" in line
    assert resume(recipe, tiny_t5, cnndm, datasets_cache, tmp_path / "out", finished / "model") == 2
    assert "is a model folder" in one_error_line(capsys.readouterr().err)
