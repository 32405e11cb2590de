"""KDGQA, PGQA and DGQA against oracles written out here, independently of `hf_gqa/modeling/routing.py`.

Each oracle is a loop over samples, positions and heads in plain Python (the allocation rules, the left-to-right
groups, softmax attention, PGQA's noise, DGQA's EMA), so a wrong variant fails them: reversed routing, right-to-left
groups, noise added instead of subtracted, the EMA's a and 1 - a swapped.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from hf_gqa.modeling.routing import HeadRouting, routed_attention_forward

H, G, D = 8, 3, 4  # query heads, key/value heads, head dim: allocations are uneven with either rule
NEG = torch.finfo(torch.float32).min


# The oracle: allocation rules, groups, attention, by hand


def rule_by_hand(stat: list[float], heads: int, rule: str) -> list[int]:
    """Khan et al.'s eq. 3 (`paper`) or hf-gqa's `balanced` rule, in plain Python.

    Min-max scale the statistic (all equal within a relative 1e-5: every group scaled 1, i.e. GQA). `paper`:
    floor(H * scaled_g / sum(scaled)); `balanced`: one head each, then floor((H - G) * scaled_g / sum(scaled)).
    The heads the floor leaves over go one each to the largest remainders, the lower group first among equals."""
    low, high = min(stat), max(stat)
    scaled = [1.0] * len(stat) if high - low <= 1e-5 * abs(high) else [(s - low) / (high - low) for s in stat]
    first = 1 if rule == "balanced" else 0
    spare = heads - first * len(stat)
    quota = [spare * s / sum(scaled) for s in scaled]
    counts = [math.floor(q) for q in quota]
    by_remainder = sorted(range(len(stat)), key=lambda g: (-(quota[g] - counts[g]), g))
    for g in by_remainder[: spare - sum(counts)]:
        counts[g] += 1
    return [c + first for c in counts]


def groups_by_hand(counts: list[int]) -> list[int]:
    """Left to right: the first counts[0] query heads read key/value head 0, the next counts[1] head 1, ..."""
    return [g for g, n in enumerate(counts) for _ in range(n)]


def visible_by_hand(batch: int, length: int, pad: list[int], causal: bool) -> list[list[list[int]]]:
    """The keys position t of sample b sees: not left padding, and (causal) not after t."""
    return [
        [[s for s in range(length) if s >= pad[b] and (not causal or s <= t)] for t in range(length)]
        for b in range(batch)
    ]


def mask_from(visible, length: int) -> torch.Tensor:
    """The 4D additive float mask transformers would pass: 0 where seen, the dtype's minimum elsewhere."""
    mask = torch.full((len(visible), 1, length, length), NEG)
    for b, rows in enumerate(visible):
        for t, keys in enumerate(rows):
            mask[b, 0, t, keys] = 0.0
    return mask


def norms_by_hand(key: torch.Tensor) -> list:
    """norms[b][g][s]: the L2 norm of key head g's vector at position s of sample b (eq. 1), as Python floats."""
    return [
        [[math.sqrt(sum(x * x for x in key[b, g, s].tolist())) for s in range(key.shape[2])] for g in range(G)]
        for b in range(key.shape[0])
    ]


def statistic_by_hand(norms, visible, statistic: str, training: bool) -> list:
    """stat[b][t]: the G numbers the allocation of position t of sample b is computed from.

    sample: the mean norm over the keys (b, t) sees; batch (training only): the batch mean of the sample statistic
    at position t; forward: one statistic for the whole forward pass, the mean norm over every key any position of
    any sample sees."""
    batch, length = len(visible), len(visible[0])
    per_sample = [
        [
            [sum(norms[b][g][s] for s in visible[b][t]) / max(len(visible[b][t]), 1) for g in range(G)]
            for t in range(length)
        ]
        for b in range(batch)
    ]
    if statistic == "sample" or (statistic == "batch" and not training):
        return per_sample
    if statistic == "batch":
        at = [[sum(per_sample[b][t][g] for b in range(batch)) / batch for g in range(G)] for t in range(length)]
        return [at for _ in range(batch)]
    seen = [(b, s) for b in range(batch) for s in sorted({s for keys in visible[b] for s in keys})]
    one = [sum(norms[b][g][s] for b, s in seen) / len(seen) for g in range(G)]
    return [[one] * length for _ in range(batch)]


def attention_by_hand(query, key, value, visible, kv_of) -> torch.Tensor:
    """out[b, t, h] = softmax over the keys (b, t) sees of q.k / sqrt(d), times v, with key/value head kv_of[b][t][h].
    Rows that see no key are left at zero (the caller does not compare them)."""
    batch, heads, length, dim = query.shape
    out = torch.zeros(batch, length, heads, dim, dtype=torch.float64)
    q, k, v = query.double(), key.double(), value.double()
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                g, keys = kv_of[b][t][h], visible[b][t]
                if not keys:
                    continue
                logits = [float(q[b, h, t] @ k[b, g, s]) / math.sqrt(dim) for s in keys]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                out[b, t, h] = sum(w * v[b, g, s] for w, s in zip(weights, keys, strict=True)) / sum(weights)
    return out


