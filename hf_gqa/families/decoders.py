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

from ..core.tensormap import TensorOp, in_place
from ..errors import UnsupportedModelError
from ..modeling import configuration_routed, configuration_wgqa_decoder
from ..modeling.family_forms import AUTO_CLASSES, form_auto_map, form_class_name, stock_class_name
from .base import AttentionBlock, Family, HeadSlice, PerHeadModules, Regroup


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


# hf-gqa's forms of the decoder families: form -> (modeling module, the families it covers).
FORM_MODULES = {"wgqa": configuration_wgqa_decoder, "routed": configuration_routed}
_MODULE_NAMES = {"wgqa": "wgqa_decoder", "routed": "routed"}


class NativeGQA(Family):
    name = "native-gqa"
    # The families whose attention reads separate k_proj/v_proj (the WGQA form's list, declared once in modeling/),
    # and Phi-3, which fuses them into qkv_proj: stock GQA only.
    source_model_types = (*configuration_wgqa_decoder.WGQA_FAMILIES, "phi3")
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

    @property
    def forms(self) -> tuple[str, ...]:
        return tuple(FORM_MODULES)

    def form_model_types(self) -> dict[str, str]:
        """The model types of hf-gqa's forms of these families (`llama_wgqa`, ...) -> the form."""
        return {
            f"{t}{module.SUFFIX}": form
            for form, module in FORM_MODULES.items()
            for t in self._form_families(module)
            if t in self.source_model_types
        }

    @staticmethod
    def _form_families(module) -> tuple[str, ...]:
        return getattr(module, "WGQA_FAMILIES", None) or module.ROUTED_FAMILIES

    def form_refusal(self, target: dict, form: str) -> str:
        model_type = target["model_type"]
        if form == "wgqa":
            return (
                f"{model_type} fuses q, k and v into one projection (qkv_proj): WGQA is not supported for it; use "
                "--variant gqa"
            )
        return (
            f"{model_type} has no routed-attention form in hf-gqa ({target.get('gqa_variant')}); supported: "
            + ", ".join(configuration_routed.ROUTED_FAMILIES)
        )

    def form_config(self, target: dict, form: str, **fields) -> dict:
        """`target` as hf-gqa's `form` of its family (`<family><suffix>`, classes `<Family><Tag>...`)."""
        module = FORM_MODULES[form]
        model_type = target["model_type"]
        if model_type not in self._form_families(module):
            raise UnsupportedModelError(self.form_refusal(target, form))
        stock = [names[model_type] for names in AUTO_CLASSES.values() if model_type in names]
        architectures = target.get("architectures") or stock[-1:]
        unknown = [a for a in architectures if a not in stock]
        if unknown:
            what = {"wgqa": "a WGQA training form", "routed": "routed attention"}[form]
            raise UnsupportedModelError(f"cannot give a {unknown[0]} {what}: hf-gqa has one for {', '.join(stock)}")
        name = _MODULE_NAMES[form]
        return dict(
            target,
            model_type=f"{model_type}{module.SUFFIX}",
            architectures=[form_class_name(a, module.TAG) for a in architectures],
            auto_map=form_auto_map(model_type, module.TAG, f"configuration_{name}", f"modeling_{name}"),
            **fields,
        )

    def form_stock_config(self, config: dict, form: str, fields: tuple[str, ...]) -> dict:
        module = FORM_MODULES[form]
        stock = {k: v for k, v in config.items() if k not in (*fields, "auto_map")}
        stock["model_type"] = config["model_type"].removesuffix(module.SUFFIX)
        if config.get("architectures"):
            stock["architectures"] = [stock_class_name(a, module.TAG) for a in config["architectures"]]
        return stock

    def head_layout(self, config: dict, block: AttentionBlock) -> list[HeadSlice | PerHeadModules]:
        h, d, p = block.num_heads, block.head_dim, block.prefix
        rows, model_type = h * d, config["model_type"]
        out_proj = "dense" if model_type == "phi" else "o_proj"
        slices: list = [HeadSlice(f"{p}.{out_proj}.weight", "o", 1, 0, rows, h)]
        if model_type == "phi3":
            for suffix in ("weight", "bias"):
                for i, role in enumerate("qkv"):
                    slices.append(HeadSlice(f"{p}.qkv_proj.{suffix}", role, 0, i * rows, rows, h))
        else:
            for role in "qkv":
                slices += [HeadSlice(f"{p}.{role}_proj.{s}", role, 0, 0, rows, h) for s in ("weight", "bias")]
        norm = QK_NORMS.get(model_type)
        if norm is not None and (norm.enabled_by is None or config.get(norm.enabled_by)) and norm.shape != "shared":
            if norm.shape == "rows":  # OLMo2/OLMoE: (H*d,) weights; Cohere: (H, d)
                for role in "qk":
                    size = rows if model_type in ("olmo2", "olmoe") else h
                    slices.append(HeadSlice(f"{p}.{role}_norm.weight", role, 0, 0, size, h))
            else:  # StableLM: one LayerNorm per head
                slices += [PerHeadModules(f"{p}.{r}_layernorm.norms.{{h}}.weight", r, h) for r in "qk"]
        return slices

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        layers = config["num_hidden_layers"]
        return {"self": 2 * self._kv_heads(config) * self.head_dim(config) * layers * bytes_per_value}

    def num_heads(self, config: dict) -> int:
        return config["num_attention_heads"]


__all__ = ["FORM_MODULES", "QK_NORMS", "NativeGQA", "QKNorm"]
