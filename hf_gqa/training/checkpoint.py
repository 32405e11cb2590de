"""Checkpoints that survive a kill, and the RNG discipline that makes a resumed run repeat the uninterrupted one.

A checkpoint is `accelerator.save_state` (model, optimizer, scheduler, RNG states, and every object registered with
`accelerator.register_for_checkpointing`: the `Progress` counter and the training hooks' `HookStates`) written to
`OUTPUT/checkpoints/.step-N.tmp` and renamed to `step-N` only when complete, so a kill during the write leaves no
half checkpoint behind that `latest` could pick.

Exact resume needs three things, all here: the data order is a function of (seed, epoch) only
(`data.ResumableSampler`), the resumed epoch skips exactly the examples already seen, and the random numbers a
micro-batch draws (dropout) depend only on (seed, micro-step, process) (`seed_micro_step`), not on what the process
did before, e.g. how many data-loader iterators it created.
"""

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import HfGqaError

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """How far training got, saved with every checkpoint."""

    step: int = 0  # optimizer steps completed
    micro_step: int = 0  # micro-batches (forward/backward passes) completed
    loss_sum: float = 0.0  # sum of the step losses not logged yet (a resumed run logs the same means)
    loss_steps: int = 0  # how many steps that sum covers

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))


class HookStates:
    """The states of a run's training hooks, as one checkpointable object.

    Keyed by position and class name, so a resumed run restores each hook it shares with the saved one and may add
    or drop hooks that keep no state (a debugging hook, say) without breaking `accelerator.load_state`.
    """

    def __init__(self, hooks):
        self.hooks = list(hooks)

    @staticmethod
    def _key(index: int, hook) -> str:
        return f"{index}:{type(hook).__name__}"

    def state_dict(self) -> dict:
        return {self._key(i, h): h.state_dict() for i, h in enumerate(self.hooks) if hasattr(h, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for i, hook in enumerate(self.hooks):
            saved = state.get(self._key(i, hook))
            if saved and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(saved)


def seed_micro_step(seed: int, micro_step: int, process_index: int = 0) -> None:
    """Seed torch's global RNG (CPU and every GPU) from (seed, micro-step, process) before a micro-batch."""
    torch.manual_seed((seed * 1_000_003 + micro_step) * 1_009 + process_index)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: a path, `latest` (the newest one under `output_dir`, or None when there is none
    yet, so the same command starts or resumes a job), or None."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise HfGqaError(f"--resume-from-checkpoint {resume_from_checkpoint!r}: no such checkpoint folder")
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None = None) -> Path:
    """`accelerator.save_state` into `OUTPUT/checkpoints/step-N`, atomically; keep the newest `total_limit`."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def step_of(checkpoint: str | Path) -> int | None:
    match = _STEP_DIR.match(Path(checkpoint).name)
    return int(match[1]) if match else None


__all__ = [
    "CHECKPOINTS",
    "HookStates",
    "Progress",
    "checkpoint_dir",
    "list_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "seed_micro_step",
    "step_of",
]
