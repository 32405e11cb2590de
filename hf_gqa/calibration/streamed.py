"""Calibrating a converted checkpoint on disk with one layer of each model in memory at a time.

The source and the converted (mean-pooled) checkpoints are safetensors folders. Both models are built on the meta
device (no weights); the source's embeddings are read, then the layers are walked in order (`layerwise.walk`): a
layer's tensors are read from both folders just before it runs, its attention block is fitted, the fitted tensors
are written to a scratch file and the layer goes back to the meta device. A last pass rewrites the converted
folder's shards with the fitted tensors, one tensor in memory at a time. Peak memory: the embeddings, one layer of
each model in float32, the two streams of hidden states and one block's records.
"""

import ctypes
import ctypes.util
import gc
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig

from ..errors import HfGqaError
from ..io.auto import model_class, register_auto_classes
from ..io.safetensors import INDEX_NAME, Reader, ShardWriter, read_headers, safetensors_files, torch_dtype
from .layerwise import find_stack

DTYPE = torch.float32  # calibration runs in float32, whatever the checkpoint stores


def _trim() -> None:
    """Give freed heap memory back to the system (glibc): a layer's tensors are mostly below glibc's adaptive mmap
    threshold once larger ones were freed, so without this the process's memory grows layer after layer."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def skeleton(config: dict) -> nn.Module:
    """The model `config` describes, parameters on the meta device, buffers (RoPE's frequencies) computed."""
    register_auto_classes()
    architecture = (config.get("architectures") or [None])[0]
    if architecture is None:
        raise HfGqaError("the checkpoint's config.json names no architectures: calibrate it with --in-memory")
    with torch.device("meta"):
        model = model_class(architecture)(AutoConfig.for_model(**config))
    for module in model.modules():
        own_buffers = any(b is not None for b in module._buffers.values())
        if own_buffers and not any(p is not None for p in module._parameters.values()):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    return model.eval()


def _parameters(module: nn.Module, prefix: str):
    for name, sub in module.named_modules():
        for param_name, param in sub._parameters.items():
            if param is not None:
                yield sub, param_name, f"{prefix}{name + '.' if name else ''}{param_name}"


def _read(module: nn.Module, prefix: str, reader: Reader, skip: frozenset[int] = frozenset()) -> None:
    """Read `module`'s parameters (named `prefix` + their names in the checkpoint) into it, in float32, except those
    whose `id` is in `skip`. A tied parameter has several names: it is read once, under the name stored."""
    names: dict[int, list] = {}
    for owner, name, key in _parameters(module, prefix):
        if id(owner._parameters[name]) not in skip:
            names.setdefault(id(owner._parameters[name]), []).append((owner, name, key))
    for places in names.values():
        stored = [key for _, _, key in places if key in reader.infos]
        if not stored:
            raise HfGqaError(f"the checkpoint has no tensor {places[0][2]!r}: calibrate it with --in-memory")
        param = nn.Parameter(reader(stored[0]).to(DTYPE), requires_grad=False)
        for owner, name, _ in places:
            owner._parameters[name] = param


def load(layer: nn.Module, prefix: str, reader: Reader) -> None:
    """Read one layer's parameters into it (`release` frees them)."""
    _read(layer, prefix, reader)


def release(module: nn.Module) -> None:
    """Put `module`'s parameters back on the meta device."""
    for owner, name, _ in _parameters(module, ""):
        param = owner._parameters[name]
        owner._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)


def _readers(folder: Path) -> Reader:
    files = safetensors_files(folder)
    if files is None:
        raise HfGqaError(f"{folder} has no safetensors weights")
    return Reader(read_headers(files))


def rewrite(folder: Path, fitted: dict[str, Path], max_shard_size: int) -> None:
    """Rewrite `folder`'s shards with the tensors in `fitted` (key -> scratch file) in place of theirs, each in the
    dtype the folder stored it in; the other tensors are copied."""
    files = safetensors_files(folder)
    infos = read_headers(files)
    reader = Reader(infos)
    staging = Path(tempfile.mkdtemp(prefix=".calibrated-", dir=folder))
    writer = ShardWriter(staging, max_shard_size, list(infos))
    try:
        for key, info in infos.items():
            if key in fitted:
                with safe_open(str(fitted[key]), framework="pt") as f:
                    tensor = f.get_tensor(key)
                writer.add(key, tensor.to(torch_dtype(info.dtype)))
            else:
                writer.copy(key, info, reader.open(info.file))
        new = writer.finish()
    finally:
        reader.close()
        if writer.file is not None:
            writer.file.close()
    for old in files:
        old.unlink()
    (folder / INDEX_NAME).unlink(missing_ok=True)
    for path in [*new, staging / INDEX_NAME]:
        if path.exists():
            path.rename(folder / path.name)
    shutil.rmtree(staging)


