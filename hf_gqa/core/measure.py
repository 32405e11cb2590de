"""Measuring a language model on text: the summed negative log-likelihood of a decoder-only model's tokens, and its
perplexity. Shared by the demo and `hf_gqa.evaluation` (siblings that do not import each other)."""

import math

import torch

from ..errors import HfGqaError


@torch.no_grad()
def text_nll(model, tokenizer, text: str, max_tokens: int = 256) -> tuple[float, int]:
    """The summed negative log-likelihood (nats) of `text`'s tokens under a decoder-only `model`, and how many tokens
    it scores: each token after the first, `text` truncated to `max_tokens` tokens."""
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids.to(model.device)
    n = ids.shape[1] - 1
    if n < 1:
        return 0.0, 0
    loss = model(input_ids=ids, labels=ids).loss  # the mean over the n shifted targets
    return loss.item() * n, n


def perplexity(model, tokenizer, texts: list[str], max_tokens: int = 256) -> float:
    """Token-weighted perplexity of `model` over `texts` (each truncated to `max_tokens`)."""
    total_nll, total_tokens = 0.0, 0
    for text in texts:
        nll, n = text_nll(model, tokenizer, text, max_tokens)
        total_nll += nll
        total_tokens += n
    if not total_tokens:
        raise HfGqaError("no text has two tokens or more: nothing to score")
    return math.exp(total_nll / total_tokens)


__all__ = ["perplexity", "text_nll"]
