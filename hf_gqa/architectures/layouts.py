"""Where each attention head lives in a family's tensors, for operations that move whole heads (SimGQA's reorder).

A `HeadSlice` is a span of one tensor along one dimension that holds `heads` equal blocks, one per head, in head
order: the rows of a query projection, the columns of an output projection, the K part of a fused QKV weight, a
per-head norm weight. Reordering heads permutes the blocks of every slice of a block together, which preserves the
model's function: attention is a sum over heads, RoPE rotates every head alike, and biases and norms move with their
heads. T5's relative position bias is the exception: one embedding, computed once and shared by the layers of a
stack, so its per-layer order is recorded in the config (`gqa_head_order`) and applied by `t5_gqa`'s attention.
"""

from dataclasses import dataclass

from ..errors import HfGqaError
from .base import AttentionBlock


@dataclass(frozen=True)
class HeadSlice:
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


def head_layout(architecture_name: str, config: dict, block: AttentionBlock) -> list:
    """Every `HeadSlice` / `PerHeadModules` of one attention block. Needs an MHA block (K/V heads == query heads)."""
    if block.kv_heads != block.num_heads:
        raise HfGqaError(
            f"reordering heads needs one key/value head per query head; this {block.kind} attention has "
            f"{block.kv_heads} for {block.num_heads} query heads (expand it first with --variant mha)"
        )
    builder = _LAYOUTS.get(architecture_name)
    if builder is None:
        raise HfGqaError(f"reordering heads is not supported for {architecture_name} models")
    return builder(config, block)


def _t5(config: dict, block: AttentionBlock) -> list:
    h, d, p = block.num_heads, block.head_dim, block.prefix
    rows = h * d
    return [
        HeadSlice(f"{p}.q.weight", "q", 0, 0, rows, h),
        HeadSlice(f"{p}.k.weight", "k", 0, 0, rows, h),
        HeadSlice(f"{p}.v.weight", "v", 0, 0, rows, h),
        HeadSlice(f"{p}.o.weight", "o", 1, 0, rows, h),
    ]


def _native(config: dict, block: AttentionBlock) -> list:
    from .native import QK_NORMS

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


def _gpt2(config: dict, block: AttentionBlock) -> list:
    h, d, p = block.num_heads, block.head_dim, block.prefix
    rows = h * d
    slices = [HeadSlice(f"{p}.c_attn.weight", role, 1, i * rows, rows, h) for i, role in enumerate("qkv")]
    slices += [HeadSlice(f"{p}.c_attn.bias", role, 0, i * rows, rows, h) for i, role in enumerate("qkv")]
    slices.append(HeadSlice(f"{p}.c_proj.weight", "o", 0, 0, rows, h))  # Conv1D: (in = H*d, out)
    return slices


_LAYOUTS = {"t5": _t5, "native-gqa": _native, "vit": _native, "gpt2": _gpt2}

__all__ = ["HeadSlice", "PerHeadModules", "head_layout"]
