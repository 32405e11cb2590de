"""Calibrated initialisation (`--init activation`, `--init calibrated`): a converted model fitted to its source on
calibration text, attention block by attention block. See `fit.py` and `closed_form.py`."""

from .fit import BlockReport, calibrate
from .options import CALIBRATION_INITS, CalibrationOptions

__all__ = ["CALIBRATION_INITS", "BlockReport", "CalibrationOptions", "calibrate"]
