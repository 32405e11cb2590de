# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""The WGQA training form of decoder-only families: stock models whose `k_proj`/`v_proj` are [`WeightedKV`].

Ships with every WGQA training-form checkpoint (remote code): imports only `torch`, `transformers` and sibling files.

For each family of `configuration_wgqa_decoder.WGQA_FAMILIES` this module defines `<Family>WGQAModel` and
`<Family>WGQAForCausalLM`: the stock classes, whose constructor runs unchanged, after which every
`self_attn.k_proj`/`v_proj` is swapped for a [`WeightedKV`] that keeps the original heads and outputs the
`num_key_value_heads` grouped heads. Attention, RoPE, q/k norms, caches and generation are upstream code: they read
G heads, so the KV cache holds G heads while training. `hf_gqa.fold` gives the stock model back.
"""

import torch
from torch import nn
from transformers import initialization as init

from .configuration_wgqa_decoder import SUFFIX, TAG, WGQA_CONFIGS
from .family_forms import form_model_classes, initialize_form
from .weighted_kv import HeadMixer, WeightedKV, declared_init


def _use_weighted_kv(model: nn.Module, config) -> None:
    """Swap the `k_proj`/`v_proj` of every self-attention of the stock `model` for [`WeightedKV`] projections."""
    heads, groups = config.kv_source_heads("self"), config.num_key_value_heads
    attentions = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not attentions:
        raise ValueError(f"{type(model).__name__} has no `self_attn` modules to weight")
    for attention in attentions:
        for name in ("k_proj", "v_proj"):
            old = getattr(attention, name)
            if not isinstance(old, nn.Linear) or old.out_features % groups:
                raise ValueError(f"{type(attention).__name__}.{name} is not a linear projection of {groups} heads")
            new = WeightedKV(
                old.in_features,
                heads,
                groups,
                old.out_features // groups,
                bias=old.bias is not None,
                weights=config.gqa_kv_weights,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
            model._init_weights(new)
            setattr(attention, name, new)


@torch.no_grad()
def _init_weighted_kv(model, module: nn.Module) -> None:
    """A [`WeightedKV`] as the family's `_init_weights` draws a linear projection, its [`HeadMixer`] at the initial
    value the conversion declared, else the mean. Through `transformers.initialization`: tensors loaded from a
    checkpoint stay as loaded."""
    if isinstance(module, WeightedKV):
        init.normal_(module.weight, mean=0.0, std=getattr(model.config, "initializer_range", None) or 0.02)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, HeadMixer):
        declared = declared_init(model.config)
        init.constant_(module.weight, module.init_value if declared is None else declared)


def _wgqa_model_class(base: type, config_class: type) -> type:
    class WGQAModel(base):
        def __init__(self, config):
            super().__init__(config)
            _use_weighted_kv(self, config)

        def _init_weights(self, module):
            super()._init_weights(module)
            _init_weighted_kv(self, module)

        @torch.no_grad()
        @init.guard_torch_init_functions()
        def initialize_weights(self):
            # Missing weights in `from_pretrained`, `init_weights` after building on the meta device, in the stock
            # order: with as many groups as heads the same seed draws what the stock family draws.
            initialize_form(self, lambda module: _init_weighted_kv(self, module))

    WGQAModel.__doc__ = (
        f"[`{base.__name__}`] in the WGQA training form: `self_attn.k_proj`/`v_proj` are [`WeightedKV`] projections."
    )
    return WGQAModel


# model_type of the stock family -> {"AutoModel": class, "AutoModelForCausalLM": class}; each class is also a global
# of this module, so an `auto_map` entry such as `modeling_wgqa_decoder.LlamaWGQAForCausalLM` resolves.
WGQA_MODELS = form_model_classes(WGQA_CONFIGS, TAG, SUFFIX, _wgqa_model_class, globals())

__all__ = ["WGQA_MODELS", *(cls.__name__ for models in WGQA_MODELS.values() for cls in models.values())]
