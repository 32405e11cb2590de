"""The pieces that make N processes behave as one (hf_gqa.training.distributed), without starting processes: the
launch check, the hooks and forms refused where weights or optimizer state are split, and DGQA's statistics summed
over processes (a fake accelerator plays the other process)."""

import types

import pytest
import torch

from hf_gqa.errors import HfGqaError
from hf_gqa.modeling.routing import HeadRouting
from hf_gqa.training.distributed import (
    StatisticsSync,
    check_hooks_supported,
    check_sharding_supported,
    check_world_size,
)
from hf_gqa.variants.routed.hook import DGQAReallocate
from hf_gqa.variants.simgqa.hook import SimGQARegroup


def _accelerator(kind="MULTI_GPU", num_processes=2, zero_stage=None, reduce=None):
    state = types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(zero_stage=zero_stage))
    return types.SimpleNamespace(distributed_type=kind, num_processes=num_processes, state=state, reduce=reduce)


def test_processes_that_accelerate_runs_alone_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HfGqaError, match="ACCELERATE_USE_CPU=1"):
        check_world_size(_accelerator("NO", num_processes=1))
    check_world_size(_accelerator("MULTI_CPU", num_processes=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world_size(_accelerator("NO", num_processes=1))


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_simgqa_regrouping_is_refused_where_weights_or_optimizer_state_are_split(kind):
    with pytest.raises(HfGqaError, match="SimGQA's regrouping"):
        check_hooks_supported(_accelerator(kind, zero_stage=2), [SimGQARegroup(every=5)])
    check_hooks_supported(_accelerator(kind, zero_stage=2), [DGQAReallocate()])  # buffers: whole on each process
    check_hooks_supported(_accelerator("MULTI_GPU"), [SimGQARegroup(every=5)])


def test_lora_and_folded_forms_are_refused_where_weights_are_split():
    plain = types.SimpleNamespace(config=types.SimpleNamespace(to_dict=lambda: {"model_type": "t5"}))
    with pytest.raises(HfGqaError, match="--lora-r"):
        check_sharding_supported(_accelerator("FSDP"), plain, lora=True)
    with pytest.raises(HfGqaError, match="--lora-r"):
        check_sharding_supported(_accelerator("DEEPSPEED", zero_stage=3), plain, lora=True)
    check_sharding_supported(_accelerator("DEEPSPEED", zero_stage=2), plain, lora=True)
    check_sharding_supported(_accelerator("MULTI_GPU"), plain, lora=True)
    check_sharding_supported(_accelerator("FSDP"), plain, lora=False)


def test_dgqa_statistics_are_summed_over_processes():
    """Each process adds its micro-batch's key norms; after the sync both hold the sum of both increments on top of
    what they held before (here process 0, with the other process's increment given by the fake reduce)."""
    model = torch.nn.ModuleList([HeadRouting({"mode": "dgqa", "q_heads": 4, "kv_heads": 2, "heads": 4})])
    routing = model[0]
    routing.norm_sum.copy_(torch.tensor([1.0, 2.0]))
    routing.norm_count.fill_(3)
    other = torch.tensor([0.5, 0.25, 1.0])  # the other process: norm_sum += (0.5, 0.25), norm_count += 1
    sync = StatisticsSync(model, _accelerator(reduce=lambda t, reduction: t + other))
    sync.before()
    routing.norm_sum += torch.tensor([10.0, 20.0])  # this process's micro-batch
    routing.norm_count += 1
    sync.after()
    torch.testing.assert_close(routing.norm_sum, torch.tensor([1.0 + 10.0 + 0.5, 2.0 + 20.0 + 0.25]))
    assert routing.norm_count.item() == 3 + 1 + 1


def test_statistics_sync_does_nothing_on_one_process():
    model = torch.nn.ModuleList([HeadRouting({"mode": "dgqa", "q_heads": 4, "kv_heads": 2, "heads": 4})])
    sync = StatisticsSync(model, _accelerator("NO", num_processes=1, reduce=None))
    sync.before()
    model[0].norm_count += 1
    sync.after()
    assert sync.buffers == [] and model[0].norm_count.item() == 1
