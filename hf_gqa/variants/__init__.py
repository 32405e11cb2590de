"""Variant strategies; importing this package registers them."""

from . import gqa, routed, simgqa, wgqa  # noqa: F401  (registers gqa, mqa, mha, wgqa, randwgqa, simgqa, routed)
from .base import Variant

__all__ = ["Variant"]
