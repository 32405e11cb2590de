"""The aligned init: each group's K/V heads rotated onto one another on calibration data, then mean-pooled.

Jin et al. 2025 ("Align Attention Heads Before Merging Them", fpcsong/mha2gqa): before pooling, every K/V head of a
group is replaced by an orthogonal transform of itself, `k_h -> A_h k_h`, compensated exactly where the head is read,
so the model computes the same function; the aligned heads are closer to one another, so their mean loses less.
- Keys: the queries reading head h take the same transform (`q -> A_h q`, so `q . k` is unchanged). With RoPE only
  transforms that commute with RoPE's rotations qualify: in each 2-D RoPE plane a 2x2 rotation (a reflection would
  turn RoPE's rotation into its inverse). transformers' `rotate_half` pairs dim j with dim j + r/2 (r the rotary dims);
  Cohere, GLM and Helium pair dims 2j and 2j + 1. Dims past the rotary ones, and keys without RoPE (T5), take any
  orthogonal transform.
- Values: any orthogonal transform, compensated in the output projection of every query head reading the head
  (`W_o,i -> W_o,i A_h^T`).
A transform of a projection applies to its bias too (a bias is one more weight column, see `closed_form.augment`).

The transforms are fitted on the second moment `C = X^T X` of the projection's (augmented) input, gathered on
calibration text: generalised Procrustes analysis of the heads' outputs `X W_h^T`. `A_h` maximises
`tr(A_h W_h C M^T)` for the group's reference `M` (orthogonal Procrustes: an SVD of that d x d cross-covariance; per
RoPE plane a 2x2 one with det +1), then `M` becomes the mean of the aligned heads, for a few rounds. As in the paper's
code, one start takes the group's first head as the reference; ours adds a second start from the plain mean and keeps
the fit with the smaller error. From the plain-mean start every round lowers the error, so the aligned heads' mean
never reproduces the group's heads worse than the plain mean on the calibration data. The paper also regroups heads
by similarity before aligning; here the groups are the converter's contiguous ones.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import HfGqaError
from ..families import family_for
from ..families.base import AttentionBlock
from .closed_form import augment

# Families whose `rotate_half` pairs dims 2j and 2j + 1 (interleaved), not j and j + r/2.
ADJACENT_ROPE = ("cohere", "glm", "helium")
ROUNDS = 8  # rounds of generalised Procrustes (a group converges in a few)
TOLERANCE = 1e-10  # stop when a round lowers the error by less than this (relative)


def rope_planes(model_type: str | None, rotary: int) -> list[tuple[int, int]]:
    """The pairs of key dims RoPE rotates together: `(j, j + rotary / 2)` (rotate_half), or `(2j, 2j + 1)`."""
    half = rotary // 2
    if model_type in ADJACENT_ROPE:
        return [(2 * j, 2 * j + 1) for j in range(half)]
    return [(j, j + half) for j in range(half)]


def procrustes(cross: torch.Tensor, rotation: bool = False) -> torch.Tensor:
    """The orthogonal `A` maximising `tr(A @ cross)` (batched over leading dims); with `rotation`, the best with
    `det(A) = +1`."""
    u, _, vh = torch.linalg.svd(cross)
    if rotation:  # where the best is a reflection, give up the direction of the smallest singular value
        sign = torch.where(torch.linalg.det(vh.mT @ u.mT) < 0, -1.0, 1.0).to(vh.dtype)
        vh = torch.cat([vh[..., :-1, :], vh[..., -1:, :] * sign[..., None, None]], dim=-2)
    return vh.mT @ u.mT


def key_transform(planes: list[tuple[int, int]], d: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`cross (d, d) -> A (d, d)`: a 2x2 rotation per RoPE plane, any orthogonal map on the other dims."""
    in_planes = {i for plane in planes for i in plane}
    rest = [i for i in range(d) if i not in in_planes]
    pairs = torch.tensor(planes, dtype=torch.long).view(-1, 2)

    def fit(cross: torch.Tensor) -> torch.Tensor:
        a = cross.new_zeros(d, d)
        if planes:  # (P, 2, 2) blocks, one rotation each
            rows, cols = pairs[:, :, None], pairs[:, None, :]
            a[rows, cols] = procrustes(cross[rows, cols], rotation=True)
        if rest:
            idx = torch.tensor(rest)
            a[idx[:, None], idx] = procrustes(cross[idx[:, None], idx])
        return a

    return fit


