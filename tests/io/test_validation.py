"""Safetensors checkpoints are validated from their headers and config before anything is written: a corrupt or
inconsistent source is refused with one line (exit status 2) by `hf-gqa convert` (streamed) and `hf-gqa info`,
and nothing is left behind. `hf-gqa info` counts the tensors the loader would read."""

import json
import os
import random
import re
import shutil
import struct

import pytest
import torch
from conftest import make_t5
from safetensors.torch import load_file, save_file
from tiny_decoders import make, make_gpt2, make_neox
from transformers import LlamaConfig, LlamaForCausalLM

from hf_gqa.cli import main
from hf_gqa.conversion.streaming import check_tensors
from hf_gqa.errors import CheckpointError, HfGqaError
from hf_gqa.families.decoders import NativeGQA
from hf_gqa.io.safetensors import INDEX_NAME, parse_size, read_headers, safetensors_files, validate_header
from hf_gqa.registry import resolve

K0 = "model.layers.0.self_attn.k_proj.weight"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    errors = [line for line in lines if line.startswith("hf-gqa: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides})).eval()


@pytest.fixture
def src(tmp_path):
    """A tiny Llama saved as one model.safetensors."""
    llama().save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def read_header(file):
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_header(file, header, body):
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_header(file, edit):
    header, body = read_header(file)
    edit(header)
    write_header(file, header, body)


def edit_tensors(file, edit):
    """Rewrite a safetensors file with consistent bytes after `edit(tensors)`."""
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def assert_refused(capsys, tmp_path, source, message, *extra):
    """`hf-gqa convert` (streamed) refuses with one line mentioning `message` and writes nothing."""
    outs = tmp_path / "outs"
    outs.mkdir(exist_ok=True)
    code, _, err = run(capsys, "convert", source, "--groups", 2, "-o", outs / "out", *extra)
    assert code == 2 and message in one_error_line(err), err
    assert list(outs.iterdir()) == []  # no output, no temporary folder
    return one_error_line(err)


def converts(capsys, tmp_path, source, *extra):
    out = tmp_path / "outs" / f"ok-{random.random()}"
    code, _, err = run(capsys, "convert", source, "--groups", 2, "-o", out, *extra)
    assert code == 0, err
    return out


# --- item 4: the streamed path validates headers and config before writing ---------------------------------------


@pytest.mark.parametrize("field", ["shape", "dtype"])
def test_a_copied_tensor_whose_shape_or_dtype_disagrees_with_its_bytes_is_refused(src, tmp_path, capsys, field):
    def edit(header):
        entry = header["model.layers.0.mlp.up_proj.weight"]  # copied through unchanged
        if field == "shape":
            entry["shape"] = [entry["shape"][0] // 2, entry["shape"][1]]
        else:
            entry["dtype"] = "F16"  # half the bytes the data has

    edit_header(src / "model.safetensors", edit)
    line = assert_refused(capsys, tmp_path, src, "model.layers.0.mlp.up_proj.weight")
    assert "bytes" in line


@pytest.mark.parametrize("case", ["overlap", "reversed", "beyond-the-file"])
def test_offsets_must_be_contiguous_in_range_and_non_overlapping(src, tmp_path, capsys, case):
    def edit(header):
        q = header["model.layers.0.self_attn.q_proj.weight"]
        k = header[K0]
        if case == "overlap":  # k_proj would hold q_proj's bytes
            k["data_offsets"] = list(q["data_offsets"])
        elif case == "reversed":
            k["data_offsets"] = k["data_offsets"][::-1]
        else:
            k["data_offsets"] = [10**12, 10**12 + k["data_offsets"][1] - k["data_offsets"][0]]

    edit_header(src / "model.safetensors", edit)
    line = assert_refused(capsys, tmp_path, src, "model.safetensors")
    if case == "overlap":
        assert "overlap" in line and K0 in line


@pytest.mark.parametrize(
    "offsets, message",
    [
        ({"a": [0, 16], "b": [8, 24]}, "the bytes of 'b' overlap those of 'a'"),
        ({"a": [0, 16], "b": [0, 16]}, "overlap"),
        ({"a": [0, 16], "b": [24, 40]}, "8 bytes after 'a' belong to no tensor"),
        ({"a": [8, 24], "b": [24, 40]}, "8 bytes at the start of the data belong to no tensor"),
        ({"a": [16, 0], "b": [16, 32]}, "end before they begin"),
        ({"a": [0, 16], "b": [16, 36]}, "'b' is F32 of shape [4], 16 bytes, but its data_offsets span 20 bytes"),
    ],
)
def test_validate_header_names_what_is_wrong(tmp_path, offsets, message):
    header = {key: {"dtype": "F32", "shape": [4], "data_offsets": span} for key, span in offsets.items()}
    with pytest.raises(CheckpointError, match=re.escape(message)):
        validate_header(tmp_path / "x.safetensors", header, 8, 8 + 40)
    good = {"__metadata__": {"format": "pt"}, "a": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}
    good["b"] = {"dtype": "BF16", "shape": [0, 5], "data_offsets": [3, 3]}
    assert [i.nbytes for i in validate_header(tmp_path / "x", good, 100, 103).values()] == [3, 0]


def test_a_gap_between_tensors_is_refused(src, tmp_path, capsys):
    def edit(header):  # drop a copied tensor's entry: its bytes become a hole in the data
        del header["model.layers.0.mlp.up_proj.weight"]

    edit_header(src / "model.safetensors", edit)
    assert "offsets" in assert_refused(capsys, tmp_path, src, "model.safetensors")


@pytest.mark.parametrize("case", ["config-heads", "one-k_proj"])
def test_kv_shapes_that_disagree_with_the_config_are_refused(src, tmp_path, capsys, case):
    if case == "config-heads":  # the config says 2 K/V heads, the tensors hold 4
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2}))
        message = "model.layers.0.self_attn.k_proj.weight"
    else:  # one layer's k_proj has half its rows (consistent bytes)
        edit_tensors(src / "model.safetensors", lambda t: t.update({K0: t[K0][:32].clone()}))
        message = K0
    line = assert_refused(capsys, tmp_path, src, message)
    assert "shape" in line and "config" in line


