"""hf-gqa's config and model classes (`hf_gqa/modeling`) and their registration with transformers' Auto classes,
which `import hf_gqa` calls (`register_auto_classes`, idempotent)."""

import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTextEncoding,
    AutoModelForTokenClassification,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import HfGqaError
from ..modeling.configuration_gpt2_gqa import GPT2GQAConfig
from ..modeling.configuration_routed import ROUTED_CONFIGS
from ..modeling.configuration_t5_gqa import T5GQAConfig
from ..modeling.configuration_wgqa_decoder import WGQA_CONFIGS
from ..modeling.modeling_gpt2_gqa import GPT2GQALMHeadModel, GPT2GQAModel
from ..modeling.modeling_routed import ROUTED_MODELS
from ..modeling.modeling_t5_gqa import (
    T5GQAEncoderModel,
    T5GQAForConditionalGeneration,
    T5GQAForQuestionAnswering,
    T5GQAForSequenceClassification,
    T5GQAForTokenClassification,
    T5GQAModel,
)
from ..modeling.modeling_wgqa_decoder import WGQA_MODELS

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        T5GQAModel,
        T5GQAForConditionalGeneration,
        T5GQAEncoderModel,
        T5GQAForSequenceClassification,
        T5GQAForTokenClassification,
        T5GQAForQuestionAnswering,
        GPT2GQAModel,
        GPT2GQALMHeadModel,
    )
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


# The Auto classes a source checkpoint may load through. When its config names no class (or none of its model type),
# the first of DEFAULT_AUTO_CLASSES its model type has: decoder-only -> causal LM, T5 -> seq2seq, ViT -> image
# classification.
AUTO_CLASSES = (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoModelForQuestionAnswering,
    AutoModelForTextEncoding,
    AutoModel,
)
DEFAULT_AUTO_CLASSES = (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForImageClassification, AutoModel)
# A class name transformers does not know (legacy, custom): the task its suffix names, the first suffix that matches.
_SUFFIXES = (
    ("ForCausalLM", AutoModelForCausalLM),
    ("LMHeadModel", AutoModelForCausalLM),
    ("ForConditionalGeneration", AutoModelForSeq2SeqLM),
    ("ForImageClassification", AutoModelForImageClassification),
    ("ForSequenceClassification", AutoModelForSequenceClassification),
    ("ForTokenClassification", AutoModelForTokenClassification),
    ("ForQuestionAnswering", AutoModelForQuestionAnswering),
    ("EncoderModel", AutoModelForTextEncoding),
    ("Model", AutoModel),
)


def _classes(auto, config_class) -> tuple[type, ...]:
    """The model classes `auto` gives for `config_class` (none when it has none for it)."""
    mapping = auto._model_mapping
    if config_class is None or config_class not in mapping:
        return ()
    classes = mapping[config_class]
    return tuple(classes) if isinstance(classes, (tuple, list)) else (classes,)


def source_auto_class(config: dict):
    """The Auto class that loads a checkpoint with this config dict: the one that has the class its `architectures`
    names for its model type; for a name transformers does not know, the task its suffix names; with no
    `architectures`, the model type's default (`DEFAULT_AUTO_CLASSES`)."""
    register_auto_classes()
    config_class = CONFIG_MAPPING[config["model_type"]] if config.get("model_type") in CONFIG_MAPPING else None
    available = [(auto, {c.__name__ for c in _classes(auto, config_class)}) for auto in AUTO_CLASSES]
    available = [(auto, names) for auto, names in available if names]
    for name in config.get("architectures") or ():
        for auto, names in available:
            if name in names:
                return auto
    for name in config.get("architectures") or ():
        auto = next((auto for suffix, auto in _SUFFIXES if name.endswith(suffix)), None)
        if auto is not None and any(a is auto for a, _ in available):
            return auto
    return next((auto for auto in DEFAULT_AUTO_CLASSES if any(a is auto for a, _ in available)), AutoModel)


def source_architectures(config: dict) -> list[str]:
    """The class names a checkpoint with this config dict loads as (what `source_auto_class` gives): its
    `architectures` where its model type has them, else the class its Auto class gives (see `source_auto_class`)."""
    auto = source_auto_class(config)
    config_class = CONFIG_MAPPING[config["model_type"]] if config.get("model_type") in CONFIG_MAPPING else None
    names = [c.__name__ for c in _classes(auto, config_class)]
    kept = [a for a in config.get("architectures") or () if a in names]
    return kept or names[:1] or list(config.get("architectures") or ())


def _register() -> None:
    AutoConfig.register(T5GQAConfig.model_type, T5GQAConfig, exist_ok=True)
    AutoModel.register(T5GQAConfig, T5GQAModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(T5GQAConfig, T5GQAForConditionalGeneration, exist_ok=True)
    AutoModelForTextEncoding.register(T5GQAConfig, T5GQAEncoderModel, exist_ok=True)
    AutoModelForSequenceClassification.register(T5GQAConfig, T5GQAForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(T5GQAConfig, T5GQAForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(T5GQAConfig, T5GQAForQuestionAnswering, exist_ok=True)

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


__all__ = [
    "AUTO_CLASSES",
    "DEFAULT_AUTO_CLASSES",
    "MODEL_CLASSES",
    "model_class",
    "register_auto_classes",
    "source_architectures",
    "source_auto_class",
]
