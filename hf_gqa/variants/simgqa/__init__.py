"""SimGQA (Chinnakonduru et al., 2024): heads reordered so that similar ones share a group, then grouped; with
`regroup_every`, regrouped while uptraining by the `SimGQARegroup` hook (groups mean-pooled, as in the paper).
SimWGQA (ours): the same with WGQA's learned weights."""

from .hook import SimGQARegroup, regroup_heads_
from .options import SimGQAOptions
from .variant import VARIANTS, SimGQA, SimWGQA

HOOKS = (SimGQARegroup,)

__all__ = ["HOOKS", "VARIANTS", "SimGQA", "SimGQAOptions", "SimGQARegroup", "SimWGQA", "regroup_heads_"]
