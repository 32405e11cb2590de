"""ViT (`ViTModel`, `ViTForImageClassification`): the architecture the KDGQA/DGQA/PGQA and GQKVA papers used.

transformers has no GQA for ViT, so every variant's output is the routed form `vit_routed` (`gqa`, `mqa`, `mha` as
uniform pairs; the routed variants as theirs), loadable with `import hf_gqa` or `trust_remote_code=True`. Its layers
are laid out as the decoder families' (`layers.{i}.attention.{q,k,v,o}_proj`, under `vit.` in the classifier), so
the adapter is the native one with another module name, no KV cache, and no WGQA training form. transformers saves
ViT under its legacy tensor names, so ViT converts in memory, not shard by shard (ViT-L has 300M parameters).
"""

from collections.abc import Iterable

from ..registry import register_architecture
from .native import NativeGQA


class ViT(NativeGQA):
    name = "vit"
    source_model_types = ("vit", "vit_routed")
    attention_module = "attention"
    base_prefix = "vit."
    streams = (
        False  # transformers saves ViT under its legacy tensor names (`encoder.layer.{i}.attention.attention...`)
    )

    def reexpress(self, config: dict, keys: Iterable[str] | None = None):
        if config["model_type"] == "vit_routed":
            from ..errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"this vit_routed checkpoint is already converted ({config.get('gqa_variant')}); convert the "
                "checkpoint it came from instead"
            )
        return None

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
        return self.routed_config(target, {"self": uniform})

    def routed_config(self, target: dict, routing: dict[str, dict]) -> dict:
        from ..modeling.configuration_routed import SUFFIX, TAG

        if target["model_type"] == f"vit{SUFFIX}":  # already the routed form (from `target_config`): new routing
            return dict(target, gqa_routing=routing)
        return self._form_config(target, TAG, SUFFIX, "routed attention", gqa_routing=routing)

    def training_config(self, target: dict, source_heads: dict[str, int], weights: str) -> dict:
        from ..errors import UnsupportedModelError

        raise UnsupportedModelError("ViT has no WGQA training form in hf-gqa; use gqa, simgqa or a routed variant")

    def kv_cache_bytes_per_token(self, config: dict, bytes_per_value: int) -> dict[str, int]:
        return {}  # an encoder: nothing is cached


register_architecture(ViT())

__all__ = ["ViT"]
