"""Distillation uptraining (`--distill`, hf_gqa/training/distill.py): the loss against a hand-computed KL, the teacher
kept apart from the student, tiny T5 and Llama runs, an exact resume, and the one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_t5
from recipe_fixtures import SCRIPT, argv, run, train_losses
from tiny_decoders import make

import hf_gqa
from hf_gqa.training import distill
from hf_gqa.training import run as run_module
from hf_gqa.training.distill import distillation_kl, distillation_loss, unshare_

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")


# ---------------------------------------------------------------------------------------------------------------
# The loss


def _hand_kl(student, teacher, labels, temperature, shift):
    """Mean over label positions of sum_v p_t(v) (log p_t(v) - log p_s(v)), one position at a time."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - (1 if shift else 0)):
            label = labels[b, t + 1] if shift else labels[b, t]
            if label == -100:
                continue
            log_s = torch.log_softmax(student[b, t].double() / temperature, dim=-1)
            log_t = torch.log_softmax(teacher[b, t].double() / temperature, dim=-1)
            total += float((log_t.exp() * (log_t - log_s)).sum())
            count += 1
    return total / count


@pytest.mark.parametrize("shift", [False, True])
def test_loss_matches_a_hand_computed_kl(shift):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 7, generator=generator, requires_grad=True)
    teacher = 3 * torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[-100, 3, 1, -100, 4], [2, 2, -100, 6, -100]])
    ce = torch.tensor(1.25)
    for temperature in (1.0, 2.0, 0.5):
        expected = _hand_kl(student.detach(), teacher, labels, temperature, shift)
        kl = distillation_kl(student, teacher, labels, temperature, shift)
        assert kl.item() == pytest.approx(expected, rel=1e-5) and expected > 0
        parts = distillation_loss(ce, student, teacher, labels, alpha=0.3, temperature=temperature, shift=shift)
        assert parts.kl.item() == pytest.approx(temperature**2 * expected, rel=1e-5)
        assert parts.loss.item() == pytest.approx(0.3 * 1.25 + 0.7 * temperature**2 * expected, rel=1e-5)
    parts.loss.backward()
    masked = (labels[:, 1:] if shift else labels) == -100
    grad = student.grad[:, :-1] if shift else student.grad
    assert torch.all(grad[masked] == 0) and torch.all(grad[~masked].abs().sum(-1) > 0)  # only label positions count
    assert distillation_kl(teacher, teacher, labels, 2.0, shift).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_kl(student, teacher, torch.full_like(labels, -100), 2.0, shift).item() == 0.0


def test_teacher_logits_are_the_logits_of_a_forward_with_the_labels():
    for model in (make_t5("t5"), make_t5("flan"), make("llama"), make("gpt2")):
        model.eval()
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(3, 90, (2, 7), generator=generator)
        if model.config.is_encoder_decoder:
            labels = torch.randint(3, 90, (2, 4), generator=generator)
            labels[0, -2:] = -100
        else:  # prompts of 4 and 3 tokens, then the summary; padding at the end of the first row
            labels = torch.where(torch.tensor([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]) == 1, input_ids, -100)
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
        expected = model(**batch).logits
        got = distill.teacher_logits(model, batch)
        if model.config.is_encoder_decoder:
            assert torch.allclose(got, expected, atol=1e-5)
        else:  # from the position before the earliest label on: the logits that predict a label
            assert distill.positions_to_keep(labels) == 5 and got.shape[1] == 5
            assert torch.allclose(got, expected[:, -5:], atol=1e-5)
            student = torch.randn(expected.shape, generator=generator)
            for temperature in (1.0, 2.0):
                full = distillation_kl(student, expected, labels, temperature, shift=True).item()
                assert distillation_kl(student, got, labels, temperature, shift=True).item() == pytest.approx(full)
            with pytest.raises(hf_gqa.HfGqaError, match="not every label's"):
                distillation_kl(student, got[:, 1:], labels, 1.0, shift=True)


