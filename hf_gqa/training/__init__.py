"""Uptraining support: the training-hook interface (and, as they land, data preparation and metrics)."""

from .hooks import HookCallback, TrainingHook, TrainingState, run_hooks

__all__ = ["HookCallback", "TrainingHook", "TrainingState", "run_hooks"]
