"""SimGQA's activation similarity (`--similarity activation`, ours, not the paper's): how closely one K/V head's
outputs on calibration text match another's after the best alignment that the head's readers could absorb.

For two K/V heads i, j of one attention block, with projection rows `W_i`, `W_j` (`(d, n + 1)`, the bias as the last
column) and the second moment `S = sum x x^T` of the block's K/V input over the calibration tokens (x augmented by 1,
as the calibrated inits gather it, `fit._Recorder`), the alignment residual is

    min_R |X W_i^T R - X W_j^T|^2 = tr(W_i S W_i^T) + tr(W_j S W_j^T) - 2 max_R tr(R^T C),   C = W_i S W_j^T,

over the orthogonal maps R the head could take and have compensated (as `--init aligned` does, `align.py`):
- values, and keys without RoPE (T5): any orthogonal R. The best score is the nuclear norm of C (Procrustes).
- RoPE keys: only a rotation inside each RoPE plane commutes with RoPE (a reflection would turn RoPE's rotation into
  its inverse). The planes are `align.rope_planes`: dims (j, j + r/2) as transformers' `rotate_half` pairs them, r the
  rotary dims (`fit.rotary_dims`), or (2j, 2j + 1) for the families of `align.ADJACENT_ROPE`. For the plane's 2x2
  block `[[c11, c12], [c21, c22]]` of C the best rotation scores `sqrt((c11 + c22)^2 + (c21 - c12)^2)`. Dims past the
  rotary ones (partial rotary) take any orthogonal R: the nuclear norm of their block of C.

The similarity is `2 score / (tr_i + tr_j)`, in [0, 1] (the residual is never negative), and 1 exactly when one
head's outputs are such a transform of the other's. A pair of K/V heads scores the mean of its key and its value
similarity; the plan then groups the heads with SimGQA's equal-size greedy grouping, as for the weight cosines
(`hf_gqa.variants.simgqa.reorder`). Cost: one pass of the source over the calibration batches (in memory, or from
disk one layer at a time), and per block O(H^2) products and SVDs of d x d matrices.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.options import declared
from ..errors import HfGqaError
from ..families.base import AttentionBlock
from ..variants.simgqa.options import SimGQAOptions
from ..variants.simgqa.reorder import ACTIVATION
from ..variants.simgqa.variant import CALIBRATION_TEXT
from .align import fuses_projections, normalises_heads, rope_planes
from .closed_form import augment
from .fit import Projections, _Recorder, changed_blocks, rotary_dims
from .layerwise import walk
from .options import check_calibration, resolved
from .streamed import walk_folder

# The variants that take --similarity (simgqa, simwgqa), from its one declaration.
SIMILARITY_VARIANTS = next(o.variants for o in declared(SimGQAOptions) if o.name == "similarity")


def measures_activations(spec) -> bool:
    """Whether a conversion request groups heads by activation similarity (a calibration pass of the source)."""
    return spec is not None and getattr(spec, "similarity", None) == ACTIVATION


def check_options(spec) -> None:
    """The calibration options of a request, in one line each. With `--similarity activation` the calibration text
    options (data, samples, sequence length) apply, the data defaulting as the calibrated inits' does (and refused
    where it has no default); the other calibration options apply to the calibrated inits only
    (`check_calibration`)."""
    given = [name for name in CALIBRATION_TEXT if getattr(spec, name) is not None]
    if not measures_activations(spec):
        if given and spec.variant in SIMILARITY_VARIANTS:
            raise HfGqaError(f"--{given[0].replace('_', '-')} applies to {spec.variant} with --similarity activation")
        check_calibration(spec)
        return
    check_calibration(replace(spec, **dict.fromkeys(CALIBRATION_TEXT)))  # everything but the text options
    if resolved(spec)["calibration_data"] is None:
        raise HfGqaError("--similarity activation needs --calibration-data (a text file, aclsum, or a Hub dataset)")
    for name in ("calibration_samples", "calibration_seq_len"):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise HfGqaError(f"--{name.replace('_', '-')} must be at least 1; got {value}")


def refusal(config: dict, blocks: list[AttentionBlock]) -> str | None:
    """Why activation similarity cannot be computed in closed form for these blocks (one line), or None. As for the
    closed-form inits (`fit.closed_form_refusal`): fused q/k/v projections have no separate K/V rows to align, and
    per-head q/k norms do not commute with a rotation of a head. Interleaved RoPE is fine (`align.rope_planes`)."""
    model_type = config.get("model_type")
    why = None
    if fuses_projections(blocks):
        why = f"{model_type} fuses its q/k/v projections"
    elif normalises_heads(config, blocks):
        why = f"{model_type} normalises queries and keys per head, which a rotation of a head does not commute with"
    return f"--similarity activation: {why}; use --similarity query, key or value" if why else None


def alignment_scores(heads: torch.Tensor, cov: torch.Tensor, planes: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """`(H, H)`: `max_R tr(R^T W_i S W_j^T)` for `heads` `(H, d, n)` (rows `W_h`) and `cov` `(n, n)` (`S`), R a
    rotation inside each pair of dims in `planes` and any orthogonal map on the other dims."""
    heads, cov = heads.double(), cov.double()
    count, d, _ = heads.shape
    in_planes = {k for plane in planes for k in plane}
    rest = torch.tensor([k for k in range(d) if k not in in_planes], dtype=torch.long)
    pairs = torch.tensor(list(planes), dtype=torch.long).view(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    projected = heads @ cov  # (H, d, n): W_i S
    scores = heads.new_zeros(count, count)
    for i in range(count):
        cross = projected[i] @ heads.mT  # (H, d, d): C_ij = W_i S W_j^T
        if len(pairs):
            c11, c12, c21, c22 = cross[:, a, a], cross[:, a, b], cross[:, b, a], cross[:, b, b]
            scores[i] += torch.hypot(c11 + c22, c21 - c12).sum(-1)
        if len(rest):
            scores[i] += torch.linalg.svdvals(cross[:, rest[:, None], rest]).sum(-1)
    return (scores + scores.T) / 2  # C_ji = C_ij^T: the same score, up to rounding


def alignment_similarity(
    heads: torch.Tensor, cov: torch.Tensor, planes: Sequence[tuple[int, int]] = ()
) -> torch.Tensor:
    """`(H, H)` similarity `2 score / (tr_i + tr_j)` of `heads` `(H, d, n)` on `cov` (see `alignment_scores`)."""
    heads, cov = heads.double(), cov.double()
    traces = torch.einsum("idn,nm,idm->i", heads, cov, heads)  # tr(W_i S W_i^T), the energy of head i's outputs
    total = (traces[:, None] + traces[None, :]).clamp_min(torch.finfo(torch.float64).tiny)
    return 2 * alignment_scores(heads, cov, planes) / total


@torch.no_grad()
def block_similarity(source: nn.Module, block: AttentionBlock, cov: torch.Tensor, config: dict) -> torch.Tensor:
    """`(H, H)` activation similarity of `block`'s K/V heads in `source`, `cov` the second moment of their input:
    the mean of the key similarity (RoPE planes rotation-only) and the value similarity (any orthogonal map)."""
    p = Projections.of(block)
    rows = {}
    for role, key in (("k", p.k), ("v", p.v)):
        linear = source.get_submodule(key.rsplit(".", 1)[0])
        rows[role] = augment(linear.weight, linear.bias).view(block.kv_heads, block.head_dim, -1)
    planes = rope_planes(config.get("model_type"), rotary_dims(config, block.head_dim))
    return (alignment_similarity(rows["k"], cov, planes) + alignment_similarity(rows["v"], cov)) / 2


def _checked(source: nn.Module, blocks: list[AttentionBlock]) -> dict:
    config = source.config.to_dict()
    why = refusal(config, blocks)
    if why:
        raise HfGqaError(why)
    return config


def _take(recorder: _Recorder, source: nn.Module, block: AttentionBlock, config: dict) -> torch.Tensor:
    """The block's similarity from the moments gathered so far, which are then freed."""
    p = Projections.of(block)
    cov = recorder.moments.pop(p.k)  # k and v read the same input
    recorder.moments.pop(p.q, None)
    return block_similarity(source, block, cov, config)