def test_unshare_keeps_the_teacher_apart_from_a_converted_student():
    source = make_t5("t5", dropout_rate=0.0)
    student = hf_gqa.convert(source, groups=2)  # shares every tensor the conversion did not change with `source`
    assert source.lm_head.weight.data_ptr() == student.lm_head.weight.data_ptr()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    assert unshare_(source, student) > 0
    storages = {t.untyped_storage().data_ptr() for t in student.state_dict().values()}
    assert not any(t.untyped_storage().data_ptr() in storages for t in source.state_dict().values())
    assert source.lm_head.weight is source.shared.weight  # tied weights stay tied
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# Runs


@pytest.fixture
def captured(monkeypatch):
    """The (teacher, student) pairs the recipe builds."""
    pairs = []

    def load_teacher(name_or_path, student, dtype=None):
        teacher = distill.load_teacher(name_or_path, student, dtype=dtype)
        pairs.append((teacher, student))
        return teacher

    monkeypatch.setattr(run_module, "load_teacher", load_teacher)
    return pairs


def _train_records(output):
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def _check_parts(output, alpha):
    records = _train_records(output)
    assert records
    for r in records:
        assert r["ce_loss"] > 0 and r["kl_loss"] > 0
        assert r["loss"] == pytest.approx(alpha * r["ce_loss"] + (1 - alpha) * r["kl_loss"], rel=1e-5)
    return records


def test_t5_distill_run_keeps_the_teacher_frozen_and_apart(recipe, tiny_t5, cnndm, datasets_cache, tmp_path, captured):
    output = tmp_path / "t5"
    extra = ("--convert-variant", "gqa", "--groups", "2", "--source-prefix", "summarize: ", "--distill")
    extra += ("--distill-alpha", "0.25", "--max-train-steps", "2", "--checkpointing-steps", "0")
    assert run(recipe, argv(tiny_t5, output, cnndm, datasets_cache, *extra, "--decode-benchmark-tokens", "0")) == 0
    assert [r["step"] for r in _check_parts(output, 0.25)] == [1, 2]
    ((teacher, student),) = captured
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.lm_head.weight.data_ptr() != student.lm_head.weight.data_ptr()
    storages = {t.untyped_storage().data_ptr() for t in student.state_dict().values()}
    assert not any(t.untyped_storage().data_ptr() in storages for t in teacher.state_dict().values())
    from transformers import AutoModelForSeq2SeqLM

    weights = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).state_dict()
    assert all(torch.equal(weights[k], v) for k, v in teacher.state_dict().items())  # untouched by 2 steps
    assert not torch.equal(weights["shared.weight"], student.state_dict()["shared.weight"])  # the student trained
    results = json.loads((output / "all_results.json").read_text())
    assert results["config"]["teacher"] == str(tiny_t5) and results["config"]["teacher_dtype"] == "float32"


def test_llama_distill_run_with_lora_accumulation_and_a_bf16_teacher(
    recipe, tiny_llama, cnndm, datasets_cache, tmp_path, captured
):
    pytest.importorskip("peft")
    output = tmp_path / "llama"
    extra = ("--convert-variant", "gqa", "--groups", "2", "--lora-r", "4", "--gradient-accumulation-steps", "2")
    extra += ("--distill", "--teacher-dtype", "bfloat16", "--distill-temperature", "1.5", "--max-train-steps", "2")
    extra += ("--checkpointing-steps", "0", "--decode-benchmark-tokens", "0", "--learning-rate", "1e-2")
    assert run(recipe, argv(tiny_llama, output, cnndm, datasets_cache, *extra)) == 0
    assert [r["step"] for r in _check_parts(output, 0.5)] == [1, 2]
    ((teacher, student),) = captured
    assert teacher.dtype == torch.bfloat16 and type(teacher).__name__ == "LlamaForCausalLM"
    assert (
        teacher.config.num_key_value_heads == 4
        and teacher.lm_head.weight.data_ptr() != student.lm_head.weight.data_ptr()
    )
    results = json.loads((output / "all_results.json").read_text())
    assert results["config"]["teacher_dtype"] == "bfloat16" and results["model"]["kv_heads"] == {"self": 2}


