"""Variant strategies; importing this package registers them."""

from . import gqa, wgqa  # noqa: F401  (registers gqa, mqa, mha, wgqa, randwgqa)
from .base import Variant

__all__ = ["Variant"]
