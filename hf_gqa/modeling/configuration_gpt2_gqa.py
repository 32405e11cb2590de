# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Configuration of GPT-2 with grouped-query attention (`model_type="gpt2_gqa"`).

This file ships with every converted checkpoint (remote code): it imports only `transformers`, `huggingface_hub`
and sibling files.
"""

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config

# Written into every saved config, so that `trust_remote_code=True` resolves each Auto class, not only the class
# that was saved (transformers records one class per save).
GPT2_GQA_AUTO_MAP = {
    "AutoConfig": "configuration_gpt2_gqa.GPT2GQAConfig",
    "AutoModel": "modeling_gpt2_gqa.GPT2GQAModel",
    "AutoModelForCausalLM": "modeling_gpt2_gqa.GPT2GQALMHeadModel",
}

# GPT-2 has one kind of grouped attention, the decoder self-attention, and one config field for its key/value heads.
# (Cross-attention, `add_cross_attention=True`, stays multi-head.)
KV_HEAD_FIELDS = {"self": "num_key_value_heads"}


@strict
class GPT2GQAConfig(GPT2Config):
    r"""
    A [`GPT2Config`] whose self-attention may have fewer key/value heads than query heads.

    num_key_value_heads (`int`, *optional*):
        Key/value heads of the self-attention. Defaults to `n_head` (multi-head attention).
    gqa_variant (`str`, *optional*): how the checkpoint was converted (`gqa`, `mqa`, `mha`, ...). Provenance only.
    gqa_init (`str`, *optional*): how grouped K/V were initialised (`mean`, `first`, `random`). Provenance only.
    gqa_attention (`list[str]`, *optional*): the attention kinds that were converted. Provenance only.
    gqa_source (`str`, *optional*): the checkpoint this one was converted from. Provenance only.
    gqa_source_model_type (`str`, *optional*): the `model_type` of that checkpoint. Provenance only.
    hf_gqa_version (`str`, *optional*): the hf-gqa version that wrote the checkpoint. Provenance only.

    The fused `c_attn` projection is `(H + 2G) * head_dim` wide, laid out as [Q (H heads) | K (G heads) | V (G heads)].
    Heads are grouped in contiguous blocks: query head `h` reads key/value head `h // (n_head // G)`, the convention
    of transformers' `repeat_kv`.
    """

    model_type = "gpt2_gqa"

    num_key_value_heads: int | None = None
    gqa_variant: str = "gqa"
    gqa_init: str | None = None
    gqa_attention: list[str] | None = None
    gqa_source: str | None = None
    gqa_source_model_type: str | None = None
    hf_gqa_version: str | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.n_head
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(GPT2_GQA_AUTO_MAP)
        self._check_heads()  # here as well as in `validate_architecture`, so a bad config raises a plain ValueError
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the key/value heads divide `n_head`, and `n_head` divides `n_embd`."""
        super().validate_architecture()
        self._check_heads()

    def _check_heads(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for kind, field in KV_HEAD_FIELDS.items():
            g = getattr(self, field)
            if isinstance(g, bool) or not isinstance(g, int) or g < 1 or self.n_head % g:
                valid = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
                raise ValueError(
                    f"`{field}`={g} ({kind} attention) must divide n_head={self.n_head}; valid values: {valid}"
                )

    def kv_heads(self, kind: str = "self") -> int:
        """Key/value heads of one attention kind (GPT-2 has one: `self`)."""
        return getattr(self, KV_HEAD_FIELDS[kind])


__all__ = ["GPT2_GQA_AUTO_MAP", "GPT2GQAConfig", "KV_HEAD_FIELDS"]
