"""The options of WGQA and RandWGQA."""

from dataclasses import dataclass

from ...core.options import option
from ...modeling.weighted_kv import LEARNED_SHAPES


@dataclass(frozen=True)
class WGQAOptions:
    weights: str | None = option(
        help="wgqa/randwgqa/simwgqa: the shape of the learned weights that combine each group's K/V heads: one per "
        "head (scalar, the paper's; default), per output feature (vector_out) or per input feature (vector_in) of a "
        "head",
        type=str,
        choices=LEARNED_SHAPES,
        together="weights",
        variants=("wgqa", "randwgqa", "simwgqa"),
    )
    weights_init: str | float | None = option(
        help="wgqa/simwgqa: the weights' initial value: mean (1 / group size, default: the training form starts as "
        "the GQA model) or a number (the paper's 0.5, for groups of two); randwgqa draws them from N(0, 1)",
        type=str,
        also=(int, float),
        metavar="mean|FLOAT",
        together="weights",
        variants=("wgqa", "randwgqa", "simwgqa"),
    )


__all__ = ["WGQAOptions"]
