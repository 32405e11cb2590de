"""The options of the routed variants (KDGQA, DGQA, PGQA and the GQKVA family)."""

from dataclasses import dataclass

from ...core.options import option
from ...modeling.routing import ALLOCATIONS, EVOLUTIONS, STATISTICS


@dataclass(frozen=True)
class RoutedOptions:
    q_groups: int | None = option(
        help="gqkva: the query heads (gq) of GQKVA-gq.gkv; --groups is gkv",
        type=int,
        metavar="GQ",
        variants=("gqkva",),
    )
    statistic: str | None = option(
        help="kdgqa: the key-norm statistic while training: per sample (default) or per batch (the paper's); "
        "evaluation is always per sample",
        type=str,
        choices=STATISTICS,
        variants=("kdgqa",),
    )
    allocation: str | None = option(
        help="kdgqa/dgqa: how key norms become query heads per group: balanced (default, ours: every group first gets "
        "one head, the rest in proportion) or paper (Khan et al.'s eq. 3: floor of the proportional share, a group "
        "may get none; heads the floor leaves over go by largest remainder)",
        type=str,
        choices=ALLOCATIONS,
        variants=("kdgqa", "dgqa"),
    )
    window: int | None = option(
        help="dgqa: re-allocate query heads every N training steps (default: 300, the paper's)",
        type=int,
        metavar="N",
        variants=("dgqa",),
    )
    ema_alpha: float | None = option(
        help="dgqa: weight of the newest window's key norms in the EMA (default: 0.1)",
        type=float,
        metavar="A",
        variants=("dgqa",),
    )
    evolution: str | None = option(
        help="dgqa: allocate by an EMA of key norms (default) or by their change between windows (difference)",
        type=str,
        choices=EVOLUTIONS,
        variants=("dgqa",),
    )
    noise_in_eval: bool | None = option(
        help="pgqa: also perturb the attention maps in evaluation (default: training only)",
        type=bool,
        variants=("pgqa",),
    )


__all__ = ["RoutedOptions"]
