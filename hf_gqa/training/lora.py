"""LoRA uptraining with `peft`: low-rank adapters on the attention and MLP projections, while the new grouped K/V
projections (and whatever a training-form variant keeps inside them, e.g. WGQA's mixing weights) train fully.

    model = apply_lora(model, r=16)   # a peft model: LoRA everywhere but the grouped K/V, which train in full
    ...                               # train
    model = merge_lora(model)         # the plain transformers model again, adapters merged

`register_peft_defaults()` (called by `apply_lora`) also gives hf-gqa's model types (`t5_gqa`, `gpt2_gqa`,
`llama_routed`, ...) the default target modules of the families they come from, in every `TRANSFORMERS_MODELS_TO_*`
map of peft, so that `LoraConfig()` without `target_modules` works on them as it does on `t5` and `gpt2`.
"""

import torch
from transformers.pytorch_utils import Conv1D

from ..errors import HfGqaError
from ..modeling.configuration_routed import ROUTED_FAMILIES, SUFFIX
from .model import grouped_kv_modules

# hf-gqa model type -> the peft defaults it takes
PEFT_MODEL_TYPES = {"t5_gqa": "t5", "gpt2_gqa": "gpt2", **{f"{t}{SUFFIX}": t for t in ROUTED_FAMILIES}}


def _peft():
    try:
        import peft
    except ImportError:
        raise HfGqaError("LoRA uptraining needs the package peft: pip install 'hf-gqa[recipes]'") from None
    return peft


def register_peft_defaults() -> None:
    """Copy peft's per-model-type defaults of `t5`, `gpt2` and the routed families to hf-gqa's model types
    (idempotent)."""
    _peft()
    from peft.utils import constants

    for name in dir(constants):
        mapping = getattr(constants, name)
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(mapping, dict):
            for model_type, source in PEFT_MODEL_TYPES.items():
                if source in mapping:
                    mapping.setdefault(model_type, mapping[source])


def _is_projection(module) -> bool:
    return isinstance(module, torch.nn.Linear | Conv1D)


def lora_targets(model) -> tuple[list[str], list[str]]:
    """(modules that get LoRA, modules trained in full): every linear projection but the output head goes to the
    first list, except the grouped K/V modules (and anything inside them), which go to the second."""
    full = grouped_kv_modules(model)
    output = model.get_output_embeddings()
    targets = [
        name
        for name, module in model.named_modules()
        if _is_projection(module)
        and module is not output
        and not any(name == f or name.startswith(f + ".") for f in full)
    ]
    return targets, full


def apply_lora(model, r: int = 8, alpha: int | None = None, dropout: float = 0.0):
    """Wrap `model` in a peft model with LoRA of rank `r` (scaling `alpha / r`, default alpha = 2r)."""
    peft = _peft()
    register_peft_defaults()
    targets, full = lora_targets(model)
    if not targets:
        raise HfGqaError(f"LoRA: no linear projections found in {type(model).__name__}")
    task = peft.TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else peft.TaskType.CAUSAL_LM
    config = peft.LoraConfig(
        task_type=task,
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=full or None,
    )
    return peft.get_peft_model(model, config)


def merge_lora(model):
    """Merge LoRA adapters into the weights and return the plain model (unchanged if it is not a peft model)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


__all__ = ["PEFT_MODEL_TYPES", "apply_lora", "lora_targets", "merge_lora", "register_peft_defaults"]
