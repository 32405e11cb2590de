"""hf-gqa's config and model classes (`hf_gqa/modeling`) and their registration with transformers' Auto classes,
which `import hf_gqa` calls (`register_auto_classes`, idempotent)."""

import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForTextEncoding,
)

from ..errors import HfGqaError
from ..modeling.configuration_gpt2_gqa import GPT2GQAConfig
from ..modeling.configuration_routed import ROUTED_CONFIGS
from ..modeling.configuration_t5_gqa import T5GQAConfig
from ..modeling.configuration_wgqa_decoder import WGQA_CONFIGS
from ..modeling.modeling_gpt2_gqa import GPT2GQALMHeadModel, GPT2GQAModel
from ..modeling.modeling_routed import ROUTED_MODELS
from ..modeling.modeling_t5_gqa import T5GQAEncoderModel, T5GQAForConditionalGeneration, T5GQAModel
from ..modeling.modeling_wgqa_decoder import WGQA_MODELS

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (T5GQAModel, T5GQAForConditionalGeneration, T5GQAEncoderModel, GPT2GQAModel, GPT2GQALMHeadModel)
}
for _classes in (*WGQA_MODELS.values(), *ROUTED_MODELS.values()):
    MODEL_CLASSES.update({cls.__name__: cls for cls in _classes.values()})
_REGISTERED = False


def register_auto_classes() -> None:
    """Register every hf-gqa config and model class with transformers' Auto classes (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _register()
    _REGISTERED = True


def model_class(name: str):
    """The model class named `name`: hf-gqa's or transformers'."""
    cls = MODEL_CLASSES.get(name) or getattr(transformers, name, None)
    if cls is None:
        raise HfGqaError(f"no model class {name!r} is known to hf-gqa or transformers")
    return cls


def _register() -> None:
    AutoConfig.register(T5GQAConfig.model_type, T5GQAConfig, exist_ok=True)
    AutoModel.register(T5GQAConfig, T5GQAModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(T5GQAConfig, T5GQAForConditionalGeneration, exist_ok=True)
    AutoModelForTextEncoding.register(T5GQAConfig, T5GQAEncoderModel, exist_ok=True)

    AutoConfig.register(GPT2GQAConfig.model_type, GPT2GQAConfig, exist_ok=True)
    AutoModel.register(GPT2GQAConfig, GPT2GQAModel, exist_ok=True)
    AutoModelForCausalLM.register(GPT2GQAConfig, GPT2GQALMHeadModel, exist_ok=True)

    # The WGQA training form of the decoder-only families (`llama_wgqa`, `qwen2_wgqa`, ...).
    auto = {
        "AutoModel": AutoModel,
        "AutoModelForCausalLM": AutoModelForCausalLM,
        "AutoModelForImageClassification": AutoModelForImageClassification,
    }
    for model_type, config in WGQA_CONFIGS.items():
        AutoConfig.register(config.model_type, config, exist_ok=True)
        for name, cls in WGQA_MODELS[model_type].items():
            auto[name].register(config, cls, exist_ok=True)
    # The routed-attention form of the decoder-only families and ViT (`llama_routed`, `vit_routed`, ...).
    for model_type, config in ROUTED_CONFIGS.items():
        AutoConfig.register(config.model_type, config, exist_ok=True)
        for name, cls in ROUTED_MODELS[model_type].items():
            auto[name].register(config, cls, exist_ok=True)


__all__ = ["MODEL_CLASSES", "model_class", "register_auto_classes"]
