"""Walking a decoder stack layer by layer: the source's layers run one at a time over the calibration batches, and
after a layer with a converted attention block ran, `fit_block` gets that block's records: the source block's inputs
and output. Only the stream of hidden states and one layer's records are held, so the layers can be read from disk
one at a time (`streamed.py`).

Each block is fitted on the *source's* inputs (local reconstruction). Fitting it on the converted model's own inputs
instead (sequential, as GPTQ does for quantization) was measured worse on SmolLM2-135M 3 -> 1, calibrated on ACLSum
train, 60 steps per block: perplexity 1.64x / 5.28x the source's on ACLSum test / CNN/DM, against 1.54x / 4.32x.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..families.base import AttentionBlock


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def map_tensors(fn, value):
    """`value` (a forward call's arguments: tensors in tuples, lists and dicts) with `fn` applied to every tensor."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def detach(value):
    return map_tensors(torch.Tensor.detach, value)


@dataclass(frozen=True)
class Stack:
    """Where the layers are: `container` names the `nn.ModuleList`, `layer_of[prefix]` a block's layer index."""

    container: str
    layer_of: dict[str, int]


def find_stack(model: nn.Module, blocks: list[AttentionBlock]) -> Stack | None:
    """The one `ModuleList` of layers holding every block, or None (e.g. T5's two stacks: calibrated in parallel)."""
    containers, layer_of = set(), {}
    for block in blocks:
        parts = block.prefix.split(".")
        found = None
        for i in range(len(parts) - 1, 0, -1):
            if parts[i].isdigit() and isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
                found = (".".join(parts[:i]), int(parts[i]))
                break
        if found is None:
            return None
        containers.add(found[0])
        layer_of[block.prefix] = found[1]
    if len(containers) != 1 or getattr(model.config, "is_encoder_decoder", False):
        return None
    return Stack(containers.pop(), layer_of)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _first(output):
    return output[0] if isinstance(output, tuple | list) else output


def capture_calls(model: nn.Module, module: nn.Module, batches: list[dict]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) `module` is called with in `model`'s forward pass on each batch; the pass stops there."""
    calls = []

    def hook(_, args, kwargs):
        calls.append((detach(args), detach(kwargs)))
        raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return calls


def _run_layer(layer: nn.Module, calls: list[tuple[tuple, dict]], observe: nn.Module | None = None):
    """Run `layer` on each call; returns the new hidden states and, when `observe` is given, what that submodule
    received (args, kwargs) and returned (its first output) on each call."""
    seen: list = []
    handle = None
    if observe is not None:

        def hook(_, args, kwargs, output):
            seen.append((detach(args), detach(kwargs), _first(output).detach()))

        handle = observe.register_forward_hook(hook, with_kwargs=True)
    try:
        states = [_first(layer(*args, **kwargs)).detach() for args, kwargs in calls]
    finally:
        if handle is not None:
            handle.remove()
    return states, seen


@torch.no_grad()
def walk(
    source: nn.Module,
    stack: Stack,
    blocks: list[AttentionBlock],
    batches: list[dict],
    fit_block: Callable[[AttentionBlock, list[dict]], object],
    prepare: Callable[[int], None] | None = None,
    finish: Callable[[int, AttentionBlock | None], None] | None = None,
) -> list:
    """Walk the source's layers; `fit_block(block, records)` is called once per converted block, after its layer ran
    (so hooks on the source have seen that layer's inputs), with one record `{"args", "kwargs", "output"}` per batch:
    what the source block was called with and its first output. Returns what `fit_block` returned, in layer order.
    `prepare(index)` runs before layer `index` runs (e.g. to read its weights), `finish(index, block)` after it was
    fitted (e.g. to write the fitted block and free the layer)."""
    layers = source.get_submodule(stack.container)
    calls = capture_calls(source, layers[0], batches)
    by_layer = {stack.layer_of[b.prefix]: b for b in blocks}
    results = []
    for index in range(len(layers)):
        block = by_layer.get(index)
        if prepare is not None:
            prepare(index)
        observe = source.get_submodule(block.prefix) if block is not None else None
        states, seen = _run_layer(layers[index], calls, observe)
        if block is not None:
            records = [{"args": args, "kwargs": kwargs, "output": out.float()} for args, kwargs, out in seen]
            del seen
            with torch.enable_grad():
                results.append(fit_block(block, records))
            del records
        calls = [_with_hidden(a, k, h) for (a, k), h in zip(calls, states, strict=True)]
        if finish is not None:
            finish(index, block)
    return results


__all__ = ["Stack", "capture_calls", "detach", "find_stack", "map_tensors", "walk"]
