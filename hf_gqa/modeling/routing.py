# Copyright 2026 The hf-gqa authors. Licensed under the Apache License, Version 2.0.
"""Routed attention: which query head reads which key/value head, for the variants stock GQA cannot express.

Ships with converted checkpoints (remote code): imports only `torch` and `transformers`.

An attention module with a [`HeadRouting`] (`module.routing`) has `q_heads` query heads and `kv_heads` key/value heads
(the KV cache holds `kv_heads`) and computes `out_heads` attention heads, each a pair (query head, key/value head),
whose outputs the output projection takes. The modes:

- `kdgqa` (Khan et al., 2024, eqs. 1-3): the H query heads are split left to right into G groups whose sizes follow
  the key heads' L2 norms, computed anew in every forward pass, from one of three statistics (`statistic`):
  - `sample` (default, ours): the mean, over the keys a query position can see (its mask row: causal prefix, padding
    excluded), of each key head's per-token L2 norm: one allocation per sample and position. No batch dependence
    (one sample's output never depends on another's), causal (position t's allocation sees no later key), cache
    exact (decoding with a KV cache reproduces the full forward).
  - `batch` (ours): in training, the `sample` statistic of position t averaged over the batch; in evaluation,
    `sample`. Batch dependent in training only; causal; cache exact.
  - `forward` (the paper's: one allocation per forward pass, "irrespective of training or inference"): the mean,
    over every key that any position of any sample in the batch sees (padding excluded), of each key head's
    per-token L2 norm; in training and evaluation. Batch dependent (an output depends on the other samples of its
    batch, so evaluation scores depend on the batch size); not causal (position t's allocation sees the keys after
    t); not cache exact (a decoding step allocates from the keys cached so far, so incremental decoding does not
    reproduce the full forward, and generation with a cache may differ from generation without). "The batch" is
    what this forward call sees: with N processes, each process's own batch.
- `dgqa`: the same allocation rule on statistics gathered while training (an EMA of the windows' mean key norms,
  or their change from one window to the next), re-allocated every `window` optimizer steps by the
  `hf_gqa.training.DGQAReallocate` hook. The allocation and statistics are buffers of this module, updated only in
  training mode; in evaluation the allocation is fixed, so generation with a cache is exact.
- `pgqa`: uniform GQA groups; in training, each group's attention map has Gaussian noise with the map's own mean and
  std (per sample and group, over the query positions that see at least one key) subtracted, with zeros on the
  diagonal (a query's own position) and on masked entries.
  Evaluation is deterministic (the identity) unless `noise_in_eval`.
- `pairs` (the GQKVA family, Javadi et al., 2023): a static list of (query head, key/value head) pairs: GQKVA-gq.gkv
  takes every pair of gq query heads and gkv key/value heads; GKVA-g / MKVA share each of g (or 1) query heads among
  H key/value heads.

Allocation (`allocate`, routing key `allocation`): `balanced` (default, hf-gqa's): every group first gets one query
head; the other H - G go in proportion to the min-max scaled statistic. `paper` (Khan et al.'s eq. 3): each group gets
floor(H x its share of the scaled statistic), so a group may get none. Both place the heads the floor leaves over by
largest remainder (ties to the lower group). Equal statistics (within a relative 1e-5) give equal groups (GQA).
"""

import torch
from torch import nn

ATTENTION_NAME = "hf_gqa_routed"
MODES = ("kdgqa", "dgqa", "pgqa", "pairs")
EVOLUTIONS = ("ema", "difference")
STATISTICS = ("sample", "batch", "forward")
ALLOCATIONS = ("balanced", "paper")


