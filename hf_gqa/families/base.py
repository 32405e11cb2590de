"""A family adapter says where attention heads live in a checkpoint's tensors and how its config names them.

It knows nothing about variants: a variant asks it for the attention blocks (`attention_blocks`), for the ops that
regroup a block's K/V rows (`tensor_ops`), for where every head of a block lives (`head_layout`, for operations that
move whole heads) and for the config with new K/V head counts (`target_config`). hf-gqa's own model forms (the WGQA
training form, routed attention) are family data too: `forms` names the ones a family has and `form_config` names a
config as one of them.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.tensormap import TensorMap, TensorOp, in_place
from ..errors import UnsupportedModelError

Regroup = Callable[[str, torch.Tensor], torch.Tensor]  # (key, K/V-head rows) -> the rows regrouped

# hf-gqa's model forms, by the name variants ask for: what a family may offer besides its stock (or GQA) form.
FORM_NAMES = {"wgqa": "WGQA training form", "routed": "routed-attention form"}


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


@dataclass(frozen=True)
class HeadSlice:
    """A span of one tensor along one dimension holding `heads` equal blocks, one per head, in head order: the rows
    of a query projection, the columns of an output projection, the K part of a fused QKV weight, a norm weight."""

    key: str
    role: str  # "q", "k", "v" (projection rows / norm weights) or "o" (output projection, the heads' inputs)
    dim: int
    start: int
    length: int
    heads: int


@dataclass(frozen=True)
class PerHeadModules:
    """One module per head (StableLM's per-head LayerNorms): `template.format(h=...)` names head h's tensor."""

    template: str
    role: str
    heads: int


class Family:
    """Base adapter. Subclasses describe one family; `hf_gqa.registry.FAMILIES` lists one instance of each."""

    name: ClassVar[str]
    source_model_types: ClassVar[tuple[str, ...]]
    target_model_type: ClassVar[str | None] = None  # None: the source's own model_type (a stock checkpoint)
    attention_kinds: ClassVar[tuple[str, ...]]
    default_attention: ClassVar[tuple[str, ...]]
    streams: ClassVar[bool] = True  # its safetensors name tensors as the model does, so they convert shard by shard
    forms: ClassVar[tuple[str, ...]] = ()  # hf-gqa's forms it has (keys of FORM_NAMES); see `form_config`
    # One position bias shared by the layers of a stack (T5): a head reorder is then recorded per layer in the config
    # (`gqa_head_order`), not in the weights.
    shared_position_bias: ClassVar[bool] = False

    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        """The attention blocks of a checkpoint with this config (and, when known, these tensor names)."""
        raise NotImplementedError

    def tensor_ops(self, block: AttentionBlock, regroup: Regroup) -> dict[str, TensorOp]:
        """How each of a block's tensors changes, given `regroup` for K/V-head rows. Fused layouts override this."""
        return dict(
            in_place(key, lambda t, key=key: regroup(key, t)) for key in block.kv_keys + block.optional_kv_keys
        )

    def head_layout(self, config: dict, block: AttentionBlock) -> list[HeadSlice | PerHeadModules]:
        """Every tensor span that holds the heads of an MHA block, for operations that move whole heads."""
        raise NotImplementedError

    def reexpress(self, config: dict, keys: Iterable[str] | None = None) -> tuple[dict, TensorMap] | None:
        """An exact re-expression as another family (config dict and tensor map), or None to convert in place."""
        return None

    def approximation(self, config: dict, kv_heads: dict[str, tuple[int, int]]) -> str | None:
        """Why pooling is not the exact pooled-keys model for this family (e.g. per-head q/k norms), or None."""
        return None

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        """The converted checkpoint's config dict, given the new key/value heads of each attention kind."""
        raise NotImplementedError

    def form_config(self, target: dict, form: str, **fields) -> dict:
        """`target` (a converted config) as hf-gqa's `form` of this family, carrying `fields`; a family without that
        form refuses by name."""
        raise UnsupportedModelError(self.form_refusal(target, form))

    def form_refusal(self, target: dict, form: str) -> str:
        model_type = target.get("gqa_source_model_type") or target.get("model_type")
        if form == "wgqa":
            return (
                f"{model_type} has no WGQA training form in hf-gqa; WGQA supports T5 and the decoder families with "
                "separate k_proj/v_proj (hf-gqa list)"
            )
        return (
            f"{model_type} has no {FORM_NAMES[form]} in hf-gqa ({target.get('gqa_variant')}); it supports T5 and "
            "the decoder families of `hf-gqa list`"
        )

    def form_stock_config(self, config: dict, form: str, fields: tuple[str, ...]) -> dict:
        """A config of this family's `form`, as its stock (or GQA) form: the form's `fields` and names gone."""
        return {k: v for k, v in config.items() if k not in fields}

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        """KV-cache bytes one token adds, per cache (e.g. {"self": ..., "cross": ...})."""
        raise NotImplementedError

    def num_heads(self, config: dict) -> int:
        """Query heads, for reports."""
        raise NotImplementedError


__all__ = ["FORM_NAMES", "AttentionBlock", "Family", "HeadSlice", "PerHeadModules", "Regroup"]
