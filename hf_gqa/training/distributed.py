"""What the uptraining loop needs to behave on N processes as on one with the same global batch.

- Statistics that a model gathers in its training forwards and a hook turns into weights or buffers (DGQA's key-norm
  sums, `norm_sum` / `norm_count` of each DGQA `HeadRouting`) are summed over the processes after every micro-batch
  (`StatisticsSync`), so every process holds the statistics of the whole global batch and the hook (DGQA's
  re-allocation) computes the same result on each. Without it each process would count its own shard only, and
  DDP's buffer broadcast (from the first process, before every forward) would keep the first process's shard.
- Hooks that rewrite weights and optimizer state (SimGQA's regrouping) need each process to hold the whole weights
  and the optimizer's own state: they are refused under FSDP and DeepSpeed (`check_hooks_supported`); under DDP every
  process holds the same weights and state after each step, so the regrouping, a function of them, is the same.
"""

import os

import torch

from ..errors import HfGqaError
from ..variants.routed.hook import dgqa_modules
from ..variants.simgqa.hook import SimGQARegroup
from ..variants.wgqa import is_training_form

SUMMED_BUFFERS = ("norm_sum", "norm_count")  # DGQA's window statistics: sums over micro-batches
SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")  # accelerate's distributed types that split weights or optimizer state


def _kind(accelerator) -> str:
    kind = accelerator.distributed_type
    return str(getattr(kind, "value", kind))


def check_world_size(accelerator) -> None:
    """Refuse processes that a launcher started as one job (WORLD_SIZE > 1) but accelerate runs as separate ones: on
    a machine without GPUs, accelerate makes a multi-process job only when told to use the CPU. Each process would
    otherwise train on all the data alone and write the same output folder."""
    world = os.environ.get("WORLD_SIZE", "1")
    if accelerator.num_processes == 1 and world.isdigit() and int(world) > 1:
        raise HfGqaError(
            f"launched as {world} processes, but accelerate runs each alone (no GPU, and the CPU not asked for): "
            "set ACCELERATE_USE_CPU=1 (e.g. ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes "
            f"{world} ...), or run one process"
        )


def check_hooks_supported(accelerator, hooks) -> None:
    """Refuse hooks that cannot run the same on every process under this distributed type (see the module)."""
    kind = _kind(accelerator)
    for hook in hooks:
        if isinstance(hook, SimGQARegroup) and kind in SHARDED:
            raise HfGqaError(
                f"SimGQA's regrouping rewrites the weights and the optimizer state in place, which {kind} splits "
                "across processes; run it with DDP (recipes/accelerate/ddp.yaml) or on one process"
            )


def shards_weights(accelerator) -> bool:
    """Whether each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3, Megatron-LM)."""
    kind = _kind(accelerator)
    if kind == "DEEPSPEED":
        return getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    return kind in ("FSDP", "MEGATRON_LM")


def check_sharding_supported(accelerator, model, lora: bool) -> None:
    """Refuse what turns the trained weights into the saved model in place (LoRA's merge, the fold of a training
    form) where no process holds the whole weights."""
    if not shards_weights(accelerator):
        return
    what = "--lora-r (merged into the weights at the end)" if lora else None
    if what is None and is_training_form(model.config):
        what = f"the training form of {model.config.to_dict().get('gqa_variant')} (folded at the end)"
    if what:
        raise HfGqaError(
            f"{what} needs the whole weights on each process, which {_kind(accelerator)} splits; run it with DDP "
            "(recipes/accelerate/ddp.yaml), DeepSpeed ZeRO-2 or on one process"
        )


class StatisticsSync:
    """Sum, over the processes, what each adds to the models' training statistics during a micro-batch.

    `before()` notes the statistics (the same on every process), `after()` all-reduces each process's increment and
    adds the total to the noted values. A no-op on one process or for a model without such statistics."""

    def __init__(self, model, accelerator):
        self.accelerator = accelerator
        found = dgqa_modules(model) if accelerator.num_processes > 1 else []
        self.buffers = [getattr(module, name) for module in found for name in SUMMED_BUFFERS]
        self.noted: list[torch.Tensor] = []

    def before(self) -> None:
        self.noted = [buffer.detach().clone() for buffer in self.buffers]

    @torch.no_grad()
    def after(self) -> None:
        if not self.buffers:
            return
        pairs = list(zip(self.buffers, self.noted, strict=True))
        increments = torch.cat([(buffer.float() - noted.float()).flatten() for buffer, noted in pairs])
        total = self.accelerator.reduce(increments, reduction="sum")
        start = 0
        for buffer, noted in pairs:
            size = buffer.numel()
            buffer.copy_((noted.float() + total[start : start + size].view_as(buffer)).to(buffer.dtype))
            start += size


__all__ = ["StatisticsSync", "check_hooks_supported", "check_sharding_supported", "check_world_size", "shards_weights"]
