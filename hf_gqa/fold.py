"""Fold the WGQA training form into the plain GQA model: each weighted K/V projection becomes the G-head projection
it computes (`W_g = sum_i m_i W_i`, biases likewise), and the mixing weights are gone.

T5 stays `t5_gqa` (without `gqa_kv_weights`); the decoder families (`llama_wgqa`, ...) become a stock checkpoint of
their family with `num_key_value_heads=G`, which plain transformers loads. The fold is a `TensorMap` like any
conversion, so it runs in memory (`fold(model)`) or shard by shard (`fold_to_folder`, `hf-gqa fold`) with
bit-identical results, and `hf-gqa convert` folds a training-form source before converting it.
"""

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .errors import CheckpointError, HfGqaError
from .modeling.weighted_kv import mix_bias, mix_weight
from .tensormap import TensorMap, TensorOp
from .variants.wgqa import mixer_key

# The remote code of the decoder training form: a folded (stock) checkpoint must not keep it.
TRAINING_FORM_CODE = ("configuration_wgqa_decoder.py", "family_forms.py", "modeling_wgqa_decoder.py", "weighted_kv.py")


def is_training_form(config) -> bool:
    """Whether a config (dict or config object) is a WGQA training form."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    return bool(get("gqa_kv_weights"))


def _fold_weight(weight, mixer, key: str, heads: int, groups: int, shape: str) -> torch.Tensor:
    if mixer.shape[0] != heads or weight.dim() != 2 or weight.shape[0] % heads:
        raise CheckpointError(
            f"{key} of shape {tuple(weight.shape)} with mixing weights of shape {tuple(mixer.shape)} is not "
            f"{heads} weighted heads, as the config says"
        )
    return mix_weight(weight, mixer, groups, shape).contiguous()


def plan_fold(config: dict, keys=None) -> tuple[dict, TensorMap]:
    """The folded config dict and the tensor map that folds a WGQA training-form checkpoint with this config."""
    from .conversion.core import get_architecture

    config = dict(config)
    shape = config.get("gqa_kv_weights")
    if not shape:
        raise HfGqaError(
            f"the {config.get('model_type')} checkpoint is not a WGQA training form (its config has no "
            "gqa_kv_weights): there is nothing to fold"
        )
    source_heads = config.get("gqa_kv_source_heads") or {}
    folded = get_architecture(config).folded_config(config)
    target = get_architecture(folded)
    ops: dict[str, TensorOp] = {}
    required, optional = set(), set()
    for block in target.attention_blocks(folded, keys):
        heads = source_heads.get(block.kind)
        if heads is None:
            continue
        for key in (k for k in block.kv_keys if k not in block.norm_keys):
            mixer = mixer_key(key)
            fold = partial(_fold_weight, key=key, heads=heads, groups=block.kv_heads, shape=shape)
            ops[key] = TensorOp((key, mixer), fold)
            required.update((key, mixer))
            bias = key.removesuffix("weight") + "bias"
            if bias in block.optional_kv_keys:
                ops[bias] = TensorOp((bias, mixer), partial(mix_bias, num_groups=block.kv_heads, shape=shape))
                optional.add(bias)
    if not ops:
        raise HfGqaError(f"the {config.get('model_type')} training form names no weighted attention to fold")
    name = f"fold of the WGQA training form of {folded['model_type']}"
    return folded, TensorMap(ops=ops, required=frozenset(required), optional=frozenset(optional), name=name)


def fold(model, dtype=None):
    """The plain GQA model a WGQA training-form `model` computes: `t5_gqa` for T5, the stock family (e.g. a
    `LlamaForCausalLM` with `num_key_value_heads=G`) for decoders. Its logits equal the training form's."""
    from .conversion.api import convert_model

    if hasattr(model, "merge_and_unload"):  # a PEFT model: its adapters and trained mixer copies live outside
        raise HfGqaError("fold the merged model: call model.merge_and_unload() first")
    if not is_training_form(model.config):
        raise HfGqaError(f"{type(model).__name__} is not a WGQA training form: there is nothing to fold")
    return convert_model(model, None, dtype=dtype)


def remove_stale_code(folder: str | os.PathLike, config: dict) -> None:
    """Drop the training form's remote code copied into a folder whose checkpoint does not use remote code."""
    if config.get("auto_map"):
        return
    for name in TRAINING_FORM_CODE:
        (Path(folder) / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class FoldReport:
    config: dict  # the folded checkpoint's config
    output: Path
    streamed: bool
    parameters: tuple[int, int]  # before and after
    kv_heads: dict[str, tuple[int, int]]  # weighted attention kind -> (heads combined, G)
    has_tokenizer: bool


def fold_to_folder(
    source: str | os.PathLike,
    output: str | os.PathLike,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    in_memory: bool = False,
    force: bool = False,
    location: str | None = None,
    progress: bool = True,
) -> FoldReport:
    """Fold the WGQA training form at `source` (local folder or Hub id) and save the plain GQA checkpoint (weights,
    config, tokenizer, generation config, code when needed, model card) into `output`, atomically. A safetensors
    checkpoint is folded shard by shard unless `in_memory` or another `dtype` is asked for."""
    from . import __version__
    from .conversion.api import (
        atomic_output_dir,
        check_output_dir,
        convert_model,
        load_config_dict,
        load_source,
        load_tokenizer,
        save_converted,
    )
    from .conversion.core import get_architecture
    from .conversion.streaming import safetensors_folder, stream_convert
    from .hub import model_card

    check_output_dir(output, force=force)
    config = load_config_dict(source)
    get_architecture(config)
    plan_fold(config)  # not a training form: one line, before any weights are read
    location = location or str(output)
    folder = None if in_memory or (dtype not in (None, "auto")) else safetensors_folder(source)

    def card(folded: dict, parameters) -> str:
        return model_card(folded, kv_heads(folded), parameters, location, folded_from=str(source))

    def kv_heads(folded: dict) -> dict[str, tuple[int, int]]:
        blocks = {b.kind: b.kv_heads for b in get_architecture(folded).attention_blocks(folded)}
        return {kind: (heads, blocks[kind]) for kind, heads in (config.get("gqa_kv_source_heads") or {}).items()}

    if folder is not None:
        with atomic_output_dir(output, force=force) as tmp:
            result = stream_convert(folder, tmp, None, {"hf_gqa_version": __version__}, max_shard_size, progress)
            remove_stale_code(tmp, result.plan.config)
            (tmp / "README.md").write_text(card(result.plan.config, result.parameters), encoding="utf-8")
        folded, parameters = result.plan.config, result.parameters
        has_tokenizer = any((Path(output) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
        return FoldReport(folded, Path(output), True, parameters, kv_heads(folded), has_tokenizer)
    model = load_source(source, dtype=dtype)
    tokenizer = load_tokenizer(source)
    folded_model, plan = convert_model(model, None, dtype=dtype, return_plan=True)
    parameters = (model.num_parameters(), folded_model.num_parameters())
    folded = folded_model.config.to_dict()
    save_converted(
        folded_model, output, tokenizer, card(folded, parameters), force=force, max_shard_size=max_shard_size
    )
    return FoldReport(folded, Path(output), False, parameters, kv_heads(plan.config), tokenizer is not None)


__all__ = ["FoldReport", "fold", "fold_to_folder", "is_training_form", "plan_fold", "remove_stale_code"]
