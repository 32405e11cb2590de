"""Conversion in memory: load a source, convert a model, fold a training form. What `hf_gqa.convert` runs."""

import contextlib
import inspect
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .._version import __version__
from ..errors import HfGqaError
from ..io.auto import model_class
from ..io.safetensors import safetensors_files, torch_dtype
from ..io.sources import load_config_dict, load_model, load_tokenizer, resolve_dtype
from ..spec import OPTIONS, GQASpec
from ..variants.wgqa import is_training_form
from .calibrate import (
    calibrate_converted,
    measure_similarities,
    measures_activations,
    needs_calibration,
    reads_calibration_text,
)
from .plan import ConversionPlan, get_architecture, plan_conversion


def load_source(source: str | os.PathLike, dtype=None) -> PreTrainedModel:
    """Load a supported checkpoint (local folder, Hub id or .gguf file) as a model, refusing unsupported or broken
    ones (an unsupported `model_type` before any weights are read)."""
    config = load_config_dict(source)
    get_architecture(config)
    return load_model(source, config, dtype=dtype)


def with_output_dtype(config: dict, dtype) -> dict:
    """`config` (a config dict) with the dtype its conversion is written in: `dtype`, or the source's when None/auto.
    What a plan checks against the dtype (WGQA's `--weights-init`) reads it there."""
    resolved = resolve_dtype(dtype)
    return dict(config) if resolved is None else {**config, "dtype": str(resolved).removeprefix("torch.")}


def _stored_dtypes(source) -> dict[str, torch.dtype]:
    """The dtype of each tensor a local safetensors checkpoint stores (empty for any other source)."""
    folder = Path(str(source)).expanduser() if source is not None else None
    files = safetensors_files(folder) if folder is not None and folder.is_dir() else None
    stored: dict[str, torch.dtype] = {}
    for file in files or ():
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                dtype = torch_dtype(f.get_slice(key).get_dtype())
                if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                    stored[key] = dtype
    return stored


def as_stored(model: PreTrainedModel, dtype=None, source=None) -> PreTrainedModel:
    """`model`, in place, ready to be saved in the dtypes the streamed path writes: transformers loads the modules a
    model keeps in float32 (`_keep_in_fp32_modules`, e.g. T5's `wo`) as float32 when the rest is float16; they go
    back to the dtype the source stores them in (its safetensors headers), else to the output's, `dtype` (None: the
    model's). The loader upcasts them again. Modules kept in float32 strictly stay so."""
    target = resolve_dtype(dtype)
    if target is None:
        target = getattr(model.config, "dtype", None)
        target = getattr(torch, target.removeprefix("torch."), None) if isinstance(target, str) else target
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    keep -= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if target != torch.float16 or not keep:
        return model
    patterns = [re.compile(re.escape(p).replace(r"\*", ".*")) for p in keep]
    stored = _stored_dtypes(source) if resolve_dtype(dtype) is None else {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dtype == torch.float32 and any(p.search(name) for p in patterns):
                param.data = param.data.to(stored.get(name, target))
    return model


@contextlib.contextmanager
def _quiet_loading():
    # from_pretrained(None, state_dict=...) rebuilds an in-memory model: its "Loading weights" bar means nothing.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def convert_model(
    model: PreTrainedModel,
    spec: GQASpec | None,
    dtype=None,
    source: str | None = None,
    return_plan: bool = False,
    head_similarities=None,
):
    """Convert a model in memory. The result is built through `from_pretrained` (never `load_state_dict`, which
    would re-tie T5's untied `lm_head`), with the source's generation config. With `return_plan=True`, returns
    `(model, plan)` so callers can report what changed without planning again. `spec=None` only re-expresses the
    model (e.g. folds a WGQA training form, see `hf_gqa.fold`), keeping its provenance. `head_similarities`:
    SimGQA's `--similarity activation` measured on `model` (`plan_conversion`'s; `hf_gqa.convert` measures them)."""
    source = source or getattr(model.config, "_name_or_path", None) or None
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]  # what is in memory, whatever the config says
    config_dict = with_output_dtype(config_dict, dtype)
    quantization = config_dict.pop("quantization_config", None)
    if quantization and dict(quantization).get("quant_method") != "gguf":  # GGUF weights arrive dequantised
        raise HfGqaError(
            f"cannot convert a {dict(quantization).get('quant_method')}-quantized model; load it unquantized"
        )
    state_dict = model.state_dict()
    provenance = {"hf_gqa_version": __version__}
    if spec is not None:
        provenance = {"gqa_source": source, **provenance}
    plan: ConversionPlan = plan_conversion(
        config_dict, spec, provenance, keys=state_dict.keys(), get=state_dict.__getitem__,
        head_similarities=head_similarities,
    )  # fmt: skip
    state_dict = plan.convert_state_dict(state_dict)
    config = AutoConfig.for_model(**plan.config)
    with _quiet_loading():
        converted = model_class(plan.config["architectures"][0]).from_pretrained(
            None, config=config, state_dict=state_dict, dtype=resolve_dtype(dtype) or model.dtype
        )
    if getattr(model, "generation_config", None) is not None and converted.can_generate():
        converted.generation_config = model.generation_config
    converted.eval()
    return (converted, plan) if return_plan else converted


