"""`hf-gqa info`: describe a checkpoint from its config and safetensors headers (no weights loaded)."""

import json
from pathlib import Path

from .._version import __version__
from ..conversion.sizes import kv_cache_bytes_per_token
from ..core.text import format_bytes, print_table
from ..io.safetensors import numel, read_headers, safetensors_files
from ..io.sources import load_config_dict
from ..registry import resolve


def add_parser(sub) -> None:
    parser = sub.add_parser("info", help="describe a checkpoint: variant, key/value heads, sizes")
    parser.add_argument("path", metavar="PATH", help="local folder or Hub id")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe_checkpoint(path: str) -> dict:
    """What `hf-gqa info` prints, as a dict."""
    config = load_config_dict(path)
    resolved = resolve(config)
    family, view = resolved.family, resolved.view
    kv_heads = {b.kind: b.kv_heads for b in family.attention_blocks(view)}
    info = {
        "path": str(path),
        "model_type": config["model_type"],
        "architectures": config.get("architectures"),
        "num_heads": family.num_heads(view),
        "kv_heads": kv_heads,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "parameters": _count_parameters(path),
    }
    if config.get("gqa_variant") is not None:
        info.update(
            variant=config.get("gqa_variant"),
            init=config.get("gqa_init"),
            converted_attention=config.get("gqa_attention"),
            source=config.get("gqa_source"),
            source_model_type=config.get("gqa_source_model_type"),
            hf_gqa_version=config.get("hf_gqa_version"),
        )
        if config.get("gqa_similarity"):  # SimGQA
            info.update(similarity=config["gqa_similarity"], regroup_every=config.get("gqa_regroup_every"))
    if resolved.form is not None:  # hf-gqa's own form: the WGQA training form, routed attention
        info.update(resolved.form.describe(family, config))
    info["loads_with"] = "import hf_gqa, or trust_remote_code=True" if config.get("auto_map") else "plain transformers"
    info["installed_hf_gqa"] = __version__
    return info


def _count_parameters(path: str) -> int | None:
    """Parameters stored in a local folder's safetensors weights, read from their headers (no weights loaded): the
    files transformers would load (those its index names, else model.safetensors; not a `consolidated.safetensors`
    beside them), each header validated against its file."""
    folder = Path(path)
    files = safetensors_files(folder) if folder.is_dir() else None
    if not files:
        return None
    return sum(numel(info.shape) for info in read_headers(files).values())


def run(args) -> int:
    info = describe_checkpoint(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [("model_type", info["model_type"])]
    for key in ("variant", "init", "similarity", "regroup_every", "source", "source_model_type", "hf_gqa_version"):
        if info.get(key) is not None:
            rows.append((key, str(info[key])))
    if info.get("converted_attention"):
        rows.append(("converted attention", ", ".join(info["converted_attention"])))
    rows.append(("query heads", str(info["num_heads"])))
    source_heads = info.get("kv_source_heads") or {}
    mean = info.get("kv_weights") == "mean"  # SimGQA regrouped while uptraining: each group the plain mean, no weights
    combined = "means" if mean else "learned sums"
    for kind, g in info["kv_heads"].items():
        rows.append(
            (f"{kind} K/V heads", f"{g} ({combined} of {source_heads[kind]})" if kind in source_heads else str(g))
        )
    if info["parameters"] is not None:
        rows.append(("parameters", f"{info['parameters']:,}"))
    if mean:
        rows.append(
            ("K/V weights", "mean: no weights, each group the plain mean of its heads; fold with `hf-gqa fold`")
        )
    elif info.get("kv_weights"):
        rows.append(("K/V weights", f"{info['kv_weights']}: WGQA training form, fold with `hf-gqa fold`"))
    if info.get("kv_weights"):
        rows.append(("extra parameters", f"{info['extra_parameters']:,}"))
    for kind, spec in (info.get("routing") or {}).items():
        heads = (
            f"{spec['q_heads']} query, {spec['kv_heads']} K/V, {spec.get('attention_heads', spec['heads'])} attention"
        )
        options = ", ".join(f"{k} {v}" for k, v in spec.items() if k in ("statistic", "window", "alpha", "evolution"))
        rows.append(
            (
                f"{kind} routing",
                f"{spec.get('variant', spec['mode'])}: {heads} heads" + (f"; {options}" if options else ""),
            )
        )
    if info.get("attention_parameters") is not None:
        ratio = info["attention_parameters"] / info["mha_attention_parameters"]
        rows.append(
            ("attention parameters", f"{info['attention_parameters']:,} ({ratio:.2f}x MHA's, GQKVA accounting)")
        )
    for cache, n in info["kv_cache_bytes_per_token"].items():
        rows.append((f"KV cache / token ({cache})", format_bytes(n)))
    rows.append(("loads with", info["loads_with"]))
    print_table(("", info["path"]), rows)
    return 0


__all__ = ["add_parser", "describe_checkpoint", "run"]
