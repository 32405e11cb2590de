"""hf_gqa.training.data: local files, CNN/DailyMail and ACLSum loading, collators, the resumable sampler."""

import importlib.util
import os

import pytest

from hf_gqa.errors import HfGqaError
from hf_gqa.training import (
    ResumableSampler,
    SummarizationCollator,
    load_summarization_splits,
    tokenize_summarization,
)
from hf_gqa.training.data import label_token_counts

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")


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


def test_sampler_completes_epochs_from_their_start():
    """On N processes the epoch is completed to a multiple of the global micro-batch with its own first examples,
    also when a resumed run skips into it (accelerate would complete it with the first examples it is given)."""
    plain = ResumableSampler(10, seed=3)
    plain.start_epoch(1)
    order = list(plain)
    sampler = ResumableSampler(10, seed=3, multiple_of=4)
    sampler.start_epoch(1)
    assert list(sampler) == order + order[:2] and len(sampler) == 12
    sampler.start_epoch(1, skip=8)
    assert list(sampler) == order[8:] + order[:2] and len(sampler) == 4
    tiny = ResumableSampler(3, seed=0, shuffle=False, multiple_of=8)
    assert list(tiny) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_label_token_counts():
    import datasets

    rows = [[5, 6, 1], [-100, -100, 7, 1], [-100, 9]]
    dataset = datasets.Dataset.from_dict({"labels": rows}).select([2, 0, 1])  # rows through an indices mapping
    assert label_token_counts(dataset, shift=False) == [1, 3, 2]
    assert label_token_counts(dataset, shift=True) == [1, 2, 2]  # from the second position on
