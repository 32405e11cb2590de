"""WGQA and RandWGQA (Chinnakonduru & Mohapatra, 2024): GQA whose K/V heads are learned weighted sums of the
original heads during uptraining; their training form (`form.FORM`) and its fold."""

from .form import FORM, is_training_form, mixer_key
from .options import WGQAOptions
from .variant import WGQA, RandWGQA

VARIANTS = (WGQA, RandWGQA)

__all__ = ["FORM", "VARIANTS", "RandWGQA", "WGQA", "WGQAOptions", "is_training_form", "mixer_key"]
