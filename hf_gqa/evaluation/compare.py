"""Measuring checkpoints side by side, to choose a conversion: perplexity on text (decoder-only) or the loss on
reference summaries (encoder-decoder, T5), KV-cache bytes per token, parameters and greedy decode speed, and
lm-evaluation-harness tasks (`harness`).

`evaluate_models` checks every model, the data and the lm-eval tasks before it measures anything, then loads one
model at a time."""

import gc
import math
import os
import statistics
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, EncoderDecoderCache

from ..conversion.memory import load_source
from ..conversion.sizes import kv_cache_bytes_per_token
from ..core.measure import text_nll
from ..errors import HfGqaError
from ..io.auto import source_auto_class
from ..io.sources import load_config_dict, load_tokenizer, resolve_dtype
from ..io.texts import read_pairs, read_texts
from ..registry import resolve
from .harness import prepare_tasks, run_tasks

PROMPT_TOKENS = 64  # the decode prompt's length


@torch.no_grad()
def summary_nll(model, tokenizer, text: str, summary: str, max_tokens: int = 256) -> tuple[float, int]:
    """The summed negative log-likelihood (nats) of `summary`'s tokens under an encoder-decoder `model` given
    `text` (teacher-forced), and how many tokens it scores; both truncated to `max_tokens` tokens."""
    inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens).to(model.device)
    labels = tokenizer(text_target=summary, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
    n = labels.shape[1]
    if n < 1:
        return 0.0, 0
    loss = model(  # the mean over the n label tokens
        input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, labels=labels.to(model.device)
    ).loss
    return loss.item() * n, n


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_prompt(tokenizer, texts: Sequence[str], tokens: int = PROMPT_TOKENS) -> torch.Tensor:
    """A (1, `tokens`) prompt: the first `tokens` tokens of `texts` run together (repeated when they are shorter)."""
    ids = tokenizer(" ".join(texts), truncation=True, max_length=tokens).input_ids
    if not ids:
        raise HfGqaError("the data tokenizes to nothing: no decode prompt")
    ids = (ids * math.ceil(tokens / len(ids)))[:tokens]
    return torch.tensor([ids])


@torch.no_grad()
def decode_speed(model, prompt: torch.Tensor, new_tokens: int = 32, rounds: int = 3, pad_token_id=None) -> dict:
    """Greedy `generate()` with the KV cache of exactly `new_tokens` tokens after `prompt` (batch 1): tokens/s of
    the median of `rounds` timed runs (each includes the prompt's prefill), after one untimed warm-up."""
    prompt = prompt.to(model.device)
    kwargs = dict(
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_token_id,
    )

    def timed(n: int) -> float:
        if model.config.is_encoder_decoder:  # a cache per stack: stock T5's sizes the decoder's by the encoder's depth
            kwargs["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
        _synchronize(model.device)
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)
        _synchronize(model.device)
        seconds = time.perf_counter() - start
        made = out.shape[1] - (1 if model.config.is_encoder_decoder else prompt.shape[1])  # T5: after the start id
        if made != n:
            raise RuntimeError(f"generate() made {made} tokens, not {n}")
        return seconds

    timed(min(new_tokens, 2))  # warm-up: allocations, kernels
    seconds = statistics.median(timed(new_tokens) for _ in range(rounds))
    return {"decode_tokens_per_second": new_tokens / seconds, "decode_seconds": seconds}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _checked_model(name: str) -> tuple[dict, bool]:
    """`name`'s config dict and whether it is encoder-decoder; a one-line error for a model that is not a language
    model, before any weights are read."""
    config = load_config_dict(name)
    auto = source_auto_class(config).__name__
    if auto not in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
        raise HfGqaError(f"{name!r} ({config['model_type']}) is not a language model: eval scores text")
    return config, auto == "AutoModelForSeq2SeqLM"


def evaluate_models(
    models: Sequence[str | os.PathLike],
    data: str | None = None,
    *,
    samples: int = 32,
    max_tokens: int = 256,
    decode_tokens: int = 32,
    rounds: int = 3,
    text_column: str = "text",
    summary_column: str = "summary",
    dtype=None,
    device: str | torch.device | None = None,
    lm_eval_tasks: Sequence[str] | None = None,
    lm_eval_include: str | os.PathLike | None = None,
    lm_eval_fewshot: int | None = None,
    lm_eval_limit: int | None = None,
    lm_eval_batch_size: int = 1,
    progress: bool = False,
) -> list[dict]:
    """Measure each of `models` (local folder, .gguf file or Hub id) on the first `samples` texts of `data` (what
    `hf_gqa.io.texts.read_texts` / `read_pairs` read), in one run; one dict per model, in order.

    A decoder-only model scores `text_column` (perplexity, token-weighted, each text truncated to `max_tokens`); an
    encoder-decoder model (T5) scores `summary_column` given `text_column` (the loss on the summary tokens, and its
    perplexity). Each dict also has `kv_heads`, `kv_cache_bytes_per_token` (per cache, in the model's dtype),
    `parameters`, and unless `decode_tokens` is 0 `decode_tokens_per_second` (see `decode_speed`, on a 64-token
    prompt from the data) and `decode_speedup`, against the first model.

    `lm_eval_tasks` (lm-eval task names, or task .yaml files; more in the folder `lm_eval_include`) are run on each
    model by lm-evaluation-harness (`harness.run_tasks`: `lm_eval_fewshot` examples, None: each task's own; the
    first `lm_eval_limit` documents, None: all); their figures are under `lm_eval`. `data` may then be None: no
    perplexity or decode speed, the sizes still. Every model's config and tokenizer, the data and the tasks are
    checked before any model is measured; the models are loaded (`load_source`) one at a time."""
    if not models:
        raise HfGqaError("name at least one model")
    if data is None and lm_eval_tasks is None:
        raise HfGqaError("give --data (perplexity, decode speed), --lm-eval-tasks (lm-evaluation-harness), or both")
    for flag, value, least in (
        ("--samples", samples, 1),
        ("--max-tokens", max_tokens, 2),
        ("--decode-tokens", decode_tokens, 0),
        ("--rounds", rounds, 1),
        ("--lm-eval-fewshot", 0 if lm_eval_fewshot is None else lm_eval_fewshot, 0),
        ("--lm-eval-limit", 1 if lm_eval_limit is None else lm_eval_limit, 1),
        ("--lm-eval-batch-size", lm_eval_batch_size, 1),
    ):
        if value < least:
            raise HfGqaError(f"{flag} must be at least {least}; got {value}")
    resolve_dtype(dtype)  # an unknown dtype: one line now
    try:
        device = torch.device(device) if device is not None else _default_device()
    except RuntimeError:
        raise HfGqaError(f"unknown device {device!r} (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HfGqaError(f"device {str(device)!r}: CUDA is not available")

    checked = [(str(name), *_checked_model(str(name))) for name in models]
    tokenizers = {}
    for name, _, _ in checked:
        tokenizers[name] = load_tokenizer(name)
        if tokenizers[name] is None:
            raise HfGqaError(f"{name!r} has no tokenizer: eval needs one to score text")
    texts, pairs = (read_texts(data, text_column, max_texts=samples)[:samples] if data is not None else []), []
    if data is not None and any(seq2seq for _, _, seq2seq in checked):
        try:
            pairs = read_pairs(data, text_column, summary_column)[:samples]
        except HfGqaError as error:
            seq2seq_model = next(name for name, _, seq2seq in checked if seq2seq)
            raise HfGqaError(f"{seq2seq_model!r} is encoder-decoder: it scores summaries; {error}") from None
    harness = prepare_tasks(lm_eval_tasks, lm_eval_include) if lm_eval_tasks is not None else None

    results = []
    total = sum(len(pairs if seq2seq else texts) for _, _, seq2seq in checked)
    with tqdm(total=total, desc="eval", unit="text", disable=not progress or not total) as bar:
        for name, config, seq2seq in checked:
            bar.set_description(f"eval {name}")
            model = load_source(name, dtype).to(device).eval()
            items = pairs if seq2seq else texts
            result = {"model": name, "model_type": config["model_type"]}
            if data is not None:
                result["scores"] = "summaries" if seq2seq else "text"
                result.update(
                    _scores(model, tokenizers[name], items, seq2seq, max_tokens, bar, f"{name!r} on {data!r}")
                )
            result.update(_sizes(model), device=str(device))
            if harness is not None:
                result["lm_eval"] = run_tasks(
                    model,
                    tokenizers[name],
                    harness,
                    seq2seq=seq2seq,
                    num_fewshot=lm_eval_fewshot,
                    limit=lm_eval_limit,
                    batch_size=lm_eval_batch_size,
                )
            if decode_tokens and data is not None:
                prompt = decode_prompt(tokenizers[name], [t for t, _ in pairs] if seq2seq else texts)
                result.update(decode_speed(model, prompt, decode_tokens, rounds, pad_token_id=_pad(tokenizers[name])))
                first = (results[0] if results else result)["decode_tokens_per_second"]
                result["decode_speedup"] = result["decode_tokens_per_second"] / first
            results.append(result)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def _scores(model, tokenizer, items: list, seq2seq: bool, max_tokens: int, bar, what: str) -> dict:
    """Token-weighted loss and perplexity over `items`: texts (decoder-only) or (text, summary) pairs."""
    nll, tokens = 0.0, 0
    for item in items:
        if seq2seq:
            item_nll, n = summary_nll(model, tokenizer, *item, max_tokens=max_tokens)
        else:
            item_nll, n = text_nll(model, tokenizer, item, max_tokens=max_tokens)
        nll, tokens = nll + item_nll, tokens + n
        bar.update()
    if not tokens:
        raise HfGqaError(f"{what}: no text has two tokens or more: nothing to score")
    return {"samples": len(items), "tokens": tokens, "loss": nll / tokens, "perplexity": math.exp(nll / tokens)}


def _sizes(model) -> dict:
    config = model.config.to_dict()
    resolved = resolve(config)
    return {
        "kv_heads": {b.kind: b.kv_heads for b in resolved.family.attention_blocks(resolved.view)},
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, model.dtype),
        "parameters": model.num_parameters(),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _pad(tokenizer) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


__all__ = ["PROMPT_TOKENS", "decode_prompt", "decode_speed", "evaluate_models", "summary_nll"]
