"""Architecture adapters; importing this package registers them."""

from . import gpt2, gpt_neox, native, t5, vit  # noqa: F401
from .base import Architecture, AttentionBlock

__all__ = ["Architecture", "AttentionBlock"]
