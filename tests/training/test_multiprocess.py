"""The recipe on two CPU processes (`accelerate launch --cpu --num_processes 2`, gloo) against one process with the
same global batch: the same per-step losses, the same ROUGE predictions (each eval example once, with an eval set
that two processes do not divide evenly), DGQA's re-allocation from both processes' statistics, and an exact resume
of a two-process run whose epoch ends in a batch the sampler completes.

The single-process runs call the script in this process; the two-process runs launch it (a fresh interpreter per
process). The model has no dropout: dropout draws one mask per process and micro-batch, which no other split of the
batch reproduces.
"""

import json
import shutil

import pytest
import torch
from recipe_fixtures import argv, launch, run, train_losses
from safetensors.torch import load_file

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")

# 16 training examples with targets of different lengths (so the two halves of a batch hold different numbers of
# label tokens); 5 eval examples in batches of 2: two processes get 3 batches each, the last one padded by accelerate.
COMMON = ["--max-train-samples", "16", "--max-eval-samples", "5", "--per-device-eval-batch-size", "2",
          "--max-target-length", "64", "--learning-rate", "3e-3", "--decode-benchmark-tokens", "0"]  # fmt: skip


def _records(output, kind):
    return [r for r in map(json.loads, (output / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _predictions(output):
    return [json.loads(line) for line in (output / "eval_predictions.jsonl").read_text().splitlines()]


def _assert_same_losses(one, two):
    losses_one, losses_two = train_losses(one), train_losses(two)
    assert [s for s, _ in losses_one] == [s for s, _ in losses_two]
    assert [loss for _, loss in losses_two] == pytest.approx([loss for _, loss in losses_one], rel=2e-5, abs=1e-6)


@pytest.mark.slow
def test_one_and_two_processes_agree(recipe, tiny_t5_no_dropout, cnndm, datasets_cache, tmp_path):
    """Global batch 8 as 1 x 8 and as 2 x 4, three steps (into a second epoch): the logged loss of every step is the
    mean over the global batch's label tokens on both, so the losses and the updates agree; the final evaluation
    scores each of the 5 eval examples once on both, with the same predictions."""
    extra = [*COMMON, "--convert-variant", "gqa", "--groups", "4", "--max-train-steps", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(recipe, argv(tiny_t5_no_dropout, one, cnndm, datasets_cache, *extra,
                            "--per-device-train-batch-size", "8")) == 0  # fmt: skip
    launch(argv(tiny_t5_no_dropout, two, cnndm, datasets_cache, *extra, "--per-device-train-batch-size", "4"))
    _assert_same_losses(one, two)
    predictions_one, predictions_two = _predictions(one), _predictions(two)
    assert [p["index"] for p in predictions_two] == list(range(5))  # none twice, none dropped
    assert predictions_two == predictions_one
    results_one = json.loads((one / "all_results.json").read_text())
    results_two = json.loads((two / "all_results.json").read_text())
    assert results_one["eval_samples"] == results_two["eval_samples"] == 5
    assert results_two["config"]["num_processes"] == 2 and results_two["config"]["total_batch_size"] == 8
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_loss"):
        assert results_two[key] == pytest.approx(results_one[key], rel=1e-5), key
    weights_one, weights_two = (load_file(out / "model" / "model.safetensors") for out in (one, two))
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-4, atol=3e-5)  # Adam: 1% of one update


def test_accumulated_micro_batches_weigh_tokens_as_one_batch(
    recipe, tiny_t5_no_dropout, cnndm, datasets_cache, tmp_path
):
    """One process, global batch 8 as 1 x 8 and as 2 micro-batches of 4 accumulated: the same losses and weights
    (a mean per micro-batch, averaged, would weigh the tokens of the shorter half more)."""
    extra = [*COMMON, "--convert-variant", "gqa", "--groups", "4", "--max-train-steps", "2"]
    whole, accumulated = tmp_path / "whole", tmp_path / "accumulated"
    assert run(recipe, argv(tiny_t5_no_dropout, whole, cnndm, datasets_cache, *extra,
                            "--per-device-train-batch-size", "8")) == 0  # fmt: skip
    split = ["--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"]
    assert run(recipe, argv(tiny_t5_no_dropout, accumulated, cnndm, datasets_cache, *extra, *split)) == 0
    _assert_same_losses(whole, accumulated)
    weights_whole, weights_accumulated = (
        load_file(out / "model" / "model.safetensors") for out in (whole, accumulated)
    )
    for key, value in weights_whole.items():
        torch.testing.assert_close(weights_accumulated[key], value, rtol=1e-4, atol=3e-5)  # Adam: 1% of one update


@pytest.mark.slow
def test_dgqa_reallocates_from_every_process(recipe, tiny_t5_no_dropout, cnndm, datasets_cache, tmp_path):
    """DGQA re-allocating every step: 2 processes x 4 examples see the key norms of the same 8 examples as 1 process
    accumulating 2 micro-batches of 4, so the allocations, the cached norms and the losses agree. (Without the
    statistics summed over processes, DDP's buffer broadcast keeps the first process's half only.)"""
    extra = [*COMMON, "--convert-variant", "dgqa", "--groups", "2", "--convert-window", "1",
             "--max-train-steps", "3", "--per-device-train-batch-size", "4"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(recipe, argv(tiny_t5_no_dropout, one, cnndm, datasets_cache, *extra,
                            "--gradient-accumulation-steps", "2")) == 0  # fmt: skip
    launch(argv(tiny_t5_no_dropout, two, cnndm, datasets_cache, *extra))
    _assert_same_losses(one, two)
    weights_one, weights_two = (load_file(out / "model" / "model.safetensors") for out in (one, two))
    routing = [key for key in weights_one if key.endswith((".norm_cache", ".allocation"))]
    assert routing
    for key in routing:
        torch.testing.assert_close(weights_two[key], weights_one[key], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_two_process_resume_repeats_the_straight_run(tiny_t5_no_dropout, cnndm, datasets_cache, tmp_path):
    """14 examples at global batch 8 on 2 processes: each epoch's second step is completed with examples from the
    start of the epoch's order. A run resumed after its first step completes it with the same examples (not with
    those after the ones it skipped), so its losses are the straight run's."""
    extra = [*COMMON, "--max-train-samples", "14", "--per-device-train-batch-size", "4", "--max-train-steps", "3",
             "--checkpointing-steps", "1", "--checkpoints-total-limit", "5",
             "--convert-variant", "gqa", "--groups", "4"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(argv(tiny_t5_no_dropout, straight, cnndm, datasets_cache, *extra))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-1", resumed / "checkpoints" / "step-1")
    lines = (straight / "log.jsonl").read_text().splitlines()
    (resumed / "log.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["step"] <= 1) + "\n")
    output = launch(argv(tiny_t5_no_dropout, resumed, cnndm, datasets_cache, *extra,
                         "--resume-from-checkpoint", "latest"))  # fmt: skip
    assert "resumed from" in output
    assert train_losses(resumed) == train_losses(straight)
