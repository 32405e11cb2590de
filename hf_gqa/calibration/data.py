"""Calibration batches: texts tokenized, joined with the end-of-sequence token and cut into equal sequences."""

import random

import torch

from ..errors import HfGqaError
from ..io.texts import read_texts

BATCH_SIZE = 4  # sequences per forward pass (and per Adam step of the calibrated init)
CHARS_PER_TOKEN = 12  # how much of a Hub dataset to read: about 3 times the tokens needed, for English text


def token_chunks(tokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`(samples, seq_len)` token ids: the texts in a seeded random order, joined with EOS, cut into sequences."""
    if tokenizer is None:
        raise HfGqaError("calibration needs the model's tokenizer: none was found beside the checkpoint")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    need = samples * seq_len
    for i in order:
        stream += tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(eos)
        if len(stream) >= need:
            break
    if len(stream) < need:
        have = len(stream) // seq_len
        if have == 0:
            raise HfGqaError(f"the calibration text has {len(stream)} tokens, fewer than one sequence of {seq_len}")
        samples = have
    return torch.tensor(stream[: samples * seq_len]).view(samples, seq_len)


def calibration_batches(model, tokenizer, data: str, samples: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Model inputs over the calibration text. Decoder-only: the sequences. Encoder-decoder: each sequence's first
    half is the encoder input and its second half the decoder input (after the decoder start token)."""
    texts = read_texts(data, max_chars=CHARS_PER_TOKEN * samples * seq_len)  # a Hub dataset: read only so much
    chunks = token_chunks(tokenizer, texts, samples, seq_len, seed)
    batches = []
    for start in range(0, len(chunks), BATCH_SIZE):
        ids = chunks[start : start + BATCH_SIZE]
        if model.config.is_encoder_decoder:
            half = ids.shape[1] // 2
            start_id = model.config.decoder_start_token_id or 0
            decoder = torch.cat([torch.full((len(ids), 1), start_id), ids[:, half:-1]], dim=1)
            batches.append({"input_ids": ids[:, :half], "decoder_input_ids": decoder})
        else:
            batches.append({"input_ids": ids})
    return batches


__all__ = ["BATCH_SIZE", "calibration_batches", "token_chunks"]
