"""Convert a safetensors checkpoint on disk shard by shard, never materialising the model.

Each output tensor is computed from the input tensors it needs (read one at a time from the input shards) and
written straight into the output file, so memory holds about one tensor, not one shard and never the model.
Tensors that do not change are copied. The output is re-sharded at `max_shard_size` with a standard
`model.safetensors.index.json`, next to the converted config, the source's other files (tokenizer, generation
config) and, for targets hf-gqa defines, the modeling code. Numerically it is the same `TensorMap` the in-memory
path applies, so both give bit-identical tensors. The disk formats live in `hf_gqa.io`.

Nothing is trusted and nothing is written before the whole checkpoint has been checked, from its headers and config
alone: every header against its file (`hf_gqa.io.safetensors.read_headers`), then every tensor against the model its
config describes (`check_tensors`).
"""

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

from ..errors import CheckpointError, HfGqaError
from ..io.auto import model_class, register_auto_classes
from ..io.output import atomic_output_dir, copy_side_files, write_config_and_code
from ..io.safetensors import (
    INDEX_NAME,
    WEIGHTS_NAME,
    Reader,
    ShardWriter,
    TensorInfo,
    numel,
    parse_size,
    read_headers,
    safetensors_files,
)
from ..io.sources import safetensors_folder
from ..spec import GQASpec
from .plan import ConversionPlan, get_architecture, plan_conversion


@dataclass(frozen=True)
class StreamResult:
    plan: ConversionPlan
    parameters: tuple[int, int]  # elements stored before and after
    shards: list[Path]


def stream_convert(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    spec: GQASpec,
    provenance: dict | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
    head_similarities=None,
) -> StreamResult:
    """Convert the safetensors checkpoint in `folder` into the existing, empty folder `output`.

    Writes the weights (re-sharded), `config.json`, the source's other top-level files (tokenizer, generation config)
    and the modeling code when the target model type is one of hf-gqa's. Use `save_streamed` for an atomic output.
    `head_similarities`: SimGQA's `--similarity activation`, measured on the source (`plan_conversion`'s).
    """
    folder, output = Path(folder), Path(output)
    shard_size = parse_size(max_shard_size)
    files = safetensors_files(folder)
    if files is None:
        raise CheckpointError(f"{folder} has no safetensors weights ({WEIGHTS_NAME} or {INDEX_NAME})")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not get_architecture(config).streams:
        raise HfGqaError(
            f"{config.get('model_type')} checkpoints name their tensors differently on disk than in memory: convert "
            "them in memory (hf-gqa convert does so for this family)"
        )
    infos = read_headers(files)  # every header checked against its file
    check_tensors(config, infos)  # every tensor against the config: nothing is written before both pass
    reader = Reader(infos)  # SimGQA's plan reads weights: the same reader as the conversion
    try:
        plan = plan_conversion(
            config, spec, provenance, keys=infos.keys(), get=reader, head_similarities=head_similarities
        )
        output_keys = plan.tensors.output_keys(infos.keys())
    except BaseException:
        reader.close()
        raise

    writer = ShardWriter(output, shard_size, output_keys)
    sources = {key: plan.tensors.passthrough_source(key) for key in output_keys}
    total = sum(info.nbytes for info in infos.values())  # the source's bytes: close to what is written
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=not progress)
    try:
        for key in output_keys:
            before = writer.total_bytes
            if sources[key] is not None:
                writer.copy(key, infos[sources[key]], reader.open(infos[sources[key]].file))
            else:
                writer.add(key, plan.tensors.compute(key, reader))
            bar.set_postfix_str(f"shard {len(writer.shards)}", refresh=False)
            bar.update(writer.total_bytes - before)
        shards = writer.finish()
        bar.total = bar.n
        bar.refresh()
    finally:
        bar.close()
        reader.close()
        if writer.file is not None:  # an error mid-shard: the caller's atomic folder discards the partial file
            writer.file.close()

    write_config_and_code(plan.config, output)
    copy_side_files(folder, output)
    after = sum(numel(info["shape"]) for _, entries in writer.shards for info in entries.values())
    return StreamResult(plan=plan, parameters=(sum(numel(i.shape) for i in infos.values()), after), shards=shards)


