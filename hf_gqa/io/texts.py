"""Plain text from local files and from PyPI data packages (ACLSum), for calibration and evaluation."""

import csv
import importlib.util
import json
import re
from pathlib import Path

from ..errors import HfGqaError


def package_data_dir(package: str, missing: str) -> Path:
    """The folder of an installed package, located without importing it (some data packages' `__init__` needs
    packages we do not use); `missing`: the one-line error when it is not installed (say how to install it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HfGqaError(missing)
    return Path(spec.submodule_search_locations[0])


def detokenize(text: str) -> str:
    """Undo PTB-style spacing (`word , word`, `( x )`, `do n't`), as in ACLSum's sentence lists."""
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return text.replace("`` ", '"').replace(" ''", '"').replace("-LRB- ", "(").replace(" -RRB-", ")")


ACLSUM_SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


def aclsum_papers(split: str) -> list[str]:
    """ACLSum's papers (abstract, introduction and conclusion sentences, detokenised), one string each."""
    texts = []
    with open(_aclsum_file(split), encoding="utf-8") as f:
        for line in f:
            sentences = json.loads(line)["sentences"]
            parts = [
                detokenize(s) for section in ("abstract", "introduction", "conclusion") for s in sentences[section]
            ]
            texts.append(" ".join(parts))
    return texts


TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")


def read_texts(
    source: str, column: str = "text", max_chars: int | None = None, max_texts: int | None = None
) -> list[str]:
    """Texts from `source`: `aclsum` / `aclsum:SPLIT` (default train); a local file: .txt (one text per non-empty
    line), .jsonl / .json (a `column` field), .csv (a `column` column), .parquet (with `datasets`); or a dataset on
    the Hub, `NAME`, `NAME:SPLIT` or `NAME:CONFIG:SPLIT` (default split train), streamed with `datasets` and read
    only until `max_chars` characters or `max_texts` texts are in (all of it without)."""
    if source == "aclsum" or source.startswith("aclsum:"):
        split = _aclsum_split(source)
        return aclsum_papers(split)
    path = Path(source).expanduser()
    if not path.exists() and not _looks_like_a_path(source):
        return hub_texts(source, column, max_chars, max_texts)
    if not path.is_file():
        raise HfGqaError(
            f"text file {source!r} not found (a .txt, .jsonl, .json, .csv or .parquet file, aclsum, or a Hub dataset "
            "NAME[:CONFIG]:SPLIT)"
        )
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json", ".csv", ".parquet"):
        raise HfGqaError(f"{source!r}: unknown text file type {suffix!r} (.txt, .jsonl, .json, .csv, .parquet)")
    if suffix == ".txt":
        try:
            texts = [line.strip() for line in path.read_text("utf-8").splitlines()]
        except UnicodeDecodeError as error:
            raise HfGqaError(f"{source!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        texts = [_field(row, column, path, i) for i, row in enumerate(_records(path, source, (column,)))]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise HfGqaError(f"{source!r} holds no text")
    return texts


def _looks_like_a_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or Path(source).suffix.lower() in TEXT_SUFFIXES


def hub_texts(
    source: str, column: str = "text", max_chars: int | None = None, max_texts: int | None = None
) -> list[str]:
    """The `column` of a Hub dataset named `NAME`, `NAME:SPLIT` or `NAME:CONFIG:SPLIT`, streamed (nothing beyond
    what is read is downloaded) until `max_chars` characters or `max_texts` texts are in."""
    parts = source.split(":")
    if len(parts) > 3 or not all(parts):
        raise HfGqaError(f"{source!r}: a Hub dataset is NAME, NAME:SPLIT or NAME:CONFIG:SPLIT")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1] if len(parts) > 1 else "train"
    try:
        import datasets
    except ImportError:
        raise HfGqaError(f"{source!r} is not a local file; reading a Hub dataset needs the package datasets") from None
    texts, chars = [], 0
    try:
        for row in datasets.load_dataset(name, config, split=split, streaming=True):
            if column not in row:
                raise HfGqaError(f"{source!r} has no column {column!r} (columns: {', '.join(row)})")
            text = row[column]
            if isinstance(text, str) and text.strip():
                texts.append(text)
                chars += len(text)
            if (max_chars is not None and chars >= max_chars) or (max_texts is not None and len(texts) >= max_texts):
                break
    except HfGqaError:
        raise
    except Exception as error:  # offline, no such dataset, no such config or split: whatever datasets raises
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HfGqaError(f"{source!r} is not a local file, and the Hub dataset could not be read: {first}") from None
    if not texts:
        raise HfGqaError(f"{source!r} holds no text")
    return texts


