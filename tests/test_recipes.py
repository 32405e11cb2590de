"""The uptraining recipe and its parts (hf_gqa.training): ROUGE, data, LoRA, checkpoints, and short real runs.

The runs call the script's `main()` in this process on a tiny T5 and a tiny Llama built from configs, with the real T5
tokenizer, over a few real CNN/DailyMail test articles from ../shared/data (skipped where those are absent). The
same runs through `accelerate launch` in a subprocess, and a resume after SIGKILL, are marked slow.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, make_t5

import hf_gqa
from hf_gqa.errors import HfGqaError
from hf_gqa.training import (
    ROUGE_KEYS,
    HookStates,
    ResumableSampler,
    SummarizationCollator,
    TrainingHook,
    build_hooks,
    compute_rouge,
    fold,
    freeze_relative_attention_bias,
    grouped_kv_modules,
    load_summarization_splits,
    lora_targets,
    parse_hook_spec,
    split_sentences,
    tokenize_summarization,
)

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")

SCRIPT = REPO / "recipes" / "uptrain_summarization.py"
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
CNNDM = SHARED_DATA / "cnndm"
TRAIN_FILE = CNNDM / "cnndm_bartscore_summeval_realsumm.jsonl"
EVAL_FILE = CNNDM / "cnndm_frank_test250.jsonl"


def load_script():
    spec = importlib.util.spec_from_file_location("uptrain_summarization", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load_script()


def run(recipe, args: list[str]) -> int:
    """The script's `main(args)` in this process, with accelerate's singletons reset as for a fresh process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return recipe.main(args)


