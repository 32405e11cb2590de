# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Configuration of T5 with grouped-query attention (`model_type="t5_gqa"`).

This file ships with every converted checkpoint (remote code): it imports only `transformers`, `huggingface_hub`
and sibling files.
"""

import copy

from huggingface_hub.dataclasses import strict
from transformers import T5Config

from .weighted_kv import WEIGHT_SHAPES

# Written into every saved config, so that `trust_remote_code=True` resolves each Auto class, not only the class
# that was saved (transformers records one class per save).
T5_GQA_AUTO_MAP = {
    "AutoConfig": "configuration_t5_gqa.T5GQAConfig",
    "AutoModel": "modeling_t5_gqa.T5GQAModel",
    "AutoModelForSeq2SeqLM": "modeling_t5_gqa.T5GQAForConditionalGeneration",
    "AutoModelForTextEncoding": "modeling_t5_gqa.T5GQAEncoderModel",
    "AutoModelForSequenceClassification": "modeling_t5_gqa.T5GQAForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_t5_gqa.T5GQAForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_t5_gqa.T5GQAForQuestionAnswering",
}

# The three kinds of attention in T5 and the config field holding the number of key/value heads of each.
KV_HEAD_FIELDS = {
    "encoder": "encoder_num_key_value_heads",
    "decoder_self": "num_key_value_heads",
    "cross": "cross_num_key_value_heads",
}


@strict
class T5GQAConfig(T5Config):
    r"""
    A [`T5Config`] whose attention blocks may have fewer key/value heads than query heads.

    num_key_value_heads (`int`, *optional*):
        Key/value heads of the decoder self-attention. Defaults to `num_heads` (multi-head attention).
    cross_num_key_value_heads (`int`, *optional*):
        Key/value heads of the decoder cross-attention. Defaults to `num_key_value_heads`.
    encoder_num_key_value_heads (`int`, *optional*):
        Key/value heads of the encoder self-attention. Defaults to `num_heads` (the encoder is not grouped).
    gqa_variant (`str`, *optional*): how the checkpoint was converted (`gqa`, `mqa`, `mha`, ...). Provenance only.
    gqa_init (`str`, *optional*): how grouped K/V were initialised (`mean`, `first`, `random`). Provenance only.
    gqa_attention (`list[str]`, *optional*): the attention kinds that were converted. Provenance only.
    gqa_source (`str`, *optional*): the checkpoint this one was converted from. Provenance only.
    gqa_source_model_type (`str`, *optional*): the `model_type` of that checkpoint. Provenance only.
    hf_gqa_version (`str`, *optional*): the hf-gqa version that wrote the checkpoint. Provenance only.
    gqa_kv_weights (`str`, *optional*):
        Set in the WGQA training form only: the shape of the learned weights that combine each group's K/V heads
        (`scalar`, `vector_out` or `vector_in`, see `weighted_kv.py`). `None`: plain GQA projections.
    gqa_kv_source_heads (`dict[str, int]`, *optional*):
        With `gqa_kv_weights`: attention kind -> the K/V heads its weighted projections keep (each group of
        `heads // G` contiguous ones is combined into one of the kind's G heads). Kinds not listed are plain.

    gqa_head_order (`dict[str, list[list[int]]]`, *optional*):
        Set when heads were reordered (SimGQA): attention kind (`encoder`, `decoder_self`) -> one list per layer,
        whose entry `p` is the relative-position-bias head that the layer's head `p` uses. T5 computes the bias once
        per stack and shares it across layers, so a layer whose heads moved reads the bias through this order.
    gqa_routing (`dict[str, dict]`, *optional*):
        Routed attention (KDGQA, DGQA, PGQA, the GQKVA family): attention kind -> the routing of its layers (mode,
        query and key/value heads, options; see `routing.py`). For the GQKVA family `q` has `q_heads` heads and `o`
        takes one head per (query, key/value) pair. Kinds not listed use plain grouped attention.

    Heads are grouped in contiguous blocks: query head `h` reads key/value head `h // (num_heads // G)`, the
    convention of transformers' `repeat_kv`.
    """

    model_type = "t5_gqa"

    num_key_value_heads: int | None = None
    cross_num_key_value_heads: int | None = None
    encoder_num_key_value_heads: int | None = None
    gqa_variant: str = "gqa"
    gqa_init: str | None = None
    gqa_attention: list[str] | None = None
    gqa_source: str | None = None
    gqa_source_model_type: str | None = None
    hf_gqa_version: str | None = None
    gqa_kv_weights: str | None = None
    gqa_kv_source_heads: dict[str, int] | None = None
    gqa_head_order: dict[str, list[list[int]]] | None = None
    gqa_routing: dict[str, dict] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_heads
        if self.cross_num_key_value_heads is None:
            self.cross_num_key_value_heads = self.num_key_value_heads
        if self.encoder_num_key_value_heads is None:
            self.encoder_num_key_value_heads = self.num_heads
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(T5_GQA_AUTO_MAP)
        self._check_weights()  # here as well as in `validate_architecture`, so a bad config raises a plain ValueError
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: every key/value head count divides `num_heads`."""
        super().validate_architecture()
        for kind, field in KV_HEAD_FIELDS.items():
            g = getattr(self, field)
            if not isinstance(g, int) or g < 1 or self.num_heads % g:
                valid = [d for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]
                raise ValueError(
                    f"`{field}`={g} ({kind} attention) must divide num_heads={self.num_heads}; valid values: {valid}"
                )
        self._check_weights()

    def _check_weights(self):
        if self.gqa_kv_weights is None:
            return
        if self.gqa_kv_weights not in WEIGHT_SHAPES:
            raise ValueError(f"`gqa_kv_weights`={self.gqa_kv_weights!r} must be one of {', '.join(WEIGHT_SHAPES)}")
        for kind, heads in (self.gqa_kv_source_heads or {}).items():
            if kind not in KV_HEAD_FIELDS:
                raise ValueError(f"`gqa_kv_source_heads`: unknown attention kind {kind!r}")
            groups = self.kv_heads(kind)
            if heads < 1 or self.num_heads % heads or not isinstance(groups, int) or groups < 1 or heads % groups:
                raise ValueError(
                    f"`gqa_kv_source_heads`[{kind!r}]={heads} must divide num_heads={self.num_heads} and be a "
                    f"multiple of the {groups} key/value heads of {kind} attention"
                )

    def kv_heads(self, kind: str) -> int:
        """Key/value heads of one attention kind: `encoder`, `decoder_self` or `cross`."""
        return getattr(self, KV_HEAD_FIELDS[kind])

    def head_order(self, kind: str, layer: int) -> list[int] | None:
        """The bias-head order of one layer of an attention kind (None: heads in their original order)."""
        orders = (self.gqa_head_order or {}).get(kind)
        return list(orders[layer]) if orders and layer < len(orders) and orders[layer] is not None else None

    def routing(self, kind: str) -> dict | None:
        """The routed attention of one attention kind (KDGQA, DGQA, PGQA, GQKVA; see `routing.py`), else None."""
        return (self.gqa_routing or {}).get(kind)

    def kv_source_heads(self, kind: str) -> int | None:
        """The K/V heads the weighted projections of one attention kind keep (WGQA training form), else None."""
        if self.gqa_kv_weights is None:
            return None
        return (self.gqa_kv_source_heads or {}).get(kind)

    def get_text_config(self, decoder=None, encoder=None):
        # transformers sizes the generation cache from `num_hidden_layers` (= `num_layers`, the *encoder* depth), so
        # stock T5 `generate()` fails when the decoder is deeper than the encoder. The decoder view carries the
        # decoder depth instead.
        config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder and config.num_layers != config.num_decoder_layers:
            if config is self:
                config = copy.deepcopy(self)
            config.num_layers = config.num_decoder_layers
        return config


__all__ = ["KV_HEAD_FIELDS", "T5_GQA_AUTO_MAP", "T5GQAConfig"]
