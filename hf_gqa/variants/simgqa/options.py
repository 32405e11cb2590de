"""The options of SimGQA."""

from dataclasses import dataclass

from ...core.options import option
from .reorder import SIMILARITY_SOURCES


@dataclass(frozen=True)
class SimGQAOptions:
    similarity: str | None = option(
        help="simgqa: which projection's per-head weights decide which heads share a group, by cosine similarity: "
        "query (the paper's, default), key or value",
        type=str,
        choices=SIMILARITY_SOURCES,
        together="simgqa",
        variants=("simgqa",),
    )
    regroup_every: int | None = option(
        help="simgqa: regroup every N optimizer steps while uptraining (the paper tried 200 and 1000): writes the "
        "WGQA training form, to run with the SimGQARegroup(every=N) hook and fold at the end (default: once, now)",
        type=int,
        metavar="N",
        together="simgqa",
        variants=("simgqa",),
    )


__all__ = ["SimGQAOptions"]
