"""`hf-gqa eval --lm-eval-tasks`: lm-evaluation-harness offline, on local tasks made here from the CNN/DailyMail
sample (pick the right summary among four; the rolling perplexity of articles), checked against the log-likelihoods
computed from the logits by hand; side by side with the other figures in the table and the JSON; one-line errors.

Skipped without lm-eval (`pip install 'hf-gqa[lm-eval]'`), except the error that says to install it."""

import json
import math
import re
import sys

import pytest
import torch
from helpers import one_error_line, run
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from hf_gqa.cli import main

DOCS = 8  # documents in each task
CHOICE_TASK, PERPLEXITY_TASK = "cnndm_pick_summary", "cnndm_article_perplexity"


def words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


@pytest.fixture(scope="module")
def local_tasks(cnndm, tmp_path_factory):
    """Two lm-eval task YAMLs over JSON-lines files of the first DOCS CNN/DailyMail test articles (cut to 40 words):
    a multiple-choice task (the article's summary among four, the right one at index i % 4) and a rolling
    perplexity task. Returns the folder holding the YAMLs, and the documents."""
    _, eval_file = cnndm
    rows = [json.loads(line) for line in eval_file.read_text(encoding="utf-8").splitlines()[:DOCS]]
    articles = [words(r["article"], 40) for r in rows]
    summaries = [words(r["highlights_detok"], 16) for r in rows]
    choice_docs = []
    for i, article in enumerate(articles):
        others = [summaries[(i + k) % DOCS] for k in (1, 2, 3)]
        choices = others[: i % 4] + [summaries[i]] + others[i % 4 :]
        choice_docs.append({"article": article, "choices": choices, "label": i % 4})
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = folder / "data"
    data.mkdir()
    (data / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in choice_docs), encoding="utf-8")
    (data / "text.jsonl").write_text("".join(json.dumps({"text": a}) + "\n" for a in articles), encoding="utf-8")
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "choice.yaml").write_text(
        f"task: {CHOICE_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'choice.jsonl'}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "Article: {{article}}\\nSummary:"\n'
        "doc_to_target: label\n"
        "doc_to_choice: choices\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (tasks / "perplexity.yaml").write_text(
        f"task: {PERPLEXITY_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\n"
        "test_split: test\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    return tasks, choice_docs, articles


@pytest.fixture
def lm_eval(monkeypatch, tmp_path):
    """lm-eval, with the data sets it builds from the local files cached under tmp_path."""
    pytest.importorskip("lm_eval", reason="pip install 'hf-gqa[lm-eval]'")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def llama_wgqa2(tiny_llama, tmp_path_factory):
    """`tiny_llama` (4 heads) converted to WGQA's training form with 2 key/value heads: a model type of hf-gqa's
    own (`llama_wgqa`), which transformers loads only through hf-gqa's classes or remote code."""
    out = tmp_path_factory.mktemp("lm-eval-models") / "llama-wgqa2"
    assert main(["convert", str(tiny_llama), "-o", str(out), "--variant", "wgqa", "--groups", "2"]) == 0
    return out


def causal_logprob(model, ids: list[int], start: int) -> float:
    """The summed log-probability of ids[start:], each token given all before it, from the logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids)))


def choice_oracle(folder, docs) -> tuple[float, float]:
    """acc and acc_norm of a decoder-only model on the choice task. lm-eval's protocol, written out: the context
    is the prompt, each continuation " " + choice; both are encoded with the tokenizer's default special tokens (this
    T5 tokenizer appends </s>), the continuation's tokens are those of prompt + continuation past the prompt's
    token count, scored after the prompt's own tokens; acc_norm divides by the choice's length in characters."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    right = right_norm = 0
    for doc in docs:
        context = f"Article: {doc['article']}\nSummary:"
        scores = []
        for choice in doc["choices"]:
            context_ids = tokenizer(context).input_ids
            continuation = tokenizer(context + " " + choice).input_ids[len(context_ids) :]
            scores.append(causal_logprob(model, context_ids + continuation, len(context_ids)))
        normed = [s / len(c) for s, c in zip(scores, doc["choices"], strict=True)]
        right += scores.index(max(scores)) == doc["label"]
        right_norm += normed.index(max(normed)) == doc["label"]
    return right / len(docs), right_norm / len(docs)


