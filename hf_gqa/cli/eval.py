"""`hf-gqa eval`: measure checkpoints side by side, to choose a conversion."""

import argparse
import json
from pathlib import Path

from ..core.text import format_bytes, print_table
from ..errors import HfGqaError
from ..evaluation import PROMPT_TOKENS, evaluate_models, lm_eval_version

EPILOG = """\
examples:
  hf-gqa eval ./llama ./llama-gqa4 ./llama-mqa --data aclsum:test
  hf-gqa eval t5-small ./t5-small-gqa2 --data aclsum:validation --summary-column outcome --json eval.json
  hf-gqa eval ./llama ./llama-gqa2 --data notes.jsonl --text-column body --decode-tokens 0
  hf-gqa eval ./llama ./llama-gqa4 --lm-eval-tasks hellaswag,arc_easy --lm-eval-limit 200
  hf-gqa eval ./llama ./llama-gqa4 --lm-eval-tasks my_task --lm-eval-include ./tasks   # offline, local data

A decoder-only model is scored on the texts (perplexity, token-weighted); an encoder-decoder model (T5) on the
summaries (the encoder reads the text, the loss and perplexity are those of the summary tokens): --data then needs
a text and a summary field, or aclsum (its papers and their challenge/approach/outcome summaries). Decode speed is
greedy generate() with the KV cache, batch 1, after a 64-token prompt from the data, prefill included; the ratios
are against the first model. Models are loaded one at a time, on --device.

--lm-eval-tasks runs lm-evaluation-harness (pip install 'hf-gqa[lm-eval]') on each model as loaded here (by
hf-gqa, so every converted and uptrained type loads without trust_remote_code), with lm-eval's own prompts, metrics
and defaults; its figures go in the same table and JSON. Its tasks fetch their data from the Hub; a task YAML of
your own over local files (dataset_path: json, dataset_kwargs: data_files: ...) runs offline.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="compare checkpoints: perplexity, KV cache, parameters, decode speed",
        description="Measure models side by side, to choose a conversion: perplexity on text (decoder-only) or "
        "the loss on reference summaries (encoder-decoder), KV-cache bytes per token, parameters and greedy "
        "decode tokens/s, with ratios against the first model; and lm-evaluation-harness tasks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="local folder, .gguf file or Hub id")
    parser.add_argument(
        "--data",
        help="aclsum, aclsum:SPLIT (train, validation, test), a .txt, .jsonl, .json, .csv or .parquet file, or "
        "(decoder-only models) a Hub dataset NAME[:CONFIG]:SPLIT, streamed with datasets: perplexity and decode "
        "speed (needed unless --lm-eval-tasks is given)",
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
    harness = parser.add_argument_group("lm-evaluation-harness (pip install 'hf-gqa[lm-eval]')")
    harness.add_argument(
        "--lm-eval-tasks",
        metavar="TASKS",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        help="run these lm-eval tasks on each model, comma-separated: task, group or tag names (hellaswag, "
        "arc_easy, ...: their data comes from the Hub) or task .yaml files",
    )
    harness.add_argument(
        "--lm-eval-include",
        metavar="DIR",
        help="a folder of lm-eval task YAMLs whose tasks --lm-eval-tasks may name (lm-eval's --include_path); "
        "relative data_files in them are read from the current folder",
    )
    harness.add_argument(
        "--lm-eval-fewshot",
        type=int,
        metavar="N",
        help="examples in each prompt (lm-eval's --num_fewshot; default: each task's own)",
    )
    harness.add_argument(
        "--lm-eval-limit",
        type=int,
        metavar="N",
        help="score the first N documents of each task (lm-eval's --limit; default: all)",
    )
    harness.add_argument(
        "--lm-eval-batch-size",
        type=int,
        metavar="N",
        default=1,
        help="lm-eval's batch size (default: 1, as lm-eval's)",
    )


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
        lm_eval_tasks=args.lm_eval_tasks,
        lm_eval_include=args.lm_eval_include,
        lm_eval_fewshot=args.lm_eval_fewshot,
        lm_eval_limit=args.lm_eval_limit,
        lm_eval_batch_size=args.lm_eval_batch_size,
        progress=True,
    )
    settings = {"data": args.data}
    if args.data is not None:
        settings.update(
            max_tokens=args.max_tokens,
            decode_new_tokens=args.decode_tokens,
            decode_prompt_tokens=PROMPT_TOKENS,
            decode_batch_size=1,
            decode_rounds=args.rounds,
        )
        samples = sorted({r["samples"] for r in results})
        print(
            f"{'/'.join(map(str, samples))} texts of {args.data}, up to {args.max_tokens} tokens each"
            + (
                f"; decode: {args.decode_tokens} new tokens after a {PROMPT_TOKENS}-token prompt, batch 1, "
                f"median of {args.rounds}, on {results[0]['device']}"
                if args.decode_tokens
                else ""
            )
        )
    if args.lm_eval_tasks is not None:
        settings["lm_eval"] = {
            "version": lm_eval_version(),
            "tasks": args.lm_eval_tasks,
            "include_path": args.lm_eval_include,
            "num_fewshot": args.lm_eval_fewshot,
            "limit": args.lm_eval_limit,
            "batch_size": args.lm_eval_batch_size,
        }
        print(
            f"lm-eval {lm_eval_version()}: {', '.join(args.lm_eval_tasks)}"
            + (f", {args.lm_eval_fewshot}-shot" if args.lm_eval_fewshot is not None else "")
            + (f", the first {args.lm_eval_limit} documents of each" if args.lm_eval_limit is not None else "")
            + f", batch {args.lm_eval_batch_size}, on {results[0]['device']}"
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

    rows = []
    if any("perplexity" in r for r in results):
        rows += [
            row("scores", (r.get("scores") for r in results)),
            row("perplexity", (_figure(r, "perplexity", "{:,.2f}") for r in results)),
            row("loss (nats / token)", (_figure(r, "loss", "{:.4f}") for r in results)),
            row("tokens scored", (_figure(r, "tokens", "{:,}") for r in results)),
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
    for task in dict.fromkeys(t for r in results for t in r.get("lm_eval", {})):
        figures = [r.get("lm_eval", {}).get(task, {}) for r in results]
        metrics = (m for f in figures for m in f if m not in ("samples", "fewshot") and "_stderr" not in m)
        for metric in dict.fromkeys(metrics):
            rows.append(row(f"{task} {metric}", (_lm_eval_figure(f, metric) for f in figures)))
    return rows


def _figure(result: dict, key: str, spec: str) -> str | None:
    return None if result.get(key) is None else spec.format(result[key])


def _lm_eval_figure(figures: dict, metric: str) -> str | None:
    """An lm-eval figure, with its standard error where lm-eval gives one (a number, not "N/A")."""
    value = figures.get(metric)
    if not isinstance(value, (int, float)):
        return None if value is None else str(value)
    text = f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.4f}"
    name, _, filtered = metric.partition(",")
    stderr = figures.get(f"{name}_stderr" + (f",{filtered}" if filtered else ""))
    return text + (f" ± {stderr:.4f}" if isinstance(stderr, (int, float)) else "")


__all__ = ["add_parser", "column_names", "run", "table_rows"]
