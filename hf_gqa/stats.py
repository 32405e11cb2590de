"""Sizes a user cares about: parameters and KV-cache bytes per token."""

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


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


__all__ = ["dtype_bytes", "format_bytes", "kv_cache_bytes_per_token"]
