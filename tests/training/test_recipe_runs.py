"""Short real runs of recipes/uptrain_summarization.py (in this process; through `accelerate launch` marked slow),
resume after a kill, every config against the script, one-line user errors.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from recipe_fixtures import CONFIGS, SCRIPT, argv, run, train_losses

import hf_gqa
from hf_gqa.training import (
    ROUGE_KEYS,
)

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")


# ---------------------------------------------------------------------------------------------------------------
# Runs


def test_t5_recipe_run(recipe, tiny_t5, cnndm, datasets_cache, tmp_path):
    output = tmp_path / "run"
    args = argv(
        tiny_t5,
        output,
        cnndm,
        datasets_cache,
        "--convert-variant",
        "gqa",
        "--groups",
        "2",
        "--source-prefix",
        "summarize: ",
        "--max-train-steps",
        "3",
        "--checkpointing-steps",
        "2",
        "--eval-steps",
        "2",
        "--freeze-relative-attention-bias",
        "--hooks",
        "test_model_helpers:Counter()",
    )
    assert run(recipe, args) == 0
    results = json.loads((output / "all_results.json").read_text())
    for key in ROUGE_KEYS:
        assert 0.0 <= results[f"eval_{key}"] <= 100.0
    assert results["train_steps"] == 3 and results["eval_samples"] == 4 and results["decode_tokens_per_second"] > 0
    assert results["model"]["kv_heads"] == {"encoder": 8, "decoder_self": 2, "cross": 2}
    assert results["model"]["kv_cache_bytes_per_token"] == {"self": 2 * 8 * 3 * 2 * 4, "cross": 2 * 8 * 3 * 2 * 4}
    assert results["config"]["groups"] == 2 and results["config"]["max_train_steps"] == 3
    assert [step for step, _ in train_losses(output)] == [1, 2, 3]
    assert (output / "train_log.csv").read_text().startswith("step,epoch,loss,learning_rate")
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 3]  # every eval_steps, and at the end
    assert len((output / "eval_predictions.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-2"]
    from transformers import AutoModelForSeq2SeqLM

    saved = AutoModelForSeq2SeqLM.from_pretrained(output / "model")
    source = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    assert saved.config.model_type == "t5_gqa" and saved.config.num_key_value_heads == 2
    bias = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(saved.state_dict()[bias], source.state_dict()[bias])  # frozen
    assert not torch.equal(saved.state_dict()["shared.weight"], source.state_dict()["shared.weight"])  # trained


def test_resume_after_a_kill_repeats_the_straight_run(recipe, tiny_t5, cnndm, datasets_cache, tmp_path):
    # 16 examples, batch 4, 2 micro-batches per step: 2 steps per epoch; 5 steps cross two epoch boundaries.
    common = (
        "--convert-variant",
        "mqa",
        "--gradient-accumulation-steps",
        "2",
        "--max-train-steps",
        "5",
        "--checkpointing-steps",
        "1",
        "--checkpoints-total-limit",
        "10",
        "--decode-benchmark-tokens",
        "0",
    )
    straight = tmp_path / "straight"
    assert run(recipe, argv(tiny_t5, straight, cnndm, datasets_cache, *common)) == 0
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed after step 4"):
        run(
            recipe,
            argv(tiny_t5, killed, cnndm, datasets_cache, *common, "--hooks", "test_model_helpers:CrashAt(step=4)"),
        )
    assert [p.name for p in sorted((killed / "checkpoints").iterdir())] == ["step-1", "step-2", "step-3"]
    assert (
        run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, "--resume-from-checkpoint", "latest")) == 0
    )
    assert train_losses(killed) == train_losses(straight)  # mid-epoch resume: same losses, bit for bit
    first, second = (json.loads((d / "all_results.json").read_text()) for d in (straight, killed))
    assert first["eval_loss"] == second["eval_loss"] and first["eval_rouge1"] == second["eval_rouge1"]
    assert len({loss for _, loss in train_losses(straight)}) == 5  # the losses do move (dropout, updates)


def test_simgqa_interval_run_resumes_with_its_regrouping(recipe, tiny_t5, cnndm, datasets_cache, tmp_path):
    # T5 SimGQA regrouped every 2 steps: a resume restores permuted weights, optimizer state and the bias orders.
    common = ("--convert-variant", "simgqa", "--groups", "2", "--convert-regroup-every", "2", "--max-train-steps", "5")
    common += ("--checkpointing-steps", "1", "--checkpoints-total-limit", "10", "--decode-benchmark-tokens", "0")
    straight = tmp_path / "straight"
    assert (
        run(recipe, argv(tiny_t5, straight, cnndm, datasets_cache, *common, "--hooks", "SimGQARegroup(every=2)")) == 0
    )
    killed = tmp_path / "killed"
    crash = ("--hooks", "SimGQARegroup(every=2)", "test_model_helpers:CrashAt(step=4)")
    with pytest.raises(RuntimeError, match="killed after step 4"):
        run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, *crash))
    resume = ("--hooks", "SimGQARegroup(every=2)", "--resume-from-checkpoint", "latest")
    assert run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, *resume)) == 0
    assert train_losses(killed) == train_losses(straight)
    saved = json.loads((straight / "model" / "config.json").read_text())
    assert saved["gqa_kv_weights"] is None and saved["gqa_head_order"]["decoder_self"]  # folded, orders kept
    assert saved["gqa_head_order"] == json.loads((killed / "model" / "config.json").read_text())["gqa_head_order"]


def test_decoder_recipe_run_with_lora(recipe, tiny_llama, cnndm, datasets_cache, tmp_path):
    pytest.importorskip("peft")
    output = tmp_path / "llama"
    args = argv(
        tiny_llama,
        output,
        cnndm,
        datasets_cache,
        "--convert-variant",
        "gqa",
        "--groups",
        "2",
        "--max-train-steps",
        "2",
        "--lora-r",
        "4",
        "--learning-rate",
        "1e-2",
        "--checkpointing-steps",
        "0",
    )
    assert run(recipe, args) == 0
    results = json.loads((output / "all_results.json").read_text())
    assert all(f"eval_{key}" in results for key in ROUGE_KEYS) and results["eval_gen_len"] > 0
    assert results["config"]["trainable_parameters"] < results["config"]["parameters"] / 10
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(output / "model")
    source = AutoModelForCausalLM.from_pretrained(tiny_llama)
    converted = hf_gqa.convert(source, groups=2)
    assert type(saved).__name__ == "LlamaForCausalLM" and saved.config.num_key_value_heads == 2
    weights, start, before = saved.state_dict(), converted.state_dict(), source.state_dict()
    assert not any("lora" in key for key in weights)  # merged
    assert not torch.equal(
        weights["model.layers.0.self_attn.k_proj.weight"], start["model.layers.0.self_attn.k_proj.weight"]
    )
    assert not torch.equal(
        weights["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(weights["model.embed_tokens.weight"], before["model.embed_tokens.weight"])  # not a LoRA target
    assert results["model"]["kv_cache_bytes_per_token"] == {"self": 2 * 2 * 8 * 2 * 4}


def test_every_config_parses_against_the_script(recipe):
    assert {c.name for c in CONFIGS} >= {
        f"t5-small_{v}.yaml" for v in ("mha", "mqa", "gqa", "wgqa", "randwgqa", "simgqa")
    }
    for config in CONFIGS:
        first = config.read_text().splitlines()[0]
        assert first == f"# accelerate launch recipes/uptrain_summarization.py --config recipes/configs/{config.name}"
        args = recipe.parse_args(["--config", str(config)])
        recipe.check_args(args)
        if config.name.startswith("t5-small_"):  # the WGQA paper's settings
            assert (args.max_source_length, args.max_target_length, args.learning_rate) == (512, 256, 1e-3)
            assert (args.per_device_train_batch_size * args.gradient_accumulation_steps, args.num_train_epochs) == (
                32,
                3,
            )
            assert args.source_prefix == "summarize: " and args.lr_scheduler_type == "linear"
    args = recipe.parse_args(["--config", str(CONFIGS[0]), "--seed", "7", "--alpha", "0.05"])
    assert (args.seed, args.alpha) == (7, 0.05)


def test_user_errors_are_one_line(recipe, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 1\n")
    assert run(recipe, ["--config", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"uptrain_summarization: error: --config {str(bad)!r}: unknown option 'learning_rat'"
    ]
    assert run(recipe, ["--model-name-or-path", "x", "--output-dir", str(tmp_path / "o")]) == 2
    assert "give --dataset-name or --train-file" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    data = tmp_path / "t.jsonl"
    assert run(recipe, ["--model-name-or-path", "x", "--train-file", str(data), "--output-dir", str(busy)]) == 2
    assert f"--train-file {str(data)!r}: no such file" in capsys.readouterr().err
    data.write_text('{"article": "a", "highlights": "b"}\n')
    assert run(recipe, ["--model-name-or-path", "x", "--train-file", str(data), "--output-dir", str(busy)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert run(recipe, ["--model-name-or-path", str(tmp_path / "none"), "--train-file", str(data),
                        "--output-dir", str(tmp_path / "new")]) == 2  # fmt: skip
    assert "no checkpoint folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------------------------
# Through `accelerate launch` (slow: a fresh interpreter per run)


def _launch(args: list[str], **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.slow
def test_accelerate_launch_and_sigkill_resume(tiny_t5, cnndm, datasets_cache, tmp_path):
    common = ["--convert-variant", "gqa", "--groups", "4", "--max-train-steps", "8", "--checkpointing-steps", "1",
              "--checkpoints-total-limit", "20", "--decode-benchmark-tokens", "0"]  # fmt: skip
    straight = tmp_path / "straight"
    process = _launch(argv(tiny_t5, straight, cnndm, datasets_cache, *common))
    assert process.wait(timeout=300) == 0, process.stdout.read().decode()[-3000:]
    killed = tmp_path / "killed"
    process = _launch(argv(tiny_t5, killed, cnndm, datasets_cache, *common), start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-3").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before its third checkpoint"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "all_results.json").exists()  # killed mid-run
    resumed = _launch(argv(tiny_t5, killed, cnndm, datasets_cache, *common, "--resume-from-checkpoint", "latest"))
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out[-3000:]
    assert "resumed from" in out
    assert train_losses(killed) == train_losses(straight)
    results = json.loads((killed / "all_results.json").read_text())
    assert all(f"eval_{key}" in results for key in ROUGE_KEYS)


@pytest.mark.parametrize(
    "model,variant,extra",
    [
        ("t5", "dgqa", ["--groups", "2", "--convert-window", "1"]),
        ("t5", "gqkva", ["--groups", "2", "--convert-q-groups", "4"]),
        ("llama", "kdgqa", ["--groups", "2"]),
        ("llama", "pgqa", ["--groups", "2", "--lora-r", "4"]),
        ("llama", "mkva", []),
    ],
)
def test_routed_variants_go_through_the_recipe(
    recipe, tiny_t5, tiny_llama, cnndm, datasets_cache, tmp_path, model, variant, extra
):
    output = tmp_path / variant
    source = tiny_t5 if model == "t5" else tiny_llama
    prefix = ["--source-prefix", "summarize: "] if model == "t5" else []
    args = argv(source, output, cnndm, datasets_cache, "--convert-variant", variant, *extra, *prefix)
    args += ["--max-train-steps", "2", "--checkpointing-steps", "0"]
    assert run(recipe, args) == 0
    results = json.loads((output / "all_results.json").read_text())
    assert all(f"eval_{key}" in results for key in ROUGE_KEYS) and results["model"]["variant"] == variant
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(output / "model")
    kind = "decoder_self" if model == "t5" else "self"
    assert config.gqa_routing[kind]["mode"] == ("pairs" if variant in ("gqkva", "mkva") else variant)
    if variant == "dgqa":  # the recipe added DGQAReallocate: with window 1 the allocation follows the key norms
        from safetensors.torch import load_file

        weights = load_file(output / "model" / "model.safetensors")
        counts = weights["decoder.block.0.layer.0.SelfAttention.routing.allocation"]
        assert counts.sum() == 8 and weights["decoder.block.0.layer.0.SelfAttention.routing.cache_filled"]
