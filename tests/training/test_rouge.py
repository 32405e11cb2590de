"""hf_gqa.training.rouge: ROUGE against the rouge-score package."""

import pytest

from hf_gqa.training import (
    ROUGE_KEYS,
    compute_rouge,
    split_sentences,
)

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")


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
