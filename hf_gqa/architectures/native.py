"""Decoder-only families whose transformers config already has `num_key_value_heads`.

Conversion is pure weights: the k/v projections (and their biases, where a checkpoint has them) are regrouped and
`num_key_value_heads` changes. The output is a stock checkpoint of the same `model_type` that plain transformers
(and vLLM, llama.cpp's converters, ...) loads without hf-gqa. Pooling the weights equals pooling the keys: RoPE
rotates every head alike and is linear, and each head's rows are contiguous in the transformers layout.

Families that normalise queries and keys per head (Qwen3, Gemma3, OLMo2, OLMoE, StableLM, Cohere, Phi, EXAONE 4
with their q/k norms) convert only approximately for G < H: a norm of pooled keys is not the pool of normed keys.
Expanding (G = H, or back to MHA) stays exact for them too.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..registry import register_architecture
from ..tensormap import TensorOp, in_place
from .base import Architecture, AttentionBlock, Regroup


@dataclass(frozen=True)
class QKNorm:
    """How a family normalises keys per head, as named in its config and state dict."""

    enabled_by: str | None  # config flag that switches the norm on; None: always on
    keys: tuple[str, ...]  # tensor names under the attention module, relative ("k_norm.weight")
    shape: str  # "shared": one (head_dim,) weight for all heads (unchanged); "rows": weight rows per K/V head;
    #             "modules": one module per K/V head (`k_layernorm.norms.{j}`)


_SHARED = QKNorm(None, (), "shared")
QK_NORMS = {
    "qwen3": _SHARED,
    "qwen3_moe": _SHARED,
    "gemma3_text": _SHARED,
    "exaone4": _SHARED,
    "phi": QKNorm("qk_layernorm", (), "shared"),
    "olmo2": QKNorm(None, ("k_norm.weight",), "rows"),
    "olmoe": QKNorm(None, ("k_norm.weight",), "rows"),
    "cohere": QKNorm("use_qk_norm", ("k_norm.weight",), "rows"),
    "stablelm": QKNorm("qk_layernorm", ("k_layernorm.norms.{j}.weight",), "modules"),  # LayerNorms without bias
}


class NativeGQA(Architecture):
    name = "native-gqa"
    source_model_types = (
        "llama",
        "mistral",
        "ministral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "phi3",
        "olmo",
        "olmo2",
        "olmoe",
        "granite",
        "granitemoe",
        "stablelm",
        "starcoder2",
        "cohere",
        "helium",
        "smollm3",
        "glm",
        "exaone4",
    )
    attention_kinds = ("self",)
    default_attention = ("self",)

    @staticmethod
    def head_dim(config: dict) -> int:
        return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]

    @staticmethod
    def _kv_heads(config: dict) -> int:
        return config.get("num_key_value_heads") or config["num_attention_heads"]

    attention_module = "self_attn"  # the attention module's name in each layer
    base_prefix = "model."  # where a task model (`*ForCausalLM`) keeps its base model's layers

    @classmethod
    def _prefix(cls, config: dict, keys: Iterable[str] | None) -> str:
        if keys is not None:
            keys = set(keys)
            for prefix in (cls.base_prefix, "", "model.language_model.", "language_model.model."):
                if any(k.startswith(f"{prefix}layers.0.") for k in keys):
                    return prefix
        architectures = config.get("architectures") or ["ForCausalLM"]
        return "" if all(a.endswith("Model") for a in architectures) else cls.base_prefix

    @staticmethod
    def _qk_norm(config: dict) -> QKNorm | None:
        norm = QK_NORMS.get(config["model_type"])
        if norm is None or (norm.enabled_by is not None and not config.get(norm.enabled_by)):
            return None
        return norm

    def attention_blocks(self, config: dict, keys: Iterable[str] | None = None) -> list[AttentionBlock]:
        prefix, kv_heads = self._prefix(config, keys), self._kv_heads(config)
        norm = self._qk_norm(config)
        blocks = []
        for i in range(config["num_hidden_layers"]):
            attn = f"{prefix}layers.{i}.{self.attention_module}"
            if config["model_type"] == "phi3":
                kv_keys, optional = (f"{attn}.qkv_proj.weight",), (f"{attn}.qkv_proj.bias",)
            else:
                kv_keys = (f"{attn}.k_proj.weight", f"{attn}.v_proj.weight")
                optional = (f"{attn}.k_proj.bias", f"{attn}.v_proj.bias")
            norm_keys: tuple[str, ...] = ()
            if norm is not None and norm.shape == "rows":
                norm_keys = tuple(f"{attn}.{k}" for k in norm.keys)
            elif norm is not None and norm.shape == "modules":
                norm_keys = tuple(f"{attn}.{k}" for k in norm.keys)  # templates over {j}, see tensor_ops
            blocks.append(
                AttentionBlock(
                    kind="self",
                    prefix=attn,
                    num_heads=config["num_attention_heads"],
                    kv_heads=kv_heads,
                    head_dim=self.head_dim(config),
                    kv_keys=kv_keys + (norm_keys if norm is not None and norm.shape == "rows" else ()),
                    optional_kv_keys=optional,
                    norm_keys=norm_keys,
                    q_keys=() if config["model_type"] == "phi3" else (f"{attn}.q_proj.weight", f"{attn}.q_proj.bias"),
                    o_key=f"{attn}.{'dense' if config['model_type'] == 'phi' else 'o_proj'}.weight",
                )
            )
        return blocks

    def tensor_ops(self, block: AttentionBlock, regroup: Regroup) -> dict[str, TensorOp]:
        if block.kv_keys and block.kv_keys[0].endswith("qkv_proj.weight"):
            return self._fused_qkv_ops(block, regroup)
        ops = dict(
            in_place(key, lambda t, key=key: regroup(key, t))
            for key in block.kv_keys + block.optional_kv_keys
            if "{j}" not in key
        )
        templates = [k for k in block.norm_keys if "{j}" in k]
        if templates:  # one norm module per K/V head (StableLM): each new head's norm from its group's norms
            ops.update(self._per_head_module_ops(block, templates, regroup))
        return ops

    @staticmethod
    def _fused_qkv_ops(block: AttentionBlock, regroup: Regroup) -> dict[str, TensorOp]:
        # Phi-3: qkv_proj rows are [Q (H*d) | K (KV*d) | V (KV*d)]: regroup K and V, keep Q.
        q_rows, kv_rows = block.num_heads * block.head_dim, block.kv_heads * block.head_dim

        def fused(key):
            def rule(t: torch.Tensor) -> torch.Tensor:
                q, k, v = t.split([q_rows, kv_rows, kv_rows])
                return torch.cat([q, regroup(f"{key}:k", k), regroup(f"{key}:v", v)])

            return rule

        return dict(in_place(key, fused(key)) for key in block.kv_keys + block.optional_kv_keys)

    @staticmethod
    def _per_head_module_ops(block: AttentionBlock, templates: list[str], regroup: Regroup) -> dict[str, TensorOp]:
        ops = {}
        current = block.kv_heads
        for template in templates:
            probe = regroup(template, torch.arange(current, dtype=torch.float32))  # which heads feed which
            new = probe.numel()
            for g in range(new):
                inputs = tuple(template.format(j=j) for j in range(current))

                def rule(*norms, g=g, template=template):
                    stacked = torch.stack(norms)  # (current, d)
                    return regroup(template, stacked)[g]

                ops[template.format(j=g)] = TensorOp(inputs, rule)
        return ops

    def approximation(self, config: dict, kv_heads: dict[str, tuple[int, int]]) -> str | None:
        before, after = kv_heads.get("self", (0, 0))
        if after >= before or self._qk_norm(config) is None:
            return None
        return (
            f"{config['model_type']} normalises keys per head: a pooled key head is normalised after pooling, so "
            "the result is a starting point for uptraining, not the exact pooled-keys model"
        )

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        target = dict(config, num_key_value_heads=kv_heads.get("self", self._kv_heads(config)))
        target.update(provenance)  # extra keys: stock transformers keeps and ignores them
        return target

    def target_architecture(self, source_architecture: str) -> str:
        return source_architecture

    @staticmethod
    def _form_config(target: dict, tag: str, suffix: str, what: str, **fields) -> dict:
        """`target` as hf-gqa's form `tag` of its family (`<family><suffix>`, classes `<Family><tag>...`)."""
        from ..errors import UnsupportedModelError
        from ..modeling.family_forms import AUTO_CLASSES, form_auto_map, form_class_name

        model_type = target["model_type"]
        stock = [names[model_type] for names in AUTO_CLASSES.values() if model_type in names]
        architectures = target.get("architectures") or stock[-1:]
        unknown = [a for a in architectures if a not in stock]
        if unknown:
            raise UnsupportedModelError(f"cannot give a {unknown[0]} {what}: hf-gqa has one for {', '.join(stock)}")
        modules = {"WGQA": "wgqa_decoder", "Routed": "routed"}[tag]
        return dict(
            target,
            model_type=f"{model_type}{suffix}",
            architectures=[form_class_name(a, tag) for a in architectures],
            auto_map=form_auto_map(model_type, tag, f"configuration_{modules}", f"modeling_{modules}"),
            **fields,
        )

    def training_config(self, target: dict, source_heads: dict[str, int], weights: str) -> dict:
        from ..errors import UnsupportedModelError
        from ..modeling.configuration_wgqa_decoder import SUFFIX, TAG, WGQA_FAMILIES

        if target["model_type"] not in WGQA_FAMILIES:
            raise UnsupportedModelError(
                f"{target['model_type']} fuses q, k and v into one projection (qkv_proj): WGQA is not supported for "
                "it; use --variant gqa"
            )
        return self._form_config(
            target, TAG, SUFFIX, "a WGQA training form", gqa_kv_weights=weights, gqa_kv_source_heads=dict(source_heads)
        )

    def routed_config(self, target: dict, routing: dict[str, dict]) -> dict:
        from ..errors import UnsupportedModelError
        from ..modeling.configuration_routed import ROUTED_FAMILIES, SUFFIX, TAG

        if target["model_type"] not in ROUTED_FAMILIES:
            raise UnsupportedModelError(
                f"{target['model_type']} has no routed-attention form in hf-gqa ({target.get('gqa_variant')}); "
                "supported: " + ", ".join(ROUTED_FAMILIES)
            )
        return self._form_config(target, TAG, SUFFIX, "routed attention", gqa_routing=routing)

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        layers = config["num_hidden_layers"]
        return {"self": 2 * self._kv_heads(config) * self.head_dim(config) * layers * bytes_per_value}

    def num_heads(self, config: dict) -> int:
        return config["num_attention_heads"]


