"""Library entry points over the pure converter: load a source, convert it in memory, save it safely."""

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForTextEncoding,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)

from ..errors import CheckpointError, HfGqaError, OutputExistsError
from ..spec import GQASpec
from .core import ConversionPlan, get_architecture, plan_conversion

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype | None:
    """`None`/`"auto"` keep the source dtype; otherwise a torch dtype or one of float32, bfloat16, float16."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return None if dtype == "auto" else dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise HfGqaError(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _gguf(source: str | os.PathLike) -> tuple[str, dict]:
    """A `.gguf` file loads through transformers' `gguf_file=` (dequantised); anything else as it is."""
    text = str(source)
    if text.endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointError(f"no GGUF file at {text!r}")
        return str(path.parent), {"gguf_file": path.name}
    return text, {}


def load_config_dict(source: str | os.PathLike) -> dict:
    """The raw config dict of a local folder, Hub id or .gguf file, with a one-line error when there is none."""
    text, gguf = _gguf(source)
    if gguf:
        try:
            return AutoConfig.from_pretrained(text, **gguf).to_dict()
        except (OSError, ValueError, ImportError) as error:
            raise CheckpointError(f"cannot read the GGUF file {str(source)!r}: {_one_line(error)}") from None
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1  # a Hub id is `name` or `org/name`
    if looks_local or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint folder at {text!r}")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{text!r} has no config.json: not a transformers checkpoint")
    try:
        config, _ = PreTrainedConfig.get_config_dict(text)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read a checkpoint config from {str(source)!r}: {_one_line(error)}") from None
    if "model_type" not in config:
        raise CheckpointError(f"{str(source)!r} has a config.json without a model_type")
    return config


def _auto_class(config: dict):
    architectures = config.get("architectures") or []
    if architectures and all(a.endswith("EncoderModel") for a in architectures):
        return AutoModelForTextEncoding
    if any(a.endswith("ForImageClassification") for a in architectures):
        return AutoModelForImageClassification
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or not config.get(
        "is_encoder_decoder", True
    ):
        return AutoModelForCausalLM
    if architectures and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in architectures):
        return AutoModel
    return AutoModelForSeq2SeqLM


def load_source(source: str | os.PathLike, dtype=None) -> PreTrainedModel:
    """Load a supported checkpoint (local folder or Hub id) as a model, refusing unsupported or broken ones."""
    config = load_config_dict(source)
    get_architecture(config)  # unsupported model_type: one-line error before any weights are read
    path, gguf = _gguf(source)
    try:
        model, info = _auto_class(config).from_pretrained(
            path, dtype=resolve_dtype(dtype) or "auto", output_loading_info=True, **gguf
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot load the checkpoint at {str(source)!r}: {_one_line(error)}") from None
    except Exception as error:  # safetensors' own error type, a truncated file, ...
        if type(error).__module__.split(".")[0] in ("safetensors", "json"):
            raise CheckpointError(f"cannot load the checkpoint at {str(source)!r}: {_one_line(error)}") from None
        raise
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"the checkpoint at {str(source)!r} lacks {len(missing)} weight(s), e.g. {missing[0]}: it is incomplete"
        )
    return model


def _model_class(name: str):
    from .. import models

    cls = models.MODEL_CLASSES.get(name)
    if cls is None:
        import transformers

        cls = getattr(transformers, name, None)
    if cls is None:
        raise HfGqaError(f"no model class {name!r} is known to hf-gqa or transformers")
    return cls


def convert_model(
    model: PreTrainedModel, spec: GQASpec | None, dtype=None, source: str | None = None, return_plan: bool = False
):
    """Convert a model in memory. The result is built through `from_pretrained` (never `load_state_dict`, which
    would re-tie T5's untied `lm_head`), with the source's generation config. With `return_plan=True`, returns
    `(model, plan)` so callers can report what changed without planning again. `spec=None` only re-expresses the
    model (e.g. folds a WGQA training form, see `hf_gqa.fold`), keeping its provenance."""
    from .. import __version__

    source = source or getattr(model.config, "_name_or_path", None) or None
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]  # what is in memory, whatever the config says
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
        config_dict, spec, provenance, keys=state_dict.keys(), get=state_dict.__getitem__
    )
    state_dict = plan.convert_state_dict(state_dict)
    config = AutoConfig.for_model(**plan.config)
    architecture = plan.config["architectures"][0]
    with _quiet_loading():
        converted = _model_class(architecture).from_pretrained(
            None, config=config, state_dict=state_dict, dtype=resolve_dtype(dtype) or model.dtype
        )
    if getattr(model, "generation_config", None) is not None and converted.can_generate():
        converted.generation_config = model.generation_config
    converted.eval()
    return (converted, plan) if return_plan else converted


