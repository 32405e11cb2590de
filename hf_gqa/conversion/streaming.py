"""Convert a safetensors checkpoint on disk shard by shard, never materialising the model.

Each output tensor is computed from the input tensors it needs (read one at a time from the input shards) and
written straight into the output file, so memory holds about one tensor, not one shard and never the model.
Tensors that do not change are copied. The output is re-sharded at `max_shard_size` with a standard
`model.safetensors.index.json`, next to the converted config, the source's other files (tokenizer, generation
config) and, for targets hf-gqa defines, the modeling code. Numerically it is the same `TensorMap` the in-memory
path applies, so both give bit-identical tensors. The disk formats live in `hf_gqa.io`.
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import CheckpointError, HfGqaError
from ..io.output import atomic_output_dir, copy_side_files, write_config_and_code
from ..io.safetensors import (
    INDEX_NAME,
    WEIGHTS_NAME,
    Reader,
    ShardWriter,
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
) -> StreamResult:
    """Convert the safetensors checkpoint in `folder` into the existing, empty folder `output`.

    Writes the weights (re-sharded), `config.json`, the source's other top-level files (tokenizer, generation config)
    and the modeling code when the target model type is one of hf-gqa's. Use `save_streamed` for an atomic output.
    """
    folder, output = Path(folder), Path(output)
    files = safetensors_files(folder)
    if files is None:
        raise CheckpointError(f"{folder} has no safetensors weights ({WEIGHTS_NAME} or {INDEX_NAME})")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not get_architecture(config).streams:
        raise HfGqaError(
            f"{config.get('model_type')} checkpoints name their tensors differently on disk than in memory: convert "
            "them in memory (hf-gqa convert does so for this family)"
        )
    infos = read_headers(files)
    reader = Reader(infos)  # SimGQA's plan reads weights: the same reader as the conversion
    try:
        plan = plan_conversion(config, spec, provenance, keys=infos.keys(), get=reader)
        output_keys = plan.tensors.output_keys(infos.keys())
    except BaseException:
        reader.close()
        raise

    writer = ShardWriter(output, parse_size(max_shard_size), output_keys)
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
    "StreamResult",
    "parse_size",
    "read_headers",
    "safetensors_files",
    "safetensors_folder",
    "save_streamed",
    "stream_convert",
]
