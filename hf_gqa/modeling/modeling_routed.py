# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Families with routed attention (decoder-only LLMs and ViT): stock models whose attention goes through `routing.py`.

Ships with every routed checkpoint (remote code): imports only `torch`, `transformers` and sibling files.

For each family of `configuration_routed.ROUTED_FAMILIES` this module defines `<Family>RoutedModel` and
`<Family>RoutedForCausalLM` (ViT: `ViTRoutedForImageClassification`): the stock classes, whose constructor runs
unchanged, after which every attention module gets a [`HeadRouting`] (`.routing`) and projections sized for its query,
key/value and attention heads. The attention implementation is `hf_gqa_routed` (registered with transformers' attention
and mask interfaces on import; the model keeps it whatever `attn_implementation` asks). Projections, RoPE, q/k norms,
the KV cache (`num_key_value_heads` heads) and generation are upstream code.
"""

import torch
from torch import nn
from transformers import initialization as init

from .configuration_routed import ROUTED_CONFIGS, SUFFIX, TAG
from .family_forms import form_model_classes, initialize_form
from .routing import ATTENTION_NAME, HeadRouting, register_attention, uniform_counts

register_attention()


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a stock model: those with linear `q_proj`, `k_proj`, `v_proj` and `o_proj`."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [m for m in model.modules() if all(isinstance(getattr(m, n, None), nn.Linear) for n in names)]


def _resized(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    if (linear.in_features, linear.out_features) == (in_features, out_features):
        return linear
    kwargs = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    return nn.Linear(in_features, out_features, bias=linear.bias is not None, **kwargs)


def _use_routing(model: nn.Module, config) -> None:
    """Give every attention module of the stock `model` its routing, and projections sized for its query, key/value
    and attention heads (the family's own constructor sized them for H heads, or for its `num_key_value_heads`)."""
    spec = config.routing("self")
    attentions = _attention_modules(model)
    if not attentions:
        raise ValueError(f"{type(model).__name__} has no attention modules with q_proj/k_proj/v_proj/o_proj to route")
    for attention in attentions:
        routing = HeadRouting(spec, device=attention.q_proj.weight.device)
        head_dim = attention.q_proj.out_features // routing.heads
        hidden = attention.q_proj.in_features
        sizes = {
            "q_proj": (hidden, routing.q_heads * head_dim),
            "k_proj": (hidden, routing.kv_heads * head_dim),
            "v_proj": (hidden, routing.kv_heads * head_dim),
            "o_proj": (routing.out_heads * head_dim, attention.o_proj.out_features),
        }
        for name, (n_in, n_out) in sizes.items():
            old = getattr(attention, name)
            new = _resized(old, n_in, n_out)
            if new is not old:
                model._init_weights(new)
                setattr(attention, name, new)
        attention.routing = routing
    config._attn_implementation_internal = ATTENTION_NAME


@torch.no_grad()
def _init_routing(module: nn.Module) -> None:
    """DGQA's routing as after conversion: the uniform allocation, empty statistics. Through
    `transformers.initialization`: buffers loaded from a checkpoint stay as loaded."""
    if isinstance(module, HeadRouting) and module.mode == "dgqa":
        init.copy_(module.allocation, uniform_counts(module.heads, module.kv_heads))
        for buffer in (module.norm_sum, module.norm_count, module.norm_cache, module.cache_filled):
            init.zeros_(buffer)


def _routed_model_class(base: type, config_class: type) -> type:
    class RoutedModel(base):
        def __init__(self, config):
            super().__init__(config)
            _use_routing(self, config)

        def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs):
            return ATTENTION_NAME  # the routing is the attention: no other implementation computes it

        def _init_weights(self, module):
            super()._init_weights(module)
            _init_routing(module)

        @torch.no_grad()
        @init.guard_torch_init_functions()
        def initialize_weights(self):
            # Missing weights in `from_pretrained`, `init_weights` after building on the meta device.
            initialize_form(self, _init_routing)

    RoutedModel.__doc__ = f"[`{base.__name__}`] with routed self-attention (`self_attn.routing`, see `routing.py`)."
    return RoutedModel


# model_type of the stock family -> {"AutoModel": class, "AutoModelForCausalLM": class}; each class is also a global
# of this module, so an `auto_map` entry such as `modeling_routed.LlamaRoutedForCausalLM` resolves.
ROUTED_MODELS = form_model_classes(ROUTED_CONFIGS, TAG, SUFFIX, _routed_model_class, globals())

__all__ = ["ROUTED_MODELS", *(cls.__name__ for models in ROUTED_MODELS.values() for cls in models.values())]
