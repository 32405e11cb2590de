"""Decode speed of finished uptraining runs' saved models, measured together on a quiet machine.

    python benchmarks/decode_runs.py runs/real/mha runs/real/gqa3 runs/real/mqa

A run's own `decode_tokens_per_second` is measured right after its training, alone; runs made one after another
(or next to other work) are not comparable that way. This loads each run's `model/`, builds prompts as its evaluation
did from the run's data and settings (`all_results.json` -> `config`: validation file, text column, prompt template or
source prefix, source length, eval batch size, decode tokens), and times `hf_gqa.training.decode_throughput` for
every model once per round, interleaved; the median round is reported, with ratios against the first run. Prints a
markdown table and writes JSON (default benchmarks/results/decode_runs.json).
"""

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from transformers import AutoTokenizer

import hf_gqa
from hf_gqa.conversion.api import load_source
from hf_gqa.stats import format_bytes, kv_cache_bytes_per_token
from hf_gqa.training import decode_throughput


def prompts(config: dict, tokenizer, is_encoder_decoder: bool) -> dict:
    """The first eval batch of the run, as its evaluation saw it (left-padded prompts for decoders)."""
    rows = [json.loads(line) for line in Path(config["validation_file"]).read_text(encoding="utf-8").splitlines()]
    rows = rows[: config["per_device_eval_batch_size"]]
    texts = [row[config["text_column"] or "article"] for row in rows]
    limit = config["max_source_length"]
    if is_encoder_decoder:
        texts = [(config["source_prefix"] or "") + t for t in texts]
        return tokenizer(texts, max_length=limit, truncation=True, padding=True, return_tensors="pt")
    template = config["prompt_template"]
    ids = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"] for t in texts]
    texts = [template.format(text=tokenizer.decode(i)) for i in ids]
    tokenizer.padding_side = "left"
    return tokenizer(texts, padding=True, return_tensors="pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (with all_results.json and model/)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3; the median is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/decode_runs.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    entries = []
    for run in map(Path, args.runs):
        results = json.loads((run / "all_results.json").read_text(encoding="utf-8"))
        config = results["config"]
        model = load_source(str(run / "model")).eval()
        tokenizer = AutoTokenizer.from_pretrained(run / "model")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = prompts(config, tokenizer, model.config.is_encoder_decoder)
        entries.append((run, results, model, tokenizer, batch, config["decode_benchmark_tokens"], []))
    for _ in range(args.repeats):
        for _, _, model, tokenizer, batch, new_tokens, speeds in entries:
            measured = decode_throughput(
                model, batch["input_ids"], batch["attention_mask"], new_tokens, pad_token_id=tokenizer.pad_token_id
            )
            speeds.append(measured["decode_tokens_per_second"])

    rows = []
    for run, results, model, _, batch, new_tokens, speeds in entries:
        rows.append(
            {
                "run": str(run),
                "variant": results["config"].get("run_name") or run.name,
                "kv_heads": model.config.to_dict().get("num_key_value_heads"),
                "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model.config.to_dict()),
                "batch": int(batch["input_ids"].shape[0]),
                "prompt_tokens": int(batch["input_ids"].shape[1]),
                "new_tokens": new_tokens,
                "decode_tokens_per_second": statistics.median(speeds),
                "rounds": speeds,
            }
        )
    base = rows[0]["decode_tokens_per_second"]
    print("| run | KV heads | KV cache / token | decode tok/s | vs first |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        row["ratio"] = row["decode_tokens_per_second"] / base
        cache = ", ".join(format_bytes(n) for n in row["kv_cache_bytes_per_token"].values())
        print(
            f"| {row['variant']} | {row['kv_heads']} | {cache} | {row['decode_tokens_per_second']:.1f} | "
            f"{row['ratio']:.2f}x |"
        )
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "threads": args.threads,
        "repeats": args.repeats,
        "hf_gqa": hf_gqa.__version__,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
