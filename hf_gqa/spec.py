"""What a conversion should do, independent of the model it is applied to."""

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GQASpec:
    """A conversion request.

    Args:
        variant: a registered variant name (`hf_gqa.list_variants()`): `gqa`, `mqa`, `mha`, `wgqa`, `randwgqa`
            `simgqa`, `kdgqa`, `dgqa`, `pgqa`, `gqkva`, `gkva` or `mkva`.
        groups: key/value heads after conversion. An int applies to every converted attention kind; a mapping
            gives one count per kind (e.g. `{"decoder_self": 2, "cross": 4}`). `mqa` and `mha` imply it.
        init: how a group's K/V projection is initialised from its member heads: `mean`, `first` or `random`
            (`gqa`, `mqa`; the WGQA variants keep every head and take `weights_init` instead).
        attention: the attention kinds to convert (T5: `encoder`, `decoder_self`, `cross`). `None` takes the
            architecture's default (T5: decoder self- and cross-attention, as in Ainslie et al.).
        seed: seeds `init="random"` and `randwgqa`, per tensor, so a conversion is reproducible in any tensor order.
        weights: `wgqa`/`randwgqa` only: the shape of the learned weights that combine each group's K/V heads:
            `scalar` (one per head, the paper's; the default), `vector_out` (one per output feature of a head) or
            `vector_in` (one per input feature of a head).
        weights_init: `wgqa` only: `mean` (1 / group size, the default: the training form starts as the GQA model)
            or a number (the paper's 0.5, for groups of two). `randwgqa` draws them from N(0, 1).
        similarity: `simgqa` only: which projection's per-head weights decide which heads share a group: `query`
            (the paper's, the default), `key` or `value`.
        regroup_every: `simgqa` only: regroup every N optimizer steps while uptraining (the paper tried 200 and
            1000). The output is then the WGQA training form (heads kept, `weights`/`weights_init` apply), to run
            with the `hf_gqa.training.SimGQARegroup(every=N)` hook and fold at the end. None: group once, at
            conversion (a plain GQA checkpoint).
        q_groups: `gqkva` only: the query heads (gq) of GQKVA-gq.gkv; `groups` is gkv.
        statistic: `kdgqa` only: the key-norm statistic in training, `sample` (the default) or `batch` (the
            paper's); evaluation is always per sample.
        window: `dgqa` only: re-allocate every N optimizer steps (default 300, the paper's).
        ema_alpha: `dgqa` only: weight of the newest window's norms in the EMA (default 0.1).
        evolution: `dgqa` only: `ema` (the default) or `difference` of the norms between windows.
        noise_in_eval: `pgqa` only: also perturb in evaluation (not deterministic then).
    """

    variant: str = "gqa"
    groups: int | Mapping[str, int] | None = None
    init: str = "mean"
    attention: tuple[str, ...] | None = None
    seed: int = 0
    weights: str | None = None
    weights_init: str | float | None = None
    similarity: str | None = None
    regroup_every: int | None = None
    q_groups: int | None = None
    statistic: str | None = None
    window: int | None = None
    ema_alpha: float | None = None
    evolution: str | None = None
    noise_in_eval: bool | None = None

    def groups_for(self, kind: str) -> int | None:
        """The requested key/value heads for one attention kind (None: left to the variant)."""
        if isinstance(self.groups, Mapping):
            return self.groups.get(kind)
        return self.groups


__all__ = ["GQASpec"]
