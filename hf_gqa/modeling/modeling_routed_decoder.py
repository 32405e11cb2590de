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
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.auto import modeling_auto

from .configuration_routed_decoder import ROUTED_CONFIGS, SUFFIX, routed_class_name
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

    RoutedModel.config_class = config_class
    RoutedModel.__name__ = RoutedModel.__qualname__ = routed_class_name(base.__name__)
    RoutedModel.__module__ = __name__
    RoutedModel.__doc__ = f"[`{base.__name__}`] with routed self-attention (`self_attn.routing`, see `routing.py`)."
    return RoutedModel


def _stock_class(names: dict, model_type: str) -> type:
    import transformers

    return getattr(transformers, names[model_type])


# model_type of the stock family -> {"AutoModel": class, "AutoModelForCausalLM": class}; each class is also a global
# of this module, so an `auto_map` entry such as `modeling_routed_decoder.LlamaRoutedForCausalLM` resolves.
ROUTED_MODELS: dict[str, dict[str, type]] = {}
for _model_type, _config_class in ROUTED_CONFIGS.items():
    ROUTED_MODELS[_model_type] = {}
    for _auto, _names in (
        ("AutoModel", modeling_auto.MODEL_MAPPING_NAMES),
        ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    ):
        _cls = _routed_model_class(_stock_class(_names, _model_type), _config_class)
        _cls.register_for_auto_class(_auto)
        ROUTED_MODELS[_model_type][_auto] = _cls
        globals()[_cls.__name__] = _cls
    _mapping = get_checkpoint_conversion_mapping(_model_type)
    if _mapping:
        register_checkpoint_conversion_mapping(f"{_model_type}{SUFFIX}", _mapping, overwrite=True)
del _model_type, _config_class, _auto, _names, _cls, _mapping

__all__ = ["ROUTED_MODELS", *(cls.__name__ for models in ROUTED_MODELS.values() for cls in models.values())]
