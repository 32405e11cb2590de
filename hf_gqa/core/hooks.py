"""One small interface for whatever must happen during uptraining (SimGQA regrouping, DGQA windows, ...).

A hook is called after each optimizer step with a `TrainingState` that carries the step counter; modules never keep
a global step of their own. Call `run_hooks(hooks, state, "on_train_begin")` once before the loop (after restoring a
checkpoint, with the hooks' `load_state_dict`) and `"on_train_end"` after it. The same hook runs in a plain
Accelerate loop (`run_hooks(hooks, state)` after `optimizer.step()`) and under `transformers.Trainer`
(`hf_gqa.training.HookCallback(hooks)` in `callbacks=`).

    hooks = [SimGQARegroup(every=200)]
    for step, batch in enumerate(loader, 1):
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        run_hooks(hooks, TrainingState(model=accelerator.unwrap_model(model), step=step, optimizer=optimizer))
"""

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainingState:
    """What a hook may read or change after an optimizer step."""

    model: Any  # the unwrapped model
    step: int  # optimizer steps completed (1 after the first)
    optimizer: Any = None  # present when the hook must keep its state consistent (e.g. after permuting parameters)
    max_steps: int | None = None


class TrainingHook:
    """Base hook. Subclasses override `on_step_end` (and `on_train_begin` to restore what lives outside the model's
    weights after a resume, `on_train_end` if they finish something).

    The recipe's `--hooks 'module.path:Class(key=literal, ...)'` instantiates only subclasses of this class: the spec
    is resolved and checked before anything is called, and its arguments are literals (`ast.literal_eval`)."""

    def on_train_begin(self, state: TrainingState) -> None:
        pass

    def on_step_end(self, state: TrainingState) -> None:
        pass

    def on_train_end(self, state: TrainingState) -> None:
        pass

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly, as JSON data (dicts with string keys, lists, strings,
        numbers, booleans, None): it is saved in the checkpoint's `hf_gqa_state.json`, never pickled, and comes back
        through `load_state_dict` as JSON gives it back (tuples as lists)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def run_hooks(hooks, state: TrainingState, event: str = "on_step_end") -> None:
    """Call `event` on every hook, in order."""
    for hook in hooks:
        getattr(hook, event)(state)


__all__ = ["TrainingHook", "TrainingState", "run_hooks"]
