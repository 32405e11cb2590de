"""Register hf-gqa's config and model classes with transformers' Auto classes (done on `import hf_gqa`)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForTextEncoding,
)

from .modeling.configuration_gpt2_gqa import GPT2GQAConfig
from .modeling.configuration_routed import ROUTED_CONFIGS
from .modeling.configuration_t5_gqa import T5GQAConfig
from .modeling.configuration_wgqa_decoder import WGQA_CONFIGS
from .modeling.modeling_gpt2_gqa import GPT2GQALMHeadModel, GPT2GQAModel
from .modeling.modeling_routed import ROUTED_MODELS
from .modeling.modeling_t5_gqa import T5GQAEncoderModel, T5GQAForConditionalGeneration, T5GQAModel
from .modeling.modeling_wgqa_decoder import WGQA_MODELS

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (T5GQAModel, T5GQAForConditionalGeneration, T5GQAEncoderModel, GPT2GQAModel, GPT2GQALMHeadModel)
}

AutoConfig.register(T5GQAConfig.model_type, T5GQAConfig, exist_ok=True)
AutoModel.register(T5GQAConfig, T5GQAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(T5GQAConfig, T5GQAForConditionalGeneration, exist_ok=True)
AutoModelForTextEncoding.register(T5GQAConfig, T5GQAEncoderModel, exist_ok=True)

AutoConfig.register(GPT2GQAConfig.model_type, GPT2GQAConfig, exist_ok=True)
AutoModel.register(GPT2GQAConfig, GPT2GQAModel, exist_ok=True)
AutoModelForCausalLM.register(GPT2GQAConfig, GPT2GQALMHeadModel, exist_ok=True)

# The WGQA training form of the decoder-only families (`llama_wgqa`, `qwen2_wgqa`, ...).
_AUTO = {
    "AutoModel": AutoModel,
    "AutoModelForCausalLM": AutoModelForCausalLM,
    "AutoModelForImageClassification": AutoModelForImageClassification,
}
for _model_type, _config in WGQA_CONFIGS.items():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _name, _cls in WGQA_MODELS[_model_type].items():
        _AUTO[_name].register(_config, _cls, exist_ok=True)
        MODEL_CLASSES[_cls.__name__] = _cls
# The routed-attention form of the decoder-only families and ViT (`llama_routed`, `vit_routed`, ...).
for _model_type, _config in ROUTED_CONFIGS.items():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _name, _cls in ROUTED_MODELS[_model_type].items():
        _AUTO[_name].register(_config, _cls, exist_ok=True)
        MODEL_CLASSES[_cls.__name__] = _cls
del _model_type, _config, _name, _cls

__all__ = ["MODEL_CLASSES"]
