# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Weighted grouped K/V projections: the training form of WGQA (Chinnakonduru & Mohapatra, 2024).

Ships with WGQA training-form checkpoints (remote code): imports only `torch`.

A [`WeightedKV`] keeps the K (or V) projection of every original head, `weight` of shape `(C * d, d_in)` for C heads
of `d` features, and learns how each group of `r = C // G` contiguous heads is combined into one of the G heads the
attention reads:

    W_g = sum_i m_i * W_i  (and b_g = sum_i m_i * b_i)    over the heads i of group g

The projection weights are combined *before* the matmul, so the layer outputs G heads: the KV cache holds G heads even
while training and no repeated heads are materialised. The learned mixing weights `mixer.weight` have one of three
shapes (`LEARNED_SHAPES`):

- `scalar` (C,): one weight per head (WGQA's);
- `vector_out` (C, d): one per output feature of each head;
- `vector_in` (C, d_in): one per input feature of each head (a bias is scaled by the mean of its head's weights).

With every weight 1 / r the layer is exactly the mean-pooled GQA projection. The fourth combination, `mean`, is that
mean with no weights at all (no `mixer`, nothing for an optimizer to train): every group is always the plain mean of
the heads it holds, as SimGQA regrouped while uptraining needs (the WGQA paper's SimGQA mean-pools regrouped heads).
After uptraining, `fold()` returns the plain `nn.Linear` with G heads, and the extra parameters are gone.
"""

import torch
from torch import nn

LEARNED_SHAPES = ("scalar", "vector_out", "vector_in")
MEAN = "mean"  # no weights: each group is the mean of its heads
WEIGHT_SHAPES = (*LEARNED_SHAPES, MEAN)  # every value of a training form's `gqa_kv_weights`


def mixer_shape(shape: str, num_heads: int, head_dim: int, in_features: int) -> tuple[int, ...]:
    """The shape of the mixing weights of a projection of `num_heads` heads of `head_dim` features."""
    if shape == "scalar":
        return (num_heads,)
    if shape == "vector_out":
        return (num_heads, head_dim)
    if shape == "vector_in":
        return (num_heads, in_features)
    if shape == MEAN:
        raise ValueError("`mean` K/V projections have no mixing weights")
    raise ValueError(f"unknown K/V weight shape {shape!r}; choose one of {', '.join(WEIGHT_SHAPES)}")


def mixer_parameters(shape: str, num_heads: int, head_dim: int, in_features: int) -> int:
    """How many mixing weights a projection of `num_heads` heads has (0 for `mean`)."""
    if shape == MEAN:
        return 0
    count = 1
    for size in mixer_shape(shape, num_heads, head_dim, in_features):
        count *= size
    return count


def _split(rows: int, num_heads: int, num_groups: int) -> tuple[int, int]:
    if num_heads % num_groups or rows % num_heads:
        raise ValueError(f"cannot group {num_heads} heads (a projection of {rows} rows) into {num_groups} groups")
    return num_heads // num_groups, rows // num_heads


def mix_weight(
    weight: torch.Tensor, mixer: torch.Tensor | None, num_groups: int, shape: str, num_heads: int | None = None
) -> torch.Tensor:
    """`(C * d, d_in)` projection rows and `(C, ...)` mixing weights -> the `(G * d, d_in)` grouped projection.
    `mean` has no mixing weights (`mixer` None, `num_heads` C given): each group is the mean of its heads."""
    ratio, head_dim = _split(weight.shape[0], mixer.shape[0] if mixer is not None else num_heads, num_groups)
    in_features = weight.shape[1]
    heads = weight.reshape(num_groups, ratio, head_dim, in_features)
    if shape == MEAN:
        return heads.mean(dim=1).reshape(num_groups * head_dim, in_features)
    mixer = mixer.to(weight.dtype)
    if shape == "scalar":
        mixed = torch.einsum("grdi,gr->gdi", heads, mixer.reshape(num_groups, ratio))
    elif shape == "vector_out":
        mixed = torch.einsum("grdi,grd->gdi", heads, mixer.reshape(num_groups, ratio, head_dim))
    elif shape == "vector_in":
        mixed = torch.einsum("grdi,gri->gdi", heads, mixer.reshape(num_groups, ratio, in_features))
    else:
        raise ValueError(f"unknown K/V weight shape {shape!r}; choose one of {', '.join(WEIGHT_SHAPES)}")
    return mixed.reshape(num_groups * head_dim, in_features)


def mix_bias(
    bias: torch.Tensor, mixer: torch.Tensor | None, num_groups: int, shape: str, num_heads: int | None = None
) -> torch.Tensor:
    """`(C * d,)` bias and the projection's mixing weights (None for `mean`) -> the `(G * d,)` grouped bias."""
    ratio, head_dim = _split(bias.shape[0], mixer.shape[0] if mixer is not None else num_heads, num_groups)
    heads = bias.reshape(num_groups, ratio, head_dim)
    if shape == MEAN:
        return heads.mean(dim=1).reshape(num_groups * head_dim)
    mixer = mixer.to(bias.dtype)
    if shape == "vector_out":
        mixed = torch.einsum("grd,grd->gd", heads, mixer.reshape(num_groups, ratio, head_dim))
    else:  # scalar, or vector_in: a bias has no input feature, so each head's bias takes its mean input weight
        scale = mixer if shape == "scalar" else mixer.mean(dim=-1)
        mixed = torch.einsum("grd,gr->gd", heads, scale.reshape(num_groups, ratio))
    return mixed.reshape(num_groups * head_dim)


class HeadMixer(nn.Module):
    """The learnable mixing weights of one [`WeightedKV`] projection (a module so PEFT can `modules_to_save` it)."""

    def __init__(
        self,
        shape: str,
        num_heads: int,
        num_groups: int,
        head_dim: int,
        in_features: int,
        init: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if num_heads % num_groups:
            raise ValueError(f"{num_groups} groups do not divide {num_heads} heads")
        self.shape, self.num_heads, self.num_groups = shape, num_heads, num_groups
        self.init_value = num_groups / num_heads if init is None else float(init)  # default: the mean
        self.weight = nn.Parameter(
            torch.empty(mixer_shape(shape, num_heads, head_dim, in_features), device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init_value)

    def extra_repr(self) -> str:
        return f"{self.shape}, heads={self.num_heads}, groups={self.num_groups}"


class WeightedKV(nn.Module):
    """A K or V projection of `num_heads` heads whose output is `num_groups` learned combinations of them.

    Attributes: `weight` `(num_heads * head_dim, in_features)` and `bias` (or None), as in the original projection;
    `mixer`, the [`HeadMixer`] (None for `weights="mean"`). `out_features` is `num_groups * head_dim`, what the
    attention reads.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        num_groups: int,
        head_dim: int,
        bias: bool = False,
        weights: str = "scalar",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if num_heads % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_heads={num_heads}")
        self.in_features, self.num_heads, self.num_groups, self.head_dim = in_features, num_heads, num_groups, head_dim
        self.weights = weights
        self.out_features = num_groups * head_dim
        self.weight = nn.Parameter(torch.empty(num_heads * head_dim, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_heads * head_dim, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if weights == MEAN:
            self.mixer = None
        else:
            self.mixer = HeadMixer(weights, num_heads, num_groups, head_dim, in_features, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.Linear`'s initialisation of weight and bias, and the mean for the mixer (models override all three)."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            bound = self.in_features**-0.5 if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        if self.mixer is not None:
            self.mixer.reset_parameters()

    def grouped_weight(self) -> torch.Tensor:
        """The `(num_groups * head_dim, in_features)` weight the layer applies."""
        return mix_weight(self.weight, self._mixing(), self.num_groups, self.weights, self.num_heads)

    def grouped_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return mix_bias(self.bias, self._mixing(), self.num_groups, self.weights, self.num_heads)

    def _mixing(self) -> torch.Tensor | None:
        return None if self.mixer is None else self.mixer.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden_states, self.grouped_weight(), self.grouped_bias())

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The plain `nn.Linear` with `num_groups` heads that this layer computes (same device and dtype)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        linear.weight.copy_(self.grouped_weight())
        if self.bias is not None:
            linear.bias.copy_(self.grouped_bias())
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, heads={self.num_heads}, groups={self.num_groups}, "
            f"head_dim={self.head_dim}, bias={self.bias is not None}, weights={self.weights}"
        )


def declared_init(config) -> float | None:
    """The constant the conversion started the mixing weights at (`--weights-init 0.5` records `gqa_init: "0.5"`), or
    None: the mean (`mean`; `random`, RandWGQA's draws, which cannot be redrawn)."""
    try:
        value = float(getattr(config, "gqa_init", None))
    except (TypeError, ValueError):
        return None
    return value if abs(value) < float("inf") else None  # not inf, not nan


__all__ = [
    "LEARNED_SHAPES",
    "MEAN",
    "WEIGHT_SHAPES",
    "HeadMixer",
    "WeightedKV",
    "declared_init",
    "mix_bias",
    "mix_weight",
    "mixer_parameters",
    "mixer_shape",
]
