"""DGQA's training side: re-allocate query heads every `window` optimizer steps.

    model = hf_gqa.convert(source, variant="dgqa", groups=4, window=300)
    hooks = [DGQAReallocate()]     # run_hooks(hooks, TrainingState(...)) after each optimizer step

Each DGQA attention module gathers its key norms in training-mode forwards (module buffers, see
`hf_gqa.modeling.routing.HeadRouting`); at every step that is a multiple of the module's `window` the hook turns the
window's statistics into a new allocation (EMA or difference of norms). Nothing changes in evaluation mode, and the
statistics are buffers of the model, so a checkpoint (`accelerator.save_state`) resumes exactly.
"""

from ...core.hooks import TrainingHook, TrainingState
from ...errors import HfGqaError
from ...modeling.routing import HeadRouting


def dgqa_modules(model) -> list:
    """The `HeadRouting` modules of `model` in DGQA mode."""
    return [m for m in model.modules() if isinstance(m, HeadRouting) and m.mode == "dgqa"]


class DGQAReallocate(TrainingHook):
    """Re-allocate DGQA's query heads at window boundaries. `every` overrides the window the model was converted
    with (`gqa_routing[...]["window"]`, the paper's 300)."""

    def __init__(self, every: int | None = None):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise HfGqaError(f"DGQAReallocate(every=...) must be a positive number of steps, got {every!r}")
        self.every = every

    def on_train_begin(self, state: TrainingState) -> None:
        if not dgqa_modules(state.model):
            raise HfGqaError("DGQAReallocate needs a DGQA model (hf_gqa.convert(..., variant='dgqa', groups=G))")

    def on_step_end(self, state: TrainingState) -> None:
        for module in dgqa_modules(state.model):
            window = self.every or module.window
            if state.step % window == 0:
                module.reallocate()


__all__ = ["DGQAReallocate", "dgqa_modules"]
