"""The end-to-end distillation that can follow the calibrated init (`--calibration-distill-steps`). Oracle: the KL
divergence of the source's and the converted model's next-token distributions, written out here."""

import pytest
import torch
from tiny_decoders import make

import hf_gqa
from hf_gqa.calibration.distill import distill
from hf_gqa.conversion.memory import convert_model
from hf_gqa.errors import HfGqaError
from hf_gqa.spec import GQASpec


def kl(source, model, ids) -> float:
    with torch.no_grad():
        p = source(input_ids=ids).logits.double().softmax(-1)
        q = model(input_ids=ids).logits.double().softmax(-1)
    return (p * (p.log() - q.log())).sum(-1).mean().item()


def test_distillation_moves_only_the_converted_blocks_and_lowers_the_held_out_kl():
    source = make("llama", kv_heads=8)
    model = convert_model(source, GQASpec(groups=1))
    for param in model.parameters():
        param.data = param.data.clone()
    params = [p for n, p in model.named_parameters() if "self_attn" in n]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "self_attn" not in n}
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 96, (4, 32), generator=g)} for _ in range(6)]
    held_out = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(7))
    before_held_out = kl(source, model, held_out)
    before, after = distill(source, model, params, batches, steps=60, seed=0, progress=False)
    assert after < before
    assert kl(source, model, held_out) < before_held_out
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_distill_steps_are_checked_in_one_line():
    source = make("llama", kv_heads=8)
    with pytest.raises(HfGqaError, match="applies to --init calibrated only"):
        hf_gqa.convert(source, groups=2, init="activation", calibration_data="x.txt", calibration_distill_steps=5)
    with pytest.raises(HfGqaError, match="at least 0"):
        hf_gqa.convert(source, groups=2, init="calibrated", calibration_data="x.txt", calibration_distill_steps=-1)