def _error(heads: list[torch.Tensor], maps: list[torch.Tensor], cov: torch.Tensor) -> tuple[float, torch.Tensor]:
    """`sum_h |X (A_h W_h - M)^T|^2` with `M` the mean of the aligned heads, and `M`."""
    aligned = [a @ w for a, w in zip(maps, heads, strict=True)]
    mean = torch.stack(aligned).mean(0)
    return sum(torch.einsum("dn,nm,dm->", w - mean, cov, w - mean).item() for w in aligned), mean


def align_group(
    heads: list[torch.Tensor], cov: torch.Tensor, fit: Callable[[torch.Tensor], torch.Tensor]
) -> list[torch.Tensor]:
    """Orthogonal `A_h` (each `(d, d)`, from `fit`) bringing the outputs `X W_h^T` of `heads` (each `(d, n)`) close
    to their mean on the calibration rows of `cov = X^T X` (generalised Procrustes). Never worse than plain mean."""
    d = heads[0].shape[0]
    eye = torch.eye(d, dtype=heads[0].dtype)
    best = None
    for reference in (torch.stack(heads).mean(0), heads[0]):  # two starts: the plain mean, the first head
        maps = [eye] * len(heads)
        error, mean = _error(heads, maps, cov)
        if reference is heads[0]:
            maps = [fit(w @ cov @ reference.T) for w in heads]
            error, mean = _error(heads, maps, cov)
        for _ in range(ROUNDS):
            candidate = [fit(w @ cov @ mean.T) for w in heads]
            new_error, new_mean = _error(heads, candidate, cov)
            if new_error > error:
                break
            done = error - new_error <= TOLERANCE * max(error, 1e-30)
            maps, error, mean = candidate, new_error, new_mean
            if done:
                break
        if best is None or error < best[0]:
            best = (error, maps)
    return best[1]


