"""Variant strategies; importing this package registers them."""

from . import gqa, simgqa, wgqa  # noqa: F401  (registers gqa, mqa, mha, wgqa, randwgqa, simgqa)
from .base import Variant

__all__ = ["Variant"]
