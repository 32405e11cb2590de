"""Streaming conversion vs copying the files vs converting in memory, on a random Llama checkpoint on disk.

    python benchmarks/convert.py                      # ~1.5 GB bf16 checkpoint in 6 shards, G = 4
    python benchmarks/convert.py --layers 4 --rounds 1  # quicker

Builds a random Llama-architecture checkpoint (never the whole model in memory), then times three jobs, each in a
fresh subprocess so its peak RSS is its own: `copy` (shutil.copyfile of every file: the bytes-moving floor),
`streaming` (`hf-gqa convert` shard by shard) and `in-memory` (`from_pretrained`, convert, `save_pretrained`).
Rounds are interleaved; the table shows medians, times as ratios to `copy` and peak RSS against the largest shard.
Prints a table and writes JSON (default benchmarks/results/convert.json).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = r"""
import json, shutil, sys, time
from pathlib import Path

def hwm():  # this process's peak RSS (VmHWM; ru_maxrss would include the parent's peak from before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

job, src, out, groups = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
import torch
import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.conversion.streaming import save_streamed
baseline = hwm()  # after imports
start = time.perf_counter()
if job == "copy":
    out.mkdir()
    for f in src.iterdir():
        shutil.copyfile(f, out / f.name)
elif job == "streaming":
    save_streamed(src, out, GQASpec(groups=groups), progress=False)
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    hf_gqa.save_converted(hf_gqa.convert(model, groups=groups), out)
seconds = time.perf_counter() - start
peak = hwm()
print(json.dumps({"seconds": seconds, "peak_rss": peak, "import_rss": baseline}))
"""


def build_checkpoint(folder: Path, layers: int, shard_bytes: int) -> dict:
    """A random bf16 Llama checkpoint written shard by shard (the model is only ever on the meta device)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    current, size, written = {}, 0, 0

    def flush():
        nonlocal current, size, written
        written += 1
        save_file(current, str(folder / f"part-{written}.safetensors"), metadata={"format": "pt"})
        current, size = {}, 0

    for key, shape in shapes.items():  # memory holds one shard at a time
        tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        if current and size + tensor.nbytes > shard_bytes:
            flush()
        current[key] = tensor
        size += tensor.nbytes
    if current:
        flush()
    parts = sorted(folder.glob("part-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    n, weight_map, total = len(parts), {}, 0
    from safetensors import safe_open

    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        part.rename(folder / name)
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                weight_map[key] = name
        total += (folder / name).stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    largest = max((folder / name).stat().st_size for name in set(weight_map.values()))
    return {
        "bytes": total,
        "shards": n,
        "largest_shard": largest,
        "parameters": sum(_numel(s) for s in shapes.values()),
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_job(job: str, src: Path, out: Path, groups: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-c", JOB, job, str(src), str(out), str(groups)], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise SystemExit(f"{job} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="Llama layers (12: ~0.75B params, ~1.5 GB bf16)")
    parser.add_argument("--shard-size", type=int, default=300, help="source shard size in MB (default 300)")
    parser.add_argument("--groups", type=int, default=4, help="key/value heads after conversion (of 16)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", help="where to build the checkpoint (default: a temporary folder)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "convert.json"))
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hf-gqa-bench-"))
    src = work / "source"
    try:
        start = time.perf_counter()
        checkpoint = build_checkpoint(src, args.layers, args.shard_size * 10**6)
        print(
            f"built {checkpoint['shards']} shards, {checkpoint['bytes'] / 1e9:.2f} GB "
            f"(largest {checkpoint['largest_shard'] / 1e6:.0f} MB) in {time.perf_counter() - start:.0f}s",
            file=sys.stderr,
        )
        jobs = ("copy", "streaming", "in-memory")
        runs = {job: [] for job in jobs}
        run_job("copy", src, work / "warm", args.groups)  # page cache warm-up, not scored
        for r in range(args.rounds):
            for job in jobs:
                runs[job].append(run_job(job, src, work / "out", args.groups))
                print(f"round {r + 1} {job}: {runs[job][-1]['seconds']:.1f}s", file=sys.stderr)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    copy_s = statistics.median(x["seconds"] for x in runs["copy"])
    shard = checkpoint["largest_shard"]
    rows = []
    for job in jobs:
        seconds = statistics.median(x["seconds"] for x in runs[job])
        peak = statistics.median(x["peak_rss"] for x in runs[job])
        above = statistics.median(x["peak_rss"] - x["import_rss"] for x in runs[job])
        rows.append(
            {
                "job": job,
                "seconds": round(seconds, 2),
                "time_vs_copy": round(seconds / copy_s, 2),
                "peak_rss_mb": round(peak / 1e6),
                "rss_above_imports_mb": round(above / 1e6),
                "rss_above_imports_vs_largest_shard": round(above / shard, 2),
            }
        )
    print(
        f"\nrandom Llama, {checkpoint['parameters'] / 1e9:.2f}B params, bf16, {checkpoint['bytes'] / 1e9:.2f} GB in "
        f"{checkpoint['shards']} shards (largest {shard / 1e6:.0f} MB); 16 -> {args.groups} K/V heads; "
        f"median of {args.rounds}\n"
    )
    header = ("job", "time", "vs copy", "peak RSS", "RSS above imports", "vs largest shard")
    table = [header] + [
        (
            r["job"],
            f"{r['seconds']:.1f} s",
            f"{r['time_vs_copy']:.2f}x",
            f"{r['peak_rss_mb']:,} MB",
            f"{r['rss_above_imports_mb']:,} MB",
            f"{r['rss_above_imports_vs_largest_shard']:.2f}x",
        )
        for r in rows
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table[1:]:
        print("| " + " | ".join(row) + " |")
    out = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "checkpoint": checkpoint,
        "groups": args.groups,
        "rounds": args.rounds,
        "results": rows,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
