"""Evaluation during and after uptraining: teacher-forced loss, generated summaries scored with ROUGE, and decode
throughput. Works on one process or many (results are gathered with `accelerator.gather_for_metrics`)."""

import time

import torch
from tqdm.auto import tqdm

from .rouge import compute_rouge


def _per_example_nll(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood and target-token count of each example."""
    if shift:  # decoder-only: position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    return nll.sum(dim=1), (labels != -100).sum(dim=1)


def _synchronize(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_summarization(
    model,
    dataloader,
    tokenizer,
    accelerator,
    references: list[str],
    generation_kwargs: dict,
    use_stemmer: bool = True,
    progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Score `model` on an evaluation loader built from `tokenize_summarization(..., with_index=True)`.

    Returns `(metrics, predictions)`: metrics `loss` (token-weighted), `rouge1`, `rouge2`, `rougeL`, `rougeLsum`,
    `gen_len` (mean generated tokens) and `samples`; predictions one `{"index", "prediction", "reference"}` per
    example. `references[i]` is the reference summary of example `i`, as text (not re-decoded from truncated ids).
    """
    unwrapped = accelerator.unwrap_model(model)
    is_encoder_decoder = unwrapped.config.is_encoder_decoder
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"use_cache": True, "pad_token_id": pad, **generation_kwargs}
    if tokenizer.eos_token_id is not None:
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    was_training = model.training
    model.eval()
    nll_total, token_total, generated_tokens = 0.0, 0, 0
    predictions = []
    bar = tqdm(
        dataloader, desc="evaluating", leave=False, disable=not (progress and accelerator.is_local_main_process)
    )
    for batch in bar:
        with accelerator.autocast():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            )
        nll, count = _per_example_nll(logits.logits, batch["labels"], shift=not is_encoder_decoder)
        if is_encoder_decoder:
            inputs, mask = batch["input_ids"], batch["attention_mask"]
        else:
            inputs, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        with accelerator.autocast():
            generated = unwrapped.generate(input_ids=inputs, attention_mask=mask, **kwargs)
        if not is_encoder_decoder:
            generated = generated[:, inputs.shape[1] :]
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad)
        generated, nll, count, index = accelerator.gather_for_metrics((generated, nll, count, batch["index"]))
        nll_total += float(nll.sum())
        token_total += int(count.sum())
        for ids, i in zip(generated.tolist(), index.tolist(), strict=True):
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            ids = [t for t in ids if t != pad]
            generated_tokens += len(ids)
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            predictions.append({"index": i, "prediction": text, "reference": references[i]})
    if was_training:
        model.train()
    metrics = compute_rouge([p["prediction"] for p in predictions], [p["reference"] for p in predictions], use_stemmer)
    metrics["loss"] = nll_total / max(token_total, 1)
    metrics["gen_len"] = generated_tokens / max(len(predictions), 1)
    metrics["samples"] = len(predictions)
    return metrics, predictions


@torch.no_grad()
def decode_throughput(model, input_ids, attention_mask, new_tokens: int = 64, pad_token_id: int | None = None) -> dict:
    """Decode speed of `generate()` with the KV cache: greedy, exactly `new_tokens` per sequence, batch of `input_ids`.

    Two timed runs, of 1 and of `new_tokens` new tokens, cancel the prefill (the encoder, or the prompt): tokens/s is
    `batch * (new_tokens - 1) / (t_new_tokens - t_1)`. One untimed run warms up first.
    """
    model.eval()
    base = dict(do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_token_id)

    def timed(n: int) -> float:
        _synchronize(input_ids.device)
        start = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n, **base)
        _synchronize(input_ids.device)
        return time.perf_counter() - start

    new_tokens = max(int(new_tokens), 2)
    timed(2)
    one, full = timed(1), timed(new_tokens)
    batch = input_ids.shape[0]
    return {
        "decode_tokens_per_second": batch * (new_tokens - 1) / max(full - one, 1e-9),
        "decode_batch_size": batch,
        "decode_new_tokens": new_tokens,
        "decode_prompt_tokens": int(input_ids.shape[1]),
    }


__all__ = ["decode_throughput", "evaluate_summarization"]
