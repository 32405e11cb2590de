"""Architecture adapters; importing this package registers them."""

from . import llama_like, t5  # noqa: F401
from .base import Architecture, AttentionBlock

__all__ = ["Architecture", "AttentionBlock"]
