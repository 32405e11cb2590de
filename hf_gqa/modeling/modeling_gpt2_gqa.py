# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""GPT-2 with grouped-query attention: stock transformers GPT-2 whose self-attention holds G key/value heads.

Ships with every converted checkpoint (remote code): imports only `torch`, `transformers` and sibling files.

The model classes are the stock GPT-2 classes; after the stock constructor has run, each self-attention module is
swapped for a [`GPT2GQAAttention`] whose fused `c_attn` is `(H + 2G) * head_dim` wide ([Q | K | V] columns).
The blocks, the embeddings, the masks, the caches and generation are all upstream code. The KV cache stores the G heads
it is given; the heads are expanded only inside attention: by transformers' SDPA function (`enable_gqa`, or queries
folded into groups when decoding one token; it repeats K/V only for a multi-token query with a padding mask, as for
Llama), by any other registered attention function that reads `num_key_value_groups`, or by `repeat_kv` in eager.
"""

from collections.abc import Callable

import torch
from transformers import GenerationMixin, GPT2LMHeadModel, GPT2Model
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward as gpt2_eager_attention_forward
from transformers.pytorch_utils import Conv1D

from .configuration_gpt2_gqa import GPT2GQAConfig


def eager_gqa_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """GPT-2's eager attention after repeating the G key/value heads to H (returns the attention weights)."""
    n_rep = query.shape[1] // key.shape[1]
    return gpt2_eager_attention_forward(
        module, query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attention_mask, **kwargs
    )


class GPT2GQAAttention(GPT2Attention):
    """[`GPT2Attention`] (self-attention) with `num_key_value_heads` key/value heads.

    `c_attn` is `Conv1D(nf=(H + 2G) * head_dim, nx=n_embd)`, its columns [Q (H*d) | K (G*d) | V (G*d)]; query head h
    reads key/value head h // (H // G).
    """

    def __init__(self, config, is_cross_attention=False, layer_idx=None, num_key_value_heads: int | None = None):
        if is_cross_attention:
            raise ValueError("GPT2GQAAttention is self-attention only: GPT-2 cross-attention stays multi-head")
        super().__init__(config, is_cross_attention=False, layer_idx=layer_idx)
        self.num_key_value_heads = (
            num_key_value_heads or getattr(config, "num_key_value_heads", None) or self.num_heads
        )
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide n_head={self.num_heads}")
        # Query heads per key/value head, read by transformers' attention functions (sdpa, flash, flex).
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        kv_dim = self.num_key_value_heads * self.head_dim
        self.qkv_split_sizes = [self.embed_dim, kv_dim, kv_dim]
        if self.num_key_value_heads != self.num_heads:
            self.c_attn = Conv1D(self.embed_dim + 2 * kv_dim, self.embed_dim)

    # Copied from transformers 5.24 `GPT2Attention.forward`; every change is marked `hf-gqa:`.
    # tests/families/test_gpt2.py::test_forward_copy_matches_upstream fails when upstream changes.
    def forward(
        self,
        hidden_states: tuple[torch.Tensor] | None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[torch.Tensor | tuple[torch.Tensor], ...]:
        is_cross_attention = encoder_hidden_states is not None
        if cache is not None:
            if isinstance(cache, EncoderDecoderCache):
                is_updated = cache.is_updated.get(self.layer_idx)
                if is_cross_attention:
                    # after the first generated id, we can subsequently re-use all key/value_layer from cache
                    curr_cache = cache.cross_attention_cache
                else:
                    curr_cache = cache.self_attention_cache
            else:
                curr_cache = cache

        if is_cross_attention:
            if not hasattr(self, "q_attn"):
                raise ValueError(
                    "If class is used as cross attention, the weights `q_attn` have to be defined. "
                    "Please make sure to instantiate class with `GPT2Attention(..., is_cross_attention=True)`."
                )
            query_states = self.q_attn(hidden_states)
            attention_mask = encoder_attention_mask

            # Try to get key/value states from cache if possible
            if cache is not None and is_updated:
                key_states = curr_cache.layers[self.layer_idx].keys
                value_states = curr_cache.layers[self.layer_idx].values
            else:
                key_states, value_states = self.c_attn(encoder_hidden_states).split(self.split_size, dim=2)
                shape_kv = (*key_states.shape[:-1], -1, self.head_dim)
                key_states = key_states.view(shape_kv).transpose(1, 2)
                value_states = value_states.view(shape_kv).transpose(1, 2)
        else:
            # hf-gqa: [Q (H*d) | K (G*d) | V (G*d)]; the `-1` heads below give (batch, G, seq, d) keys and values, so
            # the cache stores G heads.
            query_states, key_states, value_states = self.c_attn(hidden_states).split(self.qkv_split_sizes, dim=2)
            shape_kv = (*key_states.shape[:-1], -1, self.head_dim)
            key_states = key_states.view(shape_kv).transpose(1, 2)
            value_states = value_states.view(shape_kv).transpose(1, 2)

        shape_q = (*query_states.shape[:-1], -1, self.head_dim)
        query_states = query_states.view(shape_q).transpose(1, 2)

        if (cache is not None and not is_cross_attention) or (
            cache is not None and is_cross_attention and not is_updated
        ):
            key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
            # set flag that curr layer for cross-attn is already updated so we can re-use in subsequent calls
            if is_cross_attention:
                cache.is_updated[self.layer_idx] = True

        using_eager = self.config._attn_implementation == "eager"
        # hf-gqa: eager repeats the G key/value heads to H before GPT-2's eager math; every other implementation
        # (sdpa, flash, flex, ...) is transformers' own and reads `self.num_key_value_groups`.
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_gqa_attention_forward
        )

        if using_eager and self.reorder_and_upcast_attn:
            # hf-gqa: the upcast path reads H key/value heads.
            attn_output, attn_weights = self._upcast_and_reordered_attn(
                query_states,
                repeat_kv(key_states, self.num_key_value_groups),
                repeat_kv(value_states, self.num_key_value_groups),
                attention_mask,
            )
        else:
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                attention_mask,
                dropout=self.attn_dropout.p if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )

        attn_output = attn_output.reshape(*attn_output.shape[:-2], -1).contiguous()
        attn_output = self.c_proj(attn_output)
        attn_output = self.resid_dropout(attn_output)

        return attn_output, attn_weights


