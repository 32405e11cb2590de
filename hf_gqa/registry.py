"""The one registry: the variant folders and model families hf-gqa has, listed explicitly.

Adding a variant is one folder under `hf_gqa/variants/` (its options, variants, form, hooks) plus one entry in
`VARIANT_FOLDERS`; adding a model family is one adapter in `hf_gqa/families/` plus one entry in its `FAMILIES`.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import HfGqaError
from .families import FAMILIES, FORM_MODEL_TYPES, SOURCE_MODEL_TYPES, Family, family_for
from .variants import gqa, routed, simgqa, wgqa
from .variants.base import Form, Variant

VARIANT_FOLDERS = (gqa, wgqa, simgqa, routed)

VARIANTS: dict[str, type[Variant]] = {cls.name: cls for folder in VARIANT_FOLDERS for cls in folder.VARIANTS}
FORMS: dict[str, Form] = {folder.FORM.name: folder.FORM for folder in VARIANT_FOLDERS if hasattr(folder, "FORM")}
HOOKS: tuple[type, ...] = tuple(hook for folder in VARIANT_FOLDERS for hook in getattr(folder, "HOOKS", ()))
# The dataclasses declaring the variants' options, once each, in folder order.
OPTION_CLASSES: tuple[type, ...] = tuple(dict.fromkeys(c.options for c in VARIANTS.values() if c.options is not None))


def list_variants() -> list[str]:
    return sorted(VARIANTS)


def list_model_types() -> list[str]:
    """The `model_type`s hf-gqa reads: the families it converts and hf-gqa's own forms of them."""
    return sorted({*SOURCE_MODEL_TYPES, *FORM_MODEL_TYPES})


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise HfGqaError(f"unknown variant {name!r}; choose one of {', '.join(list_variants())}")
    return VARIANTS[name]()


@dataclass(frozen=True)
class Resolved:
    """What a config is: its family, the hf-gqa form it has (if any), and the config as the family's stock (or GQA)
    form, which is what `attention_blocks` and the sizes read."""

    family: Family
    form: Form | None
    view: dict


def resolve(config: Mapping) -> Resolved:
    """The family and form of a config dict; a one-line error for an unsupported `model_type`."""
    config = dict(config)
    family, form_name = family_for(config)
    form = FORMS.get(form_name) if form_name else next((f for f in FORMS.values() if f.detect(config)), None)
    view = family.form_stock_config(config, form.name, ()) if form_name else config
    return Resolved(family, form, view)


def required_hooks(model, hooks: list) -> list:
    """Training hooks a model needs that `hooks` lacks (DGQA's re-allocation for a DGQA model)."""
    extra: list = []
    for cls in VARIANTS.values():
        extra += cls.required_hooks(model, hooks + extra)
    return extra


__all__ = [
    "FAMILIES",
    "FORMS",
    "HOOKS",
    "OPTION_CLASSES",
    "VARIANTS",
    "VARIANT_FOLDERS",
    "Resolved",
    "get_variant",
    "list_model_types",
    "list_variants",
    "required_hooks",
    "resolve",
]