@contextlib.contextmanager
def _quiet_loading():
    # from_pretrained(None, state_dict=...) rebuilds an in-memory model: its "Loading weights" bar means nothing.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def convert(
    model_or_path: PreTrainedModel | str | os.PathLike,
    groups: int | dict[str, int] | None = None,
    variant: str = "gqa",
    init: str = "mean",
    attention: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
    dtype=None,
    weights: str | None = None,
    weights_init: str | float | None = None,
    similarity: str | None = None,
    regroup_every: int | None = None,
    **routed_options,
) -> PreTrainedModel:
    """Convert a model, a local folder or a Hub id to grouped-query attention and return the converted model.

    Example: `hf_gqa.convert("google-t5/t5-small", groups=4)` gives a `T5GQAForConditionalGeneration` whose decoder
    self- and cross-attention have 4 key/value heads, each the mean of 2 of the original 8.
    `variant="wgqa"` (or `"randwgqa"`) gives the WGQA training form instead (`weights`, `weights_init`: see
    `GQASpec`); fold it with `hf_gqa.fold` after uptraining. `variant="simgqa"` groups similar heads
    (`similarity`; with `regroup_every`, the training form for `hf_gqa.training.SimGQARegroup`).
    `variant="kdgqa"`, `"dgqa"`, `"pgqa"`, `"gqkva"`, `"gkva"` or `"mkva"` gives routed attention; their options
    (`q_groups`, `statistic`, `window`, `ema_alpha`, `evolution`, `noise_in_eval`) are `GQASpec`'s.
    """
    from ..variants.base import ROUTED_OPTIONS

    unknown = sorted(set(routed_options) - set(ROUTED_OPTIONS))
    if unknown:
        raise HfGqaError(f"unknown conversion option {unknown[0]!r}")
    spec = GQASpec(
        variant=variant,
        groups=groups,
        init=init,
        attention=tuple(attention) if attention else None,
        seed=seed,
        weights=weights,
        weights_init=weights_init,
        similarity=similarity,
        regroup_every=regroup_every,
        **routed_options,
    )
    if isinstance(model_or_path, PreTrainedModel):
        return convert_model(model_or_path, spec, dtype=dtype)
    model = load_source(model_or_path, dtype=dtype)
    return convert_model(model, spec, dtype=dtype, source=str(model_or_path))


def load_tokenizer(source: str | os.PathLike):
    """The source's tokenizer, or None when it has none."""
    path, gguf = _gguf(source)
    try:
        return AutoTokenizer.from_pretrained(path, **gguf)
    except (OSError, ValueError, TypeError):
        return None


def check_output_dir(output_dir: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing non-empty output folder (or a file) unless `force`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"output {str(output_dir)!r} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder {str(output_dir)!r} exists and is not empty; pass --force to replace it"
        )
    return output_dir


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, force: bool = False):
    """Yield a temporary folder beside `output_dir`; rename it into place only if the block completes."""
    output_dir = check_output_dir(output_dir, force).absolute()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if output_dir.exists():
            old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
            output_dir.rename(old)
            tmp.rename(output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_converted(
    model: PreTrainedModel,
    output_dir,
    tokenizer=None,
    model_card: str | None = None,
    force=False,
    max_shard_size: int | str = "5GB",
):
    """Save a converted model (weights, config, remote code, generation config), its tokenizer and model card into
    `output_dir`, atomically."""
    with atomic_output_dir(output_dir, force=force) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card is not None:
            (tmp / "README.md").write_text(model_card, encoding="utf-8")
    return Path(output_dir)


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
