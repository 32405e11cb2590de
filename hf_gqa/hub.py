"""Model cards and Hub uploads for converted checkpoints."""

from pathlib import Path

from huggingface_hub import HfApi

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
) -> str:
    """A README.md (model card) for a converted checkpoint: source, variant, groups, init, blocks, hf-gqa version."""
    source = config.get("gqa_source")
    custom = config.get("auto_map") is not None
    lines = ["---", "library_name: transformers", "tags:", "- hf-gqa", "- grouped-query-attention"]
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
    if parameters:
        lines.append(f"| parameters | {parameters[0]:,} -> {parameters[1]:,} |")
    lines.append(f"| hf-gqa version | {config.get('hf_gqa_version')} |")
    if approximate:
        lines += ["", f"Note: {approximate}."]
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
    lines += ["```", "", "Requires `transformers>=5.23,<6`.", ""]
    return "\n".join(lines)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message="Upload model converted with hf-gqa",
    )
    return str(getattr(info, "commit_url", info))


__all__ = ["model_card", "push_folder"]
