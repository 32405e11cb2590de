"""`--calibration-data` (and `hf-gqa eval --data`) name a `datasets` dataset on the Hub: NAME, NAME:SPLIT or
NAME:CONFIG:SPLIT. Offline, `datasets.load_dataset` is replaced by a fake that records how it was called."""

import pytest

datasets = pytest.importorskip("datasets")

from hf_gqa.errors import HfGqaError  # noqa: E402
from hf_gqa.io.texts import read_texts  # noqa: E402


class FakeHub:
    def __init__(self, rows=None, error=None):
        self.rows, self.error, self.calls, self.read = rows or [], error, [], 0

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error

        def stream():
            for row in self.rows:
                self.read += 1
                yield row

        return stream()


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub([{"text": f"text number {i} " * 5, "id": i} for i in range(100)])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


@pytest.mark.parametrize(
    "source, call",
    [
        ("someone/corpus", (("someone/corpus", None), "train")),
        ("someone/corpus:validation", (("someone/corpus", None), "validation")),
        ("wikitext:wikitext-2-raw-v1:test", (("wikitext", "wikitext-2-raw-v1"), "test")),
    ],
)
def test_a_dataset_name_streams_its_split(hub, source, call):
    texts = read_texts(source)
    ((args, kwargs),) = hub.calls
    assert (args, kwargs["split"], kwargs["streaming"]) == (call[0], call[1], True)
    assert texts == [f"text number {i} " * 5 for i in range(100)]


def test_reading_stops_once_enough_text_is_read(hub):
    texts = read_texts("someone/corpus", max_chars=200)
    assert sum(map(len, texts)) >= 200 and sum(map(len, texts[:-1])) < 200
    assert hub.read == len(texts) < 100


def test_another_column_and_a_missing_one(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub([{"article": "a b c", "highlights": "a"}]))
    assert read_texts("cnn_dailymail:3.0.0:test", column="article") == ["a b c"]
    with pytest.raises(HfGqaError, match=r"'cnn_dailymail:3.0.0:test' has no column 'text' \(columns: article, "):
        read_texts("cnn_dailymail:3.0.0:test")


def test_an_unreadable_dataset_is_one_line(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(error=ConnectionError("Couldn't reach the Hub\nretry")))
    with pytest.raises(HfGqaError) as info:
        read_texts("someone/corpus")
    message = str(info.value)
    assert "\n" not in message and "someone/corpus" in message and "Couldn't reach the Hub" in message
    assert "not a local file" in message


def test_a_missing_file_is_still_a_missing_file(hub):
    with pytest.raises(HfGqaError, match="text file 'missing.jsonl' not found"):
        read_texts("missing.jsonl")
    with pytest.raises(HfGqaError, match="text file './corpus' not found"):
        read_texts("./corpus")
    assert hub.calls == []


def test_eval_reads_only_the_texts_it_scores(hub):
    assert len(read_texts("someone/corpus", max_texts=7)) == 7 and hub.read == 7


def test_calibration_reads_a_hub_dataset_only_as_far_as_it_needs(hub):
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hf_gqa.calibration.data import calibration_batches

    vocab = {"</s>": 0, "text": 1, "number": 2, **{str(i): i + 3 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    model = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=False))
    (batch,) = calibration_batches(model, tokenizer, "someone/corpus", samples=4, seq_len=8)
    assert batch["input_ids"].shape == (4, 8)  # enough text was read
    assert hub.read < 100
