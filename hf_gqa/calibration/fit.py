"""Calibrating a converted model against its source, attention block by attention block.

The source runs over the calibration batches; forward hooks gather, for every converted attention block, the second
moments of its projections' inputs, and (calibrated init) the block's own inputs and output. Each block is then
fitted on its own:
- `aligned`: `align.py` (each group's heads rotated onto each other, compensated, then averaged);
- `activation`: the closed form of `closed_form.py` (new K/V heads, queries and output projection compensated);
- `calibrated`: that, then Adam on the block's projections so that its output matches the source block's output on
  the source's own inputs (layer-wise local reconstruction).
A decoder stack is walked layer by layer (`layerwise.walk`: one layer's records at a time, and from disk one layer of
each model at a time with `streamed.py`); other models (T5) record every block in one pass to a private temporary
folder, then fit block by block. Peak memory in memory: the two models plus one block's records.
"""

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import HfGqaError
from ..families import family_for
from ..families.base import AttentionBlock
from . import closed_form
from .align import ADJACENT_ROPE, aligned_init, aligned_refusal, fuses_projections, normalises_heads
from .layerwise import find_stack, map_tensors, walk


@dataclass
class BlockReport:
    prefix: str
    loss_before: float | None = None  # relative MSE of the block's output against the source's (calibrated init)
    loss_after: float | None = None


def _module(model: nn.Module, key: str) -> nn.Module:
    return model.get_submodule(key.rsplit(".", 1)[0])


@dataclass(frozen=True)
class Projections:
    q: str
    k: str
    v: str
    o: str

    @classmethod
    def of(cls, block: AttentionBlock) -> "Projections":
        return cls(block.q_keys[0], block.kv_keys[0], block.kv_keys[1], block.o_key)


def rotary_dims(config: dict, head_dim: int) -> int:
    """How many leading dims of a key head RoPE rotates (0: no RoPE, as T5)."""
    if config.get("model_type") in ("t5", "mt5", "t5_gqa"):
        return 0
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    factor = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0
    return int(head_dim * factor) // 2 * 2


def closed_form_refusal(config: dict, blocks: list[AttentionBlock]) -> str | None:
    """Why the activation init cannot run on this model, or None."""
    model_type = config.get("model_type")
    if model_type in ADJACENT_ROPE:  # the closed form's planes are rotate_half's (j, j + r/2)
        return f"{model_type} rotates interleaved dims"
    if normalises_heads(config, blocks):  # a per-plane scale of a key cannot be moved into the queries through them
        return f"{model_type} normalises queries and keys per head"
    if fuses_projections(blocks):
        return f"{model_type} fuses its projections"
    return None


class _Recorder:
    """Forward hooks on the source: input second moments per projection, and a block's inputs and output."""

    def __init__(self, source: nn.Module, blocks: list[AttentionBlock], folder: Path | None, moments: bool = True):
        self.moments: dict[str, torch.Tensor] = {}
        self.folder, self.handles, self.batch = folder, [], 0
        self._last: tuple = (None, None)
        for block in blocks:
            if moments:  # only where a closed form runs (separate q, k, v and o projections)
                p = Projections.of(block)
                for key in {p.q, p.k}:
                    self.handles.append(_module(source, key).register_forward_pre_hook(self._moment(key)))
            if folder is not None:
                attention = source.get_submodule(block.prefix)
                self.handles.append(attention.register_forward_hook(self._io(block.prefix), with_kwargs=True))

    def _moment(self, key: str):
        def hook(module, args):
            if args[0] is not self._last[0]:  # q and k of a self-attention read the same tensor: one product
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                x = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
                self._last = (args[0], x.T @ x)
            self.moments[key] = self.moments.get(key, 0) + self._last[1]

        return hook

    def _io(self, prefix: str):
        def hook(module, args, kwargs, output):
            record = {"args": _detach(args), "kwargs": _detach(kwargs), "output": output[0].detach().float().cpu()}
            torch.save(record, self.folder / f"{prefix}.{self.batch}.pt")

        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def _detach(value):
    return map_tensors(lambda t: t.detach().cpu(), value)


def _float(value):
    """`value` with its floating-point tensors in float32 (the dtype blocks are fitted in)."""
    return map_tensors(lambda t: t.float() if t.is_floating_point() else t, value)


def _heads(weight: torch.Tensor, bias: torch.Tensor | None, heads: int) -> list[torch.Tensor]:
    rows = closed_form.augment(weight, bias)
    return list(rows.view(heads, -1, rows.shape[1]).unbind(0))


