"""The converter: a pure function over (config dict, tensors).

`plan_conversion` reads only the config (and, when known, the checkpoint's tensor names) and returns a
`ConversionPlan`: the new config and a lazy `TensorMap` saying which tensors change and how. Applying the map tensor
by tensor is what lets the same code convert a model in memory or a checkpoint streamed shard by shard.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..calibration.options import CALIBRATION_INITS
from ..calibration.similarity import check_options, measures_activations, refusal
from ..core.grouping import KV_INITS, key_generator
from ..core.tensormap import TensorMap, TensorOp
from ..errors import HfGqaError, InvalidGroupsError
from ..families import Family
from ..io.auto import source_architectures
from ..registry import get_variant, resolve
from ..spec import GQASpec


@dataclass(frozen=True)
class ConversionPlan:
    architecture: Family  # the adapter of the family converted (after any re-expression)
    config: dict  # the converted checkpoint's config
    kv_heads: dict[str, tuple[int, int]]  # attention kind -> (key/value heads before, after)
    tensors: TensorMap = field(repr=False)
    approximate: str | None = None  # why the result is not exactly the pooled-keys model, if it is not
    reexpressed_from: str | None = None  # the source model_type when the family was re-expressed (e.g. gpt_neox)

    @property
    def changes_tensors(self) -> bool:
        return not self.tensors.is_identity

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.tensors.apply(state_dict)


def get_architecture(config: Mapping) -> Family:
    """The family adapter of a config dict (one-line error for an unsupported `model_type`)."""
    return resolve(config).family


def plan_conversion(
    config: Mapping,
    spec: GQASpec | None,
    provenance: Mapping | None = None,
    keys: Iterable[str] | None = None,
    get: Callable[[str], torch.Tensor] | None = None,
    validate_only: bool = False,
    head_similarities: Mapping[str, torch.Tensor] | None = None,
) -> ConversionPlan:
    """Plan the conversion of a checkpoint with this `config` (a config dict) as `spec` asks.

    `keys`, the checkpoint's tensor names when known, lets an adapter match how a checkpoint on disk names its
    tensors (some keep no base-model prefix). `get(key)` reads one of its tensors, for variants whose plan depends on
    the weights (SimGQA's similarity grouping); `validate_only=True` checks the request against the config alone and
    skips what needs the weights (the plan's tensors are then incomplete). `head_similarities` (block prefix ->
    `(H, H)`) is what SimGQA's `--similarity activation` groups by, measured on the source by the calibration layer
    (`hf_gqa.calibration.similarity`): the plan stays a function of its inputs. With `spec=None` the plan only
    re-expresses the checkpoint exactly (a WGQA training form folded, GPT-NeoX as Phi; anything else unchanged) and
    leaves its K/V heads as they are.
    """
    config = dict(config)
    keys = list(keys) if keys is not None else None
    source_model_type = config.get("model_type")
    resolved = resolve(config)
    architecture = resolved.family
    # The classes the checkpoint loads as, decided before anything else: those `architectures` names, or the model
    # type's default (decoder-only: causal LM, T5: seq2seq) when it names none; a refusal below names them.
    config["architectures"] = source_architectures(config)
    prelude = None
    if resolved.form is not None:  # hf-gqa's own form: folded (WGQA) or refused (routed)
        reexpressed = resolved.form.reexpress(architecture, config, keys)
    else:
        reexpressed = architecture.reexpress(config, keys)
    if reexpressed is not None:
        config, prelude = reexpressed
        architecture = resolve(config).family
        keys = prelude.output_keys(keys) if keys is not None else None
        if get is not None:
            get = (lambda source_get, first: lambda key: first.compute(key, source_get))(get, prelude)
    if spec is None:
        return _reexpression_plan(architecture, config, prelude, provenance, source_model_type)
    variant = get_variant(spec.variant)
    if spec.init not in KV_INITS and spec.init not in CALIBRATION_INITS:
        choices = ", ".join(sorted(KV_INITS) + list(CALIBRATION_INITS))
        raise HfGqaError(f"unknown init {spec.init!r}; choose one of {choices}")
    variant.check_spec(spec)
    check_options(spec)
    kinds = tuple(spec.attention) if spec.attention else architecture.default_attention
    unknown = [k for k in kinds if k not in architecture.attention_kinds]
    if isinstance(spec.groups, Mapping):
        unknown += [k for k in spec.groups if k not in kinds]
    if unknown:
        raise HfGqaError(
            f"unknown or unselected attention kind {unknown[0]!r} for {architecture.name}; "
            f"choose from {', '.join(architecture.attention_kinds)}"
        )

    blocks = architecture.attention_blocks(config, keys)
    kv_heads: dict[str, tuple[int, int]] = {}
    for kind in kinds:
        block = next((b for b in blocks if b.kind == kind), None)
        if block is None:
            raise InvalidGroupsError(f"the model has no {kind} attention")
        new = variant.kv_heads(kind, block.num_heads, block.kv_heads, spec.groups_for(kind))
        kv_heads[kind] = (block.kv_heads, new)
    if measures_activations(spec):  # refused before any calibration text is read
        if prelude is not None:
            raise HfGqaError(
                f"--similarity activation does not support {source_model_type} (it is re-expressed first)"
            )
        changed = {kind for kind, (before, after) in kv_heads.items() if before != after}
        why = refusal(config, [b for b in blocks if b.kind in changed])
        if why:
            raise HfGqaError(why)

    provenance = {
        "gqa_variant": spec.variant,
        **variant.provenance(spec),
        "gqa_attention": list(kinds),
        "gqa_source_model_type": source_model_type,
        **(provenance or {}),
    }
    # Before the tensors: a family the variant cannot produce is refused by name, not by a tensor it lacks.
    new_config = variant.target_config(architecture, config, kv_heads, provenance, spec)

    ops: dict[str, TensorOp] = {}
    required: set[str] = set()
    optional: set[str] = set()
    for block in blocks:
        if block.kind not in kv_heads or not variant.rewrites(*kv_heads[block.kind], spec=spec):
            continue
        current, new = kv_heads[block.kind]

        def regroup(key, tensor, current=current, new=new, norm_keys=block.norm_keys):
            init = spec.init if key not in norm_keys else ("first" if spec.init == "first" else "mean")
            init = "mean" if init in CALIBRATION_INITS else init  # calibration starts from the mean, fitted later
            generator = key_generator(spec.seed, key) if init == "random" else None
            return variant.convert_kv(tensor, current, new, init, generator)

        block_ops = variant.tensor_ops(architecture, block, current, new, spec, regroup)
        ops.update(block_ops)
        required.update(k for k in block.kv_keys if k in block_ops)
        optional.update(block.optional_kv_keys)
        optional.update(k for k in block.q_keys if k.endswith(".bias"))  # a query bias some checkpoints have
    tensors = TensorMap(
        ops=ops,
        required=frozenset(required),
        optional=frozenset(optional),
        name=f"{spec.variant} conversion of {architecture.name}",
    )
    before = None
    if not validate_only:
        before = variant.prelude(
            architecture, config, blocks, kv_heads, spec, get, head_similarities=head_similarities
        )
    if before is not None:
        before_map, config_updates = before
        tensors = before_map.then(tensors)
        new_config.update(config_updates)
    if prelude is not None:
        tensors = prelude.then(tensors)
    return ConversionPlan(
        architecture=architecture,
        config=new_config,
        kv_heads=kv_heads,
        tensors=tensors,
        approximate=architecture.approximation(config, kv_heads),
        reexpressed_from=source_model_type if prelude is not None else None,
    )


def _reexpression_plan(
    architecture: Family,
    config: dict,
    prelude: TensorMap | None,
    provenance: Mapping | None,
    source_model_type: str | None,
) -> ConversionPlan:
    kv_heads: dict[str, tuple[int, int]] = {}
    for block in architecture.attention_blocks(config):
        kv_heads.setdefault(block.kind, (block.kv_heads, block.kv_heads))
    return ConversionPlan(
        architecture=architecture,
        config={**config, **(provenance or {})},
        kv_heads=kv_heads,
        tensors=prelude if prelude is not None else TensorMap(name="re-expression"),
        reexpressed_from=source_model_type if prelude is not None else None,
    )


def convert_state_dict(
    config: Mapping, state_dict: Mapping[str, torch.Tensor], spec: GQASpec, provenance: Mapping | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Convert a checkpoint given as a config dict and a state dict. Returns the new config dict and state dict.

    Tensors that do not change are returned as the same objects (no copy).
    """
    plan = plan_conversion(config, spec, provenance, keys=state_dict.keys(), get=state_dict.__getitem__)
    return plan.config, plan.convert_state_dict(state_dict)


__all__ = ["ConversionPlan", "convert_state_dict", "get_architecture", "plan_conversion"]
