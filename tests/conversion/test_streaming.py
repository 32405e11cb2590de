"""Streaming conversion of safetensors checkpoints: bit-identical to the in-memory path, re-sharded, bounded."""

import json

import pytest
import torch
from conftest import make_t5
from safetensors import safe_open
from tiny_decoders import make, make_neox

import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.cli import main
from hf_gqa.conversion.streaming import INDEX_NAME, parse_size, save_streamed
from hf_gqa.io import safetensors as safetensors_io


def tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def loaded_state(folder, auto_class):
    model = auto_class.from_pretrained(folder)
    return {k: v.detach() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


SOURCES = {
    "llama-bf16": lambda: make("llama", kv_heads=8).to(torch.bfloat16),
    "qwen2-gqa4": lambda: make("qwen2", kv_heads=4),
    "phi3-fused": lambda: make("phi3"),
    "stablelm-norms": lambda: make("stablelm"),
    "gpt_neox": lambda: make_neox(),
    "t5": lambda: make_t5("flan"),
}


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("init", ["mean", "random"])
def test_streamed_equals_in_memory_bit_for_bit(tmp_path, name, init):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    source = SOURCES[name]()
    source.save_pretrained(tmp_path / "src", max_shard_size="60KB")
    assert (tmp_path / "src" / INDEX_NAME).is_file()  # really sharded
    spec = GQASpec(groups=2, init=init, seed=5)
    result = save_streamed(tmp_path / "src", tmp_path / "streamed", spec, max_shard_size="100KB", progress=False)
    in_memory = hf_gqa.convert(str(tmp_path / "src"), groups=2, init=init, seed=5)
    in_memory.save_pretrained(tmp_path / "memory")

    auto = AutoModelForSeq2SeqLM if name == "t5" else AutoModelForCausalLM
    assert_bit_identical(loaded_state(tmp_path / "streamed", auto), loaded_state(tmp_path / "memory", auto))
    if name != "t5":  # T5's tied embeddings are stored under different names by save_pretrained
        assert_bit_identical(tensors(tmp_path / "streamed"), tensors(tmp_path / "memory"))
    assert result.plan.kv_heads == hf_gqa.plan_conversion(source.config.to_dict(), spec).kv_heads
    if name == "t5":
        assert {"modeling_t5_gqa.py", "configuration_t5_gqa.py", "gqa_attention.py"} <= {
            p.name for p in (tmp_path / "streamed").iterdir()
        }


def test_copying_without_copy_file_range_gives_the_same_bytes(tmp_path, monkeypatch):
    make("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    save_streamed(tmp_path / "src", tmp_path / "fast", GQASpec(groups=2), progress=False)
    monkeypatch.delattr(safetensors_io.os, "copy_file_range", raising=False)
    save_streamed(tmp_path / "src", tmp_path / "slow", GQASpec(groups=2), progress=False)
    for shard in (tmp_path / "fast").glob("*.safetensors"):
        assert shard.read_bytes() == (tmp_path / "slow" / shard.name).read_bytes()


def test_output_is_resharded_with_a_correct_index(tmp_path):
    make("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    limit = 50_000
    result = save_streamed(tmp_path / "src", tmp_path / "out", GQASpec(groups=2), max_shard_size=limit, progress=False)
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    names = sorted(p.name for p in result.shards)
    assert names == sorted(set(index["weight_map"].values())) and len(names) > 2
    assert names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    total = 0
    for shard in result.shards:
        with safe_open(str(shard), framework="pt") as f:
            keys = list(f.keys())
            sizes = [f.get_tensor(k).nbytes for k in keys]
        assert all(index["weight_map"][k] == shard.name for k in keys)
        assert sum(sizes) <= limit or len(keys) == 1  # a tensor larger than the limit gets a shard of its own
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total and len(index["weight_map"]) == len(tensors(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("model-part-*"))


def test_a_single_file_source_gives_a_single_file_and_keeps_tokenizer_files(tmp_path, t5_dir):
    result = save_streamed(t5_dir, tmp_path / "out", GQASpec(groups=2), progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert [p.name for p in result.shards] == ["model.safetensors"] and INDEX_NAME not in files
    assert {"tokenizer_config.json", "generation_config.json", "config.json"} <= files
    assert not any(name.endswith(".tmp") for name in files)


def test_each_input_shard_is_read_once_in_order_without_a_memory_map(tmp_path, monkeypatch):
    make("llama").save_pretrained(tmp_path / "src", max_shard_size="20KB")
    opened = []

    def counting_open(path, mode="r", *args, **kwargs):
        if "r" in mode:
            opened.append(str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(safetensors_io, "open", counting_open, raising=False)
    monkeypatch.setattr(safetensors_io, "safe_open", None, raising=False)  # no memory-mapped reads
    save_streamed(tmp_path / "src", tmp_path / "out", GQASpec(groups=2), progress=False)
    shards = {str(p) for p in (tmp_path / "src").glob("*.safetensors")}
    reads = [p for p in opened if p in shards]
    assert len(reads) == 2 * len(shards)  # once for its header, once for its tensors
    assert sorted(set(reads)) == sorted(shards)


def test_cli_streams_safetensors_and_reports_how(tmp_path, capsys):
    make("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert main(["convert", str(tmp_path / "src"), "--groups", "2", "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "(shard by shard)" in out and "loads with plain transformers" in out
    assert main(["convert", str(tmp_path / "src"), "--groups", "2", "--in-memory", "-o", str(tmp_path / "b")]) == 0
    assert "(in memory)" in capsys.readouterr().out
    assert_bit_identical(tensors(tmp_path / "a"), tensors(tmp_path / "b"))
    card = (tmp_path / "a" / "README.md").read_text()
    assert "8 -> 2 key/value heads" in card and "plain transformers loads it" in card


def test_cli_warns_when_a_family_converts_approximately(tmp_path, capsys):
    make("qwen3").save_pretrained(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), "--groups", "2", "-o", str(tmp_path / "out")]) == 0
    assert "warning: qwen3 normalises keys per head" in capsys.readouterr().err
    assert "normalises keys per head" in (tmp_path / "out" / "README.md").read_text()


def test_bad_shard_sizes_and_incomplete_checkpoints_are_one_line_errors(tmp_path, capsys):
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    make("llama").save_pretrained(tmp_path / "src", max_shard_size="40KB")
    code = main(["convert", str(tmp_path / "src"), "-g", "2", "--max-shard-size", "lots", "-o", str(tmp_path / "o")])
    assert code == 2 and "invalid shard size 'lots'" in capsys.readouterr().err
    next((tmp_path / "src").glob("model-00002-*.safetensors")).unlink()
    code = main(["convert", str(tmp_path / "src"), "-g", "2", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "lacks the shard model-00002-of-" in err and "incomplete" in err
    assert not (tmp_path / "o").exists()
