"""SimGQA's interval variant: regroup the heads of a training form that keeps every K/V head every N optimizer steps.

    model = hf_gqa.convert(source, variant="simgqa", groups=4, regroup_every=200)  # the training form
    hooks = [SimGQARegroup(every=200)]       # run_hooks(hooks, TrainingState(...)) after each optimizer step
    ...
    model = hf_gqa.fold(model)               # plain GQA at the end

Every `every` steps the hook recomputes each block's similarity grouping from the current weights and moves whole
heads so that the new groups are contiguous: query rows, the kept K/V rows, output-projection columns, biases,
per-head norms, T5's per-layer bias order, and (simwgqa, ours) the learned mixing weights. With simgqa (the paper's)
there are no weights: each new group is the plain mean of the heads it now holds. The optimizer's per-parameter
state (e.g. Adam's moments) is moved with the parameters, so training continues consistently. Regrouping changes
which heads a group combines, so the model's output changes at that step, as in the paper.
"""

import dataclasses

import torch

from ...core.hooks import TrainingHook, TrainingState
from ...errors import HfGqaError
from ...families import family_for
from ..wgqa import FORM as WGQA_FORM
from .reorder import ACTIVATION, WEIGHT_SIMILARITIES, reorder_map, similarity_orders
from .variant import t5_bias_orders


def _training_form_blocks(config: dict):
    """The family, config view and MHA-shaped blocks (K/V heads kept) of a WGQA training form."""
    family, _ = family_for(config)
    if not WGQA_FORM.detect(config):
        raise HfGqaError(
            "SimGQARegroup needs a training form that keeps every K/V head "
            "(hf_gqa.convert(..., variant='simgqa', regroup_every=N))"
        )
    view = family.form_stock_config(config, WGQA_FORM.name, WGQA_FORM.fields)
    kinds = set(config.get("gqa_kv_source_heads") or {})
    blocks = [dataclasses.replace(b, kv_heads=b.num_heads) for b in family.attention_blocks(view) if b.kind in kinds]
    groups = {b.kind: a.kv_heads for a in family.attention_blocks(view) for b in blocks if a.kind == b.kind}
    return family, view, blocks, groups


@torch.no_grad()
def regroup_heads_(model, optimizer=None, similarity: str | None = None) -> dict[str, list[int]]:
    """Regroup a training form in place by head similarity (and its optimizer state). Returns the orders.
    `similarity`: query, key or value (default: the conversion's `gqa_similarity`, else query)."""
    config = model.config.to_dict()
    similarity = _weight_similarity(similarity, config.get("gqa_similarity"))
    family, view, blocks, groups = _training_form_blocks(config)
    params = dict(model.named_parameters())

    def get(key):
        return params[key].detach()

    sizes = {b.kind: b.num_heads // groups[b.kind] for b in blocks}
    orders = similarity_orders(family, view, blocks, sizes, get, similarity)
    tensors = reorder_map(family, view, blocks, orders, mixers=True)
    updates = {}
    for key, op in tensors.ops.items():
        if key in params and all(k in params for k in op.inputs):
            updates[key] = (op, op.fn(*(params[k].detach() for k in op.inputs)))
    state = getattr(optimizer, "state", None) if optimizer is not None else None
    moved_state = {}
    for key, (op, _) in updates.items():
        inputs = [params[k] for k in op.inputs]
        if state is None or not all(p in state for p in inputs):
            continue
        for name in list(state[inputs[0]]):
            values = [state[p].get(name) for p in inputs]
            if all(isinstance(v, torch.Tensor) and v.shape == p.shape for v, p in zip(values, inputs, strict=True)):
                moved_state[(key, name)] = op.fn(*values)
    for key, (_, value) in updates.items():
        params[key].copy_(value)
    for (key, name), value in moved_state.items():
        state[params[key]][name] = value
    if family.shared_position_bias:
        _set_t5_head_order(model, t5_bias_orders(config, blocks, orders))
    return orders


def _weight_similarity(similarity: str | None, converted_with: str | None) -> str:
    """The similarity a regrouping uses: `similarity`, else the conversion's, else query. Activation similarity is
    measured on calibration text, which training does not have: refused in one line."""
    if similarity is None and converted_with == ACTIVATION:
        raise HfGqaError(
            "SimGQARegroup: this model was grouped by --similarity activation, which needs calibration text that "
            "training does not have; regroup by weights instead: SimGQARegroup(every=N, similarity='query') "
            "(or 'key', 'value')"
        )
    similarity = similarity or converted_with or "query"
    if similarity not in WEIGHT_SIMILARITIES:
        why = " (activation needs calibration text, which training does not have)" if similarity == ACTIVATION else ""
        raise HfGqaError(
            f"SimGQARegroup: similarity must be one of {', '.join(WEIGHT_SIMILARITIES)}{why}, got {similarity!r}"
        )
    return similarity


def _set_t5_head_order(model, head_order: dict) -> None:
    """Record T5's per-layer bias orders in the config (saved with the model) and in each attention module."""
    model.config.gqa_head_order = head_order
    for kind, layers in head_order.items():
        stack = "encoder" if kind == "encoder" else "decoder"
        for layer, order in enumerate(layers):
            model.get_submodule(f"{stack}.block.{layer}.layer.0.SelfAttention").set_head_order(order)


class SimGQARegroup(TrainingHook):
    """Regroup heads by similarity every `every` optimizer steps (the paper's 200 or 1000). `similarity`: query, key
    or value (default: the one the model was converted with, `gqa_similarity` in its config, else query). A model
    grouped by activation similarity (calibration text, at conversion) needs one of those named: refused otherwise."""

    def __init__(self, every: int, similarity: str | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise HfGqaError(f"SimGQARegroup: every must be a positive number of steps, got {every!r}")
        if similarity is not None:
            _weight_similarity(similarity, None)
        self.every, self.similarity, self.regroups = every, similarity, 0
        self.head_order = None  # T5: the per-layer bias orders, which live in the config, not in the weights

    def on_train_begin(self, state: TrainingState) -> None:
        converted_with = getattr(getattr(state.model, "config", None), "gqa_similarity", None)
        _weight_similarity(self.similarity, converted_with)  # refused before the first step, not at the N-th
        if self.head_order is not None:  # resumed: the weights came back permuted, the bias orders must follow
            _set_t5_head_order(state.model, self.head_order)

    def on_step_end(self, state: TrainingState) -> None:
        if state.step and state.step % self.every == 0:
            regroup_heads_(state.model, state.optimizer, self.similarity)
            self.regroups += 1
            self.head_order = getattr(state.model.config, "gqa_head_order", None)

    def state_dict(self) -> dict:
        return {"regroups": self.regroups, "head_order": self.head_order}

    def load_state_dict(self, state: dict) -> None:
        self.regroups = int(state.get("regroups", 0))
        self.head_order = state.get("head_order")


__all__ = ["SimGQARegroup", "regroup_heads_"]