def _use_gqa_attention(model: torch.nn.Module, config: GPT2GQAConfig) -> None:
    """Swap the self-attention of every block of the stock GPT-2 `model` for a [`GPT2GQAAttention`]."""
    base = getattr(model, "transformer", model)
    for block in base.h:
        old = block.attn
        new = GPT2GQAAttention(old.config, layer_idx=old.layer_idx, num_key_value_heads=config.kv_heads("self"))
        for module in new.modules():
            model._init_weights(module)
        block.attn = new


class _GPT2GQAInit:
    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers treats every class outside its package as custom code, and `initialize_weights` (missing
        # weights in `from_pretrained`, `init_weights` after building on the meta device) then counts a module with
        # no tensors of its own (`GPT2Attention`, `GPT2MLP`) as initialised: GPT-2's scaled rule for their residual
        # `c_proj` never ran. That shortcut protects custom `_init_weights` that overwrite loaded tensors; GPT-2's
        # draws through `transformers.initialization`, which leaves them alone.
        return False


class GPT2GQAModel(_GPT2GQAInit, GPT2Model):
    config: GPT2GQAConfig

    def __init__(self, config: GPT2GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


class GPT2GQALMHeadModel(_GPT2GQAInit, GPT2LMHeadModel, GenerationMixin):
    config: GPT2GQAConfig

    def __init__(self, config: GPT2GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


GPT2GQAModel.register_for_auto_class("AutoModel")
GPT2GQALMHeadModel.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["GPT2GQAAttention", "GPT2GQALMHeadModel", "GPT2GQAModel", "eager_gqa_attention_forward"]
