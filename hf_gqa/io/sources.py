"""Reading checkpoints: config dicts, models and tokenizers from a local folder, a Hub id or a .gguf file, and the
local folder of a safetensors checkpoint. No conversion logic here."""

import os
import pickle
import struct
import traceback
import zipfile
from pathlib import Path

import torch
from torch import _weights_only_unpickler
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from ..errors import CheckpointError, HfGqaError
from ..modeling.configuration_gpt2_gqa import KV_HEAD_FIELDS as _GPT2_KV_FIELDS
from ..modeling.configuration_t5_gqa import KV_HEAD_FIELDS as _T5_KV_FIELDS
from .auto import register_auto_classes, source_auto_class
from .safetensors import safetensors_files

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot", "*.tflite"]
_HUB_IGNORE += ["original/*", "onnx/*", "coreml/*", "*.mlmodel", "*.mlpackage/*"]
# Config fields the families read as counts or sizes (T5, decoders, GPT-2): a positive integer where present; the
# optional ones may also be null (their default).
_COUNT_FIELDS = ("num_attention_heads", "num_hidden_layers", "hidden_size", "num_heads", "num_layers", "d_kv")
_COUNT_FIELDS += ("d_model", "n_head", "n_layer", "n_embd")
_OPTIONAL_COUNT_FIELDS = ("num_key_value_heads", "head_dim", "num_decoder_layers")
_OPTIONAL_COUNT_FIELDS += (*_T5_KV_FIELDS.values(), *_GPT2_KV_FIELDS.values())
# What loading a broken weights file raises besides OSError/ValueError/RuntimeError: a .bin that does not unpickle
# (or is a bad zip archive), a file cut short.
_CORRUPT_FILE_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile)
_TORCH_LOAD_FILES = frozenset(Path(m.__file__).resolve() for m in (torch.serialization, _weights_only_unpickler))


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


def _error_line(error: BaseException) -> str:
    """`_one_line`, naming the error's type where the message alone would not say what went wrong."""
    line = _one_line(error)
    if isinstance(error, (OSError, ValueError, RuntimeError)):
        return line
    name = type(error).__name__
    name = f"{type(error).__module__}.{name}" if name == "error" else name  # struct.error, zlib.error, ...
    return line if line == type(error).__name__ else f"{name}: {line}"


def _gguf(source: str | os.PathLike) -> tuple[str, dict]:
    """A `.gguf` file loads through transformers' `gguf_file=` (dequantised); anything else as it is."""
    text = os.path.expanduser(str(source))  # `~/model` is a local path: no Hub id starts with `~`
    if text.endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise CheckpointError(f"no GGUF file at {str(source)!r}")
        return str(path.parent), {"gguf_file": path.name}
    return text, {}


def load_config_dict(source: str | os.PathLike) -> dict:
    """The raw config dict of a local folder, Hub id or .gguf file, with a one-line error when there is none."""
    text, gguf = _gguf(source)
    if gguf:
        try:
            config = AutoConfig.from_pretrained(text, **gguf).to_dict()
        except Exception as error:  # gguf's parser on a damaged file: struct.error, IndexError, ... as well
            raise CheckpointError(f"cannot read the GGUF file {str(source)!r}: {_error_line(error)}") from None
        return _checked_config(config, source, "the GGUF file's metadata")
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
    return _checked_config(config, source, "config.json")


def _checked_config(config: dict, source, where: str) -> dict:
    """`config`, once every head count and size the families read is a positive integer (one line otherwise)."""
    for field in (*_COUNT_FIELDS, *_OPTIONAL_COUNT_FIELDS):
        if field not in config or (config[field] is None and field in _OPTIONAL_COUNT_FIELDS):
            continue
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{str(source)!r}: {where} has {field}={value!r}; it must be a positive integer")
    return config


def load_model(source: str | os.PathLike, config: dict, dtype=None) -> PreTrainedModel:
    """Load a checkpoint whose config dict is `config` as a model, refusing broken or incomplete ones."""
    register_auto_classes()
    path, gguf = _gguf(source)
    try:
        model, info = source_auto_class(config).from_pretrained(
            path, dtype=resolve_dtype(dtype) or "auto", output_loading_info=True, **gguf
        )
    except (OSError, ValueError, RuntimeError, *_CORRUPT_FILE_ERRORS) as error:
        raise _load_error(source, path, gguf, error) from None
    except Exception as error:  # safetensors' own error type, gguf's parser on a damaged file, ...
        if gguf or type(error).__module__.split(".")[0] in ("safetensors", "json") or _raised_by_torch_load(error):
            raise _load_error(source, path, gguf, error) from None
        raise
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"the checkpoint at {str(source)!r} lacks {len(missing)} weight(s), e.g. {missing[0]}: it is incomplete"
        )
    return model


def _raised_by_torch_load(error: Exception) -> bool:
    """Whether `error` came out of torch's reader of pickled weights, which raises IndexError, KeyError, ... (not only
    UnpicklingError) on a damaged `pytorch_model.bin`."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve() in _TORCH_LOAD_FILES


def _load_error(source, path: str, gguf: dict, error: Exception) -> CheckpointError:
    """A loader's error as one line naming the weight file(s) it read."""
    files = [gguf["gguf_file"]] if gguf else _weight_files(Path(path).expanduser())
    where = f"{str(source)!r}" + (f" ({', '.join(files)})" if files and not gguf else "")
    if isinstance(error, pickle.UnpicklingError) or _raised_by_torch_load(error):
        detail = str(error).partition("WeightsUnpickler error:")[2].strip().splitlines() or [_error_line(error)]
        line = f"it does not unpickle as PyTorch weights ({detail[0]})"
    else:
        line = _error_line(error)
    return CheckpointError(f"cannot load the checkpoint at {where}: {line}")


def _weight_files(folder: Path) -> list[str]:
    """The weight files of a local checkpoint folder (none for a Hub id)."""
    if not folder.is_dir():
        return []
    names = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
    return [name for name in names if (folder / name).is_file()]


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
    text = os.path.expanduser(str(source))
    if text.endswith(".gguf"):
        return None
    path = Path(text)
    if path.is_dir():
        return path if safetensors_files(path) else None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(text, ignore_patterns=_HUB_IGNORE))
    except Exception as error:  # network, auth, offline cache miss: one line, no traceback
        raise CheckpointError(f"cannot download {text!r}: {str(error).strip().splitlines()[0]}") from None
    return folder if safetensors_files(folder) else None


__all__ = ["load_config_dict", "load_model", "load_tokenizer", "resolve_dtype", "safetensors_folder"]