register_architecture(NativeGQA())


class NativeWGQA(NativeGQA):
    """The WGQA training form of the native families (`llama_wgqa`, ...): described as the stock family with its G
    heads, and converted (or folded, `hf_gqa.fold`) through the stock checkpoint it folds into."""

    name = "native-wgqa"
    source_model_types = tuple(f"{t}_wgqa" for t in NativeGQA.source_model_types if t != "phi3")

    @staticmethod
    def _qk_norm(config: dict) -> QKNorm | None:
        return NativeGQA._qk_norm(dict(config, model_type=config["model_type"].removesuffix("_wgqa")))

    def reexpress(self, config: dict, keys: Iterable[str] | None = None):
        from ..fold import plan_fold

        return plan_fold(config, keys)

    def folded_config(self, config: dict) -> dict:
        from ..modeling.configuration_wgqa_decoder import stock_class_name

        drop = ("gqa_kv_weights", "gqa_kv_source_heads", "auto_map")
        folded = {k: v for k, v in config.items() if k not in drop}
        folded["model_type"] = config["model_type"].removesuffix("_wgqa")
        if config.get("architectures"):
            folded["architectures"] = [stock_class_name(a) for a in config["architectures"]]
        return folded


register_architecture(NativeWGQA())


class NativeRouted(NativeGQA):
    """The routed-attention form of the native families (`llama_routed`, ...: KDGQA, DGQA, PGQA, GQKVA), described
    for `hf-gqa info` and reports. It is an end point: convert the original checkpoint instead."""

    name = "native-routed"

    @property
    def source_model_types(self):  # noqa: D401  (a property: the family list lives with the modeling code)
        from ..modeling.configuration_routed import ROUTED_FAMILIES, SUFFIX

        return tuple(f"{t}{SUFFIX}" for t in ROUTED_FAMILIES if t != "vit")

    def reexpress(self, config: dict, keys: Iterable[str] | None = None):
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{config['model_type']} is already a routed-attention checkpoint ({config.get('gqa_variant')}); "
            "convert the checkpoint it came from instead"
        )


register_architecture(NativeRouted())

__all__ = ["QK_NORMS", "NativeGQA", "NativeRouted", "NativeWGQA"]
