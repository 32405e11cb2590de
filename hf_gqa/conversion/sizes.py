"""Sizes a user cares about: KV-cache bytes per token, and the extra parameters of hf-gqa's forms."""

from collections.abc import Mapping

import torch

from ..registry import FORMS, resolve

_DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1}


def dtype_bytes(dtype) -> int:
    """Bytes per value of a torch dtype or dtype name (4 when unknown)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return _DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


def kv_cache_bytes_per_token(config: Mapping, dtype=None) -> dict[str, int]:
    """KV-cache bytes per token of each cache of a model with this config dict (T5: `self`, `cross`)."""
    dtype = dtype if dtype is not None else config.get("dtype") or config.get("torch_dtype") or "float32"
    resolved = resolve(config)
    return resolved.family.kv_cache_bytes_per_token(resolved.view, dtype_bytes(dtype))


def weighted_kv_parameters(config: Mapping) -> int:
    """The extra parameters of a WGQA training form (its K/V mixing weights; 0 for any other checkpoint): what
    `hf_gqa.fold` removes, besides the K/V heads it folds."""
    config = dict(config)
    return FORMS["wgqa"].extra_parameters(resolve(config).family, config)


def routed_attention_parameters(config: Mapping) -> tuple[int, int] | None:
    """Projection weights of the routed attention blocks of a KDGQA/DGQA/PGQA/GQKVA checkpoint in the GQKVA paper's
    accounting (d_model x d_head x (query heads + 2 x key/value heads + attention heads)), and the same blocks' as
    MHA; None for any other checkpoint."""
    config = dict(config)
    return FORMS["routed"].attention_parameters(resolve(config).family, config)


__all__ = ["dtype_bytes", "kv_cache_bytes_per_token", "routed_attention_parameters", "weighted_kv_parameters"]
