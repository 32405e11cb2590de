"""`hf-gqa fold`."""

import argparse
import sys

from ..conversion.folder import FolderOptions, fold_to_folder
from ..core.options import declared
from ..core.text import print_table
from ..errors import HfGqaError
from ..io.hub import push_folder
from .args import add_options, merge

FOLD_OPTIONS = {o.name: o for o in declared(FolderOptions)}

EPILOG = """\
examples:
  hf-gqa fold t5-small-wgqa4-uptrained -o t5-small-gqa4
  hf-gqa fold ./llama-wgqa2-uptrained -o llama-gqa2 --max-shard-size 2GB

Each weighted K/V projection becomes the G-head projection it computes (W_g = sum_i w_i W_i over the group's
heads, biases likewise) and the extra weights are dropped: the logits stay the same. T5 stays t5_gqa (loads with
`import hf_gqa` or trust_remote_code=True); a decoder family becomes a stock checkpoint (e.g. LlamaForCausalLM
with num_key_value_heads=G) that plain transformers loads. Safetensors checkpoints are folded shard by shard.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "fold",
        help="fold a WGQA training form into the plain GQA checkpoint",
        description="Fold the learned K/V weights of a WGQA training form (hf-gqa convert --variant wgqa, after "
        "uptraining) into plain grouped projections and save the GQA checkpoint with its tokenizer, generation "
        "config and a model card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC", help="local folder or Hub id of a WGQA training form")
    add_options(parser, [o for name, o in FOLD_OPTIONS.items() if name != "source"])


def run(args) -> int:
    o = merge(args, FOLD_OPTIONS, None)
    if not o["output"]:
        raise HfGqaError("-o/--output is required")
    report = fold_to_folder(
        o["source"],
        o["output"],
        dtype=o["dtype"],
        max_shard_size=o["max_shard_size"],
        in_memory=o["in_memory"],
        force=o["force"],
        location=o["push_to_hub"] or str(o["output"]),
    )
    before, after = report.parameters
    rows = [("parameters", f"{before:,}", f"{after:,}")]
    for kind, (heads, groups) in report.kv_heads.items():
        rows.append((f"{kind} K/V heads", f"{groups} (sums of {heads})", str(groups)))
    print_table(("", "training form", "folded"), rows)
    how = "shard by shard" if report.streamed else "in memory"
    loads = "hf-gqa or trust_remote_code=True" if report.config.get("auto_map") else "plain transformers"
    print(f"saved {report.config['architectures'][0]} ({how}) to {o['output']}; loads with {loads}")
    if not report.has_tokenizer:
        print(f"note: no tokenizer found at {o['source']}; the output has none", file=sys.stderr)
    if o["push_to_hub"]:
        url = push_folder(o["output"], o["push_to_hub"], private=o["private"])
        print(f"pushed to {o['push_to_hub']}: {url}")
    return 0


__all__ = ["add_parser", "run"]
