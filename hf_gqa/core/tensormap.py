"""A lazy, composable description of how a checkpoint's tensors become another checkpoint's tensors.

A `TensorMap` says which output tensors are computed, from which input tensors and how; every other input tensor
passes through unchanged under its own name. Nothing is computed until `compute` is called with a way to fetch
input tensors, so the same map converts a state dict in memory or safetensors shards read one tensor at a time.
"""

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError

Get = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class TensorOp:
    """An output tensor computed as `fn(*inputs)`."""

    inputs: tuple[str, ...]
    fn: Callable[..., torch.Tensor]


def keep(tensor: torch.Tensor) -> torch.Tensor:
    """The identity: an op that keeps an input it also reads (an op's inputs are consumed unless also outputs)."""
    return tensor


def in_place(key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[str, TensorOp]:
    """An op that replaces one tensor by `fn(tensor)` under the same name."""
    return key, TensorOp((key,), fn)


@dataclass(frozen=True)
class TensorMap:
    """Output key -> op, plus what happens to the input keys no op names as its output.

    Args:
        ops: output key -> `TensorOp`. Its inputs are consumed (not passed through) unless also listed as outputs.
        required: input keys that must exist; a checkpoint without them is refused (no silent mis-conversion).
        optional: output keys dropped, rather than refused, when an input is missing (e.g. a bias some
            checkpoints have).
        passthrough: whether input keys that no op consumes are copied unchanged. A map that re-expresses one
            family as another sets it to False: then every leftover input key must match `ignore`.
        ignore: glob patterns of input keys dropped without complaint (non-persistent buffers old checkpoints kept).
        name: what the map does, for error messages.
    """

    ops: Mapping[str, TensorOp] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    passthrough: bool = True
    ignore: tuple[str, ...] = ()
    name: str = "conversion"

    def output_keys(self, input_keys: Iterable[str]) -> list[str]:
        """The output checkpoint's keys, in order, for a checkpoint with `input_keys`; refuses missing inputs."""
        input_keys = list(input_keys)
        present = set(input_keys)
        missing = sorted(k for k in self.required if k not in present)
        if missing:
            raise CheckpointError(f"the checkpoint lacks tensors the {self.name} needs, e.g. {missing[0]}")
        computed = {}
        for out, op in self.ops.items():
            absent = [k for k in op.inputs if k not in present]
            if not absent:
                computed[out] = op
            elif out not in self.optional:
                raise CheckpointError(f"the checkpoint lacks tensors the {self.name} needs, e.g. {absent[0]}")
        consumed = {k for op in computed.values() for k in op.inputs}
        keys, placed = [], set()
        for key in input_keys:
            if key in computed:
                keys.append(key)  # replaced in place
                placed.add(key)
            elif key in consumed or any(fnmatch.fnmatchcase(key, p) for p in self.ignore):
                continue
            elif self.passthrough:
                keys.append(key)
            else:
                raise CheckpointError(f"unexpected tensor {key!r}: the {self.name} does not know what to do with it")
        keys += [k for k in computed if k not in placed]
        return keys

    def compute(self, key: str, get: Get) -> torch.Tensor:
        """The output tensor `key`, fetching inputs with `get`."""
        op = self.ops.get(key)
        if op is None:
            return get(key)
        return op.fn(*(get(k) for k in op.inputs))

    def passthrough_source(self, key: str) -> str | None:
        """The input key an output tensor is an unchanged copy of, or None when it is computed."""
        return None if key in self.ops else key

    def apply(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a whole state dict in memory. Tensors that pass through are the same objects (no copy)."""
        return {key: self.compute(key, state_dict.__getitem__) for key in self.output_keys(state_dict)}

    def then(self, after: "TensorMap") -> "TensorMap":
        """The composition: this map, then `after` on its output."""
        return ComposedMap(first=self, second=after, name=f"{self.name}, then {after.name}")

    @property
    def is_identity(self) -> bool:
        return not self.ops and self.passthrough and not self.ignore


@dataclass(frozen=True)
class ComposedMap(TensorMap):
    first: TensorMap = field(default_factory=TensorMap)
    second: TensorMap = field(default_factory=TensorMap)

    def output_keys(self, input_keys: Iterable[str]) -> list[str]:
        return self.second.output_keys(self.first.output_keys(input_keys))

    def compute(self, key: str, get: Get) -> torch.Tensor:
        return self.second.compute(key, lambda k: self.first.compute(k, get))

    def passthrough_source(self, key: str) -> str | None:
        middle = self.second.passthrough_source(key)
        return None if middle is None else self.first.passthrough_source(middle)

    @property
    def is_identity(self) -> bool:
        return self.first.is_identity and self.second.is_identity


__all__ = ["ComposedMap", "Get", "TensorMap", "TensorOp", "in_place", "keep"]
