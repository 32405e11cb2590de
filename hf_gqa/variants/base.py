"""A variant is a small strategy: how many key/value heads each attention block gets and how its tensors change."""

from typing import ClassVar

import torch

from ..errors import InvalidGroupsError
from ..grouping import regroup_heads, valid_group_counts


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


__all__ = ["Variant"]
