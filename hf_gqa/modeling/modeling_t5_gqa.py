# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""T5 with grouped-query attention: stock transformers T5 whose attention modules hold G key/value heads.

Ships with every converted checkpoint (remote code): imports only `torch`, `transformers` and sibling files.

The model classes are the stock T5 classes (the model, the seq2seq LM, the encoder, and the sequence-classification,
token-classification and question-answering heads); after the stock constructor has run, each attention module is
swapped for a [`T5GQAAttention`] whose `k`/`v` projections are `G * d_kv` wide. `q`, `o`, the per-query-head
relative position bias, the blocks, the stacks, the caches and generation are all upstream code. The KV cache stores
the G heads it is given (`EncoderDecoderCache` needs no change); the heads are expanded only inside attention, by
`scaled_dot_product_attention(enable_gqa=True)` or by folding queries into groups when decoding one token.

The WGQA training form (`config.gqa_kv_weights` set) makes the `k`/`v` of the weighted attention kinds
[`WeightedKV`] projections: they keep every original head and learn how each group's heads are combined into one of
the G heads the attention reads (and the cache stores). `hf_gqa.fold` turns them back into plain projections.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import (
    GenerationMixin,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5ForQuestionAnswering,
    T5ForSequenceClassification,
    T5ForTokenClassification,
    T5Model,
)
from transformers import initialization as init
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.t5.modeling_t5 import T5Attention

from .configuration_t5_gqa import T5GQAConfig
from .gqa_attention import eager_gqa_attention_forward, sdpa_gqa_attention_forward
from .routing import HeadRouting, routed_attention_forward, uniform_counts
from .weighted_kv import HeadMixer, WeightedKV, declared_init

_GQA_ATTENTION_FUNCTIONS = {"eager": eager_gqa_attention_forward, "sdpa": sdpa_gqa_attention_forward}


