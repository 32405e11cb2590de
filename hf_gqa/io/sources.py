"""Reading checkpoints: config dicts, models and tokenizers from a local folder, a Hub id or a .gguf file, and the
local folder of a safetensors checkpoint. No conversion logic here."""

import os
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

from ..errors import CheckpointError, HfGqaError
from .auto import register_auto_classes
from .safetensors import safetensors_files

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot", "*.tflite"]
_HUB_IGNORE += ["original/*", "onnx/*", "coreml/*", "*.mlmodel", "*.mlpackage/*"]


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


def load_model(source: str | os.PathLike, config: dict, dtype=None) -> PreTrainedModel:
    """Load a checkpoint whose config dict is `config` as a model, refusing broken or incomplete ones."""
    register_auto_classes()
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


def load_tokenizer(source: str | os.PathLike):
    """The source's tokenizer, or None when it has none."""
    path, gguf = _gguf(source)
    try:
        return AutoTokenizer.from_pretrained(path, **gguf)
    except (OSError, ValueError, TypeError):
        return None


def safetensors_folder(source: str | os.PathLike) -> Path | None:
    """The local folder holding `source`'s safetensors checkpoint (a Hub id is downloaded, without weights in other
    formats), or None when `source` has none (a .gguf file, a .bin-only checkpoint)."""
    text = str(source)
    if text.endswith(".gguf"):
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        return path if safetensors_files(path) else None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(text, ignore_patterns=_HUB_IGNORE))
    except Exception as error:  # network, auth, offline cache miss: one line, no traceback
        raise CheckpointError(f"cannot download {text!r}: {str(error).strip().splitlines()[0]}") from None
    return folder if safetensors_files(folder) else None


__all__ = ["load_config_dict", "load_model", "load_tokenizer", "resolve_dtype", "safetensors_folder"]