def check_tensors(config: dict, infos: Mapping[str, TensorInfo]) -> None:
    """Refuse (`CheckpointError`) a checkpoint whose tensors do not fit the model its config describes, as
    transformers would load it: a tensor the model has with another shape (K/V projections for other head counts),
    or one the model needs and the checkpoint lacks (an MLP, a norm; a weight tied to one present may be absent).

    From the headers alone: the model is built on the meta device (no memory, no weights read) and the checkpoint's
    names are mapped to its parameters with transformers' own loading rules (base-model prefix, legacy names, the
    MoE experts it fuses on load; tensors it fuses are checked for presence, not shape)."""
    architectures = config.get("architectures") or []
    if not architectures:
        raise CheckpointError(
            "config.json names no architectures, so the model its tensors must fit is unknown: convert it with "
            "--in-memory"
        )
    register_auto_classes()
    cls = model_class(architectures[0])
    try:
        with torch.device("meta"):
            model = cls(AutoConfig.for_model(**config))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        text = str(error).strip().splitlines()
        raise CheckpointError(
            f"config.json does not describe a {architectures[0]}: {text[0] if text else type(error).__name__}"
        ) from None
    expected = model.state_dict(keep_vars=True)
    shapes = {key: tuple(tensor.shape) for key, tensor in expected.items()}
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = model.base_model_prefix
    found = set()
    for key, info in infos.items():
        target, fused = rename_source_key(key, renamings, converters, prefix, shapes)
        if target not in shapes and key in shapes:  # as transformers does: only the prefix, no renaming
            target, fused = rename_source_key(key, [], [], prefix, shapes)
        if target not in shapes:
            continue  # a tensor the model does not have: transformers ignores it, and so does the conversion
        found.add(target)
        if fused is None and info.shape != shapes[target]:
            raise CheckpointError(
                f"{key!r} has shape {list(info.shape)}, but the model its config.json describes "
                f"({architectures[0]}{_heads(config)}) has {list(shapes[target])} there: the checkpoint does not "
                "match its config"
            )
    aliases: dict[int, list[str]] = {}  # tied weights are one parameter under several names: one of them suffices
    for key, tensor in expected.items():
        aliases.setdefault(id(tensor), []).append(key)
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    missing = [
        key
        for key, tensor in expected.items()
        if not any(k in found for k in aliases[id(tensor)]) and not any(p.search(key) for p in ignored)
    ]
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} tensor(s) its config.json's {architectures[0]} needs, e.g. "
            f"{missing[0]}: it is incomplete"
        )


def _heads(config: dict) -> str:
    """The head counts a config gives, for messages."""
    names = ("num_attention_heads", "num_key_value_heads", "num_heads", "n_head")
    counts = {n: config[n] for n in names if isinstance(config.get(n), int)}
    return f" with {', '.join(f'{n}={v}' for n, v in counts.items())}" if counts else ""


def save_streamed(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    spec: GQASpec,
    provenance: dict | None = None,
    max_shard_size: int | str = "5GB",
    model_card=None,
    force: bool = False,
    progress: bool = True,
) -> StreamResult:
    """`stream_convert` into `output` atomically: nothing is left there unless the whole conversion succeeds.
    `model_card(result) -> str`, when given, writes the README.md."""
    with atomic_output_dir(output, force=force) as tmp:
        result = stream_convert(folder, tmp, spec, provenance, max_shard_size=max_shard_size, progress=progress)
        if model_card is not None:
            (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
    return dataclasses.replace(result, shards=[Path(output) / p.name for p in result.shards])


__all__ = [
    "INDEX_NAME",
    "ShardWriter",
    "check_tensors",
    "StreamResult",
    "parse_size",
    "read_headers",
    "safetensors_files",
    "safetensors_folder",
    "save_streamed",
    "stream_convert",
]
