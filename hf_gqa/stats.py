"""Sizes a user cares about: parameters, KV-cache bytes per token, the extra parameters of a WGQA training form."""

from collections.abc import Mapping

import torch

from .conversion.core import get_architecture

_DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1}


def dtype_bytes(dtype) -> int:
    """Bytes per value of a torch dtype or dtype name (4 when unknown)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return _DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


def kv_cache_bytes_per_token(config: Mapping, dtype=None) -> dict[str, int]:
    """KV-cache bytes per token of each cache of a model with this config dict (T5: `self`, `cross`)."""
    dtype = dtype if dtype is not None else config.get("dtype") or config.get("torch_dtype") or "float32"
    return get_architecture(config).kv_cache_bytes_per_token(dict(config), dtype_bytes(dtype))


def weighted_kv_parameters(config: Mapping) -> int:
    """The extra parameters of a WGQA training form (its K/V mixing weights; 0 for any other checkpoint): what
    `hf_gqa.fold` removes, besides the K/V heads it folds."""
    from .modeling.weighted_kv import mixer_shape

    shape = config.get("gqa_kv_weights")
    if not shape:
        return 0
    source_heads = config.get("gqa_kv_source_heads") or {}
    in_features = config.get("d_model") or config.get("hidden_size") or config.get("n_embd")
    total = 0
    for block in get_architecture(config).attention_blocks(dict(config)):
        if block.kind in source_heads:
            n = 1
            for dim in mixer_shape(shape, source_heads[block.kind], block.head_dim, in_features):
                n *= dim
            total += 2 * n  # keys and values
    return total


def routed_attention_parameters(config: Mapping) -> tuple[int, int] | None:
    """Projection weights of the routed attention blocks of a KDGQA/DGQA/PGQA/GQKVA checkpoint in the GQKVA paper's
    accounting (d_model x d_head x (query heads + 2 x key/value heads + attention heads)), and the same blocks' as
    MHA; None for any other checkpoint."""
    from .variants.routed import attention_parameters

    routing = config.get("gqa_routing")
    if not routing:
        return None
    hidden = config.get("d_model") or config.get("hidden_size")
    routed = mha = 0
    for block in get_architecture(config).attention_blocks(dict(config)):
        if block.kind in routing:
            spec = routing[block.kind]
            routed += attention_parameters(spec, hidden, block.head_dim)
            mha += 4 * hidden * block.head_dim * spec["heads"]
    return routed, mha


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


__all__ = [
    "dtype_bytes",
    "format_bytes",
    "kv_cache_bytes_per_token",
    "routed_attention_parameters",
    "weighted_kv_parameters",
]
