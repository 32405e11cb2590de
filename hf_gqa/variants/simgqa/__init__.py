"""SimGQA (Chinnakonduru et al., 2024): heads reordered so that similar ones share a group, then grouped; with
`regroup_every`, regrouped while uptraining by the `SimGQARegroup` hook."""

from .hook import SimGQARegroup, regroup_heads_
from .options import SimGQAOptions
from .variant import VARIANTS, SimGQA

HOOKS = (SimGQARegroup,)

__all__ = ["HOOKS", "VARIANTS", "SimGQA", "SimGQAOptions", "SimGQARegroup", "regroup_heads_"]
