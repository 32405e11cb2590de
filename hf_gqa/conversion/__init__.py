"""Conversion: the pure planner (`plan`), and the pipelines over it: in memory (`memory`), shard by shard
(`streaming`) and from a source to a folder (`folder`), with model cards (`cards`) and sizes (`sizes`)."""

from .folder import FolderReport, convert_to_folder, fold_to_folder, to_folder
from .memory import convert, convert_model, fold, load_source
from .plan import ConversionPlan, convert_state_dict, get_architecture, plan_conversion

__all__ = [
    "ConversionPlan",
    "FolderReport",
    "convert",
    "convert_model",
    "convert_state_dict",
    "convert_to_folder",
    "fold",
    "fold_to_folder",
    "get_architecture",
    "load_source",
    "plan_conversion",
    "to_folder",
]
