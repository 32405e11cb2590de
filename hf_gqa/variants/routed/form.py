"""Routed attention as a model form: `t5_gqa` with `gqa_routing`, or `<family>_routed` (decoders, ViT). An end point:
such a checkpoint is not converted again (convert the checkpoint it came from)."""

from ...errors import UnsupportedModelError
from ..base import Form


def attention_parameters(routing: dict, hidden: int, head_dim: int) -> int:
    """Projection weights of one routed attention block in the GQKVA paper's accounting: d_model x d_head x (query
    heads + 2 x key/value heads + attention heads), the last for the output projection. Biases not counted."""
    out_heads = len(routing["pairs"]) if routing.get("pairs") else routing["heads"]
    return hidden * head_dim * (routing["q_heads"] + 2 * routing["kv_heads"] + out_heads)


class RoutedForm(Form):
    name = "routed"
    fields = ("gqa_routing",)

    def reexpress(self, family, config, keys=None):
        model_type = config.get("model_type")
        if model_type.endswith("_routed"):
            what = "is already converted" if model_type == "vit_routed" else "is already a routed-attention checkpoint"
        else:
            what = "has routed attention"
        raise UnsupportedModelError(
            f"this {model_type} checkpoint {what} ({config.get('gqa_variant')}); convert the checkpoint it came from "
            "instead"
        )

    def attention_parameters(self, family, config: dict) -> tuple[int, int] | None:
        """Projection weights of the routed blocks (GQKVA paper's accounting) and the same blocks' as MHA."""
        routing = config.get("gqa_routing")
        if not routing:
            return None
        hidden = config.get("d_model") or config.get("hidden_size")
        routed = mha = 0
        for block in family.attention_blocks(family.form_stock_config(config, self.name, self.fields)):
            if block.kind in routing:
                spec = routing[block.kind]
                routed += attention_parameters(spec, hidden, block.head_dim)
                mha += 4 * hidden * block.head_dim * spec["heads"]
        return routed, mha

    def describe(self, family, config: dict) -> dict:
        routed, mha = self.attention_parameters(family, config)
        return {
            "routing": {
                kind: {k: v for k, v in spec.items() if k not in ("pairs", "bias_heads")}
                | ({"attention_heads": len(spec["pairs"])} if spec.get("pairs") else {})
                for kind, spec in config["gqa_routing"].items()
            },
            "attention_parameters": routed,
            "mha_attention_parameters": mha,
        }

    def full_training_keys(self, block, config: dict) -> tuple[str, ...]:
        keys = super().full_training_keys(block, config)
        if ((config.get("gqa_routing") or {}).get(block.kind) or {}).get("mode") == "pairs":
            keys += block.q_keys + ((block.o_key,) if block.o_key else ())  # GQKVA: pooled queries, new outputs
        return keys


FORM = RoutedForm()

__all__ = ["FORM", "RoutedForm", "attention_parameters"]
