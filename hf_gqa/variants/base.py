"""A variant is a small strategy: how many key/value heads each attention block gets and how its tensors change."""

from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import HfGqaError, InvalidGroupsError
from ..grouping import regroup_heads, valid_group_counts

if TYPE_CHECKING:
    from ..architectures.base import Architecture, AttentionBlock, Regroup
    from ..spec import GQASpec
    from ..tensormap import TensorOp


# Options of the routed variants, by the variants that take them (the CLI flag in parentheses).
ROUTED_OPTIONS = {
    "q_groups": (("gqkva",), "--q-groups"),
    "statistic": (("kdgqa",), "--statistic"),
    "window": (("dgqa",), "--window"),
    "ema_alpha": (("dgqa",), "--ema-alpha"),
    "evolution": (("dgqa",), "--evolution"),
    "noise_in_eval": (("pgqa",), "--noise-in-eval"),
}


def check_routed_options(name: str, spec: "GQASpec") -> None:
    """Refuse a routed variant's option given to another variant (one line)."""
    for option, (variants, flag) in ROUTED_OPTIONS.items():
        if getattr(spec, option) is not None and name not in variants:
            raise HfGqaError(f"{flag} applies to {' and '.join(variants)} only, not to {name!r}")


class Variant:
    """Base strategy: regroup each block's K/V heads to `kv_heads()` heads with a `KV_INITS` initialiser."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def kv_heads(self, kind: str, num_heads: int, current: int, requested: int | None) -> int:
        """Key/value heads of a block of `kind` with `num_heads` query heads and `current` K/V heads."""
        raise NotImplementedError

    def convert_kv(
        self, tensor: torch.Tensor, current: int, new: int, init: str, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The new K or V weight (or bias) from the old one."""
        return regroup_heads(tensor, current, new, init=init, generator=generator)

    def check_spec(self, spec: "GQASpec") -> None:
        """Refuse options this variant does not take (one line)."""
        if spec.weights is not None or spec.weights_init is not None:
            raise HfGqaError(f"--weights and --weights-init apply to wgqa and randwgqa only, not to {self.name!r}")
        if spec.similarity is not None or spec.regroup_every is not None:
            raise HfGqaError(f"--similarity and --regroup-every apply to simgqa only, not to {self.name!r}")
        check_routed_options(self.name, spec)

    def prelude(self, architecture, config: dict, blocks, kv_heads, spec, get):
        """A `TensorMap` to apply before the variant's own tensor ops (e.g. a head reorder) and the config entries
        it implies, or None. `get(key)` reads a tensor of the checkpoint (None where no tensors are at hand)."""
        return None

    def provenance(self, spec: "GQASpec") -> dict:
        """Config entries recording how the checkpoint was converted (besides the variant's name)."""
        return {"gqa_init": spec.init}

    def rewrites(self, current: int, new: int, spec: "GQASpec | None" = None) -> bool:
        """Whether a converted block with `current` K/V heads and `new` after has tensors to change."""
        return current != new

    def tensor_ops(
        self,
        architecture: "Architecture",
        block: "AttentionBlock",
        current: int,
        new: int,
        spec: "GQASpec",
        regroup: "Regroup",
    ) -> dict[str, "TensorOp"]:
        """How a converted block's tensors change: by default its K/V heads are regrouped by `convert_kv`."""
        return architecture.tensor_ops(block, regroup)

    def target_config(
        self, architecture: "Architecture", config: dict, kv_heads: dict[str, tuple[int, int]], provenance: dict, spec
    ) -> dict:
        """The converted checkpoint's config dict (by default the architecture's, with the new K/V heads)."""
        return architecture.target_config(config, {kind: after for kind, (_, after) in kv_heads.items()}, provenance)

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


__all__ = ["ROUTED_OPTIONS", "Variant", "check_routed_options"]
