"""One pipeline from a source (Hub id, local folder, .gguf file) to an output folder, for `convert` and `fold`:
validated before anything is written, streamed shard by shard when the source is a safetensors checkpoint, in
memory otherwise, and written atomically with the tokenizer, generation config, modeling code and a model card."""

import os
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..core.options import option
from ..errors import HfGqaError
from ..io.output import atomic_output_dir, check_output_dir, has_tokenizer, save_converted
from ..io.safetensors import parse_size, read_headers, safetensors_files
from ..io.sources import load_config_dict, load_tokenizer, safetensors_folder
from ..registry import FORMS, resolve
from ..spec import GQASpec
from ..variants.wgqa.form import remove_stale_code
from .calibrate import (
    calibrate_checkpoint,
    calibrate_converted,
    distills,
    layerwise_possible,
    measure_similarities,
    measure_similarities_on_disk,
    measures_activations,
    needs_calibration,
    reads_calibration_text,
)
from .cards import model_card
from .memory import as_stored, convert_model, load_source, with_output_dtype
from .plan import ConversionPlan, plan_conversion
from .sizes import kv_cache_bytes_per_token
from .streaming import stream_convert

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class FolderOptions:
    """Where a conversion reads and writes, and how (`hf-gqa convert` flags and `--config` keys besides `GQASpec`)."""

    source: str | None = option(help="Hub model id, local checkpoint folder or .gguf file", type=str, metavar="SRC")
    output: str | None = option(help="output folder (written atomically)", type=str, short="-o", metavar="OUT")
    dtype: str = option("auto", help="output dtype (default: auto, the source's)", type=str, choices=DTYPES)
    max_shard_size: str = option(
        "5GB", help="largest output weight file, e.g. 5GB (default), 500MB", type=str, metavar="SIZE", also=(int,)
    )
    in_memory: bool = option(
        False,
        help="load the whole model and convert it in memory instead of streaming safetensors shard by shard",
        type=bool,
    )
    force: bool = option(False, help="replace a non-empty output folder that holds a model (a config.json)", type=bool)
    push_to_hub: str | None = option(help="also upload the result to this Hub repo", type=str, metavar="REPO")
    private: bool = option(False, help="create the Hub repo as private", type=bool)


@dataclass(frozen=True)
class FolderReport:
    plan: ConversionPlan
    output: Path
    streamed: bool  # shard by shard from safetensors, or through a model in memory
    parameters: tuple[int, int]  # before and after
    kv_cache_bytes: tuple[dict[str, int], dict[str, int]]  # per token, before and after
    has_tokenizer: bool
    kv_heads: dict[str, tuple[int, int]]  # attention kind -> K/V heads (before, after); fold: (heads combined, G)

    @property
    def config(self) -> dict:
        """The output checkpoint's config."""
        return self.plan.config


ConvertReport = FoldReport = FolderReport


