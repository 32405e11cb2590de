"""`hf-gqa` end to end on saved tiny checkpoints: outputs, printed sizes, Hub ids offline, bad input, push."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from helpers import one_error_line, run
from tiny_decoders import make
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import hf_gqa
from hf_gqa.cli import CONVERT_KEYS, load_convert_config, main


def leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_convert_writes_a_loadable_checkpoint_with_tokenizer_and_card(t5_dir, tmp_path, capsys):
    out_dir = tmp_path / "gqa4"
    code, out, err = run(capsys, "convert", t5_dir, "--groups", 4, "-o", out_dir)
    assert code == 0, err
    assert (
        "parameters" in out
        and "KV cache / token" in out
        and "KV cache / source token (cross)" in out
        and "768 B" in out
    )  # 1.5 KiB -> 768 B
    names = {p.name for p in out_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer_config.json",
        "README.md",
        "modeling_t5_gqa.py",
    } <= names
    model = AutoModelForSeq2SeqLM.from_pretrained(out_dir)
    assert model.config.num_key_value_heads == 4 and model.config.encoder_num_key_value_heads == 8
    assert model.config.gqa_source == str(t5_dir)
    assert model.generation_config.max_new_tokens == 7  # the source's generation config travelled
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    ids = tokenizer("summarize: The quick brown fox.", return_tensors="pt")
    assert tokenizer.decode(ids.input_ids[0], skip_special_tokens=True) == "summarize: The quick brown fox."
    model.generate(**ids, max_new_tokens=3)
    card = (out_dir / "README.md").read_text()
    assert "| variant | `gqa` |" in card and "8 -> 4 key/value heads" in card and hf_gqa.__version__ in card
    assert leftovers(tmp_path) == []


def test_hub_id_resolves_offline_through_the_real_from_pretrained(hub_cache, tmp_path, capsys):
    code, out, err = run(capsys, "convert", hub_cache, "--variant", "mqa", "-o", tmp_path / "mqa")
    assert code == 0, err
    config = json.loads((tmp_path / "mqa" / "config.json").read_text())
    assert config["gqa_source"] == "tiny-org/tiny-t5" and config["num_key_value_heads"] == 1
    assert "base_model: tiny-org/tiny-t5" in (tmp_path / "mqa" / "README.md").read_text()


def test_info_describes_a_converted_checkpoint(t5_dir, tmp_path, capsys):
    run(
        capsys,
        "convert",
        t5_dir,
        "--groups",
        2,
        "--attention",
        "encoder",
        "decoder_self",
        "cross",
        "--init",
        "first",
        "-o",
        tmp_path / "g2",
    )
    code, out, _ = run(capsys, "info", tmp_path / "g2", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["kv_heads"] == {"encoder": 2, "decoder_self": 2, "cross": 2}
    assert info["init"] == "first" and info["variant"] == "gqa" and info["parameters"] > 0
    assert info["kv_cache_bytes_per_token"] == {"self": 2 * 2 * 8 * 3 * 4, "cross": 2 * 2 * 8 * 3 * 4}
    code, out, _ = run(capsys, "info", tmp_path / "g2")
    assert "import hf_gqa, or trust_remote_code=True" in out


@pytest.mark.parametrize(
    ("extra", "heads", "weights"),
    [
        (["--variant", "simgqa", "--regroup-every", "2"], "2 (means of 8)", "mean: no weights"),
        (["--variant", "wgqa"], "2 (learned sums of 8)", "scalar: WGQA training form"),
    ],
)
def test_info_names_the_mean_form_without_learned_weights(tmp_path, capsys, extra, heads, weights):
    """SimGQA regrouped while uptraining keeps every K/V head and averages each group: nothing is learned."""
    make("llama").save_pretrained(tmp_path / "src")
    code, _, err = run(capsys, "convert", tmp_path / "src", "-g", 2, *extra, "-o", tmp_path / "out")
    assert code == 0, err
    code, out, _ = run(capsys, "info", tmp_path / "out")
    assert code == 0
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert heads in rows["self K/V heads"] and weights in rows["K/V weights"]
    assert ("learned" in out) == (extra[1] == "wgqa")


def test_dtype_option(t5_dir, tmp_path, capsys):
    code, _, err = run(capsys, "convert", t5_dir, "--groups", 2, "--dtype", "bfloat16", "-o", tmp_path / "bf16")
    assert code == 0, err
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.decoder.block[0].layer[0].SelfAttention.k.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--groups", "3"], "does not divide the 8 heads of decoder_self attention; valid values: 1, 2, 4, 8"),
        (["--variant", "mqa", "--groups", "2"], "variant 'mqa' has 1 key/value head"),
        (["--groups", "2", "--attention", "encoder", "--variant", "mha", "--groups", "4"], "variant 'mha' has 8"),
    ],
)
def test_bad_groups(t5_dir, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "convert", t5_dir, *argv, "-o", tmp_path / "out")
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_unsupported_missing_and_corrupt_checkpoints(t5_dir, tmp_path, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    code, _, err = run(capsys, "convert", bert, "--groups", 2, "-o", tmp_path / "o1")
    assert code == 2 and "model_type 'bert' is not supported; supported: " in err and "llama" in err

    code, _, err = run(capsys, "convert", tmp_path / "missing", "--groups", 2, "-o", tmp_path / "o2")
    assert code == 2 and "no checkpoint folder at" in err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in t5_dir.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run(capsys, "convert", corrupt, "--groups", 2, "-o", tmp_path / "o3")
    assert code == 2 and "model.safetensors is truncated or corrupt" in one_error_line(err)  # streaming
    code, _, err = run(capsys, "convert", corrupt, "--groups", 2, "--in-memory", "-o", tmp_path / "o3")
    assert code == 2 and "cannot load the checkpoint" in one_error_line(err)

    (corrupt / "config.json").write_text("{not json")
    code, _, err = run(capsys, "convert", corrupt, "--groups", 2, "-o", tmp_path / "o4")
    assert code == 2 and "cannot read a checkpoint config" in err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)) and leftovers(tmp_path) == []


def test_existing_output_needs_force_and_is_replaced_whole(t5_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "config.json").write_text("{}")  # an earlier output
    (out_dir / "stale.txt").write_text("old")
    code, _, err = run(capsys, "convert", t5_dir, "--groups", 2, "-o", out_dir)
    assert code == 2 and "exists and is not empty; pass --force" in err
    assert (out_dir / "stale.txt").exists()
    code, _, err = run(capsys, "convert", t5_dir, "--groups", 2, "-o", out_dir, "--force")
    assert code == 0, err
    assert not (out_dir / "stale.txt").exists() and (out_dir / "model.safetensors").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("path", ["streamed", "in-memory"])
def test_failure_while_writing_leaves_nothing(t5_dir, tmp_path, capsys, monkeypatch, path):
    from hf_gqa.conversion.streaming import ShardWriter

    def boom(self, *args, **kwargs):
        if path == "in-memory" or self.total_bytes > 100_000:  # streamed: fail mid-shard
            raise RuntimeError("disk full")
        return add(self, *args, **kwargs)

    add = ShardWriter.add
    monkeypatch.setattr(ShardWriter, "add", boom)
    monkeypatch.setattr(hf_gqa.T5GQAForConditionalGeneration, "save_pretrained", boom)
    extra = ["--in-memory"] if path == "in-memory" else []
    with pytest.raises(RuntimeError, match="disk full"):
        main(["convert", str(t5_dir), "--groups", "2", "-o", str(tmp_path / "out"), *extra])
    assert list(tmp_path.iterdir()) == []


def test_push_to_hub_uploads_the_folder_with_its_card(t5_dir, tmp_path, capsys, monkeypatch):
    calls = {}
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))

    def upload_folder(self, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
        calls["card"] = (Path(folder_path) / "README.md").read_text()
        return "https://huggingface.co/me/tiny-gqa/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code, out, err = run(
        capsys, "convert", t5_dir, "--groups", 2, "-o", tmp_path / "out", "--push-to-hub", "me/tiny-gqa", "--private"
    )
    assert code == 0, err
    assert calls["create"] == ("me/tiny-gqa", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"][0] == "me/tiny-gqa" and "model.safetensors" in calls["upload"][1]
    card = calls["card"]
    for needle in (
        "library_name: transformers",
        "- hf-gqa",
        f"`{t5_dir}`",
        "| variant | `gqa` |",
        "| K/V init | `mean` |",
        "decoder self-attention | 8 -> 2",
        "cross-attention | 8 -> 2",
        hf_gqa.__version__,
        'from_pretrained("me/tiny-gqa", trust_remote_code=True)',
    ):
        assert needle in card, needle
    assert "pushed to me/tiny-gqa" in out


def test_config_file_and_overrides(t5_dir, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"source": str(t5_dir), "groups": 2, "output": str(tmp_path / "from-yaml"), "attention": ["cross"]}
        )
    )
    code, _, err = run(capsys, "convert", "--config", spec, "--groups", 4)
    assert code == 0, err
    config = json.loads((tmp_path / "from-yaml" / "config.json").read_text())
    assert (config["cross_num_key_value_heads"], config["num_key_value_heads"]) == (4, 8)
    spec.write_text("source: x\ngroupz: 2\n")
    code, _, err = run(capsys, "convert", "--config", spec)
    assert code == 2 and "unknown key 'groupz'" in err


@pytest.mark.parametrize("path", sorted((REPO / "convert").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_conversion_spec_is_valid(path):
    from hf_gqa import GQASpec
    from hf_gqa.registry import VARIANTS
    from hf_gqa.variants.routed import RoutedOptions

    ROUTED_OPTIONS = [f.name for f in dataclasses.fields(RoutedOptions)]

    data = load_convert_config(str(path))
    assert set(data) <= set(CONVERT_KEYS) and data["source"] and data["output"]
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# hf-gqa convert --config convert/" + path.name), first_line
    options = {k: data[k] for k in ROUTED_OPTIONS if k in data}
    spec = GQASpec(
        variant=data.get("variant", "gqa"),
        groups=data.get("groups"),
        init=data.get("init", "mean"),
        attention=tuple(data["attention"]) if data.get("attention") else None,
        **options,
    )
    VARIANTS[spec.variant]().check_spec(spec)


def test_help_and_no_traceback_from_the_console_script(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "hf_gqa", "convert", "--help"], capture_output=True, text=True)
    for flag in ("--groups", "--variant", "--init", "--attention", "--dtype", "--push-to-hub", "--force", "--config"):
        assert flag in help_text.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hf_gqa", "convert", str(tmp_path / "nope"), "-g", "2", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("hf-gqa: error:")