def spec_from_options(options: dict) -> GQASpec:
    """A `GQASpec` from keyword options (`hf_gqa.convert`'s), refusing unknown ones by name."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise HfGqaError(f"unknown conversion option {unknown[0]!r}")
    return GQASpec(**{k: v for k, v in options.items() if v is not None or k not in ("variant", "init", "seed")})


def convert(model_or_path: PreTrainedModel | str | os.PathLike, dtype=None, **options) -> PreTrainedModel:
    """Convert a model, a local folder or a Hub id to grouped-query attention and return the converted model.

    Example: `hf_gqa.convert("google-t5/t5-small", groups=4)` gives a `T5GQAForConditionalGeneration` whose decoder
    self- and cross-attention have 4 key/value heads, each the mean of 2 of the original 8. The keyword options are
    `GQASpec`'s (`variant`, `groups`, `init`, `attention`, `seed` and each variant's own, e.g. WGQA's `weights`);
    `hf-gqa convert --help` explains each. `variant="wgqa"` gives the WGQA training form (fold it with `hf_gqa.fold`
    after uptraining); the routed variants give routed attention.
    """
    tokenizer = options.pop("tokenizer", None)
    spec = spec_from_options(options)
    if isinstance(model_or_path, PreTrainedModel):
        model, source = model_or_path, None
        checked = plan_conversion(model.config.to_dict(), spec, validate_only=True)
    else:
        config = load_config_dict(model_or_path)
        checked = plan_conversion(with_output_dtype(config, dtype), spec, validate_only=True)  # before the weights
        model, source = load_model(model_or_path, config, dtype=dtype), str(model_or_path)
    if tokenizer is None and reads_calibration_text(spec):
        tokenizer = load_tokenizer(source or getattr(model.config, "_name_or_path", None) or "")
    similarities = (
        measure_similarities(model, checked.kv_heads, spec, tokenizer) if measures_activations(spec) else None
    )
    converted, plan = convert_model(
        model, spec, dtype=dtype, source=source, return_plan=True, head_similarities=similarities
    )
    if needs_calibration(spec):
        calibrate_converted(model, converted, plan, spec, tokenizer)
    return converted


# `inspect.signature(hf_gqa.convert)` (and IDEs) show every option with its default.
convert.__signature__ = inspect.Signature(
    [
        inspect.Parameter("model_or_path", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("dtype", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        *(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in OPTIONS.values()),
        inspect.Parameter("tokenizer", inspect.Parameter.KEYWORD_ONLY, default=None),  # calibration text's
    ]
)


def fold(model, dtype=None):
    """The plain GQA model a WGQA training-form `model` computes: `t5_gqa` for T5, the stock family (e.g. a
    `LlamaForCausalLM` with `num_key_value_heads=G`) for decoders. Its logits equal the training form's."""
    if hasattr(model, "merge_and_unload"):  # a PEFT model: its adapters and trained mixer copies live outside
        raise HfGqaError("fold the merged model: call model.merge_and_unload() first")
    if not is_training_form(model.config):
        raise HfGqaError(f"{type(model).__name__} is not a WGQA training form: there is nothing to fold")
    return convert_model(model, None, dtype=dtype)


__all__ = ["as_stored", "convert", "convert_model", "fold", "load_source", "spec_from_options", "with_output_dtype"]
