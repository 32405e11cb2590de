"""Conversion: the pure planner/converter (`core`) and the entry points over models and folders (`api`)."""

from .api import convert, convert_model, load_source, save_converted
from .core import ConversionPlan, convert_state_dict, plan_conversion

__all__ = [
    "ConversionPlan",
    "convert",
    "convert_model",
    "convert_state_dict",
    "load_source",
    "plan_conversion",
    "save_converted",
]
