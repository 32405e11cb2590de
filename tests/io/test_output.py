"""`save_converted`: what a converted model's folder holds besides the weights."""

import pytest
from tiny_decoders import make

import hf_gqa
from hf_gqa.io.output import copy_license_files, save_converted


@pytest.mark.parametrize(
    ("name", "copied"),
    [
        ("LICENSE", True),
        ("LICENSE.txt", True),
        ("licence.md", True),
        ("USE_POLICY.md", True),
        ("NOTICE", True),
        ("Notice-third-party.txt", True),
        ("LICENSES_ARE_FUN.py", False),
        ("generation_config.json", False),
        ("notices.md", False),
    ],
)
def test_licence_files_are_named_licence_use_policy_or_notice(tmp_path, name, copied):
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "src" / name).write_text("terms")
    assert copy_license_files(tmp_path / "src", tmp_path / "out") == ([name] if copied else [])
    assert (tmp_path / "out" / name).exists() == copied


def test_save_converted_copies_a_local_sources_licence_files(tmp_path):
    source = tmp_path / "src"
    model = make("llama")
    model.save_pretrained(source)
    (source / "LICENSE").write_text("the licence")
    (source / "USE_POLICY.md").write_text("the use policy")
    converted = hf_gqa.convert(model, groups=2)
    save_converted(converted, tmp_path / "out", source=source)
    assert (tmp_path / "out" / "LICENSE").read_text() == "the licence"
    assert (tmp_path / "out" / "USE_POLICY.md").read_text() == "the use policy"
    save_converted(converted, tmp_path / "hub", source="meta-llama/Llama-2-7b-hf")  # a Hub id: its card links them
    assert not (tmp_path / "hub" / "LICENSE").exists()
