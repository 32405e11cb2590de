"""Model families: where attention heads live in each family's tensors and config, with no variant knowledge.

`FAMILIES` is the explicit list of adapters; `family_for` finds the one for a config's `model_type`, including the
model types of hf-gqa's forms of a family (`llama_wgqa`, `vit_routed`, ...).
"""

from collections.abc import Mapping

from ..errors import UnsupportedModelError
from .base import FORM_NAMES, AttentionBlock, Family, HeadSlice, PerHeadModules, Regroup
from .decoders import NativeGQA
from .gpt2 import GPT2
from .gpt_neox import GPTNeoX
from .t5 import T5
from .vit import ViT

FAMILIES: tuple[Family, ...] = (T5(), NativeGQA(), GPT2(), GPTNeoX(), ViT())


def _index() -> tuple[dict[str, Family], dict[str, tuple[Family, str]]]:
    sources: dict[str, Family] = {}
    forms: dict[str, tuple[Family, str]] = {}
    for family in FAMILIES:
        for model_type in family.source_model_types:
            if model_type in sources:
                raise ValueError(f"model_type {model_type!r} is handled by {sources[model_type].name} already")
            sources[model_type] = family
        for model_type, form in getattr(family, "form_model_types", dict)().items():
            forms[model_type] = (family, form)
    return sources, forms


SOURCE_MODEL_TYPES, FORM_MODEL_TYPES = _index()


def family_for(config: Mapping) -> tuple[Family, str | None]:
    """The adapter of a config's `model_type`, and the form when the model type is one of hf-gqa's forms."""
    model_type = config.get("model_type")
    if model_type in SOURCE_MODEL_TYPES:
        return SOURCE_MODEL_TYPES[model_type], None
    if model_type in FORM_MODEL_TYPES:
        return FORM_MODEL_TYPES[model_type]
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported; supported: " + ", ".join(sorted(SOURCE_MODEL_TYPES))
    )


__all__ = [
    "FAMILIES",
    "FORM_MODEL_TYPES",
    "FORM_NAMES",
    "SOURCE_MODEL_TYPES",
    "AttentionBlock",
    "Family",
    "HeadSlice",
    "PerHeadModules",
    "Regroup",
    "family_for",
]
