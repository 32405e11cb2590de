"""hf-gqa: convert multi-head-attention checkpoints to grouped-query attention, and uptrain them.

`import hf_gqa` registers the `t5_gqa`, `gpt2_gqa` and WGQA training-form (`<family>_wgqa`) config and model
classes with transformers' Auto classes.
"""

__version__ = "0.1.0"

from . import architectures, models, variants  # noqa: F401,E402  (registration)
from .conversion import (  # noqa: E402
    ConversionPlan,
    convert,
    convert_model,
    convert_state_dict,
    load_source,
    plan_conversion,
    save_converted,
)
from .errors import HfGqaError  # noqa: E402
from .fold import fold, fold_to_folder  # noqa: E402
from .grouping import regroup_heads  # noqa: E402
from .modeling.configuration_gpt2_gqa import GPT2GQAConfig  # noqa: E402
from .modeling.configuration_t5_gqa import T5GQAConfig  # noqa: E402
from .modeling.modeling_gpt2_gqa import GPT2GQALMHeadModel, GPT2GQAModel  # noqa: E402
from .modeling.modeling_t5_gqa import T5GQAEncoderModel, T5GQAForConditionalGeneration, T5GQAModel  # noqa: E402
from .modeling.weighted_kv import HeadMixer, WeightedKV  # noqa: E402
from .registry import list_model_types, list_variants  # noqa: E402
from .spec import GQASpec  # noqa: E402

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
