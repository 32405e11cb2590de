"""Decode speed of stock T5 (MHA) against t5_gqa with G in {H, 4, 2, 1}, same t5-small-shaped weights.

    python benchmarks/decode.py                      # batch 16, 1024 input tokens, 48 new tokens, 2 threads
    python benchmarks/decode.py --batch 4 --source-len 256 --new-tokens 16 --repeats 1   # quick look

The encoder runs once; `generate` gets its `encoder_outputs`, so the timed loop is the decoder GQA exists to speed
up. Runs are interleaved (every model once per round) and the median round is reported. Prints a table and writes
JSON (default benchmarks/results/decode.json). Ratios are against stock transformers T5 measured in the same run.

Rows marked `via transformers sdpa` are the same converted model attending through transformers' own SDPA function
(which copies K/V to H heads whenever there is a mask, as T5's position bias always is), for comparison.
"""

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

import hf_gqa
from hf_gqa.modeling import modeling_t5_gqa


def t5_small_config() -> T5Config:
    return T5Config(
        vocab_size=32128,
        d_model=512,
        d_kv=64,
        d_ff=2048,
        num_layers=6,
        num_heads=8,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )


@contextlib.contextmanager
def transformers_sdpa():
    saved = modeling_t5_gqa._GQA_ATTENTION_FUNCTIONS.pop("sdpa")
    try:
        yield
    finally:
        modeling_t5_gqa._GQA_ATTENTION_FUNCTIONS["sdpa"] = saved


def bytes_per_step(model, batch: int, source_len: int, new_tokens: int) -> dict:
    """Bytes one decode step must read: decoder weights + LM head, plus the self cache (mean over steps) and the
    cross cache."""
    decoder = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("encoder."))
    config = model.config
    g_self = getattr(config, "num_key_value_heads", config.num_heads)
    g_cross = getattr(config, "cross_num_key_value_heads", config.num_heads)
    per_head_token = 2 * config.d_kv * config.num_decoder_layers * 4  # k and v, fp32
    self_cache = per_head_token * g_self * batch * new_tokens  # at the end of generation
    cross_cache = per_head_token * g_cross * batch * source_len
    return {
        "weights": decoder,
        "self_cache": self_cache,
        "cross_cache": cross_cache,
        "per_step": decoder + self_cache / 2 + cross_cache,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--source-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 4, 2, 1])
    parser.add_argument("--no-ablation", action="store_true", help="skip the `via transformers sdpa` rows")
    parser.add_argument("--output", default="benchmarks/results/decode.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stock = T5ForConditionalGeneration(t5_small_config()).eval()
    models = [("stock T5 (MHA)", stock, None)]
    for g in args.groups:
        converted = hf_gqa.convert(stock, groups=g)
        models.append((f"t5_gqa G={g}", converted, None))
        if not args.no_ablation and g in (4, 1):
            models.append((f"t5_gqa G={g} via transformers sdpa", converted, transformers_sdpa))

    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 32128, (args.batch, args.source_len), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, num_beams=1)

    decode = {name: [] for name, _, _ in models}
    end_to_end = {name: [] for name, _, _ in models}
    outputs = {}
    with torch.inference_mode():
        encoder_outputs = stock.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)  # shared encoder
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name, model, context in models:
                with context() if context else contextlib.nullcontext():
                    start = time.perf_counter()
                    out = model.generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, **kwargs)
                    elapsed = time.perf_counter() - start
                    if round_:
                        decode[name].append(elapsed)
                    outputs[name] = out
                    if round_ == args.repeats:  # once: end to end, encoder included
                        start = time.perf_counter()
                        model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                        end_to_end[name].append(time.perf_counter() - start)
            print(f"round {round_}/{args.repeats} done", flush=True)

    base = bytes_per_step(stock, args.batch, args.source_len, args.new_tokens)
    base_time = statistics.median(decode[models[0][0]])
    base_e2e = end_to_end[models[0][0]][0]
    rows = []
    for name, model, _ in models:
        t = statistics.median(decode[name])
        b = bytes_per_step(model, args.batch, args.source_len, args.new_tokens)
        rows.append(
            {
                "model": name,
                "decode_s": round(t, 3),
                "decode_tokens_per_s": round(args.batch * args.new_tokens / t, 1),
                "decode_speedup": round(base_time / t, 3),
                "end_to_end_s": round(end_to_end[name][0], 3),
                "end_to_end_speedup": round(base_e2e / end_to_end[name][0], 3),
                "kv_cache_mib": round((b["self_cache"] + b["cross_cache"]) / 2**20, 1),
                "bytes_limit_speedup": round(base["per_step"] / b["per_step"], 3),
                "same_tokens_as_stock": bool(torch.equal(outputs[name], outputs[models[0][0]])),
            }
        )

    header = ["model", "decode tok/s", "decode x", "bytes-limit x", "end-to-end s", "e2e x", "KV cache MiB"]
    table = [header, ["---"] * len(header)]
    for r in rows:
        table.append(
            [
                r["model"],
                f"{r['decode_tokens_per_s']:.1f}",
                f"{r['decode_speedup']:.2f}",
                f"{r['bytes_limit_speedup']:.2f}",
                f"{r['end_to_end_s']:.2f}",
                f"{r['end_to_end_speedup']:.2f}",
                f"{r['kv_cache_mib']:.1f}",
            ]
        )
    print()
    for line in table:
        print("| " + " | ".join(line) + " |")
    result = {
        "settings": vars(args)
        | {
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "hf_gqa": hf_gqa.__version__,
        },
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
