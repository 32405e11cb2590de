"""Variant strategies; importing this package registers them."""

from . import gqa  # noqa: F401  (registers gqa, mqa, mha)
from .base import Variant

__all__ = ["Variant"]
