"""An architecture adapter says where attention tensors live in a state dict and how the config changes."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..tensormap import TensorMap, TensorOp, in_place

Regroup = Callable[[str, torch.Tensor], torch.Tensor]  # (key, K/V-head rows) -> the rows regrouped


@dataclass(frozen=True)
class AttentionBlock:
    """One attention module of a checkpoint, as named in its state dict."""

    kind: str  # e.g. "encoder", "decoder_self", "cross", "self"
    prefix: str  # e.g. "decoder.block.0.layer.1.EncDecAttention"
    num_heads: int  # query heads
    kv_heads: int  # key/value heads now
    head_dim: int
    kv_keys: tuple[str, ...]  # state-dict keys whose dim 0 holds the key/value heads
    optional_kv_keys: tuple[str, ...] = ()  # the same, for tensors only some checkpoints have (biases)
    norm_keys: tuple[str, ...] = ()  # per-head norm weights over the K heads: pooled with "mean" whatever the init
    q_keys: tuple[str, ...] = ()  # query projection weight (and bias): rows per query head (GQKVA pools them)
    o_key: str | None = None  # output projection weight: columns per attention head (GQKVA re-assigns them)


class Architecture:
    """Base adapter. Subclasses describe one family; one instance is registered per family."""

    name: ClassVar[str]
    source_model_types: ClassVar[tuple[str, ...]]
    target_model_type: ClassVar[str | None] = None  # None: the source's own model_type (a stock checkpoint)
    attention_kinds: ClassVar[tuple[str, ...]]
    default_attention: ClassVar[tuple[str, ...]]
    streams: ClassVar[bool] = True  # its safetensors name tensors as the model does, so they convert shard by shard

    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        """The attention blocks of a checkpoint with this config (and, when known, these tensor names)."""
        raise NotImplementedError

    def tensor_ops(self, block: AttentionBlock, regroup: Regroup) -> dict[str, TensorOp]:
        """How each of a block's tensors changes, given `regroup` for K/V-head rows. Fused layouts override this."""
        return dict(
            in_place(key, lambda t, key=key: regroup(key, t)) for key in block.kv_keys + block.optional_kv_keys
        )

    def reexpress(self, config: dict, keys: Iterable[str] | None = None) -> tuple[dict, TensorMap] | None:
        """An exact re-expression as another family (config dict and tensor map), or None to convert in place."""
        return None

    def approximation(self, config: dict, kv_heads: dict[str, tuple[int, int]]) -> str | None:
        """Why pooling is not the exact pooled-keys model for this family (e.g. per-head q/k norms), or None."""
        return None

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        """The converted checkpoint's config dict, given the new key/value heads of each attention kind."""
        raise NotImplementedError

    def target_architecture(self, source_architecture: str) -> str:
        """The model class name the converted checkpoint is saved as."""
        raise NotImplementedError

    def training_config(self, target: dict, source_heads: dict[str, int], weights: str) -> dict:
        """The WGQA training form of a converted config: `source_heads` (attention kind -> K/V heads kept) are
        combined by learned weights of shape `weights`. Families without a training form refuse by name."""
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{target.get('gqa_source_model_type') or target.get('model_type')} has no WGQA training form in hf-gqa; "
            "WGQA supports T5 and the decoder families with separate k_proj/v_proj (hf-gqa list)"
        )

    def routed_config(self, target: dict, routing: dict[str, dict]) -> dict:
        """The converted config of a routed variant (KDGQA, DGQA, PGQA, the GQKVA family): `routing` is attention
        kind -> `HeadRouting` spec. Families without a routed form refuse by name."""
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{target.get('gqa_source_model_type') or target.get('model_type')} has no routed-attention form in "
            f"hf-gqa ({target.get('gqa_variant')}); it supports T5 and the decoder families of `hf-gqa list`"
        )

    def folded_config(self, config: dict) -> dict:
        """The plain GQA config of a WGQA training-form config (see `hf_gqa.fold`)."""
        raise NotImplementedError

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        """KV-cache bytes one token adds, per cache (e.g. {"self": ..., "cross": ...})."""
        raise NotImplementedError

    def num_heads(self, config: dict) -> int:
        """Query heads, for reports."""
        return self.attention_blocks(config)[0].num_heads


__all__ = ["Architecture", "AttentionBlock", "Regroup"]