def _aclsum_split(source: str) -> str:
    split = source.partition(":")[2] or "train"
    if split not in ACLSUM_SPLITS:
        raise HfGqaError(f"aclsum has the splits {', '.join(ACLSUM_SPLITS)}; got {split!r}")
    return split


def _aclsum_file(split: str) -> Path:
    folder = package_data_dir("aclsum", "text 'aclsum' needs the PyPI package aclsum: pip install --no-deps aclsum")
    return folder / "dataset" / ACLSUM_SPLITS[split]


def _field(row, column: str, path: Path, index: int) -> str:
    if not isinstance(row, dict) or column not in row:
        raise HfGqaError(f"{str(path)!r}: record {index + 1} has no {column!r} field")
    value = row[column]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HfGqaError(f"{str(path)!r}: record {index + 1}: {column!r} is {type(value).__name__}, not text")
    return value


ACLSUM_ASPECTS = ("challenge", "approach", "outcome")


def aclsum_summaries(split: str, aspect: str = "summary") -> list[str]:
    """ACLSum's reference summaries, in the order of `aclsum_papers(split)`: one aspect (challenge, approach,
    outcome), or `summary`, the three in that order."""
    aspects = ACLSUM_ASPECTS if aspect == "summary" else (aspect,)
    with open(_aclsum_file(split), encoding="utf-8") as f:
        return [" ".join(json.loads(line)["summary"][a].strip() for a in aspects) for line in f]


def read_pairs(source: str, text_column: str = "text", summary_column: str = "summary") -> list[tuple[str, str]]:
    """(text, summary) pairs from `source`, for scoring summaries: `aclsum` / `aclsum:SPLIT` (each paper, as
    `read_texts` gives it, and its `summary_column`: challenge, approach, outcome, or summary for the three), or a
    .jsonl / .json / .csv / .parquet file with both fields. Rows where either is empty are left out."""
    if source == "aclsum" or source.startswith("aclsum:"):
        split = _aclsum_split(source)
        if summary_column not in ("summary", *ACLSUM_ASPECTS):
            raise HfGqaError(f"aclsum's summaries are summary, {', '.join(ACLSUM_ASPECTS)}; got {summary_column!r}")
        pairs = list(zip(aclsum_papers(split), aclsum_summaries(split, summary_column), strict=True))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise HfGqaError(f"data file {source!r} not found (a .jsonl, .json, .csv or .parquet file, or aclsum)")
        rows = _records(path, source, (text_column, summary_column))
        pairs = [
            (_field(row, text_column, path, i), _field(row, summary_column, path, i)) for i, row in enumerate(rows)
        ]
    pairs = [(t, s) for t, s in pairs if t.strip() and s.strip()]
    if not pairs:
        raise HfGqaError(f"{source!r} holds no text with a summary")
    return pairs


def _records(path: Path, source: str, columns: tuple[str, ...]) -> list:
    """The rows of a .jsonl / .json / .csv / .parquet file (a .parquet file's `columns` only)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            raw = path.read_text("utf-8")
            if suffix == ".json" and raw.lstrip().startswith("["):
                return json.loads(raw)
            return [json.loads(line) for line in raw.splitlines() if line.strip()]
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            try:
                import datasets
            except ImportError:
                raise HfGqaError(f"{source!r}: reading parquet needs the package datasets") from None
            table = datasets.Dataset.from_parquet(str(path))
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise HfGqaError(f"{source!r} has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
            values = zip(*(table[c] for c in columns), strict=True)
            return [dict(zip(columns, row, strict=True)) for row in values]
    except UnicodeDecodeError as error:
        raise HfGqaError(f"{source!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise HfGqaError(f"{source!r}: not JSON lines ({error.msg}, line {error.lineno})") from None
    kind = "a .txt file has no summary field; " if suffix == ".txt" else f"unknown data file type {suffix!r} "
    raise HfGqaError(f"{source!r}: {kind}(.jsonl, .json, .csv, .parquet with a text and a summary field)")


__all__ = [
    "aclsum_papers",
    "aclsum_summaries",
    "detokenize",
    "package_data_dir",
    "read_pairs",
    "hub_texts",
    "read_texts",
]
