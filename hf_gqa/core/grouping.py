"""Head regrouping: pure tensor math on projection weights, no transformers import.

A K or V projection weight of shape `(H * d, d_in)` (or a bias of shape `(H * d,)`) holds its heads as contiguous
blocks of `d` rows. Grouping to G heads takes heads `[g * r, (g + 1) * r)` with `r = H // G` into group `g`, the
convention of transformers' `repeat_kv`.
"""

import zlib
from collections.abc import Callable

import torch

KVInit = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
KV_INITS: dict[str, KVInit] = {}


def kv_init(name: str):
    """Register `fn(heads, generator) -> pooled`.

    `heads` is `(G, r, d, *rest)` in float32; the result is `(G, d, *rest)`.
    """

    def register(fn: KVInit) -> KVInit:
        if name in KV_INITS:
            raise ValueError(f"K/V init {name!r} is already registered")
        KV_INITS[name] = fn
        return fn

    return register


@kv_init("mean")
def _mean(heads: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The mean of each group's heads (Ainslie et al., 2023)."""
    return heads.mean(dim=1)


@kv_init("first")
def _first(heads: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The first head of each group (an ablation of Ainslie et al.)."""
    return heads[:, 0].clone()


@kv_init("random")
def _random(heads: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh N(0, s^2) weights, s the standard deviation of the source projection (an ablation of Ainslie et al.)."""
    std = heads.std() if heads.numel() > 1 else heads.new_tensor(0.0)
    noise = torch.randn(heads[:, 0].shape, generator=generator, dtype=torch.float32)
    return noise * std


def key_generator(seed: int, key: str) -> torch.Generator:
    """A generator seeded from (seed, tensor name): results do not depend on the order tensors are visited."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))


def valid_group_counts(num_heads: int) -> list[int]:
    """The divisors of `num_heads`: every G a projection with `num_heads` heads can be grouped into."""
    return [g for g in range(1, num_heads + 1) if num_heads % g == 0]


def regroup_heads(
    tensor: torch.Tensor,
    num_heads: int,
    new_heads: int,
    init: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Regroup the head blocks along dim 0 of `tensor` from `num_heads` to `new_heads`.

    - `new_heads` divides `num_heads`: each group of `num_heads // new_heads` contiguous heads becomes one head,
      initialised by `init` (see `KV_INITS`), computed in float32 and cast back once.
    - `num_heads` divides `new_heads`: each head is copied `new_heads // num_heads` times (exact; `init` unused).
    - `new_heads == num_heads`: `tensor` is returned as it is.
    """
    if tensor.shape[0] % num_heads:
        raise ValueError(f"dim 0 of a tensor of shape {tuple(tensor.shape)} is not {num_heads} heads")
    if new_heads == num_heads:
        return tensor
    head_dim = tensor.shape[0] // num_heads
    rest = tuple(tensor.shape[1:])
    if new_heads < num_heads and num_heads % new_heads == 0:
        if init not in KV_INITS:
            raise ValueError(f"unknown K/V init {init!r}; choose one of {sorted(KV_INITS)}")
        ratio = num_heads // new_heads
        heads = tensor.detach().to(torch.float32).reshape(new_heads, ratio, head_dim, *rest)
        pooled = KV_INITS[init](heads, generator)
        return pooled.reshape(new_heads * head_dim, *rest).to(tensor.dtype).contiguous()
    if new_heads > num_heads and new_heads % num_heads == 0:
        heads = tensor.detach().reshape(num_heads, 1, head_dim, *rest)
        copies = heads.expand(num_heads, new_heads // num_heads, head_dim, *rest)
        return copies.reshape(new_heads * head_dim, *rest).contiguous()
    raise ValueError(f"cannot regroup {num_heads} heads into {new_heads}: one count must divide the other")


__all__ = ["KV_INITS", "key_generator", "kv_init", "regroup_heads", "valid_group_counts"]