class T5GQAAttention(T5Attention):
    """[`T5Attention`] with `num_key_value_heads` key/value heads (query head h reads head h // (H // G)).

    With `kv_weights` (WGQA training form), `k` and `v` are [`WeightedKV`] projections that keep
    `kv_source_heads` heads and combine each group of them with learned weights of that shape.
    """

    def __init__(
        self,
        config,
        has_relative_attention_bias=False,
        layer_idx: int | None = None,
        is_causal: bool = False,
        num_key_value_heads: int | None = None,
        kv_weights: str | None = None,
        kv_source_heads: int | None = None,
        head_order: list[int] | None = None,
        routing: dict | None = None,
    ):
        super().__init__(
            config, has_relative_attention_bias=has_relative_attention_bias, layer_idx=layer_idx, is_causal=is_causal
        )
        self.num_key_value_heads = num_key_value_heads or self.n_heads
        if self.n_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide num_heads={self.n_heads}")
        if kv_weights is not None:
            heads = kv_source_heads or self.n_heads
            self.k, self.v = (
                WeightedKV(self.d_model, heads, self.num_key_value_heads, self.key_value_proj_dim, weights=kv_weights)
                for _ in range(2)
            )
        elif self.num_key_value_heads != self.n_heads:
            kv_dim = self.num_key_value_heads * self.key_value_proj_dim
            self.k = nn.Linear(self.d_model, kv_dim, bias=False)
            self.v = nn.Linear(self.d_model, kv_dim, bias=False)
        self.set_head_order(head_order)
        self.routing = None
        if routing is not None:  # routed attention: KDGQA, DGQA, PGQA or the GQKVA family
            self.routing = HeadRouting(routing)
            if self.routing.kv_heads != self.num_key_value_heads or self.routing.heads != self.n_heads:
                raise ValueError(f"routing {routing} does not match {self.n_heads} heads / {self.num_key_value_heads}")
            if self.routing.mode == "pairs":
                d = self.key_value_proj_dim
                self.q = nn.Linear(self.d_model, self.routing.q_heads * d, bias=False)
                self.o = nn.Linear(self.routing.out_heads * d, self.d_model, bias=False)

    def set_head_order(self, order: list[int] | None) -> None:
        """Read the shared relative position bias through `order` (heads reordered by SimGQA); None: as is."""
        if order is not None and sorted(order) != list(range(self.n_heads)):
            raise ValueError(f"a head order must be a permutation of the {self.n_heads} heads, got {order}")
        if order is not None and list(order) == list(range(self.n_heads)):
            order = None
        # A plain attribute, not a buffer: models are built on the meta device and non-persistent buffers would not
        # be materialised with their values.
        self.bias_head_order = None if order is None else tuple(int(h) for h in order)

    @property
    def num_key_value_groups(self) -> int:
        """Query heads per key/value head (read by transformers' attention functions)."""
        return self.n_heads // self.num_key_value_heads

    # Copied from transformers 5.24 `T5Attention.forward`; every change is marked `hf-gqa:`.
    # tests/modeling/test_modeling_t5_gqa.py::test_forward_copy_matches_upstream fails when upstream changes.
    def forward(
        self,
        hidden_states,
        mask=None,
        key_value_states=None,
        position_bias=None,
        cache=None,
        **kwargs,
    ):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.key_value_proj_dim)
        past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        past_seen_tokens = past_seen_tokens.clone() if isinstance(past_seen_tokens, torch.Tensor) else past_seen_tokens

        is_cross_attention = key_value_states is not None

        query_states = self.q(hidden_states).view(hidden_shape).transpose(1, 2)

        is_updated = False
        if isinstance(cache, EncoderDecoderCache):
            is_updated = cache.is_updated.get(self.layer_idx)
            if is_cross_attention:
                curr_cache = cache.cross_attention_cache
            else:
                curr_cache = cache.self_attention_cache
        else:
            curr_cache = cache

        current_states = key_value_states if is_cross_attention else hidden_states
        if is_cross_attention and cache is not None and is_updated:
            key_states = curr_cache.layers[self.layer_idx].keys
            value_states = curr_cache.layers[self.layer_idx].values
        else:
            # hf-gqa: `-1` heads, so the projections give (batch, G, seq, d_kv) and the cache stores G heads.
            kv_shape = (*current_states.shape[:-1], -1, self.key_value_proj_dim)
            key_states = self.k(current_states).view(kv_shape).transpose(1, 2)
            value_states = self.v(current_states).view(kv_shape).transpose(1, 2)

            if cache is not None:
                key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
                if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True

        if position_bias is None and self.has_relative_attention_bias:
            # hf-gqa: layers without a relative bias (cross-attention) pass no bias instead of a tensor of zeros, which
            # would turn an unmasked call into a masked one and, with gradient checkpointing, require grad.
            key_length = key_states.shape[-2]
            position_bias = self.compute_bias(
                input_shape[1], key_length, device=query_states.device, past_seen_tokens=past_seen_tokens
            )

        # hf-gqa: heads reordered by SimGQA read the shared bias in their order; the bias returned (and passed on to
        # the next layer) stays in the original order.
        layer_bias = position_bias
        if position_bias is not None and self.bias_head_order is not None:
            order = torch.tensor(self.bias_head_order, dtype=torch.long, device=position_bias.device)
            layer_bias = position_bias.index_select(1, order)

        # hf-gqa: eager and sdpa go through grouped-head functions; others (e.g. a registered custom function) are
        # looked up as usual and must handle grouped heads themselves. Routed attention is its own function.
        implementation = self.config._attn_implementation or "eager"
        if self.routing is not None:
            attention_interface: Callable = routed_attention_forward
        else:
            attention_interface = _GQA_ATTENTION_FUNCTIONS.get(implementation) or (
                ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_gqa_attention_forward)
            )

        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
            position_bias=layer_bias,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o(attn_output)

        return attn_output, position_bias, attn_weights


