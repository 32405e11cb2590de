"""Every calibration init on every decoder family the converter supports, and on T5: it runs (finite logits, a
calibrated block never ends worse than it started) or refuses in one line."""

import pytest
import torch
from conftest import make_t5
from tiny_decoders import IDS, make, make_neox

import hf_gqa
from hf_gqa.calibration.fit import calibrate
from hf_gqa.conversion.memory import convert_model
from hf_gqa.errors import HfGqaError
from hf_gqa.families.decoders import NativeGQA
from hf_gqa.spec import GQASpec

INITS = ["aligned", "activation", "calibrated"]


def batches(vocab: int, encoder_decoder: bool = False):
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, vocab, (2, 16), generator=g) for _ in range(2)]
    return [{"input_ids": i, "decoder_input_ids": i.flip(1)} if encoder_decoder else {"input_ids": i} for i in ids]


def runs_or_refuses(source, spec, data, init, call):
    model, plan = convert_model(source, spec, return_plan=True)
    try:
        reports = calibrate(source, model, plan.kv_heads, data, init, steps=2, lr=1e-3, progress=False)
    except HfGqaError as error:
        assert "\n" not in str(error) and str(error).startswith(f"--init {init}"), str(error)
        return "refused"
    assert reports and all(r.loss_after <= r.loss_before for r in reports if r.loss_before is not None)
    with torch.no_grad():
        assert torch.isfinite(call(model)).all()
    return "ran"


@pytest.mark.parametrize("model_type", NativeGQA.source_model_types)
def test_every_decoder_family(model_type):
    source = make(model_type, kv_heads=8)
    outcomes = {
        init: runs_or_refuses(source, GQASpec(groups=2), batches(96), init, lambda m: m(IDS).logits) for init in INITS
    }
    assert outcomes["calibrated"] == "ran"  # the calibrated init starts from the mean where no closed form runs


def test_t5_decoder_self_and_cross_attention():
    source = make_t5("flan")
    spec = GQASpec(groups=2, attention=["decoder_self", "cross"])
    for init in INITS:
        outcome = runs_or_refuses(source, spec, batches(128, True), init, lambda m: m(**batches(128, True)[0]).logits)
        assert outcome == "ran", init


def test_re_expressed_families_refuse_in_one_line():
    with pytest.raises(HfGqaError, match="does not support gpt_neox"):
        hf_gqa.convert(make_neox(), groups=2, init="calibrated", calibration_data="x.txt", tokenizer=object())
