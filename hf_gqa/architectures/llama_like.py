"""Decoder-only families whose transformers config already has `num_key_value_heads` (Llama, Mistral, Qwen2).

Conversion is pure weights: the k/v projections (and Qwen2's k/v biases) are regrouped and `num_key_value_heads`
changes. The output is a stock checkpoint of the same `model_type` that plain transformers loads without hf-gqa.
Exact with respect to pooling the keys: RoPE rotates every head alike and is linear, and each head's rows are
contiguous in the transformers layout.
"""

from ..registry import register_architecture
from .base import Architecture, AttentionBlock


class LlamaLike(Architecture):
    name = "llama-like"
    source_model_types = ("llama", "mistral", "qwen2")
    attention_kinds = ("self",)
    default_attention = ("self",)

    @staticmethod
    def _head_dim(config: dict) -> int:
        return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]

    @staticmethod
    def _kv_heads(config: dict) -> int:
        return config.get("num_key_value_heads") or config["num_attention_heads"]

    @staticmethod
    def _prefix(config: dict) -> str:
        architectures = config.get("architectures") or ["ForCausalLM"]
        return "model." if any(not a.endswith("Model") for a in architectures) else ""

    def attention_blocks(self, config: dict) -> list[AttentionBlock]:
        has_bias = config["model_type"] == "qwen2" or bool(config.get("attention_bias"))
        blocks = []
        for i in range(config["num_hidden_layers"]):
            prefix = f"{self._prefix(config)}layers.{i}.self_attn"
            keys = [f"{prefix}.{p}_proj.{t}" for t in (("weight", "bias") if has_bias else ("weight",)) for p in "kv"]
            blocks.append(
                AttentionBlock(
                    kind="self",
                    prefix=prefix,
                    num_heads=config["num_attention_heads"],
                    kv_heads=self._kv_heads(config),
                    head_dim=self._head_dim(config),
                    kv_keys=tuple(keys),
                )
            )
        return blocks

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        target = dict(config, num_key_value_heads=kv_heads.get("self", self._kv_heads(config)))
        target.update(provenance)  # extra keys: stock transformers keeps and ignores them
        return target

    def target_architecture(self, source_architecture: str) -> str:
        return source_architecture

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        return {
            "self": 2 * self._kv_heads(config) * self._head_dim(config) * config["num_hidden_layers"] * bytes_per_value
        }


register_architecture(LlamaLike())

__all__ = ["LlamaLike"]
