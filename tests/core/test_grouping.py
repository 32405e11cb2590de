import pytest
import torch

from hf_gqa.core.grouping import regroup_heads, valid_group_counts

H, D, IN = 8, 4, 6


def weight(dtype=torch.float32):
    return torch.randn(H * D, IN, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_mean_is_exactly_the_group_mean(groups):
    w = weight()
    pooled = regroup_heads(w, H, groups, init="mean")
    assert pooled.shape == (groups * D, IN)
    r = H // groups
    for g in range(groups):
        members = [w[h * D : (h + 1) * D] for h in range(g * r, (g + 1) * r)]  # heads h -> group h // r
        assert torch.equal(pooled[g * D : (g + 1) * D], torch.stack(members).mean(0))


def test_first_takes_the_first_head_of_each_group():
    w = weight()
    pooled = regroup_heads(w, H, 2, init="first")
    assert torch.equal(pooled[:D], w[:D]) and torch.equal(pooled[D:], w[4 * D : 5 * D])


def test_random_is_seeded_and_matches_the_source_scale():
    w = weight() * 3
    a = regroup_heads(w, H, 2, init="random", generator=torch.Generator().manual_seed(7))
    b = regroup_heads(w, H, 2, init="random", generator=torch.Generator().manual_seed(7))
    c = regroup_heads(w, H, 2, init="random", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.5 * w.std() < a.std() < 1.5 * w.std()


def test_biases_and_expansion_roundtrip():
    bias = torch.arange(H * D, dtype=torch.float32)
    assert regroup_heads(bias, H, 2).shape == (2 * D,)
    pooled = regroup_heads(weight(), H, 2)
    expanded = regroup_heads(pooled, 2, H)  # copy each group head back to its members: exact
    assert torch.equal(regroup_heads(expanded, H, 2), pooled)
    assert torch.equal(expanded[:D], expanded[3 * D : 4 * D])


def test_same_count_returns_the_tensor_itself():
    w = weight()
    assert regroup_heads(w, H, H) is w


def test_low_precision_is_pooled_in_float32():
    w = weight(torch.bfloat16)
    pooled = regroup_heads(w, H, 2)
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, w.float().reshape(2, 4, D, IN).mean(1).reshape(2 * D, IN).to(torch.bfloat16))


def test_invalid_requests():
    with pytest.raises(ValueError, match="cannot regroup"):
        regroup_heads(weight(), H, 3)
    with pytest.raises(ValueError, match="unknown K/V init"):
        regroup_heads(weight(), H, 2, init="median")
    assert valid_group_counts(12) == [1, 2, 3, 4, 6, 12]