@pytest.fixture(scope="module")
def cnndm():
    if not (TRAIN_FILE.is_file() and EVAL_FILE.is_file()):
        pytest.skip(f"the CNN/DailyMail sample is not at {CNNDM} (set HF_GQA_SHARED_DATA)")
    return TRAIN_FILE, EVAL_FILE


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, t5_tokenizer_dir):
    """A tied T5 v1.0-style model (as t5-small) with dropout, the real T5 tokenizer, vocab 32128."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("recipe") / "tiny-t5"
    make_t5("t5", vocab_size=32128, dropout_rate=0.1).save_pretrained(path)
    AutoTokenizer.from_pretrained(t5_tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, t5_tokenizer_dir):
    """A tiny MHA Llama (4 heads) that speaks the T5 sentencepiece vocabulary (eos 1, pad 0, no BOS)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    path = tmp_path_factory.mktemp("recipe") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(t5_tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets-cache")


def argv(model, output, cnndm, cache, *extra) -> list[str]:
    train_file, eval_file = cnndm
    return [
        "--model-name-or-path", str(model),
        "--train-file", str(train_file),
        "--validation-file", str(eval_file),
        "--summary-column", "highlights_detok",
        "--max-train-samples", "16",
        "--max-eval-samples", "4",
        "--max-source-length", "64",
        "--max-target-length", "24",
        "--generation-max-new-tokens", "6",
        "--per-device-train-batch-size", "4",
        "--per-device-eval-batch-size", "4",
        "--decode-benchmark-tokens", "3",
        "--logging-steps", "1",
        "--cache-dir", str(cache),
        "--output-dir", str(output),
        *extra,
    ]  # fmt: skip


def train_losses(output: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------------------------
# ROUGE


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    predictions = ["the cat sat on the mat. it was happy", "Police arrested two men on Friday.", ""]
    references = ["the cat was sitting on the mat\nIt was happy.", "Two men were arrested by police.", "Nothing."]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    expected = {k: 0.0 for k in ROUGE_KEYS}
    for p, r in zip(predictions, references, strict=True):
        p_lines = "\n".join(split_sentences(p))
        scores = scorer.score("\n".join(split_sentences(r)), p_lines)
        for k in ROUGE_KEYS:
            expected[k] += 100 * scores[k].fmeasure / len(predictions)
    got = compute_rouge(predictions, references)
    assert set(got) == set(ROUGE_KEYS)
    for k in ROUGE_KEYS:
        assert got[k] == pytest.approx(expected[k], abs=1e-9)
    # by hand: unigrams "the cat sat" vs "the cat ran": P = R = 2/3; stemming makes "sitting" match "sit"
    assert compute_rouge(["the cat sat"], ["the cat ran"])["rouge1"] == pytest.approx(200 / 3)
    assert compute_rouge(["sitting cats"], ["sit cat"])["rouge1"] == pytest.approx(100.0)
    assert compute_rouge(["sitting cats"], ["sit cat"], use_stemmer=False)["rouge1"] == 0.0


def test_rouge_lsum_uses_sentences_and_l_does_not():
    # Two sentences in swapped order: the LCS over the whole text keeps one, the summary-level LCS both.
    reference = "Alpha beta gamma delta.\nEpsilon zeta eta theta."
    prediction = "Epsilon zeta eta theta. Alpha beta gamma delta."
    scores = compute_rouge([prediction], [reference])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rougeL"] < 60
    assert split_sentences("He left. She stayed! Did they? 3 did.") == [
        "He left.",
        "She stayed!",
        "Did they?",
        "3 did.",
    ]
    assert split_sentences("U.S. troops left at 5 p.m. today") == ["U.S. troops left at 5 p.m. today"]


# ---------------------------------------------------------------------------------------------------------------
# Data


def test_local_files_tokenised_once_and_cached(cnndm, datasets_cache, t5_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_dir)
    kwargs = dict(train_file=str(cnndm[0]), validation_file=str(cnndm[1]), summary_column="highlights_detok")
    splits = load_summarization_splits(
        max_train_samples=8, max_eval_samples=3, cache_dir=str(datasets_cache), **kwargs
    )
    assert splits["train"].column_names == ["text", "summary"] and len(splits["eval"]) == 3
    assert "Kilmarnock" in splits["eval"][0]["summary"] and " 's" not in splits["eval"][0]["summary"]
    options = dict(is_encoder_decoder=True, max_source_length=32, max_target_length=16, source_prefix="summarize: ")
    first = tokenize_summarization(splits["train"], tokenizer, **options)
    written = {f["filename"]: os.stat(f["filename"]).st_mtime_ns for f in first.cache_files}
    again = load_summarization_splits(max_train_samples=8, max_eval_samples=3, cache_dir=str(datasets_cache), **kwargs)
    second = tokenize_summarization(again["train"], tokenizer, **options)
    assert first.cache_files and first.cache_files == second.cache_files and first._fingerprint == second._fingerprint
    assert {name: os.stat(name).st_mtime_ns for name in written} == written  # read back, not written again
    assert max(len(ids) for ids in first["input_ids"]) == 32 and first[0]["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first[0]["input_ids"]).startswith("summarize:")
    with pytest.raises(HfGqaError, match="no column 'summary_text'"):
        load_summarization_splits(
            train_file=str(cnndm[0]), validation_file=str(cnndm[1]), summary_column="summary_text"
        )


def test_decoder_features_mask_the_prompt(t5_tokenizer_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(t5_tokenizer_dir)
    data = Dataset.from_dict(
        {"text": ["one two three four five six seven eight nine ten " * 5], "summary": ["Short."]}
    )
    features = tokenize_summarization(
        data, tokenizer, is_encoder_decoder=False, max_source_length=12, max_target_length=8, with_index=True
    )[0]
    prompt = features["prompt_length"]
    assert prompt == 12 and features["index"] == 0
    assert features["labels"][:prompt] == [-100] * prompt
    assert features["labels"][prompt:] == features["input_ids"][prompt:]
    assert features["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(features["input_ids"][:prompt]).endswith("TL;DR:")  # the text is cut, not the template
    shorter = {
        **features,
        "input_ids": features["input_ids"][3:],
        "labels": features["labels"][3:],
        "prompt_length": 9,
    }
    batch = SummarizationCollator(pad_token_id=0)([features, shorter])
    assert batch["prompt_input_ids"].shape == (2, 12) and batch["prompt_attention_mask"][1].tolist()[:3] == [0, 0, 0]
    assert batch["labels"][1, -3:].tolist() == [-100] * 3 and batch["attention_mask"][1, -3:].tolist() == [0] * 3


def test_aclsum_offline():
    if importlib.util.find_spec("aclsum") is None:
        pytest.skip("aclsum is not installed (pip install --no-deps aclsum)")
    splits = load_summarization_splits(dataset_name="aclsum", max_train_samples=2, max_eval_samples=2)
    example = splits["eval"][0]
    assert len(example["summary"].splitlines()) == 3 and len(example["text"]) > 500
    assert " ," not in example["text"]


def test_cnn_dailymail_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(name, config=None, split=None, cache_dir=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"article": ["A text."], "highlights": ["A summary."], "id": ["x"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    splits = load_summarization_splits(dataset_name="cnn_dailymail", eval_split="test")
    assert calls == [("cnn_dailymail", "3.0.0", "train"), ("cnn_dailymail", "3.0.0", "test")]
    assert splits["eval"][0] == {"text": "A text.", "summary": "A summary."}


def test_sampler_resumes_mid_epoch():
    sampler = ResumableSampler(10, seed=3)
    sampler.start_epoch(1)
    full = list(sampler)
    sampler.start_epoch(1, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.start_epoch(2)
    assert list(sampler) != full and sorted(sampler) == list(range(10))


# ---------------------------------------------------------------------------------------------------------------
# Model-side helpers: hooks, bias freezing, LoRA, fold


class CrashAt(TrainingHook):
    """Kills the run (an exception) after optimizer step `step`, as a pre-emption would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise RuntimeError(f"killed after step {state.step}")


class Counter(TrainingHook):
    def __init__(self, start: int = 0):
        self.count = start

    def on_step_end(self, state):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_hook_specs():
    assert parse_hook_spec("pkg.mod:Name(every=200, name='x')") == ("pkg.mod", "Name", {"every": 200, "name": "x"})
    assert parse_hook_spec("Name") == (None, "Name", {})
    (hook,) = build_hooks(["test_recipes:Counter(start=2)"])
    assert isinstance(hook, Counter) and hook.count == 2
    for bad, message in [
        ("x:y:z", "expected"),
        ("test_recipes:Counter(2)", "key=literal"),
        ("test_recipes:Nope", "no class 'Nope'"),
        ("test_recipes:Counter(stop=1)", "unexpected keyword"),
    ]:
        with pytest.raises(HfGqaError, match=message):
            build_hooks([bad])
    states = HookStates([Counter(5), CrashAt(1)])
    restored = HookStates([Counter(0)])
    restored.load_state_dict(states.state_dict())
    assert restored.hooks[0].count == 5


def test_freeze_bias_lora_targets_and_fold_no_op():
    model = hf_gqa.convert(make_t5("t5"), groups=2)
    assert freeze_relative_attention_bias(model) == 2 * 8 * 8  # encoder and decoder: buckets x heads
    assert not any(p.requires_grad for n, p in model.named_parameters() if "relative_attention_bias" in n)
    full = grouped_kv_modules(model)
    assert len(full) == 3 * 2 * 2 and "decoder.block.0.layer.1.EncDecAttention.k" in full
    targets, trained = lora_targets(model)
    assert trained == full and "encoder.block.0.layer.0.SelfAttention.k" in targets
    assert (
        "decoder.block.0.layer.0.SelfAttention.q" in targets and "decoder.block.0.layer.2.DenseReluDense.wo" in targets
    )
    assert not set(targets) & set(full) and "lm_head" not in targets
    assert fold(model) is model  # not a training form


def test_frozen_bias_keeps_sdpa_on_its_fused_kernel_in_training():
    from conftest import batch
    from torch.profiler import profile

    def kernels(freeze: bool) -> dict[str, int]:
        model = hf_gqa.convert(make_t5("t5"), groups=2).train()
        if freeze:
            freeze_relative_attention_bias(model)
        inputs = batch()
        inputs["labels"] = inputs.pop("decoder_input_ids")
        with profile() as trace:
            model(**inputs).loss.backward()
        return {e.key: e.count for e in trace.key_averages() if e.key.startswith("aten::_scaled_dot_product")}

    trained, frozen = kernels(False), kernels(True)
    assert trained.get("aten::_scaled_dot_product_attention_math", 0) > 0  # a mask that needs grad: math kernel
    assert "aten::_scaled_dot_product_attention_math" not in frozen
    assert frozen["aten::_scaled_dot_product_flash_attention_for_cpu_backward"] == 8  # 2 + 3 + 3 attention calls


def test_peft_defaults_for_hf_gqa_model_types():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from hf_gqa.training import register_peft_defaults

    register_peft_defaults()
    model = get_peft_model(hf_gqa.convert(make_t5("t5"), groups=2), LoraConfig(task_type="SEQ_2_SEQ_LM", r=2))
    assert any("SelfAttention.q.lora_A" in n for n, _ in model.named_parameters())


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
        "test_recipes:Counter()",
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
        run(recipe, argv(tiny_t5, killed, cnndm, datasets_cache, *common, "--hooks", "test_recipes:CrashAt(step=4)"))
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
    crash = ("--hooks", "SimGQARegroup(every=2)", "test_recipes:CrashAt(step=4)")
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
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "HF_HUB_OFFLINE": "1"}
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
