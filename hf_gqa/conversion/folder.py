"""Convert a source (Hub id, local folder, .gguf file) into an output folder: streamed shard by shard when the source
is a safetensors checkpoint, in memory otherwise. What `hf-gqa convert` runs."""

import os
from dataclasses import dataclass
from pathlib import Path

from ..spec import GQASpec
from ..stats import kv_cache_bytes_per_token
from .api import check_output_dir, convert_model, load_config_dict, load_source, load_tokenizer, save_converted
from .core import ConversionPlan, get_architecture, plan_conversion
from .streaming import safetensors_folder, save_streamed


@dataclass(frozen=True)
class ConvertReport:
    plan: ConversionPlan
    output: Path
    streamed: bool  # shard by shard from safetensors, or through a model in memory
    parameters: tuple[int, int]
    kv_cache_bytes: tuple[dict[str, int], dict[str, int]]  # per token, before and after
    has_tokenizer: bool


def convert_to_folder(
    source: str | os.PathLike,
    output: str | os.PathLike,
    spec: GQASpec,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    in_memory: bool = False,
    force: bool = False,
    location: str | None = None,
    progress: bool = True,
) -> ConvertReport:
    """Convert `source` as `spec` asks and save it (weights, config, tokenizer, generation config, modeling code
    when needed, model card) into `output`, atomically.

    A safetensors checkpoint (local or on the Hub) is converted shard by shard, never loading the model, unless
    `in_memory` or a `dtype` other than the source's is asked for. GGUF files, `.bin` checkpoints and families whose
    tensors are named differently on disk than in memory (ViT) are loaded and converted in memory. Both paths give
    bit-identical tensors.
    """
    from .. import __version__
    from ..fold import remove_stale_code
    from ..hub import model_card

    check_output_dir(output, force=force)
    config = load_config_dict(source)  # one-line errors for a missing or unsupported source, before any weights
    streams = get_architecture(config).streams
    plan_conversion(config, spec, validate_only=True)  # a bad --groups fails here, before any download of weights
    provenance = {"gqa_source": str(source), "hf_gqa_version": __version__}
    location = location or str(output)
    folder = None if in_memory or not streams or (dtype not in (None, "auto")) else safetensors_folder(source)

    if folder is not None:

        def card(result):
            return model_card(
                result.plan.config, result.plan.kv_heads, result.parameters, location, result.plan.approximate
            )

        result = save_streamed(folder, output, spec, provenance, max_shard_size, card, force, progress)
        plan, parameters = result.plan, result.parameters
        remove_stale_code(output, plan.config)  # a WGQA training form's code, when the output is a stock checkpoint
        has_tokenizer = any((Path(output) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    else:
        model = load_source(source, dtype=dtype)
        tokenizer = load_tokenizer(source)
        converted, plan = convert_model(model, spec, dtype=dtype, source=str(source), return_plan=True)
        parameters = (model.num_parameters(), converted.num_parameters())
        card = model_card(converted.config.to_dict(), plan.kv_heads, parameters, location, plan.approximate)
        save_converted(converted, output, tokenizer, card, force=force, max_shard_size=max_shard_size)
        has_tokenizer = tokenizer is not None
        kv = (
            kv_cache_bytes_per_token(model.config.to_dict(), model.dtype),
            kv_cache_bytes_per_token(plan.config, converted.dtype),
        )
        return ConvertReport(plan, Path(output), False, parameters, kv, has_tokenizer)
    kv = (kv_cache_bytes_per_token(config), kv_cache_bytes_per_token(plan.config))
    return ConvertReport(plan, Path(output), True, parameters, kv, has_tokenizer)


__all__ = ["ConvertReport", "convert_to_folder"]
