"""The converter: a pure function over (config dict, tensors).

`plan_conversion` reads only the config and returns a `ConversionPlan`: the new config and, for each tensor that
changes, a rule mapping the old tensor to the new one. Applying the plan tensor by tensor is what lets the same code
convert a model in memory or a checkpoint streamed shard by shard.
"""

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..architectures import Architecture
from ..errors import HfGqaError, InvalidGroupsError, UnsupportedModelError
from ..grouping import KV_INITS
from ..registry import ARCHITECTURES, VARIANTS, list_model_types, list_variants
from ..spec import GQASpec

TensorRule = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ConversionPlan:
    architecture: Architecture
    config: dict  # the converted checkpoint's config
    kv_heads: dict[str, tuple[int, int]]  # attention kind -> (key/value heads before, after)
    rules: dict[str, TensorRule] = field(repr=False)  # state-dict key -> rule; keys absent here are unchanged

    def convert_tensor(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        rule = self.rules.get(key)
        return tensor if rule is None else rule(tensor)

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = sorted(set(self.rules) - set(state_dict))
        if missing:
            raise HfGqaError(f"checkpoint lacks attention tensors it should have, e.g. {missing[0]}")
        return {key: self.convert_tensor(key, tensor) for key, tensor in state_dict.items()}


def get_architecture(config: Mapping) -> Architecture:
    model_type = config.get("model_type")
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(list_model_types())}"
        ) from None


def _generator(seed: int, key: str) -> torch.Generator:
    # One generator per tensor, seeded from the key, so results do not depend on the order tensors are visited.
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))


def plan_conversion(config: Mapping, spec: GQASpec, provenance: Mapping | None = None) -> ConversionPlan:
    """Plan the conversion of a checkpoint with this `config` (a config dict) as `spec` asks."""
    config = dict(config)
    architecture = get_architecture(config)
    if spec.variant not in VARIANTS:
        raise HfGqaError(f"unknown variant {spec.variant!r}; choose one of {', '.join(list_variants())}")
    if spec.init not in KV_INITS:
        raise HfGqaError(f"unknown init {spec.init!r}; choose one of {', '.join(sorted(KV_INITS))}")
    variant = VARIANTS[spec.variant]()
    kinds = tuple(spec.attention) if spec.attention else architecture.default_attention
    unknown = [k for k in kinds if k not in architecture.attention_kinds]
    if isinstance(spec.groups, Mapping):
        unknown += [k for k in spec.groups if k not in kinds]
    if unknown:
        raise HfGqaError(
            f"unknown or unselected attention kind {unknown[0]!r} for {architecture.name}; "
            f"choose from {', '.join(architecture.attention_kinds)}"
        )

    blocks = architecture.attention_blocks(config)
    kv_heads: dict[str, tuple[int, int]] = {}
    for kind in kinds:
        block = next((b for b in blocks if b.kind == kind), None)
        if block is None:
            raise InvalidGroupsError(f"the model has no {kind} attention")
        new = variant.kv_heads(kind, block.num_heads, block.kv_heads, spec.groups_for(kind))
        kv_heads[kind] = (block.kv_heads, new)

    rules: dict[str, TensorRule] = {}
    for block in blocks:
        if block.kind not in kv_heads or kv_heads[block.kind][0] == kv_heads[block.kind][1]:
            continue
        current, new = kv_heads[block.kind]
        for key in block.kv_keys:
            rules[key] = _kv_rule(variant, key, current, new, spec)

    provenance = {
        "gqa_variant": spec.variant,
        "gqa_init": spec.init,
        "gqa_attention": list(kinds),
        "gqa_source_model_type": config.get("model_type"),
        **(provenance or {}),
    }
    new_config = architecture.target_config(config, {k: v[1] for k, v in kv_heads.items()}, provenance)
    return ConversionPlan(architecture=architecture, config=new_config, kv_heads=kv_heads, rules=rules)


def _kv_rule(variant, key: str, current: int, new: int, spec: GQASpec) -> TensorRule:
    def rule(tensor: torch.Tensor) -> torch.Tensor:
        generator = _generator(spec.seed, key) if spec.init == "random" else None
        return variant.convert_kv(tensor, current, new, spec.init, generator)

    return rule


def convert_state_dict(
    config: Mapping, state_dict: Mapping[str, torch.Tensor], spec: GQASpec, provenance: Mapping | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Convert a checkpoint given as a config dict and a state dict. Returns the new config dict and state dict.

    Tensors that do not change are returned as the same objects (no copy).
    """
    plan = plan_conversion(config, spec, provenance)
    return plan.config, plan.convert_state_dict(state_dict)


__all__ = ["ConversionPlan", "convert_state_dict", "get_architecture", "plan_conversion"]