def test_distill_resume_after_a_kill_repeats_the_straight_run(recipe, tiny_t5, cnndm, datasets_cache, tmp_path):
    # 2 steps per epoch of 2 micro-batches, logged every 2 steps: the kill after step 1 leaves step 1's loss parts
    # unlogged in the checkpoint, and the resumed run (the teacher loaded again) logs the same mean of steps 1 and 2.
    common = ("--convert-variant", "mqa", "--distill", "--gradient-accumulation-steps", "2", "--max-train-steps", "3")
    common += ("--checkpointing-steps", "1", "--checkpoints-total-limit", "10", "--decode-benchmark-tokens", "0")
    common += ("--logging-steps", "2")
    straight = tmp_path / "straight"
    assert run(recipe, argv(tiny_t5, straight, cnndm, datasets_cache, *common)) == 0
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed after step 1"):
        crash = ("--hooks", "test_model_helpers:CrashAt(step=1)")
        run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, *crash))
    resume = ("--resume-from-checkpoint", "latest")
    assert run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, *resume)) == 0
    assert train_losses(killed) == train_losses(straight)
    parts = [[(r["step"], r["ce_loss"], r["kl_loss"]) for r in _train_records(d)] for d in (straight, killed)]
    assert parts[0] == parts[1] and [step for step, _, _ in parts[0]] == [2, 3]
    first, second = (json.loads((d / "all_results.json").read_text()) for d in (straight, killed))
    assert first["eval_loss"] == second["eval_loss"]


@pytest.mark.slow
def test_distill_with_two_processes(tiny_t5, cnndm, datasets_cache, tmp_path):
    # Two CPU processes (gloo): the student is DDP-wrapped, the teacher is not (it has no gradients).
    output = tmp_path / "ddp"
    extra = ("--convert-variant", "gqa", "--groups", "2", "--distill", "--gradient-accumulation-steps", "2")
    extra += ("--max-train-steps", "2", "--checkpointing-steps", "1", "--decode-benchmark-tokens", "0")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT)]
    command += argv(tiny_t5, output, cnndm, datasets_cache, *extra)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert json.loads((output / "run_args.json").read_text())["resolved"]["num_processes"] == 2
    assert [r["step"] for r in _check_parts(output, 0.5)] == [1, 2]
    assert (output / "checkpoints" / "step-2").is_dir() and (output / "all_results.json").is_file()


def test_distill_errors_are_one_line(recipe, tiny_t5, tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text('{"article": "a", "highlights": "b"}\n')
    base = ["--model-name-or-path", str(tiny_t5), "--train-file", str(data), "--output-dir", str(tmp_path / "o")]
    for extra, message in [
        (["--distill"], "--distill needs a teacher: give --convert-variant"),
        (["--teacher-name-or-path", str(tiny_t5)], "--teacher-name-or-path needs --distill"),
        (["--distill", "--convert-variant", "gqa", "--distill-alpha", "1.5"], "--distill-alpha must be in [0, 1]"),
        (["--distill", "--convert-variant", "gqa", "--teacher-dtype", "int8"], "--teacher-dtype 'int8': choose"),
    ]:
        assert run(recipe, base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    config = tmp_path / "distill.yaml"
    config.write_text(f"model_name_or_path: {tiny_t5}\ntrain_file: {data}\noutput_dir: {tmp_path / 'o'}\n")
    config.write_text(config.read_text() + "distill: true\n")
    assert run(recipe, ["--config", str(config)]) == 2  # the YAML key
    assert "--distill needs a teacher" in capsys.readouterr().err
    args = recipe.parse_args(["--config", str(config), "--distill-alpha", "0.2", "--teacher-dtype", "bfloat16"])
    assert (args.distill, args.distill_alpha, args.distill_temperature) == (True, 0.2, 2.0)
    assert args.teacher_dtype == "bfloat16"
    assert not (tmp_path / "o").exists()
