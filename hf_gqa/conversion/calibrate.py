"""A converted model fitted to its source on calibration text (`--init activation` / `--init calibrated`)."""

from ..calibration.data import calibration_batches
from ..calibration.fit import BlockReport, calibrate
from ..calibration.options import CALIBRATION_INITS, resolved
from ..errors import HfGqaError
from .plan import ConversionPlan


def needs_calibration(spec) -> bool:
    return spec is not None and spec.init in CALIBRATION_INITS


def calibrate_converted(source, converted, plan: ConversionPlan, spec, tokenizer, progress: bool = True):
    """Fit `converted` (mean-pooled from `source` as `plan` says) to `source` in place, as `spec` asks."""
    if plan.reexpressed_from is not None:
        raise HfGqaError(f"--init {spec.init} does not support {plan.reexpressed_from} (it is re-expressed first)")
    options = resolved(spec)
    batches = calibration_batches(
        source, tokenizer, options["calibration_data"], options["calibration_samples"],
        options["calibration_seq_len"], seed=spec.seed,
    )  # fmt: skip
    reports: list[BlockReport] = calibrate(
        source, converted, plan.kv_heads, batches, spec.init, options["calibration_steps"],
        options["calibration_lr"], seed=spec.seed, progress=progress,
    )  # fmt: skip
    return reports


__all__ = ["calibrate_converted", "needs_calibration"]
