"""Register hf-gqa's config and model classes with transformers' Auto classes (done on `import hf_gqa`)."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoModelForTextEncoding

from .modeling.configuration_t5_gqa import T5GQAConfig
from .modeling.modeling_t5_gqa import T5GQAEncoderModel, T5GQAForConditionalGeneration, T5GQAModel

MODEL_CLASSES = {cls.__name__: cls for cls in (T5GQAModel, T5GQAForConditionalGeneration, T5GQAEncoderModel)}

AutoConfig.register(T5GQAConfig.model_type, T5GQAConfig, exist_ok=True)
AutoModel.register(T5GQAConfig, T5GQAModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(T5GQAConfig, T5GQAForConditionalGeneration, exist_ok=True)
AutoModelForTextEncoding.register(T5GQAConfig, T5GQAEncoderModel, exist_ok=True)

__all__ = ["MODEL_CLASSES"]
