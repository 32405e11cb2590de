"""Peak memory of the calibrated init on disk (one layer at a time) against the whole model in memory, on a random
Llama-architecture model of about 0.75B parameters (stored in bfloat16) with SmolLM2's tokenizer.

    python benchmarks/calibrate_memory.py [--layers 24] [--samples 8] [--steps 10] [--json calibrate_memory.json]

Each conversion runs in a child process, which reports its own peak RSS (VmHWM). Prints a table (peak RSS, the
model's and its largest layer's float32 size, seconds per layer) and writes JSON. Calibration text: ACLSum train
papers.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def high_water_mib() -> float:
    """This process's peak RSS since it started (VmHWM). Not `ru_maxrss`: Linux carries that across fork and exec,
    so a child would report the parent's peak (here: building the model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(folder: Path, layers: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_gqa.demo import smollm2_gguf
    from hf_gqa.io.sources import load_tokenizer

    tokenizer = load_tokenizer(smollm2_gguf())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=1536, intermediate_size=4096, num_hidden_layers=layers,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    return {"parameters": model.num_parameters(), "layer_parameters": layer, "embedding_parameters":
            model.model.embed_tokens.weight.numel()}  # fmt: skip


def child(source: str, output: str, samples: int, steps: int, in_memory: bool) -> None:
    """Convert in this process and print the seconds per layer as JSON on the last line."""
    from hf_gqa.calibration import streamed
    from hf_gqa.conversion.folder import convert_to_folder
    from hf_gqa.spec import GQASpec

    stamps = []
    release = streamed.release

    def timed_release(module):
        stamps.append(time.perf_counter())
        release(module)

    streamed.release = timed_release
    spec = GQASpec(groups=1, init="calibrated", calibration_data="aclsum:train", calibration_samples=samples,
                   calibration_seq_len=256, calibration_steps=steps)  # fmt: skip
    start = time.perf_counter()
    convert_to_folder(source, output, spec, in_memory=in_memory, progress=False)
    total = time.perf_counter() - start
    per_layer = [b - a for a, b in zip(stamps[::2], stamps[2::2], strict=False)]  # two releases per layer
    peak = high_water_mib()
    print(json.dumps({"seconds": total, "per_layer": per_layer, "peak_rss_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (24: about 0.75B parameters)")
    parser.add_argument("--samples", type=int, default=8, help="--calibration-samples (256 tokens each)")
    parser.add_argument("--steps", type=int, default=10, help="--calibration-steps")
    parser.add_argument("--skip-in-memory", action="store_true", help="only the on-disk path")
    parser.add_argument("--json", default="calibrate_memory.json")
    parser.add_argument("--child", nargs=3, metavar=("SRC", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.samples, args.steps, args.child[2] == "memory")
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        sizes = build(source, args.layers)
        rows = []
        for mode in ["disk"] + ([] if args.skip_in_memory else ["memory"]):
            command = [sys.executable, __file__, "--samples", str(args.samples), "--steps", str(args.steps),
                       "--child", str(source), str(Path(tmp) / mode), mode]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the {mode} conversion failed:\n{done.stderr[-3000:]}")
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            layer_times = timing["per_layer"]
            per_layer = sum(layer_times) / len(layer_times) if layer_times else None
            rows.append(
                {
                    "mode": mode,
                    "peak_rss_mib": timing["peak_rss_mib"],
                    "seconds": timing["seconds"],
                    "seconds_per_layer": per_layer,
                }
            )
    f32 = {k: v * 4 / MIB for k, v in sizes.items()}
    print(
        f"model: {sizes['parameters'] / 1e9:.2f}B parameters, {args.layers} layers; float32 sizes (MiB): model "
        f"{f32['parameters']:,.0f}, one layer {f32['layer_parameters']:,.0f}, embeddings "
        f"{f32['embedding_parameters']:,.0f}"
    )
    print("mode | peak RSS MiB | x one layer (f32) | seconds | seconds per layer")
    for row in rows:
        per = f"{row['seconds_per_layer']:.1f}" if row["seconds_per_layer"] else "-"
        print(
            f"{row['mode']} | {row['peak_rss_mib']:,.0f} | {row['peak_rss_mib'] / f32['layer_parameters']:.1f} | "
            f"{row['seconds']:.0f} | {per}"
        )
    Path(args.json).write_text(json.dumps({"sizes": sizes, "float32_mib": f32, "rows": rows, **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
