"""WGQA and RandWGQA (Chinnakonduru & Mohapatra, 2024): GQA whose K/V heads are learned weighted sums of the
original heads during uptraining.

The conversion keeps every K and V projection as it is and adds, next to each (`<proj>.mixer.weight`), the weights
that combine each group of `C // G` contiguous heads into one of the G heads: 1 / group size (`mean`, so the training
form starts as exactly the GQA model; the paper's 0.5 for groups of two), a given constant, or N(0, 1) draws
(RandWGQA, seeded per tensor). The output is the *training form* (`t5_gqa` with `gqa_kv_weights`, or
`<family>_wgqa`); after uptraining `hf_gqa.fold` / `hf-gqa fold` folds the weights into plain G-head projections.
Per-head key norms (OLMo2, Cohere, StableLM) act after the projection: they are pooled as GQA pools them.
"""

import dataclasses
import math

import torch

from ...core.grouping import key_generator, valid_group_counts
from ...core.tensormap import TensorOp, keep
from ...errors import CheckpointError, HfGqaError, InvalidGroupsError
from ...modeling.weighted_kv import LEARNED_SHAPES, MEAN, mixer_shape
from ..base import Variant
from .form import FORM, mixer_key
from .options import WGQAOptions


class WGQA(Variant):
    name = "wgqa"
    summary = "G key/value heads, each a learned weighted sum of its group's heads; uptrain, then `hf-gqa fold`"
    options = WGQAOptions

    def check_spec(self, spec) -> None:
        super().check_spec(spec)
        if spec.init != "mean":
            raise HfGqaError(f"--init applies to gqa and mqa; {self.name} keeps every K/V head (see --weights-init)")
        if spec.weights is not None and spec.weights not in LEARNED_SHAPES:
            raise HfGqaError(f"unknown --weights {spec.weights!r}; choose one of {', '.join(LEARNED_SHAPES)}")
        self.init_value(spec)

    def weight_shape(self, spec) -> str:
        """The training form's `gqa_kv_weights`: a learned shape, or `mean` (no weights; SimGQA's)."""
        return spec.weights or "scalar"

    @staticmethod
    def init_value(spec) -> float | None:
        """The constant the weights start at, or None for the mean (1 / group size)."""
        value = spec.weights_init
        if value is None or value == "mean":
            return None
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise HfGqaError(f"--weights-init must be mean or a number, got {value!r}")
        return number

    def provenance(self, spec) -> dict:
        value = self.init_value(spec)
        return {"gqa_init": "mean" if value is None else repr(value)}

    def initial_weights(self, shape: tuple[int, ...], spec, current: int, new: int, generator) -> torch.Tensor:
        value = self.init_value(spec)
        return torch.full(shape, new / current if value is None else value, dtype=torch.float32)

    def kv_heads(self, kind, num_heads, current, requested):
        if requested is None:
            raise InvalidGroupsError(f"--groups is required for variant {self.name!r}")
        groups = self.check_groups(kind, num_heads, current, requested)
        if current % groups:
            raise InvalidGroupsError(
                f"--groups {groups}: {self.name} combines the {current} key/value heads of {kind} attention, so G "
                f"must divide {current}; valid values: {', '.join(map(str, valid_group_counts(current)))}"
            )
        return groups

    def rewrites(self, current: int, new: int, spec=None) -> bool:
        return True  # every selected block gets weights, also one whose K/V heads stay (a learned scale per head)

    def tensor_ops(self, family, block, current, new, spec, regroup):
        norm_keys = set(block.norm_keys)
        ops: dict[str, TensorOp] = {}
        if block.norm_keys:  # per-head key norms act on the G grouped heads: pooled as GQA pools them
            norms = tuple(k for k in block.kv_keys if k in norm_keys)
            ops.update(family.tensor_ops(dataclasses.replace(block, kv_keys=norms, optional_kv_keys=()), regroup))
        shape, rows = self.weight_shape(spec), current * block.head_dim
        for key in (k for k in block.kv_keys if k not in norm_keys):
            if not key.endswith(".weight"):
                raise HfGqaError(f"{self.name} cannot weight {key}: not a projection weight")
            mixer = mixer_key(key)

            def make_mixer(weight: torch.Tensor, key=key, mixer=mixer) -> torch.Tensor:
                if weight.dim() != 2 or weight.shape[0] != rows:
                    raise CheckpointError(
                        f"{key} has shape {tuple(weight.shape)}; the config says {current} heads of {block.head_dim}"
                    )
                size = mixer_shape(shape, current, block.head_dim, weight.shape[1])
                return self.initial_weights(size, spec, current, new, key_generator(spec.seed, mixer)).to(weight.dtype)

            ops[key] = TensorOp((key,), keep)  # kept as it is (an op's input is consumed unless also its output)
            if shape != MEAN:  # `mean`: no weights, each group is the mean of its heads
                ops[mixer] = TensorOp((key,), make_mixer)
        return ops

    def check_dtype(self, spec, config: dict) -> None:
        """Refuse a `--weights-init` the checkpoint's dtype (the output's, `config["dtype"]`) cannot hold."""
        value = self.init_value(spec)
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
        dtype = getattr(torch, name, None)
        if value is None or not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            return
        largest = torch.finfo(dtype).max
        if abs(value) > largest:
            raise HfGqaError(
                f"--weights-init {value:g} does not fit the model's dtype {name} (largest {largest:g}): its weights "
                "would be infinite"
            )

    def target_config(self, family, config, kv_heads, provenance, spec) -> dict:
        self.check_dtype(spec, config)
        target = super().target_config(family, config, kv_heads, provenance, spec)
        source_heads = {kind: before for kind, (before, _) in kv_heads.items()}
        return family.form_config(
            target, FORM.name, gqa_kv_weights=self.weight_shape(spec), gqa_kv_source_heads=dict(source_heads)
        )


class RandWGQA(WGQA):
    name = "randwgqa"
    summary = "wgqa with its weights drawn from N(0, 1), seeded by --seed"

    def check_spec(self, spec) -> None:
        if spec.weights_init is not None:
            raise HfGqaError("randwgqa draws its weights from N(0, 1): --weights-init does not apply (see wgqa)")
        super().check_spec(spec)

    def provenance(self, spec) -> dict:
        return {"gqa_init": "random"}

    def initial_weights(self, shape, spec, current, new, generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32)


__all__ = ["RandWGQA", "WGQA"]