def _stack_read(source: nn.Module, blocks, reader: Reader):
    """`source`'s stack of layers holding `blocks`, with the embeddings and whatever runs before the first layer
    read into it (not the layers, not the output head)."""
    stack = find_stack(source, blocks)
    if stack is None:
        raise HfGqaError("this model's layers cannot be calibrated one at a time: use --in-memory")
    container = source.get_submodule(stack.container)
    head, embeddings = source.get_output_embeddings(), source.get_input_embeddings()
    skip = {id(p) for p in container.parameters()} | {id(p) for p in (head.parameters() if head else ())}
    skip -= {id(p) for p in embeddings.parameters()}  # tied to the output head, still read
    _read(source, "", reader, skip=frozenset(skip))
    return stack


def walk_folder(source_folder, walk_layers):
    """Run `walk_layers(source, stack_of, prepare, finish)` (as `calibrate_folders` does, without a converted model)
    over the checkpoint in `source_folder`, one layer in memory at a time: `stack_of(blocks)` reads what runs before
    the layers, `prepare(stack, index)` reads a layer, `finish(stack, index, block)` frees it. Returns its result."""
    source_folder = Path(source_folder)
    source = skeleton(json.loads((source_folder / "config.json").read_text("utf-8")))
    reader = _readers(source_folder)
    try:

        def prepare(stack, index: int) -> None:
            load(source.get_submodule(stack.container)[index], f"{stack.container}.{index}.", reader)

        def finish(stack, index: int, block) -> None:
            release(source.get_submodule(stack.container)[index])
            gc.collect()
            _trim()

        return walk_layers(source, lambda blocks: _stack_read(source, blocks, reader), prepare, finish)
    finally:
        reader.close()


def calibrate_folders(source_folder, converted_folder, calibrate_layers, max_shard_size: int):
    """Calibrate the checkpoint in `converted_folder` (converted from `source_folder`) in place, one layer at a time.
    `calibrate_layers(source, target, stack, prepare, finish)` walks the layers (`fit.calibrate_layers`)."""
    source_folder, converted_folder = Path(source_folder), Path(converted_folder)
    source_config = json.loads((source_folder / "config.json").read_text("utf-8"))
    target_config = json.loads((converted_folder / "config.json").read_text("utf-8"))
    source, target = skeleton(source_config), skeleton(target_config)
    source_reader, target_reader = _readers(source_folder), _readers(converted_folder)
    scratch = Path(tempfile.mkdtemp(prefix="hf-gqa-fitted-"))
    fitted: dict[str, Path] = {}
    try:

        def stack_of(blocks):
            return _stack_read(source, blocks, source_reader)

        def prepare(stack, index: int) -> None:
            prefix = f"{stack.container}.{index}."
            load(source.get_submodule(stack.container)[index], prefix, source_reader)
            load(target.get_submodule(stack.container)[index], prefix, target_reader)

        def finish(stack, index: int, block) -> None:
            if block is not None:
                attention = target.get_submodule(block.prefix)
                tensors = {
                    f"{block.prefix}.{name}": p.detach().contiguous() for name, p in attention.named_parameters()
                }
                tensors = {k: v for k, v in tensors.items() if k in target_reader.infos}
                path = scratch / f"layer-{index}.safetensors"
                save_file(tensors, str(path))
                fitted.update(dict.fromkeys(tensors, path))
            release(source.get_submodule(stack.container)[index])
            release(target.get_submodule(stack.container)[index])
            gc.collect()
            _trim()

        reports = calibrate_layers(source, target, stack_of, prepare, finish)
        source_reader.close()
        target_reader.close()
        rewrite(converted_folder, fitted, max_shard_size)
        return reports
    finally:
        source_reader.close()
        target_reader.close()
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["calibrate_folders", "load", "release", "rewrite", "skeleton", "walk_folder"]
