"""Safetensors on disk, read and written one tensor at a time: headers (validated), a reader that fetches tensors
at their offsets, and `ShardWriter`, an incremental re-sharding writer. No conversion logic here.

safetensors has no incremental writer, so `ShardWriter` writes the format directly: an 8-byte header length, a
JSON header (padded with spaces, which the format allows) and the raw tensor bytes. Reading trusts nothing: every
header is checked against its file (`validate_header`) before a byte of tensor data is read.
"""

import json
import math
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, HfGqaError

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


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype a safetensors header's dtype name stands for (None: one torch cannot read)."""
    return _TORCH_DTYPES.get(name)


# Bits per element of every dtype the safetensors format names (what a header may say; reading needs _TORCH_DTYPES).
_DTYPE_BITS = {
    **{name: 8 for name in ("BOOL", "U8", "I8", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "F8_E8M0")},
    **{name: 16 for name in ("U16", "I16", "F16", "BF16")},
    **{name: 32 for name in ("U32", "I32", "F32")},
    **{name: 64 for name in ("U64", "I64", "F64", "C64")},
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
_MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library refuses larger headers too
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes in `size`: a positive int, or a string such as "5GB", "500MB", "2GiB" (a user's `--max-shard-size`)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip().upper().replace(" ", "")
        unit = next((u for u in sorted(_SIZE_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            number = float(text[: -len(unit)]) * _SIZE_UNITS[unit] if unit else int(text)
            value = int(number) if isinstance(number, int) or math.isfinite(number) else 0  # "infGB", "nanGB"
        except ValueError:
            value = 0
    if value <= 0:
        raise HfGqaError(f"invalid shard size {size!r}; use e.g. 5GB, 500MB or a number of bytes")
    return value


def safetensors_files(folder: Path) -> list[Path] | None:
    """The safetensors weight files of a checkpoint folder, or None if it has none: the files its index names when
    there is one, else model.safetensors (what transformers loads; a `consolidated.safetensors` beside them is not).
    The index may only name files inside the folder."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index: {error}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise CheckpointError(f"{index} is not a valid safetensors index: its weight_map is not tensor -> file")
        names = list(dict.fromkeys(weight_map.values()))
        files = [_inside(folder, name, index) for name in names]
        missing = [name for name, file in zip(names, files, strict=True) if not file.is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} lacks the shard {missing[0]} its index names: the checkpoint is incomplete"
            )
        return files
    single = folder / WEIGHTS_NAME
    return [single] if single.is_file() else None


def _inside(folder: Path, name: str, index: Path) -> Path:
    """`folder / name` for a shard an index names, refused unless it is and resolves inside `folder`. In the Hub
    cache a snapshot's files are links into the repo's `blobs` folder: those are followed."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise CheckpointError(f"{index} names the shard {name!r}, outside the checkpoint folder: refused")
    root = folder.resolve()
    roots = [root]
    for snapshot in (root, *root.parents):  # <repo>/snapshots/<commit>[/subfolder]
        if snapshot.parent.name == "snapshots" and (snapshot.parent.parent / "blobs").is_dir():
            roots.append((snapshot.parent.parent / "blobs").resolve())
            break
    resolved = (folder / path).resolve()
    if not any(resolved.is_relative_to(r) for r in roots):
        raise CheckpointError(
            f"{index} names the shard {name!r}, a link that resolves outside the checkpoint folder: refused"
        )
    return folder / path


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_headers(files: Iterable[Path]) -> "OrderedDict[str, TensorInfo]":
    """Every tensor's file, dtype, shape and size, from the safetensors headers alone, in file and offset order.
    Each header is validated against its file (`validate_header`); a tensor in two files is refused."""
    infos: OrderedDict[str, TensorInfo] = OrderedDict()
    for file in files:
        try:
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{file} is not a safetensors file: it is shorter than a header")
                (length,) = struct.unpack("<Q", prefix)
                if length > min(size - 8, _MAX_HEADER_BYTES):
                    raise CheckpointError(
                        f"{file} is not a safetensors file: its header length ({length} bytes) exceeds the file"
                    )
                raw = f.read(length)
        except OSError as error:
            raise CheckpointError(f"cannot read {file}: {error.strerror or error}") from None
        try:
            header = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            raise CheckpointError(f"{file} is not a safetensors file: its header is not JSON") from None
        for key, info in validate_header(file, header, 8 + length, size).items():
            if key in infos:
                raise CheckpointError(f"the tensor {key!r} is in both {infos[key].file.name} and {file.name}")
            infos[key] = info
    return infos


def validate_header(file: Path, header, data_start: int, file_size: int) -> "OrderedDict[str, TensorInfo]":
    """The tensors of a parsed safetensors header, in offset order, refused (`CheckpointError`) unless every entry
    has a known dtype, a shape and offsets whose bytes are shape x dtype, and the offsets tile the data after the
    header exactly: from 0, contiguous, non-overlapping, ending at the end of the file."""

    def corrupt(problem: str) -> CheckpointError:
        return CheckpointError(f"{file} is corrupt: {problem}")

    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    entries = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise corrupt(f"the header entry of {key!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BITS:
            raise corrupt(f"{key!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise corrupt(f"{key!r} has no valid shape (a list of sizes), it has {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise corrupt(f"{key!r} has no valid data_offsets (a pair [begin, end]), it has {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise corrupt(f"{key!r} has data_offsets that end before they begin: {offsets}")
        bits = numel(tuple(shape)) * _DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise corrupt(
                f"{key!r} is {dtype} of shape {shape}, {bits / 8:g} bytes, but its data_offsets span {end - begin} "
                "bytes"
            )
        entries.append((begin, end, key, dtype, tuple(shape)))
    entries.sort()
    for (_, end, previous, *_), (begin, _, key, *_) in zip(entries[:-1], entries[1:], strict=True):  # overlaps first
        if begin < end:
            raise corrupt(f"the bytes of {key!r} overlap those of {previous!r} (data_offsets)")
    infos: OrderedDict[str, TensorInfo] = OrderedDict()
    position, previous = 0, None
    for begin, end, key, dtype, shape in entries:
        if begin > position:
            after = f"after {previous!r}" if previous is not None else "at the start of the data"
            raise corrupt(f"{begin - position} bytes {after} belong to no tensor: its data_offsets are not contiguous")
        infos[key] = TensorInfo(file, dtype, shape, data_start + begin, end - begin)
        position, previous = end, key
    if data_start + position != file_size:
        raise CheckpointError(f"{file} is truncated or corrupt: its size does not match its safetensors header")
    return infos


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Reader:
    """Fetch input tensors by name with plain reads at their header offsets. Not through a memory map: mapped pages
    of every shard read would count in the process's memory; this way memory holds the tensors in use only."""

    def __init__(self, infos: "OrderedDict[str, TensorInfo]"):
        self.infos = infos
        self.file, self.handle = None, None

    def __call__(self, key: str) -> torch.Tensor:
        info = self.infos[key]
        dtype = torch_dtype(info.dtype)
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
    "validate_header",
]
