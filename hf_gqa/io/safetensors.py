"""Safetensors on disk, read and written one tensor at a time: headers, a reader that fetches tensors at their
offsets, and `ShardWriter`, an incremental re-sharding writer. No conversion logic here.

safetensors has no incremental writer, so `ShardWriter` writes the format directly: an 8-byte header length, a
JSON header (padded with spaces, which the format allows) and the raw tensor bytes.
"""

import json
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
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


class Reader:
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


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


__all__ = [
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "Reader",
    "ShardWriter",
    "TensorInfo",
    "numel",
    "parse_size",
    "read_headers",
    "safetensors_files",
]
