"""ROUGE offline, with `rouge-score` (the package behind `evaluate.load("rouge")`).

Four metrics, each reported under its own name: `rouge1`, `rouge2`, `rougeL` (longest common subsequence over the
whole text) and `rougeLsum` (summary-level LCS over sentences, which `rouge-score` splits at newlines). The WGQA paper
reports one "Rouge-L" whose values look like Lsum for MHA and like L for the other rows; here both are always shown.

Sentences are put on their own lines before scoring: text that already has newlines (the Hub's CNN/DailyMail
`highlights`, ACLSum's aspect summaries) keeps them; text without any is split after `.`, `!` or `?` followed by
whitespace and an upper-case letter, digit or quote (what nltk's punkt does in the transformers example, without
needing punkt's data files). ROUGE-1/2/L do not depend on the split. Scores are F-measures, averaged over examples,
times 100. Stemming (Porter) is on by default, as in the papers.
"""

import re

from ..errors import HfGqaError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]?\s+(?=[\"'“‘(]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`: its lines when it has several, else a split after sentence-final punctuation."""
    text = text.strip()
    if "\n" in text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentences_per_line(text: str) -> str:
    """`text` with one sentence per line, the form `rougeLsum` expects."""
    return "\n".join(split_sentences(text))


def _scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise HfGqaError("ROUGE needs the package rouge-score: pip install 'hf-gqa[recipes]'") from None
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)


def rouge_per_example(predictions: list[str], references: list[str], use_stemmer: bool = True) -> list[dict]:
    """Each example's ROUGE F-measures (0-1), keyed by metric name."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _scorer(use_stemmer)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        s = scorer.score(sentences_per_line(reference), sentences_per_line(prediction))  # (target, prediction)
        scores.append({key: s[key].fmeasure for key in ROUGE_KEYS})
    return scores


def compute_rouge(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure x 100 over the examples: `{"rouge1": ..., "rougeLsum": ...}`."""
    scores = rouge_per_example(predictions, references, use_stemmer=use_stemmer)
    if not scores:
        return {key: 0.0 for key in ROUGE_KEYS}
    return {key: 100.0 * sum(s[key] for s in scores) / len(scores) for key in ROUGE_KEYS}


__all__ = ["ROUGE_KEYS", "compute_rouge", "rouge_per_example", "sentences_per_line", "split_sentences"]
