# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Configurations of families with routed attention (`model_type="<family>_routed"`: decoder-only LLMs and ViT):
KDGQA, DGQA, PGQA and the GQKVA family (see `routing.py`).

Ships with every routed checkpoint (remote code): imports only `transformers`, `huggingface_hub` and sibling files.

For each supported family this module defines `<Family>RoutedConfig`, a subclass of the family's own config whose
`num_key_value_heads` is the key/value heads the cache holds, plus:

    gqa_routing (`dict[str, dict]`): `{"self": spec}`, the routing of every self-attention layer: `mode` (`kdgqa`,
        `dgqa`, `pgqa` or `pairs`), `heads` (the source's query heads), `q_heads`, `kv_heads`, and the mode's options
        (`pairs`, `statistic`: `sample`, `batch` or `forward`, `allocation`, `window`, `alpha`, `evolution`,
        `noise_in_eval`).

A routed checkpoint is never written under a stock `model_type`: stock transformers would load it silently wrong.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .family_forms import form_auto_map, form_class_name, name_config_class
from .routing import MODES

# Families whose attention reads q_proj/k_proj/v_proj/o_proj and calls transformers' attention interface.
ROUTED_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "granite",
    "starcoder2",
    "olmo",
    "helium",
    "smollm3",
    "vit",  # the architecture both papers experimented on (image classification; no KV cache)
)
SUFFIX = "_routed"


TAG = "Routed"


def routed_class_name(stock_name: str) -> str:
    """`LlamaForCausalLM` -> `LlamaRoutedForCausalLM`, `LlamaModel` -> `LlamaRoutedModel`, `LlamaConfig` -> ..."""
    return form_class_name(stock_name, TAG)


def routed_auto_map(model_type: str) -> dict[str, str]:
    """The `auto_map` of a routed checkpoint of the stock `model_type`: every Auto class resolves."""
    return form_auto_map(model_type, TAG, "configuration_routed", "modeling_routed")


def _routed_config_class(model_type: str) -> type:
    base = CONFIG_MAPPING[model_type]

    @strict
    class RoutedConfig(base):
        num_key_value_heads: int | None = None  # ViT's config has none; the decoder families' keep theirs
        gqa_routing: dict | None = None

        def __post_init__(self, **kwargs):
            if self.gqa_routing is None:  # a bare config: uniform GQA through the routed attention (PGQA, no noise)
                heads = self.num_attention_heads
                kv = self.num_key_value_heads or heads
                self.gqa_routing = {"self": {"mode": "pgqa", "heads": heads, "q_heads": heads, "kv_heads": kv}}
            if getattr(self, "auto_map", None) is None:
                self.auto_map = routed_auto_map(model_type)
            self._check_routing()
            super().__post_init__(**kwargs)

        def validate_architecture(self):
            """Part of `@strict` validation: the family's checks, then the routing."""
            super().validate_architecture()
            self._check_routing()

        def _check_routing(self):
            unknown = set(self.gqa_routing) - {"self"}
            if unknown:
                raise ValueError(f"`gqa_routing`: unknown attention kind {sorted(unknown)[0]!r}; use 'self'")
            spec = self.gqa_routing["self"]
            if spec.get("mode") not in MODES:
                raise ValueError(f"`gqa_routing['self']['mode']` must be one of {', '.join(MODES)}")
            kv = self.num_key_value_heads or self.num_attention_heads
            if spec.get("kv_heads") != kv or spec.get("heads") != self.num_attention_heads:
                raise ValueError(
                    f"`gqa_routing['self']` routes {spec.get('heads')} heads to {spec.get('kv_heads')} key/value "
                    f"heads; the config has {self.num_attention_heads} and num_key_value_heads={kv}"
                )

        def routing(self, kind: str = "self") -> dict | None:
            return self.gqa_routing.get(kind)

    doc = f"A [`{base.__name__}`] with routed attention (KDGQA, DGQA, PGQA, GQKVA): see the module docstring."
    return name_config_class(RoutedConfig, base, TAG, SUFFIX, globals(), doc)


# model_type of the stock family -> its routed config class; each class is also a global of this module, so an
# `auto_map` entry such as `configuration_routed.LlamaRoutedConfig` resolves.
ROUTED_CONFIGS: dict[str, type] = {model_type: _routed_config_class(model_type) for model_type in ROUTED_FAMILIES}

__all__ = [
    "ROUTED_CONFIGS",
    "ROUTED_FAMILIES",
    "SUFFIX",
    "TAG",
    "routed_auto_map",
    "routed_class_name",
    *(cls.__name__ for cls in ROUTED_CONFIGS.values()),
]