@torch.no_grad()
def allocate(scores: torch.Tensor, num_heads: int, rule: str = "balanced") -> torch.Tensor:
    """Query heads per key/value head: `scores` (..., G) -> counts (..., G) summing to `num_heads`.

    `balanced` (hf-gqa's): each group first gets one head, the other H - G go in proportion to the min-max scaled
    scores. `paper` (Khan et al.'s eq. 3): floor(H * scaled / sum(scaled)), so a group may get none. Both place the
    heads the floor leaves over by largest remainder, the lower group first among equals."""
    groups = scores.shape[-1]
    if rule not in ALLOCATIONS:
        raise ValueError(f"allocation rule must be one of {ALLOCATIONS}, got {rule!r}")
    if rule == "balanced" and num_heads < groups:
        raise ValueError(f"cannot give each of {groups} key/value heads one of {num_heads} query heads")
    scores = scores.float()
    low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    spread = high - low
    # Statistics within a relative 1e-5 of each other count as equal (min-max scaling would amplify rounding noise).
    distinct = spread > 1e-5 * high.abs().clamp_min(torch.finfo(torch.float32).tiny)
    scaled = torch.where(distinct, (scores - low) / spread.clamp_min(torch.finfo(torch.float32).tiny), 1.0)
    share = scaled / scaled.sum(-1, keepdim=True)
    spare = num_heads - groups if rule == "balanced" else num_heads
    quota = share * spare
    counts = quota.floor()
    left = spare - counts.sum(-1, keepdim=True)  # heads still to place, < G
    remainder = quota - counts
    # Largest remainder first, the lower group first among equals: a stable sort of -remainder.
    order = torch.sort(-remainder, dim=-1, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(groups, device=order.device).expand_as(order))
    counts = counts + (rank < left).to(counts.dtype)
    return (counts + 1).long() if rule == "balanced" else counts.long()


