"""Reorder the heads of attention blocks, preserving the model's function (the first step of SimGQA).

`reorder_map` turns per-block head orders into a `TensorMap` over a checkpoint's tensors, so a reorder runs in
memory or streamed, and composes with the GQA pooling that follows it. `similarity_orders` computes SimGQA's orders
from the checkpoint's own weights (query, key, value: cosine of the per-head projections), or (activation, ours) from
head similarity matrices measured on calibration text by the calibration layer and handed in; the greedy grouping is
the same either way.
"""

from collections import defaultdict
from collections.abc import Callable, Mapping

import torch

from ...core.similarity import head_similarity, is_identity, permute_head_rows, similarity_order
from ...core.tensormap import TensorMap, TensorOp
from ...errors import HfGqaError
from ...families.base import AttentionBlock, Family, HeadSlice, PerHeadModules

WEIGHT_SIMILARITIES = ("query", "key", "value")  # cosine of the per-head projection weights (query: the paper's)
ACTIVATION = "activation"  # ours: the heads' calibration outputs after optimal alignment, measured outside the plan
SIMILARITY_SOURCES = (*WEIGHT_SIMILARITIES, ACTIVATION)


def _slice_rows(tensor: torch.Tensor, piece: HeadSlice) -> torch.Tensor:
    return tensor.narrow(piece.dim, piece.start, piece.length)


def head_layout(family: Family, config: dict, block: AttentionBlock) -> list:
    """Every `HeadSlice` / `PerHeadModules` of one attention block. Needs an MHA block (K/V heads == query heads)."""
    if block.kv_heads != block.num_heads:
        raise HfGqaError(
            f"reordering heads needs one key/value head per query head; this {block.kind} attention has "
            f"{block.kv_heads} for {block.num_heads} query heads (expand it first with --variant mha)"
        )
    try:
        return family.head_layout(config, block)
    except NotImplementedError:
        raise HfGqaError(f"reordering heads is not supported for {family.name} models") from None


def similarity_orders(
    family: Family,
    config: dict,
    blocks: list[AttentionBlock],
    group_size: dict[str, int],
    get: Callable[[str], torch.Tensor],
    source: str = "query",
    similarities: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, list[int]]:
    """Block prefix -> head order grouping similar heads: by the cosine of the flattened per-head `source`
    projections, or, with `source="activation"`, by `similarities` (block prefix -> `(H, H)` similarity of its
    K/V heads, measured on calibration text; blocks whose groups hold one head need none)."""
    if source not in SIMILARITY_SOURCES:
        raise ValueError(f"unknown similarity source {source!r}; choose from {', '.join(SIMILARITY_SOURCES)}")
    if source == ACTIVATION:
        return _measured_orders(family, config, blocks, group_size, similarities)
    role = source[0]
    orders = {}
    for block in blocks:
        piece = next(
            p
            for p in head_layout(family, config, block)
            if isinstance(p, HeadSlice) and p.role == role and p.key.endswith("weight")
        )
        rows = _slice_rows(get(piece.key), piece)
        if piece.dim == 1:  # heads along columns (GPT-2's Conv1D): make them rows
            rows = rows.T
        orders[block.prefix] = similarity_order(head_similarity(rows, block.num_heads), group_size[block.kind])
    return orders


def _measured_orders(family, config, blocks, group_size, similarities) -> dict[str, list[int]]:
    orders = {}
    for block in blocks:
        head_layout(family, config, block)  # an MHA block whose heads can move, or a one-line refusal
        size = group_size[block.kind]
        matrix = (similarities or {}).get(block.prefix)
        if size == 1:
            orders[block.prefix] = list(range(block.num_heads))
            continue
        if matrix is None:
            raise HfGqaError(
                f"--similarity activation needs the head similarities of {block.prefix} measured on calibration "
                "text: hf_gqa.convert and hf-gqa convert measure them (with --calibration-data); plan_conversion "
                "and convert_model take them as head_similarities"
            )
        if tuple(matrix.shape) != (block.num_heads, block.num_heads):
            raise HfGqaError(
                f"the head similarities of {block.prefix} have shape {tuple(matrix.shape)}, not "
                f"{block.num_heads} x {block.num_heads}"
            )
        orders[block.prefix] = similarity_order(matrix, size)
    return orders


def mixer_slices(layout: list) -> list[HeadSlice]:
    """The WGQA training form's mixing weights (`<proj>.mixer.weight`, one row per head) of a block's K/V."""
    return [
        HeadSlice(p.key.removesuffix("weight") + "mixer.weight", p.role, 0, 0, p.heads, p.heads)
        for p in layout
        if isinstance(p, HeadSlice) and p.role in "kv" and p.key.endswith(".weight") and p.dim == 0 and p.start == 0
    ]


def reorder_map(
    family: Family,
    config: dict,
    blocks: list[AttentionBlock],
    orders: dict[str, list[int]],
    mixers: bool = False,
) -> TensorMap:
    """A TensorMap moving head `order[p]` of each block to position `p`, in every tensor that holds heads
    (with `mixers`, also the WGQA training form's mixing weights, where a block has them)."""
    ops: dict[str, TensorOp] = {}
    optional: set[str] = set()
    for block in blocks:
        order = orders.get(block.prefix)
        if order is None or is_identity(order):
            continue
        by_key: dict[str, list[HeadSlice]] = defaultdict(list)
        layout = head_layout(family, config, block)
        extra = mixer_slices(layout) if mixers else []
        optional.update(p.key for p in extra)
        for piece in layout + extra:
            if isinstance(piece, PerHeadModules):
                for new, old in enumerate(order):
                    key = piece.template.format(h=new)
                    ops[key] = TensorOp((piece.template.format(h=old),), lambda t: t)
                continue
            by_key[piece.key].append(piece)
            if piece.key.endswith("bias"):
                optional.add(piece.key)

        for key, pieces in by_key.items():

            def permute(t: torch.Tensor, pieces=pieces, order=order) -> torch.Tensor:
                out = t.clone()
                for piece in pieces:
                    moved = permute_head_rows(_slice_rows(t, piece), order, piece.heads, piece.dim)
                    _slice_rows(out, piece).copy_(moved)
                return out

            ops[key] = TensorOp((key,), permute)
    return TensorMap(ops=ops, optional=frozenset(optional), name="head reorder")


__all__ = [
    "ACTIVATION",
    "SIMILARITY_SOURCES",
    "WEIGHT_SIMILARITIES",
    "head_layout",
    "mixer_slices",
    "reorder_map",
    "similarity_orders",
]
