"""hf_gqa.training: hook specs and states, bias freezing, LoRA targets, fold."""

import pytest
from conftest import make_t5

import hf_gqa
from hf_gqa.errors import HfGqaError
from hf_gqa.training import (
    HookStates,
    TrainingHook,
    build_hooks,
    fold,
    freeze_relative_attention_bias,
    grouped_kv_modules,
    lora_targets,
    parse_hook_spec,
)

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")


# ---------------------------------------------------------------------------------------------------------------
# Model-side helpers: hooks, bias freezing, LoRA, fold


class CrashAt(TrainingHook):
    """Kills the run (an exception) after optimizer step `step`, as a pre-emption would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise RuntimeError(f"killed after step {state.step}")


class Counter(TrainingHook):
    def __init__(self, start: int = 0):
        self.count = start

    def on_step_end(self, state):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_hook_specs():
    assert parse_hook_spec("pkg.mod:Name(every=200, name='x')") == ("pkg.mod", "Name", {"every": 200, "name": "x"})
    assert parse_hook_spec("Name") == (None, "Name", {})
    (hook,) = build_hooks(["test_model_helpers:Counter(start=2)"])
    assert isinstance(hook, Counter) and hook.count == 2
    for bad, message in [
        ("x:y:z", "expected"),
        ("test_model_helpers:Counter(2)", "key=literal"),
        ("test_model_helpers:Nope", "no class 'Nope'"),
        ("test_model_helpers:Counter(stop=1)", "unexpected keyword"),
    ]:
        with pytest.raises(HfGqaError, match=message):
            build_hooks([bad])
    states = HookStates([Counter(5), CrashAt(1)])
    restored = HookStates([Counter(0)])
    restored.load_state_dict(states.state_dict())
    assert restored.hooks[0].count == 5


def test_freeze_bias_lora_targets_and_fold_no_op():
    model = hf_gqa.convert(make_t5("t5"), groups=2)
    assert freeze_relative_attention_bias(model) == 2 * 8 * 8  # encoder and decoder: buckets x heads
    assert not any(p.requires_grad for n, p in model.named_parameters() if "relative_attention_bias" in n)
    full = grouped_kv_modules(model)
    assert len(full) == 3 * 2 * 2 and "decoder.block.0.layer.1.EncDecAttention.k" in full
    targets, trained = lora_targets(model)
    assert trained == full and "encoder.block.0.layer.0.SelfAttention.k" in targets
    assert (
        "decoder.block.0.layer.0.SelfAttention.q" in targets and "decoder.block.0.layer.2.DenseReluDense.wo" in targets
    )
    assert not set(targets) & set(full) and "lm_head" not in targets
    assert fold(model) is model  # not a training form


def test_frozen_bias_keeps_sdpa_on_its_fused_kernel_in_training():
    from conftest import batch
    from torch.profiler import profile

    def kernels(freeze: bool) -> dict[str, int]:
        model = hf_gqa.convert(make_t5("t5"), groups=2).train()
        if freeze:
            freeze_relative_attention_bias(model)
        inputs = batch()
        inputs["labels"] = inputs.pop("decoder_input_ids")
        with profile() as trace:
            model(**inputs).loss.backward()
        return {e.key: e.count for e in trace.key_averages() if e.key.startswith("aten::_scaled_dot_product")}

    trained, frozen = kernels(False), kernels(True)
    assert trained.get("aten::_scaled_dot_product_attention_math", 0) > 0  # a mask that needs grad: math kernel
    assert "aten::_scaled_dot_product_attention_math" not in frozen
    assert frozen["aten::_scaled_dot_product_flash_attention_for_cpu_backward"] == 8  # 2 + 3 + 3 attention calls


def test_peft_defaults_for_hf_gqa_model_types():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from hf_gqa.training import register_peft_defaults

    register_peft_defaults()
    model = get_peft_model(hf_gqa.convert(make_t5("t5"), groups=2), LoraConfig(task_type="SEQ_2_SEQ_LM", r=2))
    assert any("SelfAttention.q.lora_A" in n for n, _ in model.named_parameters())
