"""The one registry: variant strategies by name, architecture adapters by source `model_type`."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .architectures.base import Architecture
    from .variants.base import Variant

VARIANTS: dict[str, "type[Variant]"] = {}
ARCHITECTURES: dict[str, "Architecture"] = {}


def register_variant(cls: "type[Variant]") -> "type[Variant]":
    """Class decorator: make a variant available under `cls.name`."""
    if cls.name in VARIANTS:
        raise ValueError(f"variant {cls.name!r} is already registered")
    VARIANTS[cls.name] = cls
    return cls


def register_architecture(adapter: "Architecture") -> "Architecture":
    """Make an adapter handle each of its `source_model_types`."""
    for model_type in adapter.source_model_types:
        if model_type in ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is already handled by {ARCHITECTURES[model_type].name}")
        ARCHITECTURES[model_type] = adapter
    return adapter


def list_variants() -> list[str]:
    return sorted(VARIANTS)


def list_model_types() -> list[str]:
    """The source `model_type`s hf-gqa can convert."""
    return sorted(ARCHITECTURES)


__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "list_model_types",
    "list_variants",
    "register_architecture",
    "register_variant",
]
