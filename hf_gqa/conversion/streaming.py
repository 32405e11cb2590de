"""Convert a safetensors checkpoint on disk shard by shard, never materialising the model.

Each output tensor is computed from the input tensors it needs (read one at a time from the input shards) and
written straight into the output file, so memory holds about one tensor, not one shard and never the model.
Tensors that do not change are copied. The output is re-sharded at `max_shard_size` with a standard
`model.safetensors.index.json`, next to the converted config, the source's other files (tokenizer, generation
config) and, for targets hf-gqa defines, the modeling code. Numerically it is the same `TensorMap` the in-memory
path applies, so both give bit-identical tensors.

safetensors has no incremental writer, so `ShardWriter` writes the format directly: an 8-byte header length, a
JSON header (padded with spaces, which the format allows) and the raw tensor bytes.
"""

import dataclasses
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, HfGqaError
from ..spec import GQASpec
from .core import ConversionPlan, get_architecture, plan_conversion

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Never copied from a source folder: weights in any format (the converted ones are written) and what is rewritten.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".ot")
_SKIP_NAMES = {"config.json", "README.md", INDEX_NAME, "pytorch_model.bin.index.json", ".gitattributes"}

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _ST_DTYPES.items()}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes in `size`: an int, or a string such as "5GB", "500MB", "2GiB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip().upper().replace(" ", "")
        unit = next((u for u in sorted(_SIZE_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            value = int(float(text[: -len(unit)]) * _SIZE_UNITS[unit]) if unit else int(text)
        except ValueError:
            value = 0
    if value <= 0:
        raise CheckpointError(f"invalid shard size {size!r}; use e.g. 5GB, 500MB or a number of bytes")
    return value


def safetensors_files(folder: Path) -> list[Path] | None:
    """The safetensors weight files of a checkpoint folder (from its index when sharded), or None if it has none."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index: {error}") from None
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} lacks the shard {missing[0]} its index names: the checkpoint is incomplete"
            )
        return [folder / f for f in files]
    single = folder / WEIGHTS_NAME
    return [single] if single.is_file() else None


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_headers(files: Iterable[Path]) -> "OrderedDict[str, TensorInfo]":
    """Every tensor's file, dtype, shape and size, from the safetensors headers alone, in file and offset order."""
    infos: OrderedDict[str, TensorInfo] = OrderedDict()
    for file in files:
        try:
            with open(file, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error, MemoryError) as error:
            raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{file} is not a readable safetensors file")
        header.pop("__metadata__", None)
        end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
        if file.stat().st_size != 8 + length + end:
            raise CheckpointError(f"{file} is truncated or corrupt: its size does not match its safetensors header")
        for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = entry["data_offsets"]
            infos[key] = TensorInfo(file, entry["dtype"], tuple(entry["shape"]), 8 + length + start, end - start)
    return infos


class _Reader:
    """Fetch input tensors by name with plain reads at their header offsets. Not through a memory map: mapped pages
    of every shard read would count in the process's memory; this way memory holds the tensors in use only."""

    def __init__(self, infos: "OrderedDict[str, TensorInfo]"):
        self.infos = infos
        self.file, self.handle = None, None

    def __call__(self, key: str) -> torch.Tensor:
        info = self.infos[key]
        dtype = _TORCH_DTYPES.get(info.dtype)
        if dtype is None:
            raise CheckpointError(f"cannot read {key!r}: unknown safetensors dtype {info.dtype}")
        handle = self.open(info.file)
        data = torch.empty(info.nbytes, dtype=torch.uint8)  # not zero-filled: every byte is read into it
        handle.seek(info.start)
        if info.nbytes and handle.readinto(memoryview(data.numpy())) != info.nbytes:
            raise CheckpointError(f"{info.file} is truncated: cannot read {key!r}")
        return data.view(dtype).reshape(info.shape)

    def open(self, file: Path):
        if self.file != file:
            self.close()
            self.file, self.handle = file, open(file, "rb", buffering=0)
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.file, self.handle = None, None


class ShardWriter:
    """Write tensors one at a time into safetensors files of at most `max_shard_size` bytes (a tensor larger than
    that gets a file of its own). Files are named `model-part-N.safetensors` until `finish` renames them."""

    def __init__(self, folder: Path, max_shard_size: int, reserve_keys: list[str]):
        self.folder, self.max_shard_size = folder, max_shard_size
        self.remaining = dict.fromkeys(reserve_keys)  # ordered set: keys still to write
        self.shards: list[tuple[Path, dict]] = []
        self.file = None
        self.total_bytes = 0

    def _header_room(self) -> int:
        # Room for every remaining key's entry: name plus dtype, shape and offsets; 8-byte aligned.
        room = 64 + sum(len(json.dumps(k)) + 160 for k in self.remaining)
        return (room + 7) // 8 * 8

    def _open(self) -> None:
        path = self.folder / f"model-part-{len(self.shards) + 1}.safetensors"
        self.file = open(path, "wb", buffering=0)  # unbuffered: `copy` writes through the descriptor too
        self.room = self._header_room()
        self.file.write(b"\0" * (8 + self.room))
        self.entries: dict = {}
        self.offset = 0
        self.shards.append((path, self.entries))

    def _close(self) -> None:
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.entries}, separators=(",", ":")).encode()
        if len(header) > self.room:  # cannot happen with the room reserved; guard against a silent corrupt file
            raise RuntimeError("safetensors header larger than the room reserved for it")
        self.file.seek(0)
        self.file.write(struct.pack("<Q", self.room) + header + b" " * (self.room - len(header)))
        self.file.close()
        self.file = None

    def _entry(self, key: str, dtype: str, shape, nbytes: int) -> None:
        """Open a new shard if this tensor does not fit, and record its entry; the caller then writes its bytes."""
        if self.file is not None and self.offset and self.offset + nbytes > self.max_shard_size:
            self._close()
        if self.file is None:
            self._open()
        self.entries[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [self.offset, self.offset + nbytes]}
        self.offset += nbytes
        self.total_bytes += nbytes
        self.remaining.pop(key, None)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Write a computed tensor."""
        if tensor.dtype not in _ST_DTYPES:
            raise CheckpointError(f"cannot write {key!r}: dtype {tensor.dtype} has no safetensors name")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._entry(key, _ST_DTYPES[tensor.dtype], tensor.shape, data.nbytes)
        view = memoryview(data)
        while view:  # a raw file may write fewer bytes than asked
            view = view[self.file.write(view) :]

    def copy(self, key: str, info: TensorInfo, source) -> None:
        """Write an unchanged tensor by copying its bytes file to file (in the kernel where it can)."""
        self._entry(key, info.dtype, info.shape, info.nbytes)
        offset, left = info.start, info.nbytes
        copy_range = getattr(os, "copy_file_range", None)
        while left and copy_range is not None:
            try:
                done = copy_range(source.fileno(), self.file.fileno(), left, offset)
            except OSError:  # e.g. across file systems on an old kernel: fall back to reading and writing
                break
            if not done:
                break
            offset, left = offset + done, left - done
        while left:
            source.seek(offset)
            chunk = source.read(min(left, 64 * 2**20))
            if not chunk:
                raise CheckpointError(f"{info.file} is truncated: cannot read {key!r}")
            view = memoryview(chunk)
            while view:
                view = view[self.file.write(view) :]
            offset, left = offset + len(chunk), left - len(chunk)

    def finish(self) -> list[Path]:
        """Close the last file, give the shards their standard names and write the index when there are several."""
        if self.file is not None:
            self._close()
        if not self.shards:
            raise CheckpointError("the conversion produced no tensors")
        n = len(self.shards)
        names = [WEIGHTS_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        paths = []
        for (path, _), name in zip(self.shards, names, strict=True):
            path.rename(self.folder / name)
            paths.append(self.folder / name)
        if n > 1:
            weight_map = {key: name for (_, entries), name in zip(self.shards, names, strict=True) for key in entries}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return paths


@dataclass(frozen=True)
class StreamResult:
    plan: ConversionPlan
    parameters: tuple[int, int]  # elements stored before and after
    shards: list[Path]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


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
    from tqdm.auto import tqdm

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
    reader = _Reader(infos)  # SimGQA's plan reads weights: the same reader as the conversion
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

    _write_config_and_code(plan.config, output)
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name not in _SKIP_NAMES:
            if not path.name.endswith(_SKIP_SUFFIXES) and not (output / path.name).exists():
                _copy(path, output / path.name)
    after = sum(_numel(info["shape"]) for _, entries in writer.shards for info in entries.values())
    return StreamResult(plan=plan, parameters=(sum(_numel(i.shape) for i in infos.values()), after), shards=shards)


_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot", "*.tflite"]
_HUB_IGNORE += ["original/*", "onnx/*", "coreml/*", "*.mlmodel", "*.mlpackage/*"]


def safetensors_folder(source: str | os.PathLike) -> Path | None:
    """The local folder holding `source`'s safetensors checkpoint (a Hub id is downloaded, without weights in other
    formats), or None when `source` has none (a .gguf file, a .bin-only checkpoint)."""
    text = str(source)
    if text.endswith(".gguf"):
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        return path if safetensors_files(path) else None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(text, ignore_patterns=_HUB_IGNORE))
    except Exception as error:  # network, auth, offline cache miss: one line, no traceback
        raise CheckpointError(f"cannot download {text!r}: {str(error).strip().splitlines()[0]}") from None
    return folder if safetensors_files(folder) else None


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
    from .api import atomic_output_dir

    with atomic_output_dir(output, force=force) as tmp:
        result = stream_convert(folder, tmp, spec, provenance, max_shard_size=max_shard_size, progress=progress)
        if model_card is not None:
            (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
    return dataclasses.replace(result, shards=[Path(output) / p.name for p in result.shards])


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copyfile(src, dst)


def _write_config_and_code(config_dict: dict, output: Path) -> None:
    """config.json through the target's config class (as `save_pretrained` writes it), plus remote code if any."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import custom_object_save

    from .api import _model_class

    config = AutoConfig.for_model(**config_dict)
    config.save_pretrained(output)
    model_class = _model_class((config_dict.get("architectures") or [""])[0])
    if not model_class.__module__.startswith("transformers."):
        custom_object_save(model_class, output)


__all__ = [
    "ShardWriter",
    "StreamResult",
    "parse_size",
    "read_headers",
    "safetensors_files",
    "safetensors_folder",
    "save_streamed",
    "stream_convert",
]