@dataclass
class AlignedBlock:
    """A block's projections as float64 rows: q, k, v `(heads * d, n_in + 1)` (bias last), o `(hidden, H * d)`."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor


def _module(model: nn.Module, key: str) -> nn.Module:
    return model.get_submodule(key.rsplit(".", 1)[0])


def _keys(block: AttentionBlock) -> tuple[str, str, str, str]:
    return block.q_keys[0], block.kv_keys[0], block.kv_keys[1], block.o_key


def fuses_projections(blocks: list[AttentionBlock]) -> bool:
    """Whether a block has no separate q, k, v and o projections (GPT-2's c_attn): no K/V rows to align or fit."""
    return any(not b.q_keys or not b.o_key or len(b.kv_keys) != 2 for b in blocks)


def normalises_heads(config: dict, blocks: list[AttentionBlock]) -> bool:
    """Whether queries and keys pass a per-head norm (a norm weight per head, or one shared by the heads, which the
    family flags as approximate when pooling 2 heads to 1): its weights commute neither with a rotation of a head nor
    with a per-plane scale, so no alignment or closed form can be compensated through it."""
    family, _ = family_for(config)
    return any(b.norm_keys for b in blocks) or bool(family.approximation(config, {b.kind: (2, 1) for b in blocks}))


def aligned_refusal(config: dict, blocks: list[AttentionBlock]) -> str | None:
    """Why the aligned init cannot run on this model (one line), or None."""
    model_type = config.get("model_type")
    if normalises_heads(config, blocks):
        return (
            f"--init aligned: {model_type} normalises queries and keys per head, which a rotation of a head does "
            "not commute with; use --init calibrated"
        )
    if fuses_projections(blocks):
        return f"--init aligned: {model_type} fuses its q/k/v projections; use --init calibrated"
    return None


@torch.no_grad()
def align_heads(source, block: AttentionBlock, groups: int, moments: dict, rotary: int) -> AlignedBlock:
    """`source`'s block with each K/V head of each of `groups` contiguous groups orthogonally aligned to its group and
    compensated in the queries (keys) and the output projection (values): the same function as the source."""
    q_key, k_key, v_key, o_key = _keys(block)
    h, hs, d = block.num_heads, block.kv_heads, block.head_dim
    if hs % groups:
        raise HfGqaError(f"{block.prefix}: {hs} key/value heads do not split into {groups} groups")
    per_kv, per_group = h // hs, hs // groups
    cov = moments[k_key]  # k and v read the same input
    q_mod, k_mod, v_mod, o_mod = (_module(source, key) for key in (q_key, k_key, v_key, o_key))
    q = list(augment(q_mod.weight, q_mod.bias).view(h, d, -1).unbind(0))
    k = list(augment(k_mod.weight, k_mod.bias).view(hs, d, -1).unbind(0))
    v = list(augment(v_mod.weight, v_mod.bias).view(hs, d, -1).unbind(0))
    o = list(o_mod.weight.double().view(-1, h, d).unbind(1))  # (hidden, d) per query head
    key_fit = key_transform(rope_planes(source.config.model_type, rotary), d)
    for g in range(groups):
        members = range(g * per_group, (g + 1) * per_group)
        key_maps = align_group([k[j] for j in members], cov, key_fit)
        value_maps = align_group([v[j] for j in members], cov, procrustes)
        for j, a, b in zip(members, key_maps, value_maps, strict=True):
            k[j], v[j] = a @ k[j], b @ v[j]
            for i in range(j * per_kv, (j + 1) * per_kv):  # the query heads reading K/V head j
                q[i], o[i] = a @ q[i], o[i] @ b.T
    return AlignedBlock(torch.cat(q), torch.cat(k), torch.cat(v), torch.stack(o, dim=1).flatten(1))


def pool(rows: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """Rows of `heads` heads -> rows of `groups` heads, each the mean of its contiguous group."""
    return rows.view(groups, heads // groups, -1, rows.shape[-1]).mean(1).flatten(0, 1)


def _write_rows(linear: nn.Module, rows: torch.Tensor) -> None:
    linear.weight.copy_(rows[:, :-1].to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(rows[:, -1].to(linear.bias.dtype))


@torch.no_grad()
def write_block(model, block: AttentionBlock, rows: AlignedBlock) -> None:
    """Write `rows` into `model`'s block (its K/V projections must have as many rows as `rows.k`)."""
    q_key, k_key, v_key, o_key = _keys(block)
    for key, value in ((q_key, rows.q), (k_key, rows.k), (v_key, rows.v)):
        _write_rows(_module(model, key), value)
    o_weight = _module(model, o_key).weight
    o_weight.copy_(rows.o.to(o_weight.dtype))


@torch.no_grad()
def aligned_init(source, target, block: AttentionBlock, groups: int, moments: dict, rotary: int) -> None:
    """Write into `target`'s block (pooled to `groups` K/V heads) `source`'s block with its K/V heads aligned within
    each group, then mean-pooled; queries and output projection compensated for the alignment."""
    refusal = aligned_refusal(source.config.to_dict(), [block])
    if refusal:
        raise HfGqaError(refusal)
    rows = align_heads(source, block, groups, moments, rotary)
    shared = {p.data_ptr() for p in source.get_submodule(block.prefix).parameters()}
    for param in target.get_submodule(block.prefix).parameters():  # a converted model may share q/o with its source
        if param.data_ptr() in shared:
            param.data = param.data.clone()
    pooled = AlignedBlock(rows.q, pool(rows.k, block.kv_heads, groups), pool(rows.v, block.kv_heads, groups), rows.o)
    write_block(target, block, pooled)


__all__ = [
    "ADJACENT_ROPE",
    "AlignedBlock",
    "align_group",
    "align_heads",
    "aligned_init",
    "aligned_refusal",
    "key_transform",
    "pool",
    "procrustes",
    "rope_planes",
    "write_block",
]
