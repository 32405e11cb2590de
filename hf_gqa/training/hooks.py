"""Training hooks: the interface (`hf_gqa.core.hooks`, where the variants' hooks subclass it) and its adapter for
`transformers.Trainer`."""

from transformers import TrainerCallback

from ..core.hooks import TrainingHook, TrainingState, run_hooks


class HookCallback(TrainerCallback):
    """Run training hooks from `transformers.Trainer`: `Trainer(..., callbacks=[HookCallback(hooks)])`."""

    def __init__(self, hooks):
        self.hooks = list(hooks)

    def _run(self, event: str, state, model, optimizer) -> None:
        run_hooks(
            self.hooks,
            TrainingState(model=model, step=state.global_step, optimizer=optimizer, max_steps=state.max_steps),
            event,
        )

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._run("on_train_begin", state, model, optimizer)
        return control

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._run("on_step_end", state, model, optimizer)
        return control

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._run("on_train_end", state, model, optimizer)
        return control


__all__ = ["HookCallback", "TrainingHook", "TrainingState", "run_hooks"]