def perplexity_oracle(folder, texts) -> dict:
    """Rolling log-likelihood of each whole text (one window: every text is far shorter than the model's 256
    positions) after the tokenizer's eos as the prefix token (the tokenizer has no bos), and lm-eval's three
    figures from it: per word (split on white space), per byte, bits per byte."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logprob = sum(causal_logprob(model, [tokenizer.eos_token_id, *tokenizer(t).input_ids], 1) for t in texts)
    n_words = sum(len(re.split(r"\s+", t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "word_perplexity": math.exp(-logprob / n_words),
        "byte_perplexity": math.exp(-logprob / n_bytes),
        "bits_per_byte": -logprob / n_bytes / math.log(2),
    }


def test_local_tasks_side_by_side_match_oracles(capsys, lm_eval, tiny_llama, llama_wgqa2, local_tasks, tmp_path):
    tasks, choice_docs, articles = local_tasks
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": a}) + "\n" for a in articles[:2]))
    code, out, err = run(
        capsys, "eval", tiny_llama, llama_wgqa2, "--data", data, "--decode-tokens", 0,
        "--lm-eval-tasks", f"{CHOICE_TASK},{tasks / 'perplexity.yaml'}", "--lm-eval-include", tasks,
        "--lm-eval-batch-size", 3, "--json", tmp_path / "eval.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["lm_eval"]["tasks"] == [CHOICE_TASK, str(tasks / "perplexity.yaml")]
    assert report["lm_eval"]["version"] and report["data"] == str(data)
    mha, gqa = report["models"]
    for folder, result in ((tiny_llama, mha), (llama_wgqa2, gqa)):
        assert result["model"] == str(folder) and "perplexity" in result  # the other figures are still there
        choice, perplexity = result["lm_eval"][CHOICE_TASK], result["lm_eval"][PERPLEXITY_TASK]
        assert (choice["samples"], choice["fewshot"], perplexity["samples"]) == (DOCS, 0, DOCS)
        acc, acc_norm = choice_oracle(folder, choice_docs)
        assert (choice["acc"], choice["acc_norm"]) == (pytest.approx(acc), pytest.approx(acc_norm))
        assert choice["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / (DOCS - 1)))
        expected = perplexity_oracle(folder, articles)
        for metric, value in expected.items():
            assert perplexity[metric] == pytest.approx(value, rel=1e-5), metric
    assert mha["lm_eval"][PERPLEXITY_TASK] != gqa["lm_eval"][PERPLEXITY_TASK]  # two models, not one twice

    lines = out.splitlines()
    assert lines[0].startswith("2 texts of") and lines[1].startswith("lm-eval ")
    assert lines[2].split() == [tiny_llama.name, llama_wgqa2.name]
    row = next(line for line in lines if line.startswith(f"{PERPLEXITY_TASK} bits_per_byte")).split()
    assert row[-2:] == [f"{mha['lm_eval'][PERPLEXITY_TASK]['bits_per_byte']:.4f}",
                        f"{gqa['lm_eval'][PERPLEXITY_TASK]['bits_per_byte']:.4f}"]  # fmt: skip
    assert any(line.startswith(f"{CHOICE_TASK} acc ") and "±" in line for line in lines)
    assert any(line.startswith("perplexity ") for line in lines)


def test_an_encoder_decoder_model_without_data_and_with_a_limit(capsys, lm_eval, t5_dir, local_tasks, tmp_path):
    """lm-eval alone (no --data): no perplexity or decode rows; T5 scores each choice in its decoder, after the
    prompt in its encoder (both encoded with </s>), on the first 3 documents."""
    tasks, choice_docs, _ = local_tasks
    code, out, err = run(
        capsys, "eval", t5_dir, "--lm-eval-tasks", tasks / "choice.yaml", "--lm-eval-limit", 3,
        "--json", tmp_path / "eval.json",
    )  # fmt: skip
    assert code == 0, err
    (result,) = json.loads((tmp_path / "eval.json").read_text())["models"]
    assert "perplexity" not in result and "decode_tokens_per_second" not in result
    assert result["kv_heads"] == {"encoder": 8, "decoder_self": 8, "cross": 8}
    assert result["lm_eval"][CHOICE_TASK]["samples"] == 3

    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(t5_dir)
    right = 0
    for doc in choice_docs[:3]:
        context = tokenizer(f"Article: {doc['article']}\nSummary:", return_tensors="pt").input_ids
        scores = []
        for choice in doc["choices"]:
            labels = tokenizer(" " + choice, return_tensors="pt").input_ids
            with torch.no_grad():
                logits = model(input_ids=context, labels=labels).logits[0].double()
            scores.append(torch.log_softmax(logits, -1).gather(1, labels[0][:, None]).sum().item())
        right += scores.index(max(scores)) == doc["label"]
    assert result["lm_eval"][CHOICE_TASK]["acc"] == pytest.approx(right / 3)
    assert "perplexity" not in out and f"{CHOICE_TASK} acc" in out


HUB_TASK = ["--lm-eval-tasks", "hellaswag"]


@pytest.mark.parametrize(
    "args, message",
    [
        (HUB_TASK, "lm-eval is not installed ("),
        (HUB_TASK, "): pip install 'hf-gqa[lm-eval]'"),
        ([], "give --data (perplexity, decode speed), --lm-eval-tasks (lm-evaluation-harness), or both"),
        ([*HUB_TASK, "--lm-eval-limit", "0"], "--lm-eval-limit must be at least 1; got 0"),
        ([*HUB_TASK, "--lm-eval-fewshot", "-1"], "--lm-eval-fewshot must be at least 0; got -1"),
    ],
)
def test_errors_without_lm_eval(capsys, monkeypatch, tiny_llama, args, message):
    """Without lm-eval installed: how to install it, and the checks that come before lm-eval is needed."""
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    code, out, err = run(capsys, "eval", tiny_llama, *args)
    assert code == 2 and message in one_error_line(err), err
    assert "K/V heads" not in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lm-eval-tasks", "missing.yaml"], "lm-eval task file 'missing.yaml' not found"),
        (["--lm-eval-tasks", CHOICE_TASK, "--lm-eval-include", "nowhere"], "'nowhere': not a folder"),
        (["--lm-eval-tasks", "broken.yaml"], "lm-eval task '{tmp}/broken.yaml' cannot be loaded"),
        (["--lm-eval-tasks", ","], "--lm-eval-tasks names no task"),
    ],
)
def test_errors_are_one_line(capsys, lm_eval, monkeypatch, tiny_llama, tmp_path, extra, message):
    (tmp_path / "broken.yaml").write_text(  # its data file is missing
        "task: broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: missing.jsonl\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", tiny_llama, *extra)
    assert code == 2 and message.format(tmp=tmp_path) in one_error_line(err), err
    assert "K/V heads" not in out  # checked before any model is measured


def test_an_unknown_task_is_named_with_near_names(capsys, lm_eval, tiny_llama, local_tasks):
    tasks, _, _ = local_tasks
    code, out, err = run(
        capsys, "eval", tiny_llama, "--lm-eval-tasks", "cnndm_pick_sumary", "--lm-eval-include", tasks
    )
    line = one_error_line(err)
    assert code == 2 and f"unknown lm-eval task 'cnndm_pick_sumary'; did you mean {CHOICE_TASK}" in line, err
    assert "K/V heads" not in out


@pytest.mark.slow
def test_a_hub_task_offline_without_its_data_is_one_line(capsys, lm_eval, tiny_llama):
    code, out, err = run(capsys, "eval", tiny_llama, "--lm-eval-tasks", "hellaswag")
    assert code == 2 and "lm-eval task 'hellaswag' cannot be loaded" in one_error_line(err), err