def head_similarities(
    source: nn.Module, kv_heads: Mapping[str, tuple[int, int]], batches: list[dict], progress: bool = True
) -> dict[str, torch.Tensor]:
    """Block prefix -> `(H, H)` activation similarity of its K/V heads, for every block of `source` (in memory)
    whose K/V heads `kv_heads` (attention kind -> heads before, after) groups: one pass over `batches`."""
    blocks = changed_blocks(source, kv_heads)
    if not blocks:
        return {}
    config = _checked(source, blocks)
    recorder = _Recorder(source, blocks, None)
    training = source.training
    source.eval()  # no dropout in the pass
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="similarity pass", disable=not progress):
                source(**batch, use_cache=False)
    finally:
        recorder.close()
        source.train(training)
    return {block.prefix: _take(recorder, source, block, config) for block in blocks}


def head_similarities_on_disk(
    folder,
    kv_heads: Mapping[str, tuple[int, int]],
    batches_of: Callable[[nn.Module], list[dict]],
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """`head_similarities` of the decoder-only safetensors checkpoint in `folder`, read one layer at a time
    (`streamed.walk_folder`); `batches_of(model)` gives the calibration batches."""

    def walk_layers(source, stack_of, prepare, finish):
        blocks = changed_blocks(source, kv_heads)
        if not blocks:
            return {}
        config = _checked(source, blocks)
        stack = stack_of(blocks)
        batches = batches_of(source)
        recorder = _Recorder(source, blocks, None)
        bar = tqdm(total=len(source.get_submodule(stack.container)), desc="similarity pass", disable=not progress)

        def measure(block: AttentionBlock, records: list[dict]):
            return block.prefix, _take(recorder, source, block, config)

        def done(index: int, block) -> None:
            finish(stack, index, block)
            bar.update()

        try:
            return dict(walk(source, stack, blocks, batches, measure, prepare=partial(prepare, stack), finish=done))
        finally:
            recorder.close()
            bar.close()

    return walk_folder(folder, walk_layers)


__all__ = [
    "SIMILARITY_VARIANTS",
    "alignment_scores",
    "alignment_similarity",
    "block_similarity",
    "check_options",
    "head_similarities",
    "head_similarities_on_disk",
    "measures_activations",
    "refusal",
]