def to_folder(
    source: str | os.PathLike,
    output: str | os.PathLike,
    spec: GQASpec | None,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    in_memory: bool = False,
    force: bool = False,
    location: str | None = None,
    progress: bool = True,
) -> FolderReport:
    """Convert `source` as `spec` asks (`spec=None`: fold a WGQA training form) and save it into `output`.

    A safetensors checkpoint (local or on the Hub) is converted shard by shard, never loading the model, unless
    `in_memory` or a `dtype` other than the source's is asked for. GGUF files, `.bin` checkpoints and families whose
    tensors are named differently on disk than in memory (ViT) are loaded and converted in memory. Both paths give
    bit-identical tensors.
    """
    output = check_output_dir(output, force=force, sources={"the source": source})  # `~` expanded
    _check_writable(output)
    max_shard_size = parse_size(max_shard_size)  # a bad --max-shard-size: one line, before any work, either path
    config = load_config_dict(source)  # one-line errors for a missing or unsupported source, before any weights
    family = resolve(config).family
    if spec is None:
        FORMS["wgqa"].reexpress(family, config)  # not a training form: one line, before any weights are read
        provenance = {"hf_gqa_version": __version__}
        kv_heads = _folded_heads(config)
    else:
        checked = plan_conversion(with_output_dtype(config, dtype), spec, validate_only=True)  # a bad --groups fails
        provenance = {"gqa_source": str(source), "hf_gqa_version": __version__}
    location = location or str(output)
    # A config that names no class converts in memory, as its model type's default class (see `load_source`).
    streamable = family.streams and not in_memory and dtype in (None, "auto") and bool(config.get("architectures"))
    folder = safetensors_folder(source) if streamable else None
    if folder is not None and distills(spec):  # an end-to-end distillation runs both models: in memory
        folder = None
    if folder is not None and reads_calibration_text(spec):  # on disk one layer at a time where it can, else in memory
        files = safetensors_files(folder)
        folder = folder if files and layerwise_possible(config, read_headers(files).keys()) else None
    measures = measures_activations(spec)

    def card(plan: ConversionPlan, config: dict, parameters: tuple[int, int]) -> str:
        if spec is None:
            return model_card(config, kv_heads, parameters, location, folded_from=str(source))
        return model_card(config, plan.kv_heads, parameters, location, plan.approximate)

    if folder is not None:
        calibration_tokenizer = load_tokenizer(source) if reads_calibration_text(spec) else None
        if reads_calibration_text(spec) and calibration_tokenizer is None:  # before anything is written
            what = f"--init {spec.init}" if needs_calibration(spec) else "--similarity activation"
            raise HfGqaError(f"{what} needs the model's tokenizer: none was found beside the checkpoint")
        similarities = None
        if measures:  # SimGQA's activation similarity: the source from disk, one layer at a time
            similarities = measure_similarities_on_disk(
                folder, checked.kv_heads, spec, calibration_tokenizer, progress
            )
        with atomic_output_dir(output, force=force) as tmp:
            result = stream_convert(folder, tmp, spec, provenance, max_shard_size, progress, similarities)
            if needs_calibration(spec):
                calibrate_checkpoint(folder, tmp, result.plan, spec, calibration_tokenizer, max_shard_size, progress)
            remove_stale_code(tmp, result.plan.config)  # a training form's code, when the output is stock
            (tmp / "README.md").write_text(card(result.plan, result.plan.config, result.parameters), "utf-8")
        plan, parameters = result.plan, result.parameters
        kv = (kv_cache_bytes_per_token(config), kv_cache_bytes_per_token(plan.config))
        tokenizer = has_tokenizer(output)
    else:
        model = load_source(source, dtype=dtype)
        loaded_tokenizer = load_tokenizer(source)
        similarities = None
        if measures:
            similarities = measure_similarities(model, checked.kv_heads, spec, loaded_tokenizer, progress)
        converted, plan = convert_model(
            model, spec, dtype=dtype, source=str(source), return_plan=True, head_similarities=similarities
        )
        parameters = (model.num_parameters(), converted.num_parameters())
        if needs_calibration(spec):
            calibrate_converted(model, converted, plan, spec, loaded_tokenizer, progress)
        text = card(plan, converted.config.to_dict(), parameters)
        as_stored(converted, dtype, source)  # the dtypes the streamed path writes (T5's wo stays float16)
        save_converted(
            converted, output, loaded_tokenizer, text, force=force, max_shard_size=max_shard_size, source=source
        )
        kv = (
            kv_cache_bytes_per_token(model.config.to_dict(), model.dtype),
            kv_cache_bytes_per_token(plan.config, converted.dtype),
        )
        tokenizer = loaded_tokenizer is not None
    kv_heads = kv_heads if spec is None else plan.kv_heads
    return FolderReport(plan, Path(output), folder is not None, parameters, kv, tokenizer, kv_heads)


def _check_writable(output: str | os.PathLike) -> None:
    """Refuse, before any work, an output whose folder cannot be written (the output is written beside it, then
    renamed into place): the first existing folder above it must be writable."""
    folder = Path(output).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise HfGqaError(f"cannot write the output {str(output)!r}: the folder {str(folder)!r} is not writable")


def _folded_heads(config: dict) -> dict[str, tuple[int, int]]:
    """A training form's weighted attention kinds -> (K/V heads combined, G)."""
    resolved = resolve(config)
    blocks = {b.kind: b.kv_heads for b in resolved.family.attention_blocks(resolved.view)}
    return {kind: (heads, blocks[kind]) for kind, heads in (config.get("gqa_kv_source_heads") or {}).items()}


def convert_to_folder(source, output, spec: GQASpec, **kwargs) -> FolderReport:
    """`to_folder` for a conversion: what `hf-gqa convert` runs."""
    return to_folder(source, output, spec, **kwargs)


def fold_to_folder(source, output, **kwargs) -> FolderReport:
    """Fold the WGQA training form at `source` (local folder or Hub id) and save the plain GQA checkpoint into
    `output`: what `hf-gqa fold` runs."""
    return to_folder(source, output, None, **kwargs)


__all__ = [
    "DTYPES",
    "FolderOptions",
    "ConvertReport",
    "FoldReport",
    "FolderReport",
    "convert_to_folder",
    "fold_to_folder",
    "to_folder",
]
