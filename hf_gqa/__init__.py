"""hf-gqa: convert multi-head-attention checkpoints to grouped-query attention, and uptrain them.

`import hf_gqa` registers the `t5_gqa`, `gpt2_gqa`, WGQA training-form (`<family>_wgqa`) and routed-attention
(`<family>_routed`) config and model classes with transformers' Auto classes. This module is the public API only:
nothing inside the package imports it (the layers are described in CONTRIBUTING.md).
"""

from ._version import __version__
from .conversion import (
    ConversionPlan,
    convert,
    convert_model,
    convert_state_dict,
    fold,
    fold_to_folder,
    load_source,
    plan_conversion,
)
from .core.grouping import regroup_heads
from .errors import HfGqaError
from .io.auto import register_auto_classes
from .io.output import save_converted
from .modeling.configuration_gpt2_gqa import GPT2GQAConfig
from .modeling.configuration_t5_gqa import T5GQAConfig
from .modeling.modeling_gpt2_gqa import GPT2GQALMHeadModel, GPT2GQAModel
from .modeling.modeling_t5_gqa import T5GQAEncoderModel, T5GQAForConditionalGeneration, T5GQAModel
from .modeling.weighted_kv import HeadMixer, WeightedKV
from .registry import list_model_types, list_variants
from .spec import GQASpec

register_auto_classes()

__all__ = [
    "ConversionPlan",
    "GPT2GQAConfig",
    "GPT2GQALMHeadModel",
    "GPT2GQAModel",
    "GQASpec",
    "HeadMixer",
    "HfGqaError",
    "T5GQAConfig",
    "T5GQAEncoderModel",
    "T5GQAForConditionalGeneration",
    "T5GQAModel",
    "WeightedKV",
    "__version__",
    "convert",
    "convert_model",
    "convert_state_dict",
    "fold",
    "fold_to_folder",
    "list_model_types",
    "list_variants",
    "load_source",
    "plan_conversion",
    "regroup_heads",
    "save_converted",
]
