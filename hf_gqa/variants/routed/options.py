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
        help="kdgqa: what the allocation is computed from, in every forward pass. sample (default, ours): per sample "
        "and query position, the mean key norm over the keys that position sees; no batch dependence, causal, and "
        "decoding with a KV cache reproduces the full forward. batch (ours): in training, the sample statistic of "
        "each position averaged over the batch (evaluation: sample); outputs depend on the batch in training only; "
        "causal; cache exact. forward (the paper's: one allocation per forward pass, in training and evaluation): "
        "the mean key norm over every key any sample of the batch sees; an output depends on the other samples of "
        "its batch (evaluation scores depend on the batch size), a position's allocation sees the keys after it, "
        "and decoding with a KV cache does not reproduce the full forward (generation with and without a cache may "
        "differ)",
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
