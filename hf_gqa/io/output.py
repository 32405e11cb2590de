"""Writing outputs: a folder that appears only when complete (`atomic_output_dir`), and saving a model into it.
No conversion logic here."""

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save

from ..errors import OutputExistsError
from .auto import model_class
from .safetensors import INDEX_NAME

# Never copied from a source folder: weights in any format (the converted ones are written) and what is rewritten.
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".ot")
_SKIP_NAMES = {"config.json", "README.md", INDEX_NAME, "pytorch_model.bin.index.json", ".gitattributes"}


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


def write_config_and_code(config_dict: dict, output: Path) -> None:
    """config.json through the target's config class (as `save_pretrained` writes it), plus remote code if any."""
    config = AutoConfig.for_model(**config_dict)
    config.save_pretrained(output)
    cls = model_class((config_dict.get("architectures") or [""])[0])
    if not cls.__module__.startswith("transformers."):
        custom_object_save(cls, output)


def copy_side_files(source: Path, output: Path) -> None:
    """Copy a source folder's top-level files other than weights, config and card (tokenizer, generation config)."""
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name not in _SKIP_NAMES:
            if not path.name.endswith(_SKIP_SUFFIXES) and not (output / path.name).exists():
                shutil.copyfile(path, output / path.name)


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


__all__ = [
    "atomic_output_dir",
    "check_output_dir",
    "copy_side_files",
    "has_tokenizer",
    "save_converted",
    "write_config_and_code",
]
