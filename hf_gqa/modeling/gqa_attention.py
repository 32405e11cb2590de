# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Attention functions for grouped key/value heads with an additive position bias (T5).

Ships with converted checkpoints (remote code): imports only `torch` and `transformers`.

`query` is `(batch, H, q_len, d)`; `key`/`value` are `(batch, G, kv_len, d)` with `H % G == 0`, query head `h`
reading key/value head `h // (H // G)`. Neither function copies K/V into H heads except the eager one, which exists
for `output_attentions=True`.
"""

import torch
from transformers.integrations.sdpa_attention import create_position_bias_mask, repeat_kv
from transformers.models.t5.modeling_t5 import eager_attention_forward as t5_eager_attention_forward


def eager_gqa_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """T5's eager attention after repeating the G key/value heads to H (returns the attention weights)."""
    n_rep = query.shape[1] // key.shape[1]
    return t5_eager_attention_forward(
        module, query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), attention_mask, **kwargs
    )


def sdpa_gqa_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
):
    """`scaled_dot_product_attention` over G key/value heads, T5's position bias folded into a float mask.

    - one query token (cached decoding): the H query heads are folded into G groups of `H // G` rows, so attention
      runs on the G cached heads as they are, with any kernel on any device;
    - several query tokens: `enable_gqa=True`, which reads the G heads in place (transformers' own SDPA path instead
      copies K/V to H heads whenever a mask is present, which T5's bias always is).
    """
    if kwargs.get("output_attentions"):
        return eager_gqa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_bias=position_bias
        )
    batch, num_heads, q_len, head_dim = query.shape
    n_rep = num_heads // key.shape[1]
    is_causal = bool(q_len > 1 and attention_mask is None and getattr(module, "is_causal", False))
    if is_causal and key.shape[2] > q_len:
        # Prefill into an empty static cache, as transformers' SDPA path does: the keys past q_len are unused slots.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        if position_bias is not None:
            position_bias = position_bias[..., :q_len]
    if position_bias is not None:
        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False

    if n_rep > 1 and q_len == 1:
        # (b, H, 1, d) -> (b, G, n_rep, d); a per-head mask (b, H, 1, k) -> (b, G, n_rep, k); a mask shared by all
        # heads (b, 1, 1, k) broadcasts as it is.
        query = query.reshape(batch, -1, n_rep, head_dim)
        if attention_mask is not None and attention_mask.shape[1] == num_heads:
            attention_mask = attention_mask.reshape(attention_mask.shape[0], -1, n_rep, attention_mask.shape[-1])
        sdpa_kwargs = {}
    else:
        sdpa_kwargs = {"enable_gqa": True} if n_rep > 1 else {}

    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        **sdpa_kwargs,
    )
    out = out.reshape(out.shape[0], num_heads, q_len, value.shape[-1])
    return out.transpose(1, 2).contiguous(), None


__all__ = ["eager_gqa_attention_forward", "sdpa_gqa_attention_forward"]
