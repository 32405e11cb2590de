"""`hf-gqa eval`: measure checkpoints side by side, to choose a conversion."""

import argparse
import json
from pathlib import Path

from ..core.text import format_bytes, print_table
from ..errors import HfGqaError
from ..evaluation import PROMPT_TOKENS, evaluate_models

EPILOG = """\
examples:
  hf-gqa eval ./llama ./llama-gqa4 ./llama-mqa --data aclsum:test
  hf-gqa eval t5-small ./t5-small-gqa2 --data aclsum:validation --summary-column outcome --json eval.json
  hf-gqa eval ./llama ./llama-gqa2 --data notes.jsonl --text-column body --decode-tokens 0

A decoder-only model is scored on the texts (perplexity, token-weighted); an encoder-decoder model (T5) on the
summaries (the encoder reads the text, the loss and perplexity are those of the summary tokens): --data then needs
a text and a summary field, or aclsum (its papers and their challenge/approach/outcome summaries). Decode speed is
greedy generate() with the KV cache, batch 1, after a 64-token prompt from the data, prefill included; the ratios
are against the first model. Models are loaded one at a time, on --device.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="compare checkpoints: perplexity, KV cache, parameters, decode speed",
        description="Measure models side by side, to choose a conversion: perplexity on text (decoder-only) or "
        "the loss on reference summaries (encoder-decoder), KV-cache bytes per token, parameters and greedy "
        "decode tokens/s, with ratios against the first model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="local folder, .gguf file or Hub id")
    parser.add_argument(
        "--data",
        required=True,
        help="aclsum, aclsum:SPLIT (train, validation, test), or a .txt, .jsonl, .json, .csv or .parquet file",
    )
    parser.add_argument(
        "--samples", type=int, metavar="N", default=32, help="texts to score, the first N (default: 32)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        default=256,
        help="truncate each text (and summary) to N tokens (default: 256)",
    )
    parser.add_argument(
        "--text-column", default="text", metavar="FIELD", help="the field holding the text (default: text)"
    )
    parser.add_argument(
        "--summary-column",
        default="summary",
        metavar="FIELD",
        help="the field holding the summary, for encoder-decoder models (default: summary; aclsum: summary, "
        "challenge, approach or outcome)",
    )
    parser.add_argument(
        "--decode-tokens",
        type=int,
        metavar="N",
        default=32,
        help="new tokens per decode run; 0 skips decode speed (default: 32)",
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", default=3, help="timed decode runs, the median counts (default: 3)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="load the models in this dtype (default: auto, each checkpoint's own)",
    )
    parser.add_argument(
        "--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def run(args) -> int:
    if args.json:
        folder = Path(args.json).expanduser().parent
        if not folder.is_dir():
            raise HfGqaError(f"--json {args.json!r}: the folder {str(folder)!r} does not exist")
    results = evaluate_models(
        args.models,
        args.data,
        samples=args.samples,
        max_tokens=args.max_tokens,
        decode_tokens=args.decode_tokens,
        rounds=args.rounds,
        text_column=args.text_column,
        summary_column=args.summary_column,
        dtype=args.dtype,
        device=args.device,
        progress=True,
    )
    settings = {
        "data": args.data,
        "max_tokens": args.max_tokens,
        "decode_new_tokens": args.decode_tokens,
        "decode_prompt_tokens": PROMPT_TOKENS,
        "decode_batch_size": 1,
        "decode_rounds": args.rounds,
    }
    samples = sorted({r["samples"] for r in results})
    print(
        f"{'/'.join(map(str, samples))} texts of {args.data}, up to {args.max_tokens} tokens each"
        + (
            f"; decode: {args.decode_tokens} new tokens after a {PROMPT_TOKENS}-token prompt, batch 1, median of "
            f"{args.rounds}, on {results[0]['device']}"
            if args.decode_tokens
            else ""
        )
    )
    print_table(("", *column_names([r["model"] for r in results])), table_rows(results))
    if args.json:
        try:
            Path(args.json).expanduser().write_text(
                json.dumps({**settings, "models": results}, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as error:
            raise HfGqaError(f"--json {args.json!r}: cannot write it: {error.strerror or error}") from None
    return 0


def column_names(models: list[str]) -> list[str]:
    """The table's column headers: a local model's folder or file name, where those are unique; else as given."""
    short = [Path(m).expanduser().name if Path(m).expanduser().exists() else m for m in models]
    return short if len(set(short)) == len(short) and all(short) else models


def table_rows(results: list[dict]) -> list[tuple[str, ...]]:
    """The table's rows, one per figure, a column per model ("-" where a model has no such figure)."""

    def row(label: str, values) -> tuple[str, ...]:
        return (label, *("-" if v is None else v for v in values))

    rows = [
        row("scores", (r["scores"] for r in results)),
        row("perplexity", (f"{r['perplexity']:,.2f}" for r in results)),
        row("loss (nats / token)", (f"{r['loss']:.4f}" for r in results)),
        row("tokens scored", (f"{r['tokens']:,}" for r in results)),
    ]
    for kind in dict.fromkeys(k for r in results for k in r["kv_heads"]):
        rows.append(row(f"{kind} K/V heads", (r["kv_heads"].get(kind) for r in results)))
    rows = [tuple(str(c) for c in r) for r in rows]
    for cache in dict.fromkeys(c for r in results for c in r["kv_cache_bytes_per_token"]):
        sizes = [r["kv_cache_bytes_per_token"].get(cache) for r in results]
        rows.append(row(f"KV cache / token ({cache})", (None if n is None else format_bytes(n) for n in sizes)))
    rows.append(row("parameters", (f"{r['parameters']:,}" for r in results)))
    rows.append(row("dtype", (r["dtype"] for r in results)))
    if "decode_tokens_per_second" in results[0]:
        rows.append(row("decode tokens/s", (f"{r['decode_tokens_per_second']:,.1f}" for r in results)))
        rows.append(row("decode vs first", (f"{r['decode_speedup']:.2f}x" for r in results)))
    return rows


__all__ = ["add_parser", "column_names", "run", "table_rows"]
