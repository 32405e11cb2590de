"""Calibration batches: texts tokenized, joined with the end-of-sequence token and cut into equal sequences; or
sequences the model samples itself (`generated_batches`, `--calibration-distill-data generated`)."""

import random

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..errors import HfGqaError
from ..io.texts import read_texts

BATCH_SIZE = 4  # sequences per forward pass (and per Adam step of the calibrated init)
CHARS_PER_TOKEN = 12  # how much of a Hub dataset to read: about 3 times the tokens needed, for English text
GENERATED = "generated"  # the --calibration-distill-data value for the model's own samples
GENERATION_BATCH = 16  # sequences sampled at a time


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


@torch.no_grad()
def generated_batches(
    model, tokenizer, samples: int, seq_len: int, seed: int = 0, progress: bool = True
) -> list[dict]:
    """Batches of `samples` sequences of `seq_len` tokens that the decoder-only `model` samples itself: each from the
    start token (BOS, else EOS) alone, at temperature 1 with no top-k or top-p (the model's own next-token
    distribution, none of its generation_config's settings), never ending early, seeded by `seed` without touching
    the global RNG. Text of no domain but the model's: what a distillation that should generalise beyond the
    calibration text's domain can be run on."""
    if model.config.is_encoder_decoder:
        raise HfGqaError(f"--calibration-distill-data {GENERATED} applies to decoder-only models; give a text instead")
    if tokenizer is None:
        raise HfGqaError(f"--calibration-distill-data {GENERATED} needs the model's tokenizer: none was found")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise HfGqaError(
            f"--calibration-distill-data {GENERATED}: the tokenizer has no BOS or EOS token to start from"
        )
    new = seq_len - 1
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=start,
    )  # fmt: skip
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for first in tqdm(
            range(0, samples, GENERATION_BATCH), desc="sampling text from the source", disable=not progress
        ):
            ids = torch.full((min(GENERATION_BATCH, samples - first), 1), start, device=model.device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            rows.append(out[:, :seq_len].cpu())
    ids = torch.cat(rows)
    return [{"input_ids": ids[i : i + BATCH_SIZE]} for i in range(0, len(ids), BATCH_SIZE)]


__all__ = ["BATCH_SIZE", "GENERATED", "calibration_batches", "generated_batches", "token_chunks"]