def head_index(counts: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Groups formed left to right: counts (..., G) -> the key/value head of each query head (..., H)."""
    ends = counts.cumsum(-1)
    heads = torch.arange(num_heads, device=counts.device).expand(*counts.shape[:-1], num_heads).contiguous()
    return torch.searchsorted(ends.contiguous(), heads, right=True)


def uniform_counts(num_heads: int, groups: int) -> torch.Tensor:
    return allocate(torch.zeros(groups), num_heads)


def visibility(mask, batch: int, q_len: int, kv_len: int, causal: bool, device) -> torch.Tensor:
    """Which keys each query position sees, (batch, q_len, kv_len) bool, from a 4D float or bool mask (or None)."""
    if mask is None:
        seen = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        if causal:
            seen = torch.ones_like(seen).tril(kv_len - q_len)
        return seen.expand(batch, q_len, kv_len)
    mask = mask[..., -kv_len:] if mask.shape[-1] > kv_len else mask
    if mask.dtype == torch.bool:
        seen = mask
    else:
        seen = mask > torch.finfo(mask.dtype).min / 2
    seen = seen.any(dim=1) if seen.dim() == 4 else seen  # a per-head mask: a key seen by any head counts
    return seen.expand(batch, q_len, kv_len)


def _seen_key_norms(key: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(batch, G, kv_len, d) keys, (batch, q_len, kv_len) visibility -> (G,) the mean per-token key norm over every
    key some query position of some sample sees (the whole batch: padding excluded)."""
    norms = key.detach().float().norm(dim=-1)  # (b, G, s)
    keys_seen = seen.any(dim=1).float()  # (b, s)
    return torch.einsum("bs,bgs->g", keys_seen, norms) / keys_seen.sum().clamp_min(1.0)


def _mean_key_norms(key: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """(batch, G, kv_len, d) keys, (batch, q_len, kv_len) visibility -> (batch, q_len, G) mean visible key norms."""
    norms = key.detach().float().norm(dim=-1)  # (b, G, s)
    weights = seen.float()
    total = torch.einsum("bts,bgs->btg", weights, norms)
    return total / weights.sum(-1, keepdim=True).clamp_min(1.0)


class HeadRouting(nn.Module):
    """The routing of one attention module (see the module docstring). `spec` is its entry of `config.gqa_routing`:

    `{"mode": ..., "q_heads": ..., "kv_heads": ..., "heads": H}` plus `pairs` ([[q, kv], ...], mode `pairs`),
    `bias_heads` (T5, mode `pairs`: the relative-bias heads each pair reads, as a list per pair whose biases it
    averages; an int is one head, as hf-gqa 0.1.0 wrote them), `statistic` (kdgqa), `window`,
    `alpha`, `evolution` (dgqa), `noise_in_eval` (pgqa).
    """

    def __init__(self, spec: dict, device=None):
        super().__init__()
        self.mode = spec["mode"]
        if self.mode not in MODES:
            raise ValueError(f"unknown routing mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.heads = int(spec["heads"])  # the source's query heads (kdgqa/dgqa/pgqa: the attention heads)
        self.q_heads, self.kv_heads = int(spec["q_heads"]), int(spec["kv_heads"])
        self.statistic = spec.get("statistic", "sample")
        self.rule = spec.get("allocation", "balanced")
        self.window, self.alpha = int(spec.get("window", 300)), float(spec.get("alpha", 0.1))
        self.evolution = spec.get("evolution", "ema")
        self.noise_in_eval = bool(spec.get("noise_in_eval", False))
        if self.statistic not in STATISTICS or self.evolution not in EVOLUTIONS or self.rule not in ALLOCATIONS:
            raise ValueError(f"routing statistic/evolution must be in {STATISTICS}/{EVOLUTIONS}")
        if self.mode == "pairs":
            pairs = [tuple(int(x) for x in p) for p in spec["pairs"]]
            if any(not (0 <= q < self.q_heads and 0 <= kv < self.kv_heads) for q, kv in pairs):
                raise ValueError(f"routing pairs must index {self.q_heads} query and {self.kv_heads} key/value heads")
            self.pairs = tuple(pairs)
            self.bias_heads = tuple(
                tuple(int(h) for h in (b if isinstance(b, list | tuple) else [b]))
                for b in spec.get("bias_heads") or [q for q, _ in pairs]
            )
            if len(self.bias_heads) != len(pairs) or any(
                not b or not all(0 <= h < self.heads for h in b) for b in self.bias_heads
            ):
                raise ValueError(f"routing bias_heads must name some of the {self.heads} heads for each pair")
        else:
            if self.q_heads != self.heads or self.heads < self.kv_heads:
                raise ValueError(f"{self.mode} routes {self.heads} query heads to at most as many key/value heads")
            self.pairs = None
            self.bias_heads = None
        self.out_heads = len(self.pairs) if self.pairs is not None else self.heads
        self._index_cache: dict = {}  # device -> (query index, key/value index) of the static modes
        self._bias_cache: dict = {}  # device -> (bias heads, the pair of each, pair sizes) of mode `pairs`
        if self.mode == "dgqa":
            # Persistent: saved with the model and by `accelerator.save_state`, so a resumed run continues exactly.
            self.register_buffer("allocation", uniform_counts(self.heads, self.kv_heads).to(device))
            self.register_buffer("norm_sum", torch.zeros(self.kv_heads, device=device))
            self.register_buffer("norm_count", torch.zeros((), device=device))
            self.register_buffer("norm_cache", torch.zeros(self.kv_heads, device=device))
            self.register_buffer("cache_filled", torch.zeros((), dtype=torch.bool, device=device))

    def extra_repr(self) -> str:
        return f"{self.mode}, q_heads={self.q_heads}, kv_heads={self.kv_heads}, out_heads={self.out_heads}"

    @torch.no_grad()
    def reset_state(self) -> None:
        """DGQA: uniform allocation (GQA) and empty statistics, as after conversion."""
        if self.mode == "dgqa":
            self.allocation.copy_(uniform_counts(self.heads, self.kv_heads))
            self.norm_sum.zero_()
            self.norm_count.zero_()
            self.norm_cache.zero_()
            self.cache_filled.fill_(False)

    def static_index(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(query head, key/value head) of each attention head, for the static modes."""
        if self.mode == "dgqa":  # from the allocation buffer, on its device (no host round trip)
            return torch.arange(self.heads, device=device), head_index(self.allocation.to(device), self.heads)
        cached = self._index_cache.get(device)
        if cached is None:  # fixed for the module's life: built once per device
            if self.mode == "pairs":
                q, kv = zip(*self.pairs, strict=True)
                q, kv = torch.tensor(q), torch.tensor(kv)
            else:
                q, kv = torch.arange(self.heads), head_index(uniform_counts(self.heads, self.kv_heads), self.heads)
            cached = self._index_cache[device] = (q.to(device), kv.to(device))
        return cached[0], cached[1]

    def pair_bias(self, position_bias: torch.Tensor | None) -> torch.Tensor | None:
        """T5, mode `pairs`: the relative position bias (batch, out_heads, q_len, kv_len) of each attention head, the
        mean of the biases (batch, heads, q_len, kv_len) of its `bias_heads`. Other modes: `position_bias` as is."""
        if self.bias_heads is None or position_bias is None or position_bias.shape[1] == 1:
            return position_bias
        device = position_bias.device
        cached = self._bias_cache.get(device)
        if cached is None:  # fixed for the module's life: built once per device
            heads = [h for b in self.bias_heads for h in b]
            owners = [p for p, b in enumerate(self.bias_heads) for _ in b]
            sizes = [len(b) for b in self.bias_heads]
            cached = self._bias_cache[device] = tuple(torch.tensor(t, device=device) for t in (heads, owners, sizes))
        heads, owners, sizes = cached
        # Summed in float32 and divided by the pair's size (a pair of one head reads its bias exactly).
        read = position_bias.index_select(1, heads).float()
        total = read.new_zeros(read.shape[0], len(self.bias_heads), *read.shape[2:]).index_add(1, owners, read)
        return (total / sizes.to(total.dtype)[:, None, None]).to(position_bias.dtype)

    def forward_index(self, key: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """KDGQA, statistic `forward`: the key/value head of each query head, (H,), one for the whole forward pass."""
        return head_index(allocate(_seen_key_norms(key, seen), self.heads, self.rule), self.heads)

    def dynamic_index(self, key: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """KDGQA, statistics `sample` and `batch`: the key/value head of each query head at each position, (batch,
        q_len, H)."""
        stat = _mean_key_norms(key, seen)
        if self.training and self.statistic == "batch":
            stat = stat.mean(0, keepdim=True).expand_as(stat)
        return head_index(allocate(stat, self.heads, self.rule), self.heads)

    @torch.no_grad()
    def observe(self, key: torch.Tensor, seen: torch.Tensor) -> None:
        """DGQA, training only: add this batch's mean visible key norm per head to the window's statistics."""
        self.norm_sum += _seen_key_norms(key, seen)
        self.norm_count += 1

    @torch.no_grad()
    def reallocate(self) -> bool:
        """DGQA, at a window boundary: update the cached norms, re-allocate, empty the window. False if no data."""
        if self.mode != "dgqa" or self.norm_count.item() == 0:
            return False
        current = self.norm_sum / self.norm_count
        if self.evolution == "ema":
            cache = torch.where(self.cache_filled, self.alpha * current + (1 - self.alpha) * self.norm_cache, current)
            importance = cache
        else:  # difference: the change since the previous window (none yet: the norms themselves)
            importance = torch.where(self.cache_filled, (current - self.norm_cache).abs(), current)
            cache = current
        self.norm_cache.copy_(cache)
        self.cache_filled.fill_(True)
        self.allocation.copy_(allocate(importance, self.heads, self.rule))
        self.norm_sum.zero_()
        self.norm_count.zero_()
        return True

    def perturb(self, probs: torch.Tensor, seen: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """PGQA: subtract each group's Gaussian noise from the attention maps (batch, H, q_len, kv_len).

        Eq. 9 per sample and group: a Gaussian draw standardised, then given the mean and std of the group's maps,
        both taken over the query rows that see at least one key (a padded query's row is not attention)."""
        batch, heads, q_len, kv_len = probs.shape
        stats = probs.detach().float()
        noise = torch.randn_like(stats)
        shaped = torch.zeros_like(stats)
        rows = seen.any(dim=-1)[:, None, :, None].float()  # (b, 1, q_len, 1)

        def standard(x, weight):  # mean and (unbiased) std over the weighted entries of each sample's group
            n = weight.sum(dim=(1, 2, 3), keepdim=True)
            mean = (x * weight).sum(dim=(1, 2, 3), keepdim=True) / n.clamp_min(1.0)
            var = ((x - mean) ** 2 * weight).sum(dim=(1, 2, 3), keepdim=True) / (n - 1).clamp_min(1.0)
            return mean, var.sqrt()

        for g in range(self.kv_heads):
            members = (index == g).nonzero().flatten()
            if members.numel() == 0:
                continue
            group, raw = stats[:, members], noise[:, members]
            weight = rows.expand_as(group)
            mean, std = standard(group, weight)
            raw_mean, raw_std = standard(raw, weight)
            shaped[:, members] = std * (raw - raw_mean) / raw_std.clamp_min(1e-12) + mean
        positions = torch.arange(q_len, device=probs.device) + (kv_len - q_len)  # each query's own key
        off_diagonal = torch.arange(kv_len, device=probs.device)[None, :] != positions[:, None]
        keep = (seen & off_diagonal).unsqueeze(1)
        return probs - (shaped * keep).to(probs.dtype)


def _bias(position_bias, seen, dtype) -> torch.Tensor:
    """The additive float mask (batch, heads, q_len, kv_len): masked keys at the dtype's minimum, plus T5's bias."""
    bias = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(~seen, torch.finfo(dtype).min)
    bias = bias.unsqueeze(1)
    if position_bias is not None:
        bias = bias + position_bias[..., -seen.shape[-1] :].to(dtype)
    return bias


def routed_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_bias: torch.Tensor | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """Attention through `module.routing`: query (b, q_heads, t, d), key/value (b, kv_heads, s, d) -> (b, t, heads, d).

    Same signature as transformers' attention functions (and T5's, with `position_bias`), so it serves as the
    attention implementation of routed decoders and of T5's routed attention modules.
    """
    routing: HeadRouting = module.routing
    batch, _, q_len, head_dim = query.shape
    kv_len = key.shape[2]
    scaling = head_dim**-0.5 if scaling is None else scaling
    causal = bool(getattr(module, "is_causal", False)) and q_len > 1
    seen = visibility(attention_mask, batch, q_len, kv_len, causal, query.device)
    noisy = routing.mode == "pgqa" and (routing.training or routing.noise_in_eval)

    dynamic = routing.mode == "kdgqa" and routing.statistic != "forward"
    if dynamic:
        index = routing.dynamic_index(key, seen)  # (b, t, H)
        choose = [(index == g).transpose(1, 2).unsqueeze(-1) for g in range(routing.kv_heads)]  # (b, H, t, 1)
        scores = sum(
            torch.where(choose[g], torch.matmul(query, key[:, g : g + 1].transpose(2, 3)), 0.0)
            for g in range(routing.kv_heads)
        )
        bias = _bias(position_bias, seen, query.dtype)
    else:
        if routing.mode == "kdgqa":  # statistic `forward`: one routing for the whole forward pass
            q_index, kv_index = None, routing.forward_index(key, seen)
        else:
            q_index, kv_index = routing.static_index(query.device)
        if routing.mode == "dgqa" and routing.training:
            routing.observe(key, seen)
        query = query.index_select(1, q_index) if routing.mode == "pairs" else query
        key, value = key.index_select(1, kv_index), value.index_select(1, kv_index)
        bias = _bias(routing.pair_bias(position_bias), seen, query.dtype)
        if not noisy and softcap is None and not kwargs.get("output_attentions"):
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
            )
            return out.transpose(1, 2).contiguous(), None
        scores = torch.matmul(query, key.transpose(2, 3))

    scores = scores * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax((scores + bias).float(), dim=-1).to(query.dtype)
    if noisy:
        probs = routing.perturb(probs, seen, kv_index)
    probs = nn.functional.dropout(probs, p=dropout, training=routing.training)
    if dynamic:
        out = sum(
            torch.where(choose[g], torch.matmul(probs, value[:, g : g + 1]), 0.0) for g in range(routing.kv_heads)
        )
    else:
        out = torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


def register_attention() -> None:
    """Make `attn_implementation="hf_gqa_routed"` known to transformers (attention and mask functions)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, routed_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)


__all__ = [
    "ATTENTION_NAME",
    "EVOLUTIONS",
    "MODES",
    "STATISTICS",
    "HeadRouting",
    "allocate",
    "head_index",
    "register_attention",
    "routed_attention_forward",
    "uniform_counts",
    "visibility",
]
