"""An architecture adapter says where attention tensors live in a state dict and how the config changes."""

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class AttentionBlock:
    """One attention module of a checkpoint, as named in its state dict."""

    kind: str  # e.g. "encoder", "decoder_self", "cross"
    prefix: str  # e.g. "decoder.block.0.layer.1.EncDecAttention"
    num_heads: int  # query heads
    kv_heads: int  # key/value heads now
    head_dim: int
    kv_keys: tuple[str, ...]  # state-dict keys whose dim 0 holds the key/value heads (weights, biases)


class Architecture:
    """Base adapter. Subclasses describe one family; one instance is registered per family."""

    name: ClassVar[str]
    source_model_types: ClassVar[tuple[str, ...]]
    target_model_type: ClassVar[str]
    attention_kinds: ClassVar[tuple[str, ...]]
    default_attention: ClassVar[tuple[str, ...]]

    def attention_blocks(self, config: dict) -> list[AttentionBlock]:
        raise NotImplementedError

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        """The converted checkpoint's config dict, given the new key/value heads of each attention kind."""
        raise NotImplementedError

    def target_architecture(self, source_architecture: str) -> str:
        """The model class name the converted checkpoint is saved as."""
        raise NotImplementedError

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        """KV-cache bytes one token adds, per cache (e.g. {"self": ..., "cross": ...})."""
        raise NotImplementedError


__all__ = ["Architecture", "AttentionBlock"]
