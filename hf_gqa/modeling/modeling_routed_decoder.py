# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Decoder-only families with routed attention: stock models whose self-attention goes through `routing.py`.

Ships with every routed checkpoint (remote code): imports only `torch`, `transformers` and sibling files.

For each family of `configuration_routed_decoder.ROUTED_FAMILIES` this module defines `<Family>RoutedModel` and
`<Family>RoutedForCausalLM`: the stock classes, whose constructor runs unchanged, after which every `self_attn` gets a
[`HeadRouting`] (`self_attn.routing`) and, for the GQKVA family, `q_proj`/`o_proj` sized for its query heads and
attention heads. The attention implementation is `hf_gqa_routed` (registered with transformers' attention and mask
interfaces on import; the model keeps it whatever `attn_implementation` asks). Projections, RoPE, q/k norms, the KV
cache (`num_key_value_heads` heads) and generation are upstream code.
"""

import torch
from torch import nn

from .configuration_routed_decoder import ROUTED_CONFIGS, SUFFIX, TAG
from .family_forms import form_model_classes
from .routing import ATTENTION_NAME, HeadRouting, register_attention

register_attention()


def _use_routing(model: nn.Module, config) -> None:
    """Give every self-attention of the stock `model` its routing (and GQKVA-sized q_proj/o_proj)."""
    spec = config.routing("self")
    attentions = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not attentions:
        raise ValueError(f"{type(model).__name__} has no `self_attn` modules to route")
    for attention in attentions:
        routing = HeadRouting(spec, device=attention.q_proj.weight.device)
        if routing.mode == "pairs":
            q, o = attention.q_proj, attention.o_proj
            head_dim = q.out_features // routing.heads
            kwargs = {"device": q.weight.device, "dtype": q.weight.dtype}
            attention.q_proj = nn.Linear(q.in_features, routing.q_heads * head_dim, bias=q.bias is not None, **kwargs)
            attention.o_proj = nn.Linear(
                routing.out_heads * head_dim, o.out_features, bias=o.bias is not None, **kwargs
            )
            model._init_weights(attention.q_proj)
            model._init_weights(attention.o_proj)
        attention.routing = routing
    config._attn_implementation_internal = ATTENTION_NAME


def _routed_model_class(base: type, config_class: type) -> type:
    class RoutedModel(base):
        def __init__(self, config):
            super().__init__(config)
            _use_routing(self, config)

        def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs):
            return ATTENTION_NAME  # the routing is the attention: no other implementation computes it

        def _init_weights(self, module):
            super()._init_weights(module)
            if isinstance(module, HeadRouting):
                with torch.no_grad():
                    module.reset_state()

    RoutedModel.__doc__ = f"[`{base.__name__}`] with routed self-attention (`self_attn.routing`, see `routing.py`)."
    return RoutedModel


# model_type of the stock family -> {"AutoModel": class, "AutoModelForCausalLM": class}; each class is also a global
# of this module, so an `auto_map` entry such as `modeling_routed_decoder.LlamaRoutedForCausalLM` resolves.
ROUTED_MODELS = form_model_classes(ROUTED_CONFIGS, TAG, SUFFIX, _routed_model_class, globals())

__all__ = ["ROUTED_MODELS", *(cls.__name__ for models in ROUTED_MODELS.values() for cls in models.values())]
