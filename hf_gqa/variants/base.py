"""A variant is a small strategy: how many key/value heads each attention block gets and how its tensors change.

A variant folder (`gqa/`, `wgqa/`, `simgqa/`, `routed/`) holds its options (a dataclass of `option()` fields), its
variant classes, and, where it has them, its own model form (`Form`: the WGQA training form, routed attention), its
training hooks and its fold. `hf_gqa.registry` lists the folders' variants and forms explicitly.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import torch

from ..core.grouping import regroup_heads, valid_group_counts
from ..errors import HfGqaError, InvalidGroupsError

if TYPE_CHECKING:
    from ..core.tensormap import TensorMap, TensorOp
    from ..families.base import AttentionBlock, Family, Regroup


class Variant:
    """Base strategy: regroup each block's K/V heads to `kv_heads()` heads with a `KV_INITS` initialiser."""

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[type | None] = None  # the dataclass declaring the options of the variant's folder
    accepts: ClassVar[tuple[str, ...]] = ()  # options declared for other variants that this one also takes

    def kv_heads(self, kind: str, num_heads: int, current: int, requested: int | None) -> int:
        """Key/value heads of a block of `kind` with `num_heads` query heads and `current` K/V heads."""
        raise NotImplementedError

    def convert_kv(
        self, tensor: torch.Tensor, current: int, new: int, init: str, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The new K or V weight (or bias) from the old one."""
        return regroup_heads(tensor, current, new, init=init, generator=generator)

    def check_spec(self, spec) -> None:
        """Refuse options declared for other variants, in one line (options declared `together` named together)."""
        groups: dict[tuple, list] = {}
        for option in spec.declared_options():
            if option.variants and self.name not in option.variants and option.name not in self.accepts:
                groups.setdefault((option.variants, option.together or option.name), []).append(option)
        for (variants, _), options in groups.items():
            if any(getattr(spec, o.name) is not None for o in options):
                verb = "applies" if len(options) == 1 else "apply"
                raise HfGqaError(
                    f"{' and '.join(o.flag for o in options)} {verb} to {' and '.join(variants)} only, not to "
                    f"{self.name!r}"
                )

    def prelude(self, family, config: dict, blocks, kv_heads, spec, get, head_similarities=None):
        """A `TensorMap` to apply before the variant's own tensor ops (e.g. a head reorder) and the config entries
        it implies, or None. `get(key)` reads a tensor of the checkpoint (None where no tensors are at hand);
        `head_similarities` (block prefix -> `(H, H)`) are what was measured on the source beyond its tensors
        (SimGQA's `--similarity activation`), or None."""
        return None

    def provenance(self, spec) -> dict:
        """Config entries recording how the checkpoint was converted (besides the variant's name)."""
        return {"gqa_init": spec.init}

    def rewrites(self, current: int, new: int, spec=None) -> bool:
        """Whether a converted block with `current` K/V heads and `new` after has tensors to change."""
        return current != new

    def tensor_ops(
        self, family: "Family", block: "AttentionBlock", current: int, new: int, spec, regroup: "Regroup"
    ) -> dict[str, "TensorOp"]:
        """How a converted block's tensors change: by default its K/V heads are regrouped by `convert_kv`."""
        return family.tensor_ops(block, regroup)

    def target_config(self, family: "Family", config: dict, kv_heads: dict[str, tuple[int, int]], provenance, spec):
        """The converted checkpoint's config dict (by default the family's, with the new K/V heads)."""
        return family.target_config(config, {kind: after for kind, (_, after) in kv_heads.items()}, provenance)

    @classmethod
    def required_hooks(cls, model, hooks: list) -> list:
        """Training hooks a model of this variant needs that `hooks` lacks (e.g. DGQA's re-allocation)."""
        return []

    @staticmethod
    def check_groups(kind: str, num_heads: int, current: int, groups: int) -> int:
        """`groups` if a block with `current` K/V heads can be regrouped into it, else a one-line error."""
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise InvalidGroupsError(f"--groups must be a positive integer, got {groups!r}")
        if groups > num_heads or num_heads % groups:
            raise InvalidGroupsError(
                f"--groups {groups} does not divide the {num_heads} heads of {kind} attention; "
                f"valid values: {', '.join(map(str, valid_group_counts(num_heads)))}"
            )
        if current % groups and groups % current:
            valid = [g for g in valid_group_counts(num_heads) if current % g == 0 or g % current == 0]
            raise InvalidGroupsError(
                f"--groups {groups} cannot be reached from the {current} key/value heads of {kind} attention; "
                f"valid values: {', '.join(map(str, valid))}"
            )
        return groups


class Form:
    """One of hf-gqa's own model forms that a variant folder writes (the WGQA training form, routed attention):
    marked by config `fields`, named per family by `Family.form_config`."""

    name: ClassVar[str]  # a key of `hf_gqa.families.FORM_NAMES`
    fields: ClassVar[tuple[str, ...]]  # the config entries that mark a checkpoint of this form

    def detect(self, config: dict) -> bool:
        return any(config.get(field) for field in self.fields)

    def reexpress(self, family: "Family", config: dict, keys: Iterable[str] | None) -> tuple[dict, "TensorMap"]:
        """What converting a checkpoint of this form means: the exact plain model it computes, or a refusal."""
        raise NotImplementedError

    def describe(self, family: "Family", config: dict) -> dict:
        """Entries for `hf-gqa info` of a checkpoint of this form."""
        return {}

    def full_training_keys(self, block: "AttentionBlock", config: dict) -> tuple[str, ...]:
        """Tensors of a converted block that LoRA uptraining trains in full (the new grouped ones)."""
        return block.kv_keys + block.optional_kv_keys


__all__ = ["Form", "Variant"]
