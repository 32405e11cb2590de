"""Deprecated path, kept for one release: sizes now live in `hf_gqa.conversion.sizes` (and `format_bytes` in
`hf_gqa.core.text`)."""

from .conversion.sizes import (
    dtype_bytes,
    kv_cache_bytes_per_token,
    routed_attention_parameters,
    weighted_kv_parameters,
)
from .core.text import format_bytes

__all__ = [
    "dtype_bytes",
    "format_bytes",
    "kv_cache_bytes_per_token",
    "routed_attention_parameters",
    "weighted_kv_parameters",
]
