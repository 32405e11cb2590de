"""Summarization data for uptraining: load, tokenise once (cached by `datasets`), and pad into batches.

Sources, each normalised to two string columns, `text` and `summary`:

- `cnn_dailymail` (or `abisee/cnn_dailymail`), config `3.0.0`, through `datasets.load_dataset` (needs the Hub);
  columns `article` / `highlights`, whose sentences are on separate lines.
- `aclsum`: ACLSum (MIT), real scientific papers with three one-sentence summaries (challenge, approach, outcome),
  shipped as jsonl inside the PyPI package `aclsum` (`pip install --no-deps aclsum`): works offline. The text is the
  paper's abstract, introduction and conclusion; the summary is the three aspect summaries, one per line.
- local files (`.json`, `.jsonl`, `.csv`, `.parquet`, or globs of them): `train_file` / `validation_file`, with the
  columns named by `text_column` / `summary_column` (default `article` / `highlights`).
- any other Hub dataset name, with its columns named.

Tokenisation is a `Dataset.map` over module-level functions with `fn_kwargs`, so `datasets` fingerprints it and a
second run with the same data, tokenizer and lengths reads the cached Arrow files instead of tokenising again.
"""

import json
import re
from pathlib import Path

import torch

from ..errors import HfGqaError
from ..io.texts import detokenize, package_data_dir

# Hub datasets whose columns are known: name -> (text column, summary column, default config).
KNOWN_DATASETS = {
    "cnn_dailymail": ("article", "highlights", "3.0.0"),
    "abisee/cnn_dailymail": ("article", "highlights", "3.0.0"),
    "aclsum": ("text", "summary", None),
}
DEFAULT_PROMPT_TEMPLATE = "{text}\nTL;DR: "  # decoder-only: the text, then the cue for its summary
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise HfGqaError("the recipes need the package datasets: pip install 'hf-gqa[recipes]'") from None
    return datasets


def aclsum_dir() -> Path:
    """The folder of ACLSum's jsonl splits inside the installed `aclsum` package."""
    missing = "dataset 'aclsum' needs the PyPI package aclsum: pip install --no-deps aclsum"
    return package_data_dir("aclsum", missing) / "dataset"


def _aclsum_example(example: dict) -> dict:
    sentences = [detokenize(s) for section in ACLSUM_SECTIONS for s in example["sentences"][section]]
    summary = "\n".join(" ".join(example["summary"][aspect].split()) for aspect in ACLSUM_ASPECTS)
    return {"text": " ".join(sentences), "summary": summary}


