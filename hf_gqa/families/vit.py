"""ViT (`ViTModel`, `ViTForImageClassification`): the architecture the KDGQA/DGQA/PGQA and GQKVA papers used.

transformers has no GQA for ViT, so every variant's output is the routed form `vit_routed` (`gqa`, `mqa`, `mha` as
uniform pairs; the routed variants as theirs), loadable with `import hf_gqa` or `trust_remote_code=True`. Its layers
are laid out as the decoder families' (`layers.{i}.attention.{q,k,v,o}_proj`, under `vit.` in the classifier), so
the adapter is the native one with another module name, no KV cache, and no WGQA training form. transformers saves
ViT under its legacy tensor names, so ViT converts in memory, not shard by shard (ViT-L has 300M parameters).
"""

from ..modeling.configuration_routed import SUFFIX
from .decoders import NativeGQA


class ViT(NativeGQA):
    name = "vit"
    source_model_types = ("vit",)
    attention_module = "attention"
    base_prefix = "vit."
    streams = (
        False  # transformers saves ViT under its legacy tensor names (`encoder.layer.{i}.attention.attention...`)
    )

    forms = ("routed",)

    def form_model_types(self) -> dict[str, str]:
        return {f"vit{SUFFIX}": "routed"}

    def target_config(self, config: dict, kv_heads: dict[str, int], provenance: dict) -> dict:
        target = super().target_config(config, kv_heads, provenance)
        heads, groups = config["num_attention_heads"], target["num_key_value_heads"]
        uniform = {
            "mode": "pairs",
            "variant": provenance.get("gqa_variant"),
            "heads": heads,
            "q_heads": heads,
            "kv_heads": groups,
            "pairs": [[h, h // (heads // groups)] for h in range(heads)],
        }
        return self.form_config(target, "routed", gqa_routing={"self": uniform})

    def form_config(self, target: dict, form: str, **fields) -> dict:
        if form == "routed" and target["model_type"] == f"vit{SUFFIX}":  # already routed (`target_config`)
            return dict(target, **fields)
        return super().form_config(target, form, **fields)

    def form_refusal(self, target: dict, form: str) -> str:
        if form == "wgqa":
            return "ViT has no WGQA training form in hf-gqa; use gqa, simgqa or a routed variant"
        return super().form_refusal(target, form)

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        return {}  # an encoder: nothing is cached


__all__ = ["ViT"]
