"""SimGQA (Chinnakonduru et al., 2024): heads reordered so that similar heads share a group, then grouped.

Similarity is the cosine of the flattened per-head query projections (the paper's; keys or values as options), or
(`activation`, ours) how well each K/V head's calibration outputs align with another's, measured by the calibration
layer on the source and handed to the plan as `head_similarities`; groups are equal-sized for any group size
(`hf_gqa.core.similarity`). The reorder moves whole heads: query rows, K/V rows, output-projection columns, biases
and per-head norms together, and T5's shared relative position bias through a per-layer order in the config, so on
its own it preserves the function (`reorder.py`). Then:

- `simgqa`, once (default): each group is mean-pooled as in GQA. For the decoder families the result is a stock
  checkpoint: after the reorder the groups are contiguous, the only grouping stock transformers knows.
- `simgqa` every N steps (`regroup_every`; the paper's 200 and 1000): the paper's interval SimGQA. The output is the
  WGQA training form with `gqa_kv_weights: mean`: every K/V head is kept and each group is the plain mean of its
  heads, with no weights for an optimizer to train, so that the `hf_gqa.training.SimGQARegroup(every=N)` hook can
  regroup while uptraining and the new groups are again mean-pooled; fold at the end.
- `simwgqa` (ours, not in the paper): the same reorder, then WGQA's learned weights (`weights`, `weights_init`);
  with `regroup_every` the hook regroups while uptraining and the learned weights move with their heads.
"""

from ...errors import HfGqaError
from ...modeling.weighted_kv import MEAN
from ..base import Variant
from ..wgqa import WGQA
from .options import SimGQAOptions
from .reorder import ACTIVATION, SIMILARITY_SOURCES, reorder_map, similarity_orders

# The calibration text options `--similarity activation` reads (declared for gqa/mqa's calibrated inits).
CALIBRATION_TEXT = ("calibration_data", "calibration_samples", "calibration_seq_len")


class SimGQA(WGQA):
    name = "simgqa"
    summary = (
        "gqa after reordering heads so that similar ones share a group (--regroup-every N: regrouped while "
        "uptraining, each group the mean of its heads, as in the paper)"
    )
    options = SimGQAOptions
    accepts = CALIBRATION_TEXT  # with --similarity activation (checked with the calibration options)

    def _once(self, spec) -> bool:
        return spec.regroup_every is None

    def weight_shape(self, spec) -> str:
        return MEAN  # the paper mean-pools the regrouped heads: no weights to learn

    def check_spec(self, spec) -> None:
        if spec.similarity is not None and spec.similarity not in SIMILARITY_SOURCES:
            raise HfGqaError(
                f"unknown --similarity {spec.similarity!r}; choose one of {', '.join(SIMILARITY_SOURCES)}"
            )
        if spec.regroup_every is not None and (
            isinstance(spec.regroup_every, bool) or not isinstance(spec.regroup_every, int) or spec.regroup_every < 1
        ):
            raise HfGqaError(f"--regroup-every must be a positive number of steps, got {spec.regroup_every!r}")
        if spec.similarity == ACTIVATION and spec.regroup_every is not None:
            raise HfGqaError(
                "--similarity activation groups the heads once, on calibration text, which the SimGQARegroup hook "
                "of --regroup-every does not have while training: use --similarity query, key or value with it"
            )
        self.check_weights_options(spec)
        if self._once(spec):
            Variant.check_spec(self, spec)
        else:
            super().check_spec(spec)

    def check_weights_options(self, spec) -> None:
        if spec.weights is not None or spec.weights_init is not None:
            raise HfGqaError(
                "simgqa mean-pools its groups, as the paper does: --weights and --weights-init apply to simwgqa "
                "(learned weights, ours)"
            )

    def provenance(self, spec) -> dict:
        entries = {"gqa_similarity": spec.similarity or "query", "gqa_regroup_every": spec.regroup_every}
        return {**(Variant.provenance(self, spec) if self._once(spec) else super().provenance(spec)), **entries}

    def kv_heads(self, kind, num_heads, current, requested):
        if current != num_heads:
            raise HfGqaError(
                f"{self.name} regroups heads, so it needs one key/value head per query head; this {kind} attention "
                f"has {current} for {num_heads} query heads (expand it first with --variant mha)"
            )
        return super().kv_heads(kind, num_heads, current, requested)

    def rewrites(self, current, new, spec=None):
        return current != new if spec is None or self._once(spec) else super().rewrites(current, new, spec)

    def tensor_ops(self, family, block, current, new, spec, regroup):
        if self._once(spec):
            return Variant.tensor_ops(self, family, block, current, new, spec, regroup)
        return super().tensor_ops(family, block, current, new, spec, regroup)

    def target_config(self, family, config, kv_heads, provenance, spec):
        if self._once(spec):
            return Variant.target_config(self, family, config, kv_heads, provenance, spec)
        return super().target_config(family, config, kv_heads, provenance, spec)

    def prelude(self, family, config, blocks, kv_heads, spec, get, head_similarities=None):
        if get is None:
            raise HfGqaError(
                f"{self.name} groups heads by their weights: it needs the checkpoint's tensors, not a config"
            )
        chosen = [b for b in blocks if b.kind in kv_heads]
        group_size = {kind: b.num_heads // after for b in chosen for kind, (_, after) in [(b.kind, kv_heads[b.kind])]}
        source = spec.similarity or "query"
        orders = similarity_orders(family, config, chosen, group_size, get, source, head_similarities)
        updates = {}
        if family.shared_position_bias:  # the shared relative position bias follows each layer's heads
            updates["gqa_head_order"] = t5_bias_orders(config, chosen, orders)
        return reorder_map(family, config, chosen, orders), updates


def t5_bias_orders(config: dict, blocks, orders: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """Compose each layer's new order with any order the checkpoint already has (a second SimGQA pass)."""
    previous = config.get("gqa_head_order") or {}
    result = {kind: [list(o) if o is not None else None for o in layers] for kind, layers in previous.items()}
    for block in blocks:
        if block.kind not in ("encoder", "decoder_self"):
            continue  # cross-attention has no position bias
        layer = int(block.prefix.split(".block.")[-1].split(".")[0])  # "[transformer.]encoder.block.{i}.layer.0..."
        layers = result.setdefault(block.kind, [])
        layers += [None] * (layer + 1 - len(layers))
        old = layers[layer] or list(range(block.num_heads))
        layers[layer] = [old[h] for h in orders[block.prefix]]
    return result


class SimWGQA(SimGQA):
    """Ours, not the paper's: SimGQA's reorder, then WGQA's learned weights (always the training form)."""

    name = "simwgqa"
    summary = (
        "ours: simgqa whose groups combine their heads with WGQA's learned weights (--regroup-every N: regrouped "
        "while uptraining, the weights moving with their heads)"
    )

    def _once(self, spec) -> bool:
        return False

    def weight_shape(self, spec) -> str:
        return WGQA.weight_shape(self, spec)

    def check_weights_options(self, spec) -> None:
        pass  # WGQA's checks apply (super().check_spec)


VARIANTS = (SimGQA, SimWGQA)

__all__ = ["CALIBRATION_TEXT", "VARIANTS", "SimGQA", "SimWGQA", "t5_bias_orders"]
