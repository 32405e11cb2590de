"""SimGQA's grouping: heads ordered so that similar heads share a group (Chinnakonduru et al., 2024).

Pure tensor math, no transformers import. Similarity is the cosine of the flattened per-head projection weights
(queries by default, as in the paper; keys or values as options). Groups are equal-sized for any group size, built
greedily: the lowest-numbered head not yet placed opens a group, which then takes, one at a time, the free head with
the highest mean similarity to the group's members (ties to the lower head number). For groups of two this pairs
each head with its most similar free twin. The result is a permutation `order`: new head `p` is old head `order[p]`,
and group `g` is new heads `[g * r, (g + 1) * r)`.
"""

import torch


def head_similarity(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(H, H) cosine similarity of the heads of a projection weight whose dim 0 holds `num_heads` row blocks."""
    if weight.shape[0] % num_heads:
        raise ValueError(f"dim 0 of a tensor of shape {tuple(weight.shape)} is not {num_heads} heads")
    heads = weight.detach().to(torch.float64).reshape(num_heads, -1)
    heads = heads / heads.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return heads @ heads.T


def similarity_order(similarity: torch.Tensor, group_size: int) -> list[int]:
    """A permutation of the heads putting similar heads in the same contiguous group of `group_size`."""
    num_heads = similarity.shape[0]
    if group_size < 1 or num_heads % group_size:
        raise ValueError(f"group size {group_size} does not divide {num_heads} heads")
    free = list(range(num_heads))
    order: list[int] = []
    while free:
        group = [free.pop(0)]
        while len(group) < group_size:
            scores = similarity[free][:, group].mean(dim=1)
            best = int(torch.argmax(scores))  # argmax returns the first maximum: ties go to the lower head
            group.append(free.pop(best))
        order += group
    return order


def is_identity(order: list[int]) -> bool:
    return all(i == h for i, h in enumerate(order))


def permute_head_rows(tensor: torch.Tensor, order: list[int], num_heads: int, dim: int = 0) -> torch.Tensor:
    """Reorder the `num_heads` contiguous head blocks along `dim` of `tensor` so that block p is old block order[p]."""
    size = tensor.shape[dim]
    if size % num_heads:
        raise ValueError(f"dim {dim} of a tensor of shape {tuple(tensor.shape)} is not {num_heads} heads")
    head = size // num_heads
    index = torch.tensor([h * head + i for h in order for i in range(head)], dtype=torch.long)
    return tensor.index_select(dim, index).contiguous()


__all__ = ["head_similarity", "is_identity", "permute_head_rows", "similarity_order"]
