"""The calibration options (`--calibration-*`), declared once: CLI flags, `--config` keys, recipe fields and
`hf_gqa.convert` keywords come from here. They apply to the calibrated inits (`--init aligned`, `activation`,
`calibrated`); the calibration text options also to SimGQA's `--similarity activation`."""

from dataclasses import dataclass

from ..core.options import option
from ..errors import HfGqaError

# The inits that need calibration text, besides the tensor inits of `hf_gqa.core.grouping.KV_INITS`.
CALIBRATION_INITS = ("aligned", "activation", "calibrated")
# Where the effective defaults live (the declared defaults are None: "not set").
DEFAULTS = {
    "calibration_samples": 32,
    "calibration_seq_len": 256,
    "calibration_steps": 150,
    "calibration_lr": 3e-3,
    "calibration_distill_steps": 0,
    "calibration_distill_lr": 1e-4,
}
VARIANTS = ("gqa", "mqa")


@dataclass(frozen=True)
class CalibrationOptions:
    calibration_data: str | None = option(
        help="--init aligned/activation/calibrated, --similarity activation: text to calibrate on: a local .txt (one "
        "text per line), .jsonl/.json (a 'text' field), .csv or .parquet (a 'text' column) file, 'aclsum' (the "
        "PyPI package's train split), or a Hub dataset's 'text' column, NAME[:CONFIG]:SPLIT (streamed with datasets)",
        type=str,
        metavar="DATA",
        variants=VARIANTS,
    )
    calibration_samples: int | None = option(
        help="--init aligned/activation/calibrated, --similarity activation: sequences of calibration text "
        f"(default: {DEFAULTS['calibration_samples']})",
        type=int,
        metavar="N",
        variants=VARIANTS,
    )
    calibration_seq_len: int | None = option(
        help="--init aligned/activation/calibrated, --similarity activation: tokens per sequence "
        f"(default: {DEFAULTS['calibration_seq_len']})",
        type=int,
        metavar="T",
        variants=VARIANTS,
    )
    calibration_steps: int | None = option(
        help="--init calibrated: Adam steps per attention block fitting its output to the source block's "
        f"(default: {DEFAULTS['calibration_steps']})",
        type=int,
        metavar="S",
        variants=VARIANTS,
    )
    calibration_lr: float | None = option(
        help=f"--init calibrated: the Adam learning rate (default: {DEFAULTS['calibration_lr']})",
        type=float,
        metavar="LR",
        variants=VARIANTS,
    )
    calibration_distill_steps: int | None = option(
        help="--init calibrated: then Adam steps (at --calibration-distill-lr) of end-to-end distillation of the "
        "converted blocks from the source (on --calibration-distill-data), KL of the next-token distributions; "
        f"needs both models in memory (default: {DEFAULTS['calibration_distill_steps']})",
        type=int,
        metavar="S",
        variants=VARIANTS,
    )
    calibration_distill_data: str | None = option(
        help="--calibration-distill-steps: text to distil on: 'generated' (--calibration-samples sequences of "
        "--calibration-seq-len tokens that the source samples itself, temperature 1, seeded; decoder-only models), "
        "or a file or dataset as for --calibration-data (default: generated for a decoder-only model, the "
        "calibration text for T5)",
        type=str,
        metavar="DATA",
        variants=VARIANTS,
    )
    calibration_distill_lr: float | None = option(
        help="--calibration-distill-steps: the Adam learning rate (default: "
        f"{DEFAULTS['calibration_distill_lr']:g}; the blocks are already fitted, the step is small)",
        type=float,
        metavar="LR",
        variants=VARIANTS,
    )


NAMES = (
    "calibration_data",
    "calibration_samples",
    "calibration_seq_len",
    "calibration_steps",
    "calibration_lr",
    "calibration_distill_steps",
    "calibration_distill_data",
    "calibration_distill_lr",
)


def check_calibration(spec) -> None:
    """Refuse, in one line, calibration options without a calibration init and a calibration init without data."""
    if spec.init in CALIBRATION_INITS:
        if spec.variant not in VARIANTS:
            raise HfGqaError(f"--init {spec.init} applies to {' and '.join(VARIANTS)} only, not to {spec.variant!r}")
        if spec.calibration_data is None:
            raise HfGqaError(f"--init {spec.init} needs --calibration-data (a text file, aclsum, or a Hub dataset)")
        for name in ("calibration_samples", "calibration_seq_len", "calibration_steps"):
            value = getattr(spec, name)
            if value is not None and value < 1:
                raise HfGqaError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
        if spec.calibration_distill_steps is not None and spec.calibration_distill_steps < 0:
            raise HfGqaError(f"--calibration-distill-steps must be at least 0; got {spec.calibration_distill_steps}")
        if spec.init != "calibrated" and spec.calibration_distill_steps:
            raise HfGqaError("--calibration-distill-steps applies to --init calibrated only")
        for name in ("calibration_lr", "calibration_distill_lr"):
            value = getattr(spec, name)
            if value is not None and not value > 0:
                raise HfGqaError(f"--{name.replace('_', '-')} must be positive; got {value}")
        for name in ("calibration_distill_lr", "calibration_distill_data"):
            if getattr(spec, name) is not None and not spec.calibration_distill_steps:
                raise HfGqaError(f"--{name.replace('_', '-')} applies with --calibration-distill-steps")
        return
    named = [name for name in NAMES if getattr(spec, name) is not None]
    if named:
        raise HfGqaError(f"--{named[0].replace('_', '-')} applies to --init aligned, activation and calibrated only")


def resolved(spec) -> dict:
    """The calibration options of a spec, defaults filled in."""
    return {name: getattr(spec, name) if getattr(spec, name) is not None else DEFAULTS.get(name) for name in NAMES}


__all__ = ["CALIBRATION_INITS", "DEFAULTS", "CalibrationOptions", "check_calibration", "resolved"]