@torch.no_grad()
def activation_init(source, target, block: AttentionBlock, groups: int, moments: dict, rotary: int) -> None:
    """Write the closed-form K/V heads (and compensated queries and output projection) into `target`'s block."""
    p = Projections.of(block)
    modules = {role: (_module(source, key), _module(target, key)) for role, key in vars(p).items()}
    h, hs, d = block.num_heads, block.kv_heads, block.head_dim
    per_kv, per_group = h // hs, hs // groups
    cov_q, cov_kv = moments[p.q], moments[p.k]
    src = {role: m[0] for role, m in modules.items()}
    q = _heads(src["q"].weight, src["q"].bias, h)
    k = _heads(src["k"].weight, src["k"].bias, hs)
    v = _heads(src["v"].weight, src["v"].bias, hs)
    o = list(src["o"].weight.double().view(-1, h, d).unbind(1))  # (hidden, d) per query head
    readers = [range(j * per_kv, (j + 1) * per_kv) for j in range(hs)]
    new_q, new_k, new_v, new_o = list(q), [], [], list(o)
    for g in range(groups):
        members = range(g * per_group, (g + 1) * per_group)
        # keys: RoPE planes (complex scales into the queries), then the other dims (a linear map into the queries)
        parts, maps = [], {}
        if rotary:
            half = rotary // 2
            energies = []
            for j in members:
                e = torch.zeros(half, dtype=torch.float64)
                for i in readers[j]:
                    rows = q[i][:rotary]
                    e += torch.einsum("rn,nm,rm->r", rows, cov_q, rows).view(2, half).sum(0)
                energies.append(e)
            rot, scales = closed_form.rope_planes([k[j][:rotary] for j in members], energies, cov_kv, rotary)
            parts.append(rot)
            for j, s in zip(members, scales, strict=True):
                for i in readers[j]:
                    new_q[i] = closed_form.scale_query_planes(new_q[i], s, rotary)
        if rotary < d:
            metrics = [sum(q[i][rotary:] @ cov_q @ q[i][rotary:].T for i in readers[j]) for j in members]
            rest, rs = closed_form.general_block([k[j][rotary:] for j in members], metrics, cov_kv)
            parts.append(rest)
            for j, r in zip(members, rs, strict=True):
                maps[j] = r
                for i in readers[j]:
                    new_q[i] = torch.cat([new_q[i][:rotary], r @ new_q[i][rotary:]])
        new_k.append(torch.cat(parts))
        # values: a linear map per old head, moved into the output projection of the query heads reading it
        metrics = [sum(o[i].T @ o[i] for i in readers[j]) for j in members]
        shared, rs = closed_form.general_block([v[j] for j in members], metrics, cov_kv)
        new_v.append(shared)
        for j, r in zip(members, rs, strict=True):
            for i in readers[j]:
                new_o[i] = o[i] @ r.T
    # Balance the scales the compensations leave (exact: q.k and v o^T are unchanged) so that a later Adam step,
    # the same size for every weight, moves the two sides alike.
    for g in range(groups):
        queries = [i for j in range(g * per_group, (g + 1) * per_group) for i in readers[j]]
        s = (new_k[g].norm() / torch.stack([new_q[i].norm() for i in queries]).mean()).clamp_min(1e-12).sqrt()
        new_k[g] = new_k[g] / s
        for i in queries:
            new_q[i] = new_q[i] * s
        s = (new_v[g].norm() / torch.stack([new_o[i].norm() for i in queries]).mean()).clamp_min(1e-12).sqrt()
        new_v[g] = new_v[g] / s
        for i in queries:
            new_o[i] = new_o[i] * s
    _write(modules["q"][1], torch.cat(new_q))
    _write(modules["k"][1], torch.cat(new_k))
    _write(modules["v"][1], torch.cat(new_v))
    o_weight = modules["o"][1].weight
    o_weight.copy_(torch.stack(new_o, dim=1).reshape(o_weight.shape).to(o_weight.dtype))


