"""Fixtures and helpers for the uptraining recipe's tests (registered by `pytest_plugins` in tests/conftest.py).

The runs call the script's `main()` in this process on a tiny T5 and a tiny Llama built from configs, with the real T5
tokenizer, over a few real CNN/DailyMail test articles from ../shared/data (skipped where those are absent).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, make_t5

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


@pytest.fixture(scope="session")
def recipe():
    return load_script()


def run(recipe, args: list[str]) -> int:
    """The script's `main(args)` in this process, with accelerate's singletons reset as for a fresh process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return recipe.main(args)


@pytest.fixture(scope="session")
def cnndm():
    if not (TRAIN_FILE.is_file() and EVAL_FILE.is_file()):
        pytest.skip(f"the CNN/DailyMail sample is not at {CNNDM} (set HF_GQA_SHARED_DATA)")
    return TRAIN_FILE, EVAL_FILE


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, t5_tokenizer_dir):
    """A tied T5 v1.0-style model (as t5-small) with dropout, the real T5 tokenizer, vocab 32128."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("recipe") / "tiny-t5"
    make_t5("t5", vocab_size=32128, dropout_rate=0.1).save_pretrained(path)
    AutoTokenizer.from_pretrained(t5_tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def tiny_t5_no_dropout(tmp_path_factory, t5_tokenizer_dir):
    """`tiny_t5` without dropout: runs that split a batch differently across processes can then agree exactly
    (dropout draws a mask per process and micro-batch, which no split of the batch reproduces)."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("recipe") / "tiny-t5-no-dropout"
    make_t5("t5", vocab_size=32128, dropout_rate=0.0).save_pretrained(path)
    AutoTokenizer.from_pretrained(t5_tokenizer_dir).save_pretrained(path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], num_processes: int = 2, timeout: float = 600) -> str:
    """Run the script on N CPU processes (gloo, one thread each); returns its output, and fails the test with its
    tail when it does not exit 0. `accelerate launch --multi_gpu` starts the N processes (torchrun) and
    ACCELERATE_USE_CPU makes them one CPU job; `accelerate launch --cpu --num_processes N` would start one process
    (it needs MPI for more)."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(SCRIPT), *args]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output