@pytest.mark.parametrize(
    "key", ["model.layers.1.mlp.up_proj.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"]
)
def test_missing_mlp_or_norm_tensors_are_refused(src, tmp_path, capsys, key):
    edit_tensors(src / "model.safetensors", lambda t: t.pop(key))
    line = assert_refused(capsys, tmp_path, src, key)
    assert "lacks" in line
    assert_refused(capsys, tmp_path, src, "lacks", "--in-memory")  # as the in-memory path does


def test_a_tied_lm_head_may_be_absent(tmp_path, capsys):
    llama(tie_word_embeddings=True).save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    converts(capsys, tmp_path, tmp_path / "tied")
    make_t5("t5").save_pretrained(tmp_path / "t5")  # T5 v1.0: lm_head and the stacks' embeddings tied to `shared`
    converts(capsys, tmp_path, tmp_path / "t5")


def test_a_checkpoint_without_the_base_model_prefix_converts(tmp_path, capsys):
    model = llama()
    save_file({k.removeprefix("model."): v for k, v in model.state_dict().items()}, tmp_path / "x.safetensors")
    (tmp_path / "bare").mkdir()
    shutil.move(tmp_path / "x.safetensors", tmp_path / "bare" / "model.safetensors")
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.save_pretrained(tmp_path / "bare")
    # lm_head.weight has no prefix either way; the others lost theirs: the loader adds it back
    converts(capsys, tmp_path, tmp_path / "bare")


