"""GQA (Ainslie et al., 2023) and its two ends, MQA (one K/V head) and MHA (one K/V head per query head)."""

from ...errors import InvalidGroupsError
from ..base import Variant


class GQA(Variant):
    name = "gqa"
    summary = "G key/value heads, each initialised from a contiguous group of H/G heads"

    def kv_heads(self, kind, num_heads, current, requested):
        if requested is None:
            raise InvalidGroupsError("--groups is required for variant 'gqa'")
        return self.check_groups(kind, num_heads, current, requested)


class MQA(Variant):
    name = "mqa"
    summary = "one key/value head shared by all query heads (GQA with G=1)"

    def kv_heads(self, kind, num_heads, current, requested):
        if requested not in (None, 1):
            raise InvalidGroupsError(f"variant 'mqa' has 1 key/value head; got --groups {requested}")
        return 1


class MHA(Variant):
    name = "mha"
    summary = "one key/value head per query head (G=H): a faithful re-packaging, or an exact expansion of GQA"

    def kv_heads(self, kind, num_heads, current, requested):
        if requested not in (None, num_heads):
            raise InvalidGroupsError(f"variant 'mha' has {num_heads} key/value heads; got --groups {requested}")
        return self.check_groups(kind, num_heads, current, num_heads)


VARIANTS = (GQA, MQA, MHA)

__all__ = ["GQA", "MHA", "MQA", "VARIANTS"]
