"""The options of SimGQA."""

from dataclasses import dataclass

from ...core.options import option
from .reorder import SIMILARITY_SOURCES


@dataclass(frozen=True)
class SimGQAOptions:
    similarity: str | None = option(
        help="simgqa/simwgqa: what decides which heads share a group: the cosine similarity of the per-head "
        "query (the paper's, default), key or value projection weights; or activation (ours, not the paper's): how "
        "closely each K/V head's outputs on calibration text match another's after the best orthogonal alignment, "
        "RoPE-safe for keys (one calibration pass of the source over --calibration-data, --calibration-samples, "
        "--calibration-seq-len; once: not with --regroup-every)",
        type=str,
        choices=SIMILARITY_SOURCES,
        together="simgqa",
        variants=("simgqa", "simwgqa"),
    )
    regroup_every: int | None = option(
        help="simgqa/simwgqa: regroup every N optimizer steps while uptraining (the paper tried 200 and 1000): "
        "writes a training form that keeps every K/V head, to run with the SimGQARegroup(every=N) hook and fold at "
        "the end. simgqa: each group is the plain mean of its heads, no weights are trained (the paper's); simwgqa: "
        "WGQA's learned weights, carried with their heads (ours) (default: group once, now)",
        type=int,
        metavar="N",
        together="simgqa",
        variants=("simgqa", "simwgqa"),
    )


__all__ = ["SimGQAOptions"]
