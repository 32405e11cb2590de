"""`hf-gqa convert`."""

import argparse
import sys

from ..conversion.folder import FolderOptions, convert_to_folder
from ..conversion.sizes import weighted_kv_parameters
from ..core.options import declared, load_yaml_options
from ..core.text import format_bytes, print_table
from ..errors import HfGqaError
from ..io.hub import push_folder
from ..io.sources import load_config_dict
from ..spec import OPTIONS, GQASpec
from ..variants.wgqa import is_training_form
from .args import add_options, merge

# Every key of a `--config` YAML file: where to read and write, then the conversion's options (`GQASpec`).
CONVERT_OPTIONS = {o.name: o for o in declared(FolderOptions)} | OPTIONS
CONVERT_KEYS = tuple(CONVERT_OPTIONS)

EPILOG = """\
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
reduced further, and --variant mha expands it back by copying heads (exact). T5 groups the decoder self- and
cross-attention by default; the output loads with `import hf_gqa` or trust_remote_code=True. Decoder families
with GQA in transformers give a stock checkpoint of the same model_type (GPT-NeoX/Pythia is re-expressed exactly
as stock Phi); families with per-head q/k norms convert only approximately for G < H. Safetensors checkpoints
convert shard by shard; GGUF, .bin and --dtype changes go through memory. The README explains each variant;
`hf-gqa list` shows the model types and variants.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert a checkpoint (Hub id or local folder) to GQA/MQA",
        description="Convert a checkpoint to grouped-query attention and save it with its tokenizer, generation "
        "config, modeling code and a model card. Prints parameters and KV-cache bytes per token before and after.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, CONVERT_OPTIONS.values(), positional=("source",))
    parser.add_argument("--config", metavar="YAML", help="a conversion spec (see convert/); options given here win")


def load_convert_config(path: str) -> dict:
    """Read a conversion spec YAML (keys as the `convert` options, with `-` or `_`), type-checked."""
    return load_yaml_options(path, CONVERT_OPTIONS)


def run(args) -> int:
    o = merge(args, CONVERT_OPTIONS, args.config)
    if not o.get("source"):
        raise HfGqaError("SRC is required (a Hub id or a local folder), on the command line or in --config")
    if not o.get("output"):
        raise HfGqaError("-o/--output is required")
    spec = GQASpec(**{name: o[name] for name in OPTIONS})
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
    print_table(("", "before", "after"), rows)
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


__all__ = ["CONVERT_KEYS", "CONVERT_OPTIONS", "add_parser", "load_convert_config", "run"]