def _use_gqa_attention(model: nn.Module, config: T5GQAConfig) -> None:
    """Swap every attention module of the stock T5 `model` for a [`T5GQAAttention`] with its kind's G."""
    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name, None)
        if stack is None:
            continue
        for block in stack.block:
            layers = [("SelfAttention", "encoder" if stack_name == "encoder" else "decoder_self")]
            if stack.is_decoder:
                layers.append(("EncDecAttention", "cross"))
            for layer, (attr, kind) in zip(block.layer, layers, strict=False):  # the last layer is the MLP
                old = getattr(layer, attr)
                new = T5GQAAttention(
                    stack.config,
                    has_relative_attention_bias=old.has_relative_attention_bias,
                    layer_idx=old.layer_idx,
                    is_causal=old.is_causal,
                    num_key_value_heads=config.kv_heads(kind),
                    kv_weights=config.gqa_kv_weights if config.kv_source_heads(kind) else None,
                    kv_source_heads=config.kv_source_heads(kind),
                    head_order=config.head_order(kind, old.layer_idx),
                    routing=config.routing(kind),
                )
                model._init_weights(new)  # T5's rules (its k/v may be narrower); a HeadMixer starts at the mean
                setattr(layer, attr, new)


def _init_hf_gqa_state(module: nn.Module, config) -> None:
    """hf-gqa's own tensors: the mixers of the WGQA training form at the initial value the conversion declared
    (`--weights-init`), else their mean; DGQA's routing at the uniform allocation with empty statistics. Through
    `transformers.initialization`, so tensors loaded from a checkpoint stay as loaded and only missing ones are set."""
    if isinstance(module, HeadMixer):
        declared = declared_init(config)
        init.constant_(module.weight, module.init_value if declared is None else declared)
    elif isinstance(module, HeadRouting) and module.mode == "dgqa":
        init.copy_(module.allocation, uniform_counts(module.heads, module.kv_heads))
        for buffer in (module.norm_sum, module.norm_count, module.norm_cache, module.cache_filled):
            init.zeros_(buffer)


class _T5GQAInit:
    @torch.no_grad()
    def initialize_weights(self):
        super().initialize_weights()
        # The encoder and decoder are stock `T5Stack` sub-models, which transformers initialises with their own (stock
        # T5's) `_init_weights`, blind to hf-gqa's modules: those are set here, for the whole model.
        for module in self.modules():
            _init_hf_gqa_state(module, self.config)

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers treats every class outside its package as custom code, and `initialize_weights` (missing
        # weights in `from_pretrained`, `init_weights` after building on the meta device) then counts a module with
        # no parameters of its own (`T5Attention`, `T5DenseGatedActDense`, `T5ClassificationHead`, the model) as
        # initialised: T5's rules for their `Linear`/`Embedding` children never ran, which kept the generic std-1
        # draw. That shortcut protects custom `_init_weights` that overwrite loaded tensors; T5's and ours draw
        # through `transformers.initialization`, which leaves them alone. transformers' other uses of the flag (module
        # tying, checkpoint key conversions of its own model types) do not apply to t5_gqa either.
        return False


class T5GQAModel(_T5GQAInit, T5Model):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


class T5GQAForConditionalGeneration(_T5GQAInit, T5ForConditionalGeneration, GenerationMixin):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


class T5GQAEncoderModel(_T5GQAInit, T5EncoderModel):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


class T5GQAForQuestionAnswering(_T5GQAInit, T5ForQuestionAnswering):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        _use_gqa_attention(self, config)


# The two task models that hold a T5 model (`transformer`) get the t5_gqa one in its place: same tensor names, and
# its initialisation knows hf-gqa's modules.
class T5GQAForSequenceClassification(_T5GQAInit, T5ForSequenceClassification):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        self.transformer = T5GQAModel(config)


class T5GQAForTokenClassification(_T5GQAInit, T5ForTokenClassification):
    config: T5GQAConfig

    def __init__(self, config: T5GQAConfig):
        super().__init__(config)
        self.transformer = T5GQAEncoderModel(config)


T5GQAModel.register_for_auto_class("AutoModel")
T5GQAForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
T5GQAEncoderModel.register_for_auto_class("AutoModelForTextEncoding")
T5GQAForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
T5GQAForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
T5GQAForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

__all__ = [
    "T5GQAAttention",
    "T5GQAEncoderModel",
    "T5GQAForConditionalGeneration",
    "T5GQAForQuestionAnswering",
    "T5GQAForSequenceClassification",
    "T5GQAForTokenClassification",
    "T5GQAModel",
]
