"""Variants whose query-to-key/value routing stock GQA cannot express (see `hf_gqa/modeling/routing.py`): KDGQA,
DGQA, PGQA (Khan et al., 2024) and the GQKVA family (Javadi et al., 2023); their form and DGQA's training hook."""

from .form import FORM, attention_parameters
from .hook import DGQAReallocate, dgqa_modules
from .options import RoutedOptions
from .variants import DGQA, GKVA, GQKVA, KDGQA, MKVA, PGQA, VARIANTS

HOOKS = (DGQAReallocate,)

__all__ = [
    "DGQA",
    "FORM",
    "GKVA",
    "GQKVA",
    "HOOKS",
    "KDGQA",
    "MKVA",
    "PGQA",
    "VARIANTS",
    "DGQAReallocate",
    "RoutedOptions",
    "attention_parameters",
    "dgqa_modules",
]