def kdgqa_by_hand(query, key, value, visible, statistic: str, rule: str, training: bool) -> torch.Tensor:
    stat = statistic_by_hand(norms_by_hand(key), visible, statistic, training)
    kv_of = [
        [groups_by_hand(rule_by_hand(stat[b][t], H, rule)) for t in range(len(visible[0]))]
        for b in range(len(visible))
    ]
    return attention_by_hand(query, key, value, visible, kv_of)


# The code under test


def routed(mode, query, key, value, mask=None, causal=False, training=False, **spec):
    routing = HeadRouting({"mode": mode, "heads": H, "q_heads": H, "kv_heads": G, **spec}).train(training)
    module = SimpleNamespace(routing=routing, is_causal=causal)
    return routed_attention_forward(module, query, key, value, mask)[0]


def inputs(seed: int, batch: int = 3, length: int = 7):
    """Keys whose norms differ by head, sample and position, so allocations differ along all three."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, H, length, D, generator=g)
    key = torch.randn(batch, G, length, D, generator=g) * (0.3 + 3 * torch.rand(batch, G, length, 1, generator=g))
    value = torch.randn(batch, G, length, D, generator=g)
    return query, key, value


def compared(rows, visible):
    """The rows of (b, t, ...) outputs whose position sees at least one key."""
    keep = torch.tensor([[bool(keys) for keys in sample] for sample in visible])
    return rows[keep]


PAD = [0, 2, 1]  # left padding of each sample


# KDGQA: every statistic and rule, causal with padding, training and evaluation


@pytest.mark.parametrize("rule", ["paper", "balanced"])
@pytest.mark.parametrize("statistic", ["sample", "batch", "forward"])
@pytest.mark.parametrize("training", [False, True])
def test_kdgqa_equals_the_rule_written_out_per_sample_and_position(rule, statistic, training):
    query, key, value = inputs(0)
    visible = visible_by_hand(3, 7, PAD, causal=True)
    got = routed(
        "kdgqa", query, key, value, mask_from(visible, 7), True, training, statistic=statistic, allocation=rule
    )
    expected = kdgqa_by_hand(query, key, value, visible, statistic, rule, training)
    torch.testing.assert_close(compared(got.double(), visible), compared(expected, visible), rtol=0, atol=1e-5)


def test_the_oracle_inputs_exercise_uneven_and_varying_allocations():
    """Guards the oracle tests above: the inputs give different allocations across samples, positions and rules
    (a routing that ignored the statistic, or one rule for the other, could not pass them)."""
    query, key, value = inputs(0)
    visible = visible_by_hand(3, 7, PAD, causal=True)
    stat = statistic_by_hand(norms_by_hand(key), visible, "sample", False)
    for rule in ("paper", "balanced"):
        counts = {tuple(rule_by_hand(stat[b][t], H, rule)) for b in range(3) for t in range(7) if visible[b][t]}
        assert len(counts) >= 4 and (2, 3, 3) not in counts, counts  # not GQA's uniform split
    paper = [rule_by_hand(stat[b][t], H, "paper") for b in range(3) for t in range(7) if visible[b][t]]
    assert any(0 in c for c in paper)  # eq. 3 leaves a group empty somewhere
    forward = statistic_by_hand(norms_by_hand(key), visible, "forward", False)[0][0]
    assert rule_by_hand(forward, H, "balanced") not in ([3, 3, 2], [2, 3, 3])


@pytest.mark.parametrize("rule", ["paper", "balanced"])
def test_kdgqa_forward_statistic_without_a_mask_is_one_allocation_from_the_whole_batch(rule):
    """ViT-like: no mask, not causal. One allocation from the mean key norm over every key of every sample."""
    query, key, value = inputs(1, batch=2, length=5)
    visible = visible_by_hand(2, 5, [0, 0], causal=False)
    norms = norms_by_hand(key)
    one = [sum(norms[b][g][s] for b in range(2) for s in range(5)) / 10 for g in range(G)]
    kv_of = [[groups_by_hand(rule_by_hand(one, H, rule))] * 5] * 2
    expected = attention_by_hand(query, key, value, visible, kv_of)
    for training in (False, True):  # the paper's: every forward pass, training or inference
        got = routed("kdgqa", query, key, value, training=training, statistic="forward", allocation=rule)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


# What each statistic costs: batch dependence, causality, cache exactness


def _coupled(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "statistic,training,batch_dependent,causal,cache_exact",
    [
        ("sample", False, False, True, True),
        ("sample", True, False, True, True),
        ("batch", False, False, True, True),  # evaluation is per sample
        ("batch", True, True, True, True),
        ("forward", False, True, False, False),
        ("forward", True, True, False, False),
    ],
)
def test_what_each_statistic_costs(statistic, training, batch_dependent, causal, cache_exact):
    query, key, value = inputs(2, batch=2, length=6)
    key[:, 2, 4:] *= 20  # late keys of head 2 are large: an allocation that sees them differs

    def run(q, k, v):
        length = q.shape[2]
        mask = mask_from(visible_by_hand(q.shape[0], length, [0] * q.shape[0], causal=True), length)
        return routed("kdgqa", q, k, v, mask, True, training, statistic=statistic, allocation="balanced")

    full = run(query, key, value)
    # Batch dependence: sample 0's output when sample 1 is replaced
    other = [x.clone() for x in (query, key, value)]
    other[1][1, 0] *= 30  # sample 1's key head 0 is large
    assert _coupled(run(*other)[0], full[0]) == batch_dependent
    assert _coupled(run(query[:1], key[:1], value[:1])[0], run(*other)[0]) == batch_dependent  # or run alone
    # Causality: positions 0..3 when the keys at 4..5 change
    later = key.clone()
    later[:, :, 4:] = -later[:, :, 4:] / 40
    assert _coupled(run(query, later, value)[:, :4], full[:, :4]) != causal
    # Cache exactness: decoding one position at a time over the cached keys 0..t reproduces the full forward
    for t in range(6):
        step = routed(
            "kdgqa",
            query[:, :, t : t + 1],
            key[:, :, : t + 1],
            value[:, :, : t + 1],
            torch.zeros(2, 1, 1, t + 1),
            True,
            training,
            statistic=statistic,
            allocation="balanced",
        )
        if cache_exact:
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=0, atol=1e-5)
    assert _coupled(step[:, 0], full[:, 5]) is False  # the last step sees every key: equal under every statistic
    if not cache_exact:
        first = routed(
            "kdgqa", query[:, :, :1], key[:, :, :1], value[:, :, :1], None, True, training, statistic=statistic
        )
        assert _coupled(first[:, 0], full[:, 0])  # position 0 decoded alone is not position 0 of the full forward


# PGQA: the noise, by hand


def pgqa_noise_by_hand(probs: torch.Tensor, raw: torch.Tensor, visible, groups: int) -> torch.Tensor:
    """Eq. 9 per sample and group (uniform groups of H / G heads, left to right): the raw Gaussian draw standardised
    over the group's maps, then scaled to the group's own mean and std, both over the query rows that see some key;
    zero on the diagonal (a query's own key) and on the keys the query does not see."""
    batch, heads, length, _ = probs.shape
    noise = torch.zeros_like(probs, dtype=torch.float64)
    size = heads // groups
    for b in range(batch):
        rows = [t for t in range(length) if visible[b][t]]
        for g in range(groups):
            members = list(range(g * size, (g + 1) * size))
            maps, r = probs[b, members][:, rows].double(), raw[b, members][:, rows].double()
            shaped = maps.std() * (r - r.mean()) / r.std() + maps.mean()
            for i, h in enumerate(members):
                for j, t in enumerate(rows):
                    for s in visible[b][t]:
                        if s != t:
                            noise[b, h, t, s] = shaped[i, j, s]
    return noise


def _pgqa_setup():
    query, key, value = inputs(3, batch=2, length=6)
    key = key[:, :2]
    value = value[:, :2]
    visible = visible_by_hand(2, 6, [0, 2], causal=True)
    return query, key, value, visible, mask_from(visible, 6)


def test_pgqa_subtracts_each_groups_gaussian_noise_with_zero_diagonal_and_masked_keys_untouched():
    query, key, value, visible, mask = _pgqa_setup()
    heads_per_group, groups = H // 2, 2
    routing = HeadRouting({"mode": "pgqa", "heads": H, "q_heads": H, "kv_heads": groups}).train()
    module = SimpleNamespace(routing=routing, is_causal=True)
    torch.manual_seed(7)
    out, perturbed = routed_attention_forward(module, query, key, value, mask)
    torch.manual_seed(7)
    raw = torch.randn(2, H, 6, 6)  # the one Gaussian draw of the maps' shape

    # The unperturbed maps, by hand: softmax over the keys each position sees
    clean = torch.zeros(2, H, 6, 6, dtype=torch.float64)
    for b in range(2):
        for h in range(H):
            for t in range(6):
                keys = visible[b][t]
                if keys:
                    logits = torch.tensor([float(query[b, h, t] @ key[b, h // heads_per_group, s]) for s in keys])
                    clean[b, h, t, keys] = torch.softmax(logits.double() / math.sqrt(D), -1)
    noise = pgqa_noise_by_hand(clean, raw, visible, groups)
    seen_rows = torch.tensor([[bool(keys) for keys in sample] for sample in visible])  # (b, t)
    rows = seen_rows[:, None, :, None].expand(2, H, 6, 6)
    torch.testing.assert_close(perturbed.double()[rows], (clean - noise)[rows], rtol=0, atol=1e-5)  # SUBTRACTED
    # The noise's own properties, read off the maps the code returns
    drawn = torch.where(rows, clean - perturbed.double(), 0.0)  # rows that see no key are not attention
    for t in range(6):
        assert drawn[:, :, t, t].abs().max() < 1e-6  # zero diagonal: a query's own key is untouched (rounding only)
    masked = torch.tensor([[[s not in visible[b][t] for s in range(6)] for t in range(6)] for b in range(2)])
    assert drawn.masked_select(masked[:, None] & rows).abs().max() < 1e-6  # masked keys stay at (about) zero
    for b in range(2):
        rows_b = [t for t in range(6) if visible[b][t]]
        for g in range(groups):
            group = slice(g * heads_per_group, (g + 1) * heads_per_group)
            maps, r = clean[b, group][:, rows_b], raw[b, group][:, rows_b].double()
            # before the zeros, the noise has exactly the group's mean and std (eq. 9)
            full = maps.std() * (r - r.mean()) / r.std() + maps.mean()
            torch.testing.assert_close(full.mean(), maps.mean(), rtol=0, atol=1e-9)
            torch.testing.assert_close(full.std(), maps.std(), rtol=1e-9, atol=0)
            zeroed = [
                (i, j, s)
                for i in range(heads_per_group)
                for j, t in enumerate(rows_b)
                for s in range(6)
                if s == t or s not in visible[b][t]
            ]
            kept = torch.ones_like(full, dtype=torch.bool)
            for i, j, s in zeroed:
                kept[i, j, s] = False
            torch.testing.assert_close(drawn[b, group][:, rows_b][kept], full[kept], rtol=0, atol=1e-5)
    # And the output reads the perturbed maps: out = (maps - noise) @ v
    expected = torch.einsum("bhts,bhsd->bthd", clean - noise, value.double().repeat_interleave(heads_per_group, 1))
    got = out.double()
    torch.testing.assert_close(got[seen_rows], expected[seen_rows], rtol=0, atol=1e-5)


# DGQA: the EMA of the windows' key norms, by hand


@pytest.mark.parametrize("evolution", ["ema", "difference"])
def test_dgqa_cache_follows_the_recurrence_over_several_windows(evolution):
    """c(1) = n(1) (ours: the paper gives no c(0)); EMA: c(t) = a n(t) + (1 - a) c(t - 1), importance c(t);
    difference: importance |n(t) - c(t - 1)|, then c(t) = n(t). n(t): the window's mean, over its training
    forwards, of each key head's mean norm over the keys the batch sees (padding excluded)."""
    a = 0.3  # not 0.5: swapping a and 1 - a must change the numbers
    routing = HeadRouting(
        {"mode": "dgqa", "heads": H, "q_heads": H, "kv_heads": G, "alpha": a, "evolution": evolution}
    ).train()
    module = SimpleNamespace(routing=routing, is_causal=True)
    g = torch.Generator().manual_seed(5)
    cache = None
    for window in range(4):
        batch_means = []
        for _ in range(2 + window % 2):  # windows of 2 and 3 forwards
            query, key, value = (torch.randn(2, n, 5, D, generator=g) for n in (H, G, G))
            key = key * torch.rand(1, G, 1, 1, generator=g) * (1 + window)  # the norms move from window to window
            visible = visible_by_hand(2, 5, [0, 1], causal=True)
            routed_attention_forward(module, query, key, value, mask_from(visible, 5))
            norms = norms_by_hand(key)
            seen = [(b, s) for b in range(2) for s in range(5) if s >= [0, 1][b]]
            batch_means.append([sum(norms[b][h][s] for b, s in seen) / len(seen) for h in range(G)])
        n = [sum(m[h] for m in batch_means) / len(batch_means) for h in range(G)]
        assert routing.reallocate()
        if cache is None:
            importance, cache = n, n
        elif evolution == "ema":
            cache = [a * n[h] + (1 - a) * cache[h] for h in range(G)]
            importance = cache
        else:
            importance, cache = [abs(n[h] - cache[h]) for h in range(G)], n
        torch.testing.assert_close(
            routing.norm_cache.double(), torch.tensor(cache, dtype=torch.float64), rtol=1e-5, atol=0
        )
        assert routing.allocation.tolist() == rule_by_hand(importance, H, "balanced")
