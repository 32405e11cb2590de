# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the WGQA training form of decoder-only families (`model_type="<family>_wgqa"`).

Ships with every WGQA training-form checkpoint (remote code): imports only `transformers`, `huggingface_hub` and
sibling files.

For each supported family (Llama, Mistral, Qwen2, Gemma, ...) this module defines `<Family>WGQAConfig`, a subclass of
the family's own config whose `num_key_value_heads` is the G heads the attention reads, plus:

    gqa_kv_weights (`str`): how each group's K/V heads are combined: the shape of the learned weights (`scalar`,
        `vector_out` or `vector_in`), or `mean`, no weights (the plain mean of the group's heads); see
        `weighted_kv.py`.
    gqa_kv_source_heads (`dict[str, int]`): `{"self": C}`, the K/V heads the weighted projections keep (each group of
        `C // G` contiguous heads is combined into one). Defaults to `num_attention_heads`.

The training form is never written under a stock `model_type`: `hf_gqa.fold` (or `hf-gqa fold`) turns it into a stock
checkpoint of the family with `num_key_value_heads=G`.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .family_forms import form_auto_map, form_class_name, name_config_class
from .family_forms import stock_class_name as form_stock_class_name
from .weighted_kv import WEIGHT_SHAPES

# The families with native `num_key_value_heads` whose attention reads separate `k_proj`/`v_proj` modules. (Phi-3
# fuses them into `qkv_proj`.)
WGQA_FAMILIES = (
    "llama",
    "mistral",
    "ministral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "olmo",
    "olmo2",
    "olmoe",
    "granite",
    "granitemoe",
    "stablelm",
    "starcoder2",
    "cohere",
    "helium",
    "smollm3",
    "glm",
    "exaone4",
)
SUFFIX = "_wgqa"


TAG = "WGQA"


def wgqa_class_name(stock_name: str) -> str:
    """`LlamaForCausalLM` -> `LlamaWGQAForCausalLM`, `LlamaModel` -> `LlamaWGQAModel`, `LlamaConfig` -> ..."""
    return form_class_name(stock_name, TAG)


def stock_class_name(wgqa_name: str) -> str:
    """The inverse of `wgqa_class_name`."""
    return form_stock_class_name(wgqa_name, TAG)


def wgqa_auto_map(model_type: str) -> dict[str, str]:
    """The `auto_map` of a training-form checkpoint of the stock `model_type`: every Auto class resolves."""
    return form_auto_map(model_type, TAG, "configuration_wgqa_decoder", "modeling_wgqa_decoder")


def _wgqa_config_class(model_type: str) -> type:
    base = CONFIG_MAPPING[model_type]

    @strict
    class WGQAConfig(base):
        gqa_kv_weights: str = "scalar"
        gqa_kv_source_heads: dict[str, int] | None = None

        def __post_init__(self, **kwargs):
            if self.gqa_kv_source_heads is None:
                self.gqa_kv_source_heads = {"self": self.num_attention_heads}
            if getattr(self, "auto_map", None) is None:
                self.auto_map = wgqa_auto_map(model_type)
            self._check_weights()
            super().__post_init__(**kwargs)

        def validate_architecture(self):
            """Part of `@strict` validation: the family's checks, then the weighted K/V heads."""
            super().validate_architecture()
            self._check_weights()

        def _check_weights(self):
            if self.gqa_kv_weights not in WEIGHT_SHAPES:
                raise ValueError(f"`gqa_kv_weights`={self.gqa_kv_weights!r} must be one of {', '.join(WEIGHT_SHAPES)}")
            unknown = set(self.gqa_kv_source_heads) - {"self"}
            if unknown:
                raise ValueError(f"`gqa_kv_source_heads`: unknown attention kind {sorted(unknown)[0]!r}; use 'self'")
            heads, groups = self.gqa_kv_source_heads["self"], self.num_key_value_heads or self.num_attention_heads
            if heads < 1 or self.num_attention_heads % heads or heads % groups:
                raise ValueError(
                    f"`gqa_kv_source_heads`['self']={heads} must divide num_attention_heads="
                    f"{self.num_attention_heads} and be a multiple of num_key_value_heads={groups}"
                )

        def kv_source_heads(self, kind: str = "self") -> int | None:
            """The K/V heads the weighted projections keep (decoders have one attention kind, `self`)."""
            return self.gqa_kv_source_heads.get(kind)

    doc = (
        f"A [`{base.__name__}`] in the WGQA training form: `k_proj`/`v_proj` keep `gqa_kv_source_heads['self']` heads "
        "and learn how each group of them becomes one of the `num_key_value_heads` heads. See the module docstring."
    )
    return name_config_class(WGQAConfig, base, TAG, SUFFIX, globals(), doc)


# model_type of the stock family -> its training-form config class; each class is also a global of this module, so
# an `auto_map` entry such as `configuration_wgqa_decoder.LlamaWGQAConfig` resolves.
WGQA_CONFIGS: dict[str, type] = {model_type: _wgqa_config_class(model_type) for model_type in WGQA_FAMILIES}

__all__ = [
    "SUFFIX",
    "TAG",
    "WGQA_CONFIGS",
    "WGQA_FAMILIES",
    "stock_class_name",
    "wgqa_auto_map",
    "wgqa_class_name",
    *(cls.__name__ for cls in WGQA_CONFIGS.values()),
]
