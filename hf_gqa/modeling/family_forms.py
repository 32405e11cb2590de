# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""hf-gqa's forms of stock decoder families (the WGQA training form `<family>_wgqa`, routed attention
`<family>_routed`): class names, `auto_map`, and the model classes, made the same way for every form.

Ships with those checkpoints (remote code): imports only `transformers`.

A form of a family is a subclass of each of the family's stock classes (config, `*Model`, `*ForCausalLM` or
`*ForImageClassification`) named with the form's tag (`LlamaForCausalLM` -> `LlamaWGQAForCausalLM`), whose `model_type`
is the family's plus the form's suffix, so it is never loaded as the stock family.
"""

from collections.abc import Callable

from torch import nn
from transformers import PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

_CLASS_SUFFIXES = ("ForCausalLM", "ForImageClassification", "Model", "Config")
# The Auto classes a form is made for, where its family has them (decoders: the first two; ViT: the first and last).
AUTO_CLASSES = {
    "AutoModel": modeling_auto.MODEL_MAPPING_NAMES,
    "AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "AutoModelForImageClassification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
}


def form_class_name(stock_name: str, tag: str) -> str:
    """`("LlamaForCausalLM", "WGQA")` -> `LlamaWGQAForCausalLM` (also `*Model`, `*Config`)."""
    for suffix in _CLASS_SUFFIXES:
        if stock_name.endswith(suffix):
            return f"{stock_name.removesuffix(suffix)}{tag}{suffix}"
    raise ValueError(f"no {tag} form of {stock_name}")


def stock_class_name(form_name: str, tag: str) -> str:
    """The inverse of `form_class_name`."""
    for suffix in _CLASS_SUFFIXES:
        if form_name.endswith(f"{tag}{suffix}"):
            return form_name.removesuffix(f"{tag}{suffix}") + suffix
    raise ValueError(f"{form_name} is not a {tag} class")


def form_auto_map(model_type: str, tag: str, config_module: str, modeling_module: str) -> dict[str, str]:
    """The `auto_map` of a checkpoint of the form of the stock `model_type`: every Auto class resolves."""
    auto_map = {"AutoConfig": f"{config_module}.{form_class_name(CONFIG_MAPPING[model_type].__name__, tag)}"}
    for auto, names in AUTO_CLASSES.items():
        if model_type in names:
            auto_map[auto] = f"{modeling_module}.{form_class_name(names[model_type], tag)}"
    return auto_map


def initialize_form(form, rule: Callable[[nn.Module], None]) -> None:
    """transformers' `initialize_weights` walk over `form` (children first; a stock sub-model's modules by its own
    rules), where a stock sub-model's modules also get hf-gqa's `rule`, which it does not know (the form's own
    `_init_weights` applies it already). The stock `*ForCausalLM` holds a stock `*Model`, which transformers would
    initialise with stock rules alone, leaving hf-gqa's modules in it uninitialised memory."""

    def walk(module: nn.Module, owner) -> None:
        for child in module.children():
            walk(child, child if isinstance(child, PreTrainedModel) else owner)
        # `is_custom_code=False`: transformers would otherwise count a module with no tensors of its own as
        # initialised and skip the family's rules for its children; those rules and ours all draw through
        # `transformers.initialization`, which leaves loaded tensors alone.
        owner._initialize_weights(module, is_custom_code=False)
        if owner is not form:
            rule(module)

    walk(form, form)


def form_model_classes(
    configs: dict[str, type], tag: str, suffix: str, make_class: Callable[[type, type], type], module: dict
) -> dict[str, dict[str, type]]:
    """For each stock `model_type` -> form config class: `make_class(stock_class, config_class)` for each of the
    family's classes in `AUTO_CLASSES`, registered for its Auto class and put in `module` (the modeling module's
    globals, so an `auto_map` entry resolves). Families whose checkpoints convert on load (MoE experts) keep their
    conversion."""
    import transformers

    classes: dict[str, dict[str, type]] = {}
    for model_type, config_class in configs.items():
        classes[model_type] = {}
        for auto, names in AUTO_CLASSES.items():
            if model_type not in names:
                continue
            cls = make_class(getattr(transformers, names[model_type]), config_class)
            cls.__name__ = cls.__qualname__ = form_class_name(names[model_type], tag)
            cls.__module__ = module["__name__"]
            cls.config_class = config_class
            cls.register_for_auto_class(auto)
            classes[model_type][auto] = module[cls.__name__] = cls
        mapping = get_checkpoint_conversion_mapping(model_type)
        if mapping:
            register_checkpoint_conversion_mapping(f"{model_type}{suffix}", mapping, overwrite=True)
    return classes


def name_config_class(cls: type, base: type, tag: str, suffix: str, module: dict, doc: str) -> type:
    """Name a form's config class after its stock `base` and put it in `module` (the configuration module's
    globals)."""
    cls.model_type = f"{base.model_type}{suffix}"
    cls.__name__ = cls.__qualname__ = form_class_name(base.__name__, tag)
    cls.__module__ = module["__name__"]
    cls.__doc__ = doc
    module[cls.__name__] = cls
    return cls


__all__ = ["form_auto_map", "form_class_name", "form_model_classes", "name_config_class", "stock_class_name"]
