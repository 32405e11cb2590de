"""Deprecated path, kept for one release: the entry points now live in `hf_gqa.conversion.memory` (convert, load),
`hf_gqa.io.sources` (configs, tokenizers, dtypes) and `hf_gqa.io.output` (atomic output folders)."""

from ..io.output import atomic_output_dir, check_output_dir, save_converted
from ..io.sources import load_config_dict, load_tokenizer, resolve_dtype
from .memory import convert, convert_model, load_source

__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "convert",
    "convert_model",
    "load_config_dict",
    "load_source",
    "load_tokenizer",
    "resolve_dtype",
    "save_converted",
]
