"""The WGQA training form and its fold.

The training form keeps every K and V projection and adds, next to each (`<proj>.mixer.weight`), the weights that
combine each group's heads into one of the G heads: `t5_gqa` with `gqa_kv_weights`, or `<family>_wgqa`.

The fold turns it into the plain GQA model: each weighted K/V projection becomes the G-head projection it computes
(`W_g = sum_i m_i W_i`, biases likewise; with `gqa_kv_weights: mean`, SimGQA regrouped while uptraining, the plain
mean of the group's heads), and the mixing weights are gone. T5 stays `t5_gqa` (without
`gqa_kv_weights`); the decoder families become a stock checkpoint of their family with `num_key_value_heads=G`. The
fold is a `TensorMap` like any conversion, so it runs in memory or shard by shard with bit-identical results, and
converting a training form folds it first.
"""

import os
from functools import partial
from pathlib import Path

import torch

from ...core.tensormap import TensorMap, TensorOp
from ...errors import CheckpointError, HfGqaError
from ...modeling.weighted_kv import MEAN, mix_bias, mix_weight, mixer_parameters
from ..base import Form

MIXER_SUFFIX = "mixer.weight"
# The remote code of the decoder training form: a folded (stock) checkpoint must not keep it.
TRAINING_FORM_CODE = ("configuration_wgqa_decoder.py", "family_forms.py", "modeling_wgqa_decoder.py", "weighted_kv.py")


def mixer_key(projection_weight_key: str) -> str:
    """`...k_proj.weight` -> `...k_proj.mixer.weight`: where a weighted projection keeps its mixing weights."""
    return projection_weight_key.removesuffix("weight") + MIXER_SUFFIX


def is_training_form(config) -> bool:
    """Whether a config (dict or config object) is a WGQA training form."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    return bool(get("gqa_kv_weights"))


def _fold_weight(weight, mixer=None, *, key: str, heads: int, groups: int, shape: str) -> torch.Tensor:
    if (mixer is not None and mixer.shape[0] != heads) or weight.dim() != 2 or weight.shape[0] % heads:
        got = "" if mixer is None else f" with mixing weights of shape {tuple(mixer.shape)}"
        raise CheckpointError(
            f"{key} of shape {tuple(weight.shape)}{got} is not {heads} weighted heads, as the config says"
        )
    return mix_weight(weight, mixer, groups, shape, heads).contiguous()


def _fold_bias(bias, mixer=None, *, heads: int, groups: int, shape: str) -> torch.Tensor:
    return mix_bias(bias, mixer, groups, shape, heads)


class WGQAForm(Form):
    name = "wgqa"
    fields = ("gqa_kv_weights", "gqa_kv_source_heads")

    def reexpress(self, family, config, keys=None) -> tuple[dict, TensorMap]:
        """The folded config dict and the tensor map that folds a training-form checkpoint with this config."""
        config = dict(config)
        shape = config.get("gqa_kv_weights")
        if not shape:
            raise HfGqaError(
                f"the {config.get('model_type')} checkpoint is not a WGQA training form (its config has no "
                "gqa_kv_weights): there is nothing to fold"
            )
        source_heads = config.get("gqa_kv_source_heads") or {}
        folded = family.form_stock_config(config, self.name, self.fields)
        ops: dict[str, TensorOp] = {}
        required, optional = set(), set()
        for block in family.attention_blocks(folded, keys):
            heads = source_heads.get(block.kind)
            if heads is None:
                continue
            for key in (k for k in block.kv_keys if k not in block.norm_keys):
                inputs = (key,) if shape == MEAN else (key, mixer_key(key))  # `mean` has no mixing weights
                fold = partial(_fold_weight, key=key, heads=heads, groups=block.kv_heads, shape=shape)
                ops[key] = TensorOp(inputs, fold)
                required.update(inputs)
                bias = key.removesuffix("weight") + "bias"
                if bias in block.optional_kv_keys:
                    mix = partial(_fold_bias, heads=heads, groups=block.kv_heads, shape=shape)
                    ops[bias] = TensorOp((bias, *inputs[1:]), mix)
                    optional.add(bias)
        if not ops:
            raise HfGqaError(f"the {config.get('model_type')} training form names no weighted attention to fold")
        name = f"fold of the WGQA training form of {folded['model_type']}"
        return folded, TensorMap(ops=ops, required=frozenset(required), optional=frozenset(optional), name=name)

    def extra_parameters(self, family, config: dict) -> int:
        """The K/V mixing weights of a training form: what the fold removes, besides the K/V heads it folds."""
        shape = config.get("gqa_kv_weights")
        if not shape:
            return 0
        source_heads = config.get("gqa_kv_source_heads") or {}
        in_features = config.get("d_model") or config.get("hidden_size") or config.get("n_embd")
        total = 0
        for block in family.attention_blocks(family.form_stock_config(config, self.name, self.fields)):
            if block.kind in source_heads:
                n = mixer_parameters(shape, source_heads[block.kind], block.head_dim, in_features)
                total += 2 * n  # keys and values
        return total

    def describe(self, family, config: dict) -> dict:
        return {
            "kv_weights": config["gqa_kv_weights"],
            "kv_source_heads": config.get("gqa_kv_source_heads"),
            "extra_parameters": self.extra_parameters(family, config),
        }


FORM = WGQAForm()


def remove_stale_code(folder: str | os.PathLike, config: dict) -> None:
    """Drop the training form's remote code copied into a folder whose checkpoint does not use remote code."""
    if config.get("auto_map"):
        return
    for name in TRAINING_FORM_CODE:
        (Path(folder) / name).unlink(missing_ok=True)


__all__ = [
    "FORM",
    "MIXER_SUFFIX",
    "TRAINING_FORM_CODE",
    "WGQAForm",
    "is_training_form",
    "mixer_key",
    "remove_stale_code",
]
