"""T5 family: T5 v1.0, v1.1 / Flan-T5, byT5 (`t5`), mT5 (`mt5`) and already converted `t5_gqa` checkpoints."""

from collections.abc import Iterable

from ..errors import UnsupportedModelError
from ..modeling.configuration_t5_gqa import KV_HEAD_FIELDS, T5_GQA_AUTO_MAP
from .base import AttentionBlock, Family, HeadSlice

# The T5 classes t5_gqa has (`T5<suffix>` -> `T5GQA<suffix>`), by class-name suffix, longest first: where the class
# keeps the T5 stacks in its state dict, and whether it has a decoder.
_CLASSES = {
    "ForConditionalGeneration": ("", True),
    "ForSequenceClassification": ("transformer.", True),
    "ForTokenClassification": ("transformer.", False),
    "ForQuestionAnswering": ("", True),
    "EncoderModel": ("", False),
    "Model": ("", True),
}


def _layout(config: dict) -> tuple[str, bool]:
    """(prefix of the stacks' tensors, has a decoder) of the class the config's first architecture names; a config
    naming none is a T5ForConditionalGeneration's."""
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else "T5ForConditionalGeneration"
    return next((layout for suffix, layout in _CLASSES.items() if name.endswith(suffix)), ("", True))


class T5(Family):
    name = "t5"
    source_model_types = ("t5", "mt5", "t5_gqa")
    target_model_type = "t5_gqa"
    attention_kinds = ("encoder", "decoder_self", "cross")
    # Ainslie et al. group the decoder's self- and cross-attention; the encoder has no KV cache to shrink.
    default_attention = ("decoder_self", "cross")
    forms = ("wgqa", "routed")  # both are t5_gqa with more config fields
    shared_position_bias = True

    @staticmethod
    def _kv_heads(config: dict, kind: str) -> int:
        return config.get(KV_HEAD_FIELDS[kind]) or config["num_heads"]

    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        num_heads, head_dim = config["num_heads"], config["d_kv"]
        prefix, has_decoder = _layout(config)
        num_decoder_layers = (config.get("num_decoder_layers") or config["num_layers"]) if has_decoder else 0
        places = [("encoder", f"{prefix}encoder.block.{i}.layer.0.SelfAttention") for i in range(config["num_layers"])]
        for i in range(num_decoder_layers):
            places.append(("decoder_self", f"{prefix}decoder.block.{i}.layer.0.SelfAttention"))
            places.append(("cross", f"{prefix}decoder.block.{i}.layer.1.EncDecAttention"))
        return [
            AttentionBlock(
                kind=kind,
                prefix=prefix,
                num_heads=num_heads,
                kv_heads=self._kv_heads(config, kind),
                head_dim=head_dim,
                kv_keys=(f"{prefix}.k.weight", f"{prefix}.v.weight"),
                q_keys=(f"{prefix}.q.weight",),
                o_key=f"{prefix}.o.weight",
            )
            for kind, prefix in places
        ]

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        target = dict(config)
        if config.get("model_type") == "mt5":
            # MT5 never rescales the decoder output before its (untied) head; T5 does unless told not to.
            target["scale_decoder_outputs"] = False
        target["model_type"] = self.target_model_type
        for kind, field in KV_HEAD_FIELDS.items():
            target[field] = kv_heads.get(kind, self._kv_heads(config, kind))
        target["architectures"] = [self.target_architecture(a) for a in config.get("architectures") or []] or [
            "T5GQAForConditionalGeneration"
        ]
        target["auto_map"] = dict(T5_GQA_AUTO_MAP)
        target.update(provenance)
        return target

    def form_config(self, target: dict, form: str, **fields) -> dict:
        return dict(target, **fields)

    def head_layout(self, config: dict, block: AttentionBlock) -> list[HeadSlice]:
        h, d, p = block.num_heads, block.head_dim, block.prefix
        rows = h * d
        return [
            HeadSlice(f"{p}.q.weight", "q", 0, 0, rows, h),
            HeadSlice(f"{p}.k.weight", "k", 0, 0, rows, h),
            HeadSlice(f"{p}.v.weight", "v", 0, 0, rows, h),
            HeadSlice(f"{p}.o.weight", "o", 1, 0, rows, h),
        ]

    def target_architecture(self, source_architecture: str) -> str:
        for suffix in _CLASSES:
            if source_architecture.endswith(suffix):
                return f"T5GQA{suffix}"
        # a class t5_gqa has no counterpart of: refused by name, before any weights are read
        raise UnsupportedModelError(
            f"cannot convert a {source_architecture}: t5_gqa has "
            + ", ".join(f"T5GQA{suffix}" for suffix in _CLASSES)
            + " only; convert the T5 model and add the head afterwards"
        )

    def num_heads(self, config: dict) -> int:
        return config["num_heads"]

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        layers = config.get("num_decoder_layers") or config["num_layers"]
        per_head = 2 * config["d_kv"] * layers * bytes_per_value  # keys and values
        return {
            "self": per_head * self._kv_heads(config, "decoder_self"),  # per target token
            "cross": per_head * self._kv_heads(config, "cross"),  # per source token
        }


__all__ = ["T5"]
