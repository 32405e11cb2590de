"""A short end-to-end distillation after the block-wise fit (`--calibration-distill-steps`): the converted blocks'
projections trained so that the converted model's next-token distributions match the source's on the distillation
text (KL(source || converted), every position): by default for a decoder-only model text the source samples itself
(`data.generated_batches`). Both models in memory; the source runs without gradients."""

import math

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import HfGqaError
from .options import DEFAULTS


def _kl(source, target, batch) -> torch.Tensor:
    """Mean over positions of KL(source || target) on `batch`."""
    with torch.no_grad():
        want = source(**batch, use_cache=False).logits.float().log_softmax(-1)
    got = target(**batch, use_cache=False).logits.float().log_softmax(-1)
    return F.kl_div(got.flatten(0, -2), want.flatten(0, -2), reduction="batchmean", log_target=True)


def distill(
    source, target, params: list, batches: list[dict], steps: int, seed: int = 0, progress: bool = True, lr=None
):
    """Adam at `lr` (default: `--calibration-distill-lr`'s) on `params` (the converted blocks' parameters) for
    `steps` steps, one calibration batch each, drawn with `seed`. Returns the mean KL on the calibration batches
    before and after; the parameters are put back when
    the distillation did not lower it."""
    flags = {id(p): p.requires_grad for p in target.parameters()}
    for p in target.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=DEFAULTS["calibration_distill_lr"] if lr is None else lr)
    generator = torch.Generator().manual_seed(seed)
    was_training = target.training
    target.train(False)
    try:
        with torch.no_grad():
            before = sum(_kl(source, target, b).item() for b in batches) / len(batches)
            start = [p.detach().clone() for p in params]
        for _ in tqdm(range(steps), desc="distilling from the source", disable=not progress):
            batch = batches[int(torch.randint(len(batches), (1,), generator=generator))]
            optimizer.zero_grad(set_to_none=True)
            loss = _kl(source, target, batch)
            if not math.isfinite(loss.item()):
                raise HfGqaError("calibration distillation diverged; try fewer --calibration-distill-steps")
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = sum(_kl(source, target, b).item() for b in batches) / len(batches)
            if after > before:
                for p, saved in zip(params, start, strict=True):
                    p.copy_(saved)
                after = before
    finally:
        for p in target.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        target.train(was_training)
    return before, after


__all__ = ["distill"]