def _load_aclsum(split: str, cache_dir: str | None):
    files = {"train": "train.jsonl", "validation": "val.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
    if split not in files:
        raise HfGqaError(f"aclsum has the splits train, validation and test; got {split!r}")
    raw = _datasets().load_dataset(
        "json", data_files=str(aclsum_dir() / files[split]), split="train", cache_dir=cache_dir
    )
    return raw.map(_aclsum_example, remove_columns=raw.column_names, desc=f"aclsum {split}")


def _load_file(path: str, cache_dir: str | None):
    suffix = next((s for s in LOCAL_FORMATS if str(path).endswith(s)), None)
    if suffix is None:
        raise HfGqaError(f"data file {path!r}: expected one of {', '.join(LOCAL_FORMATS)}")
    pattern = any(c in str(path) for c in "*?[")
    if not pattern and not Path(path).is_file():
        raise HfGqaError(f"no data file at {path!r}")
    if not pattern and Path(path).stat().st_size == 0:
        raise HfGqaError(f"data file {path!r} is empty")
    try:
        return _datasets().load_dataset(
            LOCAL_FORMATS[suffix], data_files=str(path), split="train", cache_dir=cache_dir
        )
    except HfGqaError:
        raise
    except Exception as error:  # whatever `datasets` or its readers raise: the file is at fault
        raise HfGqaError(_unreadable(path, LOCAL_FORMATS[suffix], error, pattern)) from None


def _unreadable(path: str, kind: str, error: BaseException, pattern: bool) -> str:
    """One line on why `datasets` could not read a data file (it wraps the reader's error in its own)."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, UnicodeDecodeError):
        line = None if pattern else _first_non_utf8_line(Path(path))
        return f"data file {path!r} is not UTF-8 text" + (f" (line {line})" if line else "")
    if isinstance(cause, StopIteration) or "corresponds to no data" in str(cause):
        return f"data file {path!r} holds no examples"
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"data file {path!r}: cannot read it as {kind}: {message}"


def _first_non_utf8_line(path: Path) -> int | None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _check_text_column(dataset, column: str, where: str) -> None:
    """A column of text: a string in every row (no number, list or null); the first offending row is named."""
    feature = dataset.features[column]
    dtype = getattr(feature, "dtype", None)
    if dtype == "null":
        raise HfGqaError(f"{where}: column {column!r} holds no text (null in every row)")
    if type(feature).__name__ != "Value" or dtype not in ("string", "large_string"):
        kind = dtype or type(feature).__name__
        for row, value in enumerate(dataset.select_columns([column])[column], 1):
            if not isinstance(value, str):
                got = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
                raise HfGqaError(f"{where}: row {row}: {column!r} is not text ({got}; the column holds {kind})")
        raise HfGqaError(f"{where}: column {column!r} is not text ({kind})")
    values = dataset.data.column(column)
    if values.null_count:
        row = values.is_null().to_pylist().index(True) + 1
        raise HfGqaError(f"{where}: row {row} has no {column!r} (missing or null)")
    start = 0
    for chunk in values.chunks:  # Arrow's JSON reader takes bytes that are not UTF-8 into string columns
        try:
            chunk.validate(full=True)
        except Exception as error:  # pyarrow.ArrowInvalid, with the offending string's index
            found = re.search(r"string index (\d+)", str(error))
            row = f"row {start + int(found[1]) + 1}: " if found else ""
            raise HfGqaError(f"{where}: {row}{column!r} is not UTF-8 text") from None
        start += len(chunk)


def _normalise(dataset, text_column: str, summary_column: str, where: str):
    missing = [c for c in (text_column, summary_column) if c not in dataset.column_names]
    if missing:
        raise HfGqaError(
            f"{where} has no column {missing[0]!r}; its columns: {', '.join(dataset.column_names)} "
            "(choose with --text-column / --summary-column)"
        )
    for column in dict.fromkeys((text_column, summary_column)):
        _check_text_column(dataset, column, where)
    dataset = dataset.select_columns([text_column, summary_column])
    renames = {c: n for c, n in ((text_column, "text"), (summary_column, "summary")) if c != n}
    return dataset.rename_columns(renames) if renames else dataset


def load_summarization_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str | None = None,
    summary_column: str | None = None,
    train_split: str = "train",
    eval_split: str = "validation",
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
) -> dict:
    """`{"train": Dataset, "eval": Dataset}`, each with string columns `text` and `summary`.

    Local files win over `dataset_name` for the split they give; a split given by neither is an error.
    """
    known = KNOWN_DATASETS.get(dataset_name or "")
    default_text, default_summary = (known[0], known[1]) if known else ("article", "highlights")
    splits = {}
    for key, path, split, limit in (
        ("train", train_file, train_split, max_train_samples),
        ("eval", validation_file, eval_split, max_eval_samples),
    ):
        if path:
            dataset, where = _load_file(path, cache_dir), f"data file {path!r}"
            text, summary = text_column or "article", summary_column or "highlights"
        elif dataset_name == "aclsum":
            dataset, where = _load_aclsum(split, cache_dir), f"aclsum {split}"
            text, summary = "text", "summary"
        elif dataset_name:
            config = dataset_config_name or (known[2] if known else None)
            try:
                dataset = _datasets().load_dataset(dataset_name, config, split=split, cache_dir=cache_dir)
            except (FileNotFoundError, ValueError, ConnectionError) as error:
                message = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise HfGqaError(f"cannot load dataset {dataset_name!r} ({split}): {message}") from None
            where = f"dataset {dataset_name!r} ({split})"
            text, summary = text_column or default_text, summary_column or default_summary
        else:
            raise HfGqaError(
                f"no {key} data: give --dataset-name or --{'train' if key == 'train' else 'validation'}-file"
            )
        dataset = _normalise(dataset, text, summary, where)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        if len(dataset) == 0:
            raise HfGqaError(f"{where} holds no examples" + (f" (--max-{key}-samples {limit})" if limit == 0 else ""))
        splits[key] = dataset
    return splits


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation (module-level functions: `datasets` fingerprints them together with their `fn_kwargs`)


def _special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. Llama's BOS; none for T5 or GPT-2)."""
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return list(with_specials[:start])
    return []


def _seq2seq_features(batch, indices=None, *, tokenizer, source_prefix, max_source_length, max_target_length):
    sources = [source_prefix + text for text in batch["text"]]
    features = {
        "input_ids": tokenizer(sources, max_length=max_source_length, truncation=True)["input_ids"],
        "labels": tokenizer(text_target=batch["summary"], max_length=max_target_length, truncation=True)["input_ids"],
    }
    if indices is not None:
        features["index"] = list(indices)
    return features


def _causal_features(batch, indices=None, *, tokenizer, prompt_template, max_source_length, max_target_length):
    before, after = prompt_template.split("{text}")
    encode = lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    prefix = _special_prefix(tokenizer) + (encode([before])[0] if before else [])
    suffix = encode([after])[0] if after else []
    budget = max_source_length - len(prefix) - len(suffix)
    if budget < 1:
        raise HfGqaError(f"--max-source-length {max_source_length} leaves no room for the text in the prompt")
    if tokenizer.eos_token_id is None:
        raise HfGqaError("the tokenizer has no end-of-sequence token; a causal LM recipe needs one")
    features = {"input_ids": [], "labels": [], "prompt_length": []}
    for text_ids, summary_ids in zip(encode(batch["text"]), encode(batch["summary"]), strict=True):
        prompt = prefix + text_ids[:budget] + suffix
        target = summary_ids[: max_target_length - 1] + [tokenizer.eos_token_id]
        features["input_ids"].append(prompt + target)
        features["labels"].append([-100] * len(prompt) + target)
        features["prompt_length"].append(len(prompt))
    if indices is not None:
        features["index"] = list(indices)
    return features


def tokenize_summarization(
    dataset,
    tokenizer,
    is_encoder_decoder: bool,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    with_index: bool = False,
    num_proc: int | None = None,
    desc: str = "tokenizing",
):
    """Token ids of a `text`/`summary` dataset (cached by `datasets`).

    Encoder-decoder: `input_ids` = tokens of `source_prefix + text` (truncated to `max_source_length`), `labels` =
    tokens of the summary (truncated to `max_target_length`). Decoder-only: `input_ids` = prompt + summary + EOS,
    where the prompt is `prompt_template` with `{text}` replaced by the text's tokens (the text, not the template,
    is truncated); `labels` are -100 on the prompt, so the loss is on the summary only; `prompt_length` says where
    the summary starts. `with_index` adds each row's position (`index`), to find its reference after generation.
    """
    if is_encoder_decoder:
        function = _seq2seq_features
        kwargs = dict(source_prefix=source_prefix or "")
    else:
        if prompt_template.count("{text}") != 1:
            raise HfGqaError(f"--prompt-template must contain {{text}} once; got {prompt_template!r}")
        function = _causal_features
        kwargs = dict(prompt_template=prompt_template)
    kwargs.update(tokenizer=tokenizer, max_source_length=max_source_length, max_target_length=max_target_length)
    return dataset.map(
        function,
        batched=True,
        with_indices=with_index,
        fn_kwargs=kwargs,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=desc,
    )


class SummarizationCollator:
    """Pads token-id features into tensors.

    `input_ids`/`labels` are padded on the right (`attention_mask` 0, labels -100 on padding). For decoder-only
    features with a `prompt_length`, the prompts alone are also returned left-padded, as `prompt_input_ids` /
    `prompt_attention_mask`, which is how `generate()` wants them. `index` passes through as a tensor.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, sequences) -> int:
        width = max(len(s) for s in sequences)
        m = self.pad_to_multiple_of
        return -(-width // m) * m if m else width

    def _pad(self, sequences, value: int, left: bool = False) -> torch.Tensor:
        width = self._width(sequences)
        rows = [
            ([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s)))
            for s in sequences
        ]
        return torch.tensor(rows, dtype=torch.long)

    def __call__(self, features: list[dict]) -> dict:
        input_ids = [f["input_ids"] for f in features]
        batch = {
            "input_ids": self._pad(input_ids, self.pad_token_id),
            "attention_mask": self._pad([[1] * len(s) for s in input_ids], 0),
            "labels": self._pad([f["labels"] for f in features], -100),
        }
        if "prompt_length" in features[0]:
            prompts = [f["input_ids"][: f["prompt_length"]] for f in features]
            batch["prompt_input_ids"] = self._pad(prompts, self.pad_token_id, left=True)
            batch["prompt_attention_mask"] = self._pad([[1] * len(p) for p in prompts], 0, left=True)
        if "index" in features[0]:
            batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
        return batch


class ResumableSampler(torch.utils.data.Sampler):
    """A random order fixed by `(seed, epoch)`, that can start part-way through an epoch.

    `start_epoch(epoch, skip)` selects the epoch's permutation and drops its first `skip` examples, so a resumed
    run sees exactly the batches the interrupted one had left. (It has no `set_epoch`: Accelerate's data loader
    would call that on every new iterator.)

    `multiple_of` (the per-process batch times the number of processes, on more than one process) completes each
    epoch's order with examples from its start, so that every process gets a full last batch. Accelerate would
    otherwise complete it from the start of what the sampler yields, which after a resume mid-epoch is not the
    epoch's start: the resumed run would train on other examples than the uninterrupted one.
    """

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True, multiple_of: int = 1):
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.multiple_of = max(int(multiple_of), 1)
        self.epoch = 0
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        """The epoch's examples in order, completed to a multiple of `multiple_of` (see the class)."""
        if not self.shuffle:
            order = list(range(self.num_examples))
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        missing = -len(order) % self.multiple_of
        while missing and order:
            order += order[:missing]
            missing = -len(order) % self.multiple_of
        return order

    def epoch_length(self) -> int:
        return -(-self.num_examples // self.multiple_of) * self.multiple_of if self.num_examples else 0

    def __iter__(self):
        yield from self.order(self.epoch)[self.skip :]

    def __len__(self) -> int:
        return max(self.epoch_length() - self.skip, 0)


def label_token_counts(dataset, shift: bool) -> list[int]:
    """How many label tokens each example's loss averages over: its labels other than -100, and for a decoder-only
    model (`shift`) from the second position on, as its shifted cross-entropy counts them."""
    import numpy as np
    import pyarrow.compute as pc

    counts: list[int] = []
    for table in dataset.with_format("arrow").iter(batch_size=4096):  # Arrow: no Python list per token
        labels = table.column("labels").combine_chunks()
        if shift:
            labels = pc.list_slice(labels, 1)
        values = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
        counts += np.bincount(rows, weights=values != -100, minlength=len(labels)).astype(int).tolist()
    return counts


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "KNOWN_DATASETS",
    "ResumableSampler",
    "SummarizationCollator",
    "aclsum_dir",
    "detokenize",
    "label_token_counts",
    "load_summarization_splits",
    "tokenize_summarization",
    "write_jsonl",
]