def sharded(tmp_path):
    llama().save_pretrained(tmp_path / "src", max_shard_size="40KB")
    index = json.loads((tmp_path / "src" / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 2
    return tmp_path / "src", index


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink"])
def test_index_entries_must_stay_inside_the_checkpoint_folder(tmp_path, capsys, case):
    src, index = sharded(tmp_path)
    shard = index["weight_map"][K0]
    outside = tmp_path / "elsewhere" / shard
    outside.parent.mkdir()
    shutil.copyfile(src / shard, outside)  # a file that would convert fine, were it inside
    if case == "dotdot":
        name = f"../elsewhere/{shard}"
    elif case == "absolute":
        name = str(outside)
    else:
        (src / shard).unlink()
        (src / shard).symlink_to(outside)
        name = shard
    if case != "symlink":
        (src / shard).unlink()
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    (src / INDEX_NAME).write_text(json.dumps(index))
    assert "outside" in assert_refused(capsys, tmp_path, src, shard)
    code, _, err = run(capsys, "info", src)
    assert code == 2 and "outside" in one_error_line(err)


def test_symlinks_inside_the_folder_and_into_the_hub_cache_blobs_are_followed(tmp_path, capsys):
    src, index = sharded(tmp_path)
    # the Hub cache layout: snapshots/<commit>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    (snapshot / "sub").mkdir(parents=True)
    for i, path in enumerate(sorted(src.iterdir())):
        shutil.copyfile(path, repo / "blobs" / f"blob{i}")
        (snapshot / path.name).symlink_to(f"../../blobs/blob{i}")
        (snapshot / "sub" / path.name).symlink_to(f"../../../blobs/blob{i}")  # a checkpoint in a subfolder
    converts(capsys, tmp_path, snapshot)
    converts(capsys, tmp_path, snapshot / "sub")
    # a shard symlinked to another name inside the folder
    shard = index["weight_map"][K0]
    (src / shard).rename(src / f"real-{shard}")
    (src / shard).symlink_to(f"real-{shard}")
    converts(capsys, tmp_path, src)


def test_a_tensor_in_two_shards_is_refused(tmp_path, capsys):
    src, index = sharded(tmp_path)
    home = index["weight_map"][K0]
    other = next(v for v in index["weight_map"].values() if v != home)
    edit_tensors(src / other, lambda t: t.update({K0: load_file(src / home)[K0]}))
    assert "both" in assert_refused(capsys, tmp_path, src, K0)


def family_sources():
    sources = {t: (lambda t=t: make(t)) for t in NativeGQA.source_model_types}
    sources.update(gpt_neox=make_neox, gpt2=make_gpt2, t5=lambda: make_t5("t5"), flan=lambda: make_t5("flan"))
    return sources


FAMILY_SOURCES = family_sources()


@pytest.mark.parametrize("name", FAMILY_SOURCES)
def test_every_family_passes_and_a_k_v_tensor_cut_short_is_refused(tmp_path, name):
    FAMILY_SOURCES[name]().save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    files = safetensors_files(tmp_path / "src")
    check_tensors(config, read_headers(files))  # what save_pretrained writes passes
    keys = read_headers(files).keys()
    blocks = resolve(config).family.attention_blocks(config, keys)
    # the K/V tensors the adapter knows; GPT-NeoX's are named after its re-expression as Phi: its fused QKV then
    kv_keys = [k for b in blocks for k in b.kv_keys if k in keys] or [k for k in keys if "query_key_value.w" in k]
    for key in (kv_keys[0], kv_keys[-1]):
        cut = tmp_path / f"cut-{key}"
        shutil.copytree(tmp_path / "src", cut)
        edit_tensors(cut / "model.safetensors", lambda t, key=key: t.update({key: t[key][1:].clone()}))
        with pytest.raises(CheckpointError, match=f"{key}.*shape"):
            check_tensors(config, read_headers(safetensors_files(cut)))


def test_the_check_reads_headers_only(src, monkeypatch):
    config = json.loads((src / "config.json").read_text())
    infos = read_headers(safetensors_files(src))
    monkeypatch.setattr("builtins.open", None)  # no file is opened: no tensor data is read
    check_tensors(config, infos)


# --- item 6: corrupt headers and bad shard sizes are one-line errors -------------------------------------------


def corrupt(src, case):
    file = src / "model.safetensors"
    if case == "random-bytes":
        file.write_bytes(random.Random(0).randbytes(4096))
    elif case == "huge-header-length":
        file.write_bytes(b"\xff" * 8 + b"{}" * 100)
    elif case == "header-not-json":
        file.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 64)
    elif case == "header-not-an-object":
        write_header(file, [1, 2], b"")
    elif case == "no-data_offsets":
        edit_header(file, lambda h: h["model.norm.weight"].pop("data_offsets"))
    elif case == "bad-data_offsets":
        edit_header(file, lambda h: h["model.norm.weight"].update(data_offsets="0-256"))
    elif case == "no-shape":
        edit_header(file, lambda h: h["model.norm.weight"].pop("shape"))
    elif case == "negative-shape":
        edit_header(file, lambda h: h["model.norm.weight"].update(shape=[-64]))
    elif case == "unknown-dtype":
        edit_header(file, lambda h: h["model.norm.weight"].update(dtype="F33"))
    elif case == "pooled-shape":  # k_proj is pooled: its shape disagrees with its bytes
        edit_header(file, lambda h: h[K0].update(shape=[64, 32]))
    elif case == "truncated":
        file.write_bytes(file.read_bytes()[:-100])


CORRUPTIONS = [
    "random-bytes",
    "huge-header-length",
    "header-not-json",
    "header-not-an-object",
    "no-data_offsets",
    "bad-data_offsets",
    "no-shape",
    "negative-shape",
    "unknown-dtype",
    "pooled-shape",
    "truncated",
]


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_safetensors_file_is_one_line_for_convert_and_info(src, tmp_path, capsys, case):
    corrupt(src, case)
    assert "model.safetensors" in assert_refused(capsys, tmp_path, src, "model.safetensors")
    code, out, err = run(capsys, "info", src)
    assert code == 2 and "model.safetensors" in one_error_line(err) and out == ""


@pytest.mark.parametrize("size", ["infGB", "abc", "nanGB", "-1GB", "0", "1e400", "5 parsecs"])
@pytest.mark.parametrize("path", ["streamed", "in-memory"])
def test_a_bad_max_shard_size_is_one_line_and_writes_nothing(src, tmp_path, capsys, size, path):
    extra = ["--in-memory"] if path == "in-memory" else []
    line = assert_refused(capsys, tmp_path, src, repr(size), f"--max-shard-size={size}", *extra)
    assert "invalid shard size" in line
    with pytest.raises(HfGqaError, match="invalid shard size"):
        parse_size(size)


def test_good_shard_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    assert parse_size("0.5MB") == 500_000 and parse_size(" 500 kb ") == 500_000 and parse_size("1000") == 1000
    assert parse_size("1" + "0" * 400) == 10**400  # absurd, but a number of bytes
    for size in (True, "1e400GB", "1.5", ""):
        with pytest.raises(HfGqaError, match="invalid shard size"):
            parse_size(size)


# --- item 9: `hf-gqa info` counts what the loader reads ----------------------------------------------------------


def info_parameters(capsys, folder):
    code, out, err = run(capsys, "info", folder, "--json")
    assert code == 0, err
    return json.loads(out)["parameters"]


@pytest.mark.parametrize("layout", ["sharded", "single"])
def test_info_counts_the_indexed_shards_or_model_safetensors_only(tmp_path, capsys, layout):
    model = llama()
    expected = model.num_parameters()
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB" if layout == "sharded" else "5GB")
    assert ((tmp_path / "src" / INDEX_NAME).is_file()) == (layout == "sharded")
    # Mistral-style: the same weights again in one consolidated file; plus a stray file no loader reads
    save_file(model.state_dict(), tmp_path / "src" / "consolidated.safetensors")
    save_file({"x": torch.zeros(1000)}, tmp_path / "src" / "model-stray.safetensors")
    assert info_parameters(capsys, tmp_path / "src") == expected


def test_info_without_loadable_weights_counts_none(tmp_path, capsys):
    model = llama()
    model.config.save_pretrained(tmp_path / "src")
    save_file(model.state_dict(), tmp_path / "src" / "consolidated.safetensors")  # transformers does not read it
    assert info_parameters(capsys, tmp_path / "src") is None


def test_info_with_an_index_naming_a_missing_shard_is_one_line(tmp_path, capsys):
    src, index = sharded(tmp_path)
    (src / index["weight_map"][K0]).unlink()
    code, _, err = run(capsys, "info", src)
    assert code == 2 and "incomplete" in one_error_line(err)


def test_random_bytes_are_not_read_as_a_header_length_beyond_the_file(src):
    # 8 random bytes as a header length: refused from the file's size, without trying to read that much
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + os.urandom(100))
    with pytest.raises(CheckpointError, match="header"):
        read_headers([src / "model.safetensors"])
