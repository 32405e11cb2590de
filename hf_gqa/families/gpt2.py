"""GPT-2 (`gpt2`) and already converted `gpt2_gqa` checkpoints, converted to the custom `gpt2_gqa` classes.

GPT-2 fuses Q, K and V into one `Conv1D` (`c_attn`), whose weight is stored transposed, `(n_embd, 3 * n_embd)`,
with the heads along the columns [Q | K | V]. Conversion regroups the K and V column blocks (and their bias) and
keeps Q, so `c_attn` becomes `(n_embd, (H + 2G) * head_dim)`. Pooling the weights equals pooling the keys: the
projection is linear and each head's columns are contiguous.

Only the self-attention is grouped; the cross-attention of `add_cross_attention=True` models stays multi-head.
"""

from collections.abc import Iterable

import torch

from ..core.tensormap import TensorOp, in_place
from ..errors import HfGqaError
from ..modeling.configuration_gpt2_gqa import GPT2_GQA_AUTO_MAP, KV_HEAD_FIELDS
from .base import AttentionBlock, Family, HeadSlice, Regroup

# Source model class -> the class the converted checkpoint is saved as.
TARGET_ARCHITECTURES = {
    "GPT2LMHeadModel": "GPT2GQALMHeadModel",
    "GPT2Model": "GPT2GQAModel",
    "GPT2GQALMHeadModel": "GPT2GQALMHeadModel",
    "GPT2GQAModel": "GPT2GQAModel",
}
_BASE_MODELS = ("GPT2Model", "GPT2GQAModel")


class GPT2(Family):
    name = "gpt2"
    source_model_types = ("gpt2", "gpt2_gqa")
    target_model_type = "gpt2_gqa"
    attention_kinds = ("self",)
    default_attention = ("self",)

    @staticmethod
    def _num_heads(config: dict) -> int:
        return config.get("n_head") or config["num_attention_heads"]

    @classmethod
    def _head_dim(cls, config: dict) -> int:
        return (config.get("n_embd") or config["hidden_size"]) // cls._num_heads(config)

    @classmethod
    def _kv_heads(cls, config: dict) -> int:
        return config.get(KV_HEAD_FIELDS["self"]) or cls._num_heads(config)

    @staticmethod
    def _num_layers(config: dict) -> int:
        return config.get("n_layer") or config["num_hidden_layers"]

    @staticmethod
    def _prefix(config: dict, keys: Iterable[str] | None) -> str:
        """`transformer.` (GPT2LMHeadModel in memory) or `` (GPT2Model, and many GPT-2 checkpoints on disk)."""
        if keys is not None:
            keys = set(keys)
            for prefix in ("transformer.", ""):
                if f"{prefix}h.0.attn.c_attn.weight" in keys:
                    return prefix
        architectures = config.get("architectures") or ["GPT2LMHeadModel"]
        return "" if all(a in _BASE_MODELS for a in architectures) else "transformer."

    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        prefix = self._prefix(config, keys)
        blocks = []
        for i in range(self._num_layers(config)):
            attn = f"{prefix}h.{i}.attn"
            blocks.append(
                AttentionBlock(
                    kind="self",
                    prefix=attn,
                    num_heads=self._num_heads(config),
                    kv_heads=self._kv_heads(config),
                    head_dim=self._head_dim(config),
                    kv_keys=(f"{attn}.c_attn.weight", f"{attn}.c_attn.bias"),  # Conv1D always has a bias
                )
            )
        return blocks

    def tensor_ops(self, block: AttentionBlock, regroup: Regroup) -> dict[str, TensorOp]:
        # c_attn is [Q (H*d) | K (G*d) | V (G*d)] along its last dim: columns of the (in, out) Conv1D weight, entries
        # of the bias. `regroup` works on rows (dim 0 = heads), so weight slices are transposed to (G*d, in) and back.
        q_cols, kv_cols = block.num_heads * block.head_dim, block.kv_heads * block.head_dim

        def fused(key):
            def rule(t: torch.Tensor) -> torch.Tensor:
                if t.shape[-1] != q_cols + 2 * kv_cols:
                    raise HfGqaError(
                        f"{key} has {t.shape[-1]} output features; the config says {q_cols} + 2 * {kv_cols}"
                    )
                q, k, v = t.split([q_cols, kv_cols, kv_cols], dim=-1)
                if t.dim() == 1:  # bias
                    return torch.cat([q, regroup(f"{key}:k", k), regroup(f"{key}:v", v)])
                k, v = regroup(f"{key}:k", k.t()).t(), regroup(f"{key}:v", v.t()).t()
                return torch.cat([q, k, v], dim=-1).contiguous()

            return rule

        return dict(in_place(key, fused(key)) for key in block.kv_keys + block.optional_kv_keys)

    def head_layout(self, config: dict, block: AttentionBlock) -> list[HeadSlice]:
        h, d, p = block.num_heads, block.head_dim, block.prefix
        rows = h * d
        slices = [HeadSlice(f"{p}.c_attn.weight", role, 1, i * rows, rows, h) for i, role in enumerate("qkv")]
        slices += [HeadSlice(f"{p}.c_attn.bias", role, 0, i * rows, rows, h) for i, role in enumerate("qkv")]
        slices.append(HeadSlice(f"{p}.c_proj.weight", "o", 0, 0, rows, h))  # Conv1D: (in = H*d, out)
        return slices

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        target = dict(config)
        target["model_type"] = self.target_model_type
        for kind, field in KV_HEAD_FIELDS.items():
            target[field] = kv_heads.get(kind, self._kv_heads(config))
        target["architectures"] = [self.target_architecture(a) for a in config.get("architectures") or []] or [
            "GPT2GQALMHeadModel"
        ]
        target["auto_map"] = dict(GPT2_GQA_AUTO_MAP)
        target.update(provenance)
        return target

    def target_architecture(self, source_architecture: str) -> str:
        try:
            return TARGET_ARCHITECTURES[source_architecture]
        except KeyError:
            raise HfGqaError(
                f"cannot convert a {source_architecture}: hf-gqa converts GPT2LMHeadModel and GPT2Model only; "
                "convert the base model and add the head afterwards"
            ) from None

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        per_head = 2 * self._head_dim(config) * self._num_layers(config) * bytes_per_value  # keys and values
        sizes = {"self": per_head * self._kv_heads(config)}
        if config.get("add_cross_attention"):
            sizes["cross"] = per_head * self._num_heads(config)  # per encoder token; cross-attention stays MHA
        return sizes

    def num_heads(self, config: dict) -> int:
        return self._num_heads(config)


__all__ = ["GPT2", "TARGET_ARCHITECTURES"]
