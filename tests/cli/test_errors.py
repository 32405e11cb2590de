"""Input mistakes the CLI reports as one line with exit status 2 (issue 12, item 6), never a traceback."""

import json
import os
import random

import pytest
import torch
from conftest import make_t5
from transformers import LlamaConfig, LlamaForCausalLM

from hf_gqa.cli import main

TINY_LLAMA = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=32,
)


def convert(capsys, *argv):
    code = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *needles):
    lines = [line for line in err.splitlines() if line.startswith("hf-gqa: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def llama_dir(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(path)
    return path


@pytest.mark.parametrize("value", ["4", 4.0, True, 0, None])
def test_a_config_whose_head_count_is_not_a_positive_integer_is_one_line(capsys, llama_dir, tmp_path, value):
    config = json.loads((llama_dir / "config.json").read_text())
    config["num_attention_heads"] = value
    (llama_dir / "config.json").write_text(json.dumps(config))
    for extra in ((), ("--in-memory",)):
        code, _, err = convert(capsys, llama_dir, "--groups", 2, "-o", tmp_path / "out", *extra)
        assert_one_line(code, err, "num_attention_heads", "config.json")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content",
    [
        random.Random(0).randbytes(4096),  # torch's pickle check refuses it (UnpicklingError)
        b"\x80\x02a" + bytes(64),  # APPEND on an empty stack: the weights-only unpickler raises IndexError
        b"\x80\x02h\x00" + bytes(64),  # BINGET of a memo slot never set: KeyError
        b"\x80\x02X\x02\x00\x00\x00\xff\xfe" + bytes(64),  # a string that is not UTF-8: UnicodeDecodeError
    ],
    ids=["unpickling-error", "index-error", "key-error", "unicode-error"],
)
def test_a_bin_checkpoint_that_does_not_unpickle_is_one_line(capsys, llama_dir, tmp_path, content):
    (llama_dir / "model.safetensors").unlink()
    (llama_dir / "pytorch_model.bin").write_bytes(content)
    code, _, err = convert(capsys, llama_dir, "--groups", 2, "-o", tmp_path / "out")
    assert_one_line(code, err, "pytorch_model.bin")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"GGUF\x03\x00\x00\x00\x02",  # version, then a tensor count cut short
        b"GGUF\x03\x00\x00\x00" + (0).to_bytes(8, "little") + (3).to_bytes(8, "little") + b"\x05\x00",  # a key cut
        b"GGUF",
    ],
)
def test_a_gguf_file_with_a_truncated_header_is_one_line(capsys, tmp_path, content):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    code, _, err = convert(capsys, gguf, "--groups", 2, "-o", tmp_path / "out")
    assert_one_line(code, err, "model.gguf")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
@pytest.mark.parametrize("extra", [(), ("--in-memory",)])
def test_a_read_only_output_folder_is_one_line(capsys, llama_dir, tmp_path, extra):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, _, err = convert(capsys, llama_dir, "--groups", 2, "-o", parent / "out", *extra)
        assert_one_line(code, err, "not writable", str(parent))
    finally:
        parent.chmod(0o700)


def test_an_unwritable_output_folder_is_refused_before_any_work(capsys, llama_dir, tmp_path, monkeypatch):
    # The same check as above, where the test runs as root: the folder is reported as not writable.
    import hf_gqa.conversion.folder as folder

    parent = tmp_path / "read-only"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(folder.os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode))
    monkeypatch.setattr(folder, "load_source", lambda *a, **k: pytest.fail("the source was loaded"))
    monkeypatch.setattr(folder, "stream_convert", lambda *a, **k: pytest.fail("the source was streamed"))
    code, _, err = convert(capsys, llama_dir, "--groups", 2, "-o", parent / "out")
    assert_one_line(code, err, str(parent))


@pytest.mark.parametrize("value", ["5", "[decoder_self, 5]", "{cross: 2}", "true"])
def test_a_yaml_attention_that_is_not_a_list_of_kinds_is_one_line(capsys, tmp_path, value):
    model = make_t5()
    model.save_pretrained(tmp_path / "t5")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"source: {tmp_path / 't5'}\noutput: {tmp_path / 'out'}\ngroups: 2\nattention: {value}\n")
    code, _, err = convert(capsys, "--config", spec)
    assert_one_line(code, err, "attention")
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_keeps_the_output_and_says_where(capsys, llama_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    code, stdout, err = convert(capsys, llama_dir, "--groups", 2, "-o", out, "--push-to-hub", "someone/tiny-gqa")
    line = assert_one_line(code, err, "someone/tiny-gqa", "kept", str(out))
    assert "saved LlamaForCausalLM" in stdout, line
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("extra", [("--dtype", "float16"), ("--dtype", "float16", "--in-memory")])
def test_a_wgqa_weights_init_the_output_dtype_cannot_hold_is_refused_before_any_work(
    capsys, llama_dir, tmp_path, monkeypatch, extra
):
    import hf_gqa.conversion.folder as folder

    monkeypatch.setattr(folder, "load_source", lambda *a, **k: pytest.fail("the source was loaded"))
    argv = (llama_dir, "--variant", "wgqa", "--groups", 2, "--weights-init", "1e6", "-o", tmp_path / "out", *extra)
    assert_one_line(*convert(capsys, *argv)[::2], "--weights-init", "float16")
    assert not (tmp_path / "out").exists()


def test_a_wgqa_weights_init_a_float16_source_cannot_hold_is_refused(capsys, tmp_path):
    import hf_gqa

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).half().save_pretrained(tmp_path / "src")
    for extra in ((), ("--in-memory",)):
        code, _, err = convert(
            capsys,
            tmp_path / "src",
            "--variant",
            "wgqa",
            "--groups",
            2,
            "--weights-init",
            -7e4,
            "-o",
            tmp_path / "out",
            *extra,
        )
        assert_one_line(code, err, "--weights-init", "float16")
    with pytest.raises(hf_gqa.HfGqaError, match="float16"):
        hf_gqa.convert(tmp_path / "src", variant="wgqa", groups=2, weights_init=1e6)
    # what float16 holds converts, into finite weights
    code, _, err = convert(
        capsys, tmp_path / "src", "--variant", "wgqa", "--groups", 2, "--weights-init", 6e4, "-o", tmp_path / "ok"
    )
    assert code == 0, err
    from safetensors.torch import load_file

    mixers = [t for k, t in load_file(tmp_path / "ok" / "model.safetensors").items() if "mixer" in k]
    assert mixers and all(torch.isfinite(t).all() and t.dtype == torch.float16 for t in mixers)
