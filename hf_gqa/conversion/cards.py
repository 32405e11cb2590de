"""Model cards (README.md) for converted checkpoints."""

from pathlib import Path

from .sizes import weighted_kv_parameters

KIND_NAMES = {
    "encoder": "encoder self-attention",
    "decoder_self": "decoder self-attention",
    "cross": "cross-attention",
}


def _looks_like_hub_id(source: str | None) -> bool:
    return bool(source) and not Path(source).exists() and source.count("/") <= 1 and not source.startswith((".", "/"))


def model_card(
    config: dict,
    kv_heads: dict[str, tuple[int, int]],
    parameters: tuple[int, int] | None = None,
    location: str = "path/to/this/folder",
    approximate: str | None = None,
    folded_from: str | None = None,
) -> str:
    """A README.md (model card) for a converted checkpoint: source, variant, groups, init, blocks, hf-gqa version.
    A WGQA training form says how to fold it; `folded_from` names the training form a folded checkpoint came from."""
    source = config.get("gqa_source")
    custom = config.get("auto_map") is not None
    weights = config.get("gqa_kv_weights")
    lines = ["---", "library_name: transformers", "tags:", "- hf-gqa", "- grouped-query-attention"]
    if weights or folded_from or str(config.get("gqa_variant")).endswith("wgqa"):
        lines.append("- wgqa")
    lines.append(f"- {config['model_type']}")
    if _looks_like_hub_id(source):
        lines.append(f"base_model: {source}")
    lines += ["---", "", f"# {config['model_type']} converted with hf-gqa", ""]
    lines.append(
        f"This checkpoint was converted from `{source or 'a model in memory'}` "
        f"(`{config.get('gqa_source_model_type')}`) to grouped-query attention with "
        f"[hf-gqa](https://github.com/hf-gqa/hf-gqa) {config.get('hf_gqa_version')}. "
        "It has not been uptrained yet unless stated below: expect a quality drop until it is "
        "(Ainslie et al., 2023 uptrain for ~5% of the pre-training steps)."
    )
    lines += ["", "| | |", "|---|---|", f"| variant | `{config.get('gqa_variant')}` |"]
    lines.append(f"| K/V init | `{config.get('gqa_init')}` |")
    for kind, (before, after) in kv_heads.items():
        lines.append(f"| {KIND_NAMES.get(kind, kind)} | {before} -> {after} key/value heads |")
    if weights:
        extra = weighted_kv_parameters(config)
        lines.append(f"| WGQA K/V weights | `{weights}`, {extra:,} extra parameters (removed by `hf-gqa fold`) |")
    if parameters:
        lines.append(f"| parameters | {parameters[0]:,} -> {parameters[1]:,} |")
    lines.append(f"| hf-gqa version | {config.get('hf_gqa_version')} |")
    if approximate:
        lines += ["", f"Note: {approximate}."]
    if weights:
        lines += [
            "",
            "This is the **WGQA training form** (Chinnakonduru & Mohapatra, 2024): it keeps every original key/value "
            "head, and learned weights combine each group's heads into the key/value head its queries read (the KV "
            "cache already holds the grouped heads). Uptrain it, then fold the weights into plain projections with "
            f"`hf-gqa fold {location} -o OUT` (or `hf_gqa.fold(model)`): the logits stay the same.",
        ]
    if folded_from:
        lines += [
            "",
            f"Folded from the WGQA training form `{folded_from}` with `hf-gqa fold`: its learned key/value weights "
            "are now part of the grouped projections, and the logits are those of the training form.",
        ]
    auto = "AutoModelForSeq2SeqLM" if config.get("is_encoder_decoder") else "AutoModelForCausalLM"
    lines += ["", "## Use", "", "```python"]
    if custom:
        lines += [
            "# with hf-gqa installed (pip install hf-gqa):",
            "import hf_gqa",
            f"from transformers import {auto}",
            f'model = {auto}.from_pretrained("{location}")',
            "",
            "# without hf-gqa: the modeling code ships with the checkpoint",
            f'model = {auto}.from_pretrained("{location}", trust_remote_code=True)',
        ]
    else:
        lines += [
            f"# a stock {config['model_type']} checkpoint: plain transformers loads it, no hf-gqa needed",
            f"from transformers import {auto}",
            f'model = {auto}.from_pretrained("{location}")',
        ]
    lines += ["```", "", "Requires `transformers>=5.24,<6`.", ""]
    return "\n".join(lines)


__all__ = ["model_card"]