def _write(linear: nn.Module, rows: torch.Tensor) -> None:
    linear.weight.copy_(rows[:, :-1].to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(rows[:, -1].to(linear.bias.dtype))


def trainable(attention: nn.Module) -> list[nn.Parameter]:
    # T5's relative position bias lives in layer 0 and is shared by the stack: fitting it would move the others.
    return [p for name, p in attention.named_parameters() if "relative_attention_bias" not in name]


def reconstruct(target, block: AttentionBlock, data: list[dict], steps: int, lr: float, seed: int) -> BlockReport:
    """Adam on the target block's parameters: its output on the records' inputs -> the records' (source) output."""
    attention = target.get_submodule(block.prefix)
    params = trainable(attention)
    dtype = params[0].dtype
    attention.float()
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def loss_on(record) -> torch.Tensor:
        out = attention(*_float(record["args"]), **_float(record["kwargs"]))[0]
        ref = record["output"]
        return (out.float() - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-12)

    with torch.no_grad():
        before = sum(loss_on(r).item() for r in data) / len(data)
        start = [param.detach().clone() for param in params]
    attention.train(False)
    for _ in range(steps):
        record = data[int(torch.randint(len(data), (1,), generator=generator))]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_on(record)
        if not math.isfinite(loss.item()):
            raise HfGqaError(f"calibration diverged in {block.prefix}; try a smaller --calibration-lr")
        loss.backward()
        optimizer.step()
    for param in params:
        param.requires_grad_(False)
    with torch.no_grad():
        after = sum(loss_on(r).item() for r in data) / len(data)
        if after > before:  # never worse than where it started, on the calibration data
            for param, saved in zip(params, start, strict=True):
                param.copy_(saved)
            after = before
    attention.to(dtype)
    return BlockReport(block.prefix, before, after)


def calibrate(
    source,
    target,
    kv_heads: dict[str, tuple[int, int]],
    batches: list[dict],
    init: str,
    steps: int = 150,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[BlockReport]:
    """Fit `target` (converted from `source` by mean pooling) to `source` on `batches`, block by block, in place."""
    config, blocks, refusal = converted_blocks(source, kv_heads, init)
    for block in blocks:  # a converted model may share the tensors it did not change with its source: unshare them
        for param in target.get_submodule(block.prefix).parameters():
            param.data = param.data.clone()
    stack = find_stack(source, blocks) if init == "calibrated" else None
    if stack is not None:  # a decoder stack: layer by layer, nothing written to disk
        return fit_layers(source, target, blocks, stack, kv_heads, batches, init, steps, lr, seed, progress)
    folder = Path(tempfile.mkdtemp(prefix="hf-gqa-calibration-")) if init == "calibrated" else None
    reports = []
    try:
        recorder = _Recorder(source, blocks, folder, moments=refusal is None or init == "aligned")
        try:
            with torch.no_grad():
                for index, batch in enumerate(tqdm(batches, desc="calibration pass", disable=not progress)):
                    recorder.batch = index
                    source(**batch, use_cache=False)
        finally:
            recorder.close()
        desc = "fitting attention blocks" if init == "calibrated" else "closed-form K/V heads"
        for block in tqdm(blocks, desc=desc, disable=not progress):
            init_block(source, target, block, init, kv_heads, recorder.moments, config, refusal)
            report = BlockReport(block.prefix)
            if folder is not None:
                records = [folder / f"{block.prefix}.{i}.pt" for i in range(len(batches))]
                data = [torch.load(path, weights_only=False) for path in records]  # written by this process, just now
                report = reconstruct(target, block, data, steps, lr, seed)
                for path in records:
                    path.unlink()
            reports.append(report)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return reports


def init_block(source, target, block, init: str, kv_heads, moments: dict, config: dict, refusal: str | None) -> None:
    """The closed-form start of `block`: aligned, or the activation init (also the calibrated init's start, where
    the closed form can run; else the calibrated init starts from the mean)."""
    groups, rotary = kv_heads[block.kind][1], rotary_dims(config, block.head_dim)
    if init == "aligned":
        aligned_init(source, target, block, groups, moments, rotary)
    elif refusal is None:
        activation_init(source, target, block, groups, moments, rotary)


def changed_blocks(source, kv_heads) -> list[AttentionBlock]:
    """`source`'s attention blocks whose K/V head count `kv_heads` (attention kind -> heads before, after) changes."""
    config = source.config.to_dict()
    family, _ = family_for(config)
    changed = {kind for kind, (before, after) in kv_heads.items() if before != after}
    return [b for b in family.attention_blocks(config, source.state_dict().keys()) if b.kind in changed]


def converted_blocks(source, kv_heads: dict[str, tuple[int, int]], init: str):
    """`(config, blocks, refusal)`: the source's attention blocks whose head counts change, and why the closed form
    cannot run on them (None when it can); refuses `--init activation` where it cannot."""
    config = source.config.to_dict()
    blocks = changed_blocks(source, kv_heads)
    if init == "aligned" and aligned_refusal(config, blocks):
        raise HfGqaError(aligned_refusal(config, blocks))
    refusal = closed_form_refusal(config, blocks)
    if refusal and init == "activation":
        raise HfGqaError(f"--init activation: {refusal}; use --init calibrated (fitted from the mean)")
    return config, blocks, refusal


def fit_layers(
    source, target, blocks, stack, kv_heads, batches, init, steps, lr, seed, progress, prepare=None, finish=None
) -> list[BlockReport]:
    """Fit the blocks of a single stack of layers in order, each block's output on the source block's inputs to the
    source block's output (`layerwise.walk`, which also explains `prepare`/`finish`)."""
    config = source.config.to_dict()
    refusal = closed_form_refusal(config, blocks)
    # the moments fill in as the source's layers run
    recorder = _Recorder(source, blocks, None, moments=refusal is None or init == "aligned")
    bar = tqdm(total=len(source.get_submodule(stack.container)), desc="fitting layers", disable=not progress)

    def fit_block(block: AttentionBlock, records: list[dict]) -> BlockReport:
        init_block(source, target, block, init, kv_heads, recorder.moments, config, refusal)
        for key in list(recorder.moments):  # this block's moments are used: free them
            if key.startswith(block.prefix + "."):
                recorder.moments.pop(key)
        if init != "calibrated":
            return BlockReport(block.prefix)
        return reconstruct(target, block, records, steps, lr, seed)

    def done(index: int, block) -> None:
        if finish is not None:
            finish(index, block)
        bar.update()

    try:
        return walk(source, stack, blocks, batches, fit_block, prepare=prepare, finish=done)
    finally:
        recorder.close()
        bar.close()


__all__ = [
    "BlockReport",
    "calibrate",
    "changed_blocks",
    "converted_blocks",
    "fit_layers",
    "trainable",
    "closed_form_refusal",
    "rotary_dims",
]
