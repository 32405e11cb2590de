"""Experiment tracking through Accelerate's trackers: the recipe's `report_to` (as transformers' `report_to`) becomes
`Accelerator(log_with=...)`; `RunLogger` (runlog.py) starts them with the run's options and logs every record to them.

`report_to` names trackers (tensorboard, trackio, wandb, mlflow, aim, comet_ml, clearml, dvclive, swanlab, or one
registered with `accelerate.tracking.register_tracker_class`), `all` (every installed one) or `none`. Unset, it is
`tensorboard` when TensorBoard is installed, else none: what the deprecated `tensorboard: true` did. Local trackers
write under `OUT/runs/` (TensorBoard: `OUT/runs/hf-gqa/`). The run's own logs (`log.jsonl`, `train_log.csv`,
`eval_log.csv`, which `hf-gqa report` reads) are written whatever `report_to` says.
"""

import warnings
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from ..errors import HfGqaError

PROJECT = "hf-gqa"  # the trackers' project (wandb, mlflow, trackio, comet); TensorBoard's folder under OUT/runs
LOGGING_DIR = "runs"


def known_trackers() -> dict[str, bool]:
    """Tracker name -> whether it can run here (its package is installed, or it is a registered custom class)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    builtin = {"aim", "comet_ml", "mlflow", "tensorboard", "wandb", "clearml", "dvclive", "swanlab", "trackio"}
    return {name: name in available or name not in builtin for name in LOGGER_TYPE_TO_CLASS}


def resolve_report_to(args) -> list[str]:
    """The trackers `args` asks for (see the module's docstring), checked: one-line errors for an unknown name, one
    that is not installed, `none` with others, or `tensorboard` given beside `report_to`."""
    report_to = getattr(args, "report_to", None)
    tensorboard = getattr(args, "tensorboard", None)
    if isinstance(report_to, str):
        report_to = [report_to]
    if tensorboard is not None:
        if report_to is not None:
            raise HfGqaError("--tensorboard is the deprecated form of --report-to: give --report-to only")
        warnings.warn(
            "the recipe option `tensorboard` is deprecated: use `report_to: tensorboard` (or `none`)",
            FutureWarning,
            stacklevel=2,
        )
        report_to = ["tensorboard"] if tensorboard else ["none"]
    trackers = known_trackers()
    if tensorboard and not trackers.get("tensorboard"):  # as `tensorboard: true` was: only when it is installed
        return []
    if report_to is None:
        return ["tensorboard"] if trackers.get("tensorboard") else []
    names = [str(name).strip().lower() for name in report_to]
    if "none" in names:
        if len(names) > 1:
            raise HfGqaError(f"--report-to none cannot be combined with {[n for n in names if n != 'none'][0]!r}")
        return []
    if "all" in names:
        return [name for name, ok in trackers.items() if ok]
    for name in names:
        if name not in trackers:
            raise HfGqaError(f"--report-to {name!r}: choose from {', '.join(['all', 'none', *sorted(trackers)])}")
        if not trackers[name]:
            raise HfGqaError(f"--report-to {name!r}: its package is not installed (pip install {name})")
    return list(dict.fromkeys(names))


def make_accelerator(args) -> Accelerator:
    """The run's Accelerator: its accumulation and precision, and the trackers of `report_to`, logging under
    `OUT/runs`."""
    trackers = resolve_report_to(args)
    logging_dir = Path(args.output_dir).expanduser() / LOGGING_DIR
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(logging_dir=str(logging_dir)),
    )


def tracker_config(options: dict) -> dict:
    """The run's options as trackers store hyperparameters (TensorBoard's hparams take only bool, int, float, str):
    None left out, lists and dicts as text."""
    config = {}
    for key, value in options.items():
        if value is None:
            continue
        config[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return config


__all__ = ["LOGGING_DIR", "PROJECT", "known_trackers", "make_accelerator", "resolve_report_to", "tracker_config"]
