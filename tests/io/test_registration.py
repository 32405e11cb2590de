"""Auto-class registration, save/load round trips, and remote code for users without hf-gqa."""

import ast
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import batch, make_t5
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoModelForTextEncoding

import hf_gqa


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = hf_gqa.convert(make_t5("flan"), groups=2, attention=("encoder", "decoder_self", "cross"))
    path = tmp_path_factory.mktemp("gqa") / "tiny-t5-gqa2"
    hf_gqa.save_converted(model, path)
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs).logits
    return path, inputs, expected


def test_auto_classes_load_the_saved_folder(saved):
    path, inputs, expected = saved
    assert type(AutoConfig.from_pretrained(path)).__name__ == "T5GQAConfig"
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert type(model) is hf_gqa.T5GQAForConditionalGeneration  # the installed classes, not remote code
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)
    assert type(AutoModel.from_pretrained(path)).__name__ == "T5GQAModel"
    encoder = AutoModelForTextEncoding.from_pretrained(path)
    assert type(encoder).__name__ == "T5GQAEncoderModel"
    assert encoder.encoder.block[0].layer[0].SelfAttention.k.out_features == 16


def test_saved_folder_carries_full_auto_map_and_self_contained_code(saved):
    path, _, _ = saved
    config = json.loads((path / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForSeq2SeqLM",
        "AutoModelForTextEncoding",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
        "AutoModelForQuestionAnswering",
    }
    code = sorted(p.name for p in path.glob("*.py"))
    assert code == [
        "configuration_t5_gqa.py",
        "gqa_attention.py",
        "modeling_t5_gqa.py",
        "routing.py",
        "weighted_kv.py",
    ]
    for file in path.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{file.name}: relative import beyond siblings"
                root = (node.module or "").split(".")[0]
                assert node.level == 1 or root in {"torch", "transformers", "huggingface_hub", "collections", "copy"}
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in {"torch", "transformers", "copy"} for a in node.names)


def test_plain_save_pretrained_also_writes_remote_code(tmp_path):
    model = hf_gqa.T5GQAForConditionalGeneration(
        hf_gqa.T5GQAConfig(vocab_size=64, d_model=32, d_kv=8, num_heads=4, num_layers=1, num_key_value_heads=1)
    )
    model.save_pretrained(tmp_path)
    assert (tmp_path / "gqa_attention.py").exists()
    assert len(json.loads((tmp_path / "config.json").read_text())["auto_map"]) == 7


REMOTE = textwrap.dedent(
    """
    import sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    try:
        import hf_gqa
        raise SystemExit("hf_gqa was importable")
    except ImportError:
        pass
    from transformers import AutoModelForSeq2SeqLM, AutoModel
    path, inputs, out = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3]
    try:
        AutoModelForSeq2SeqLM.from_pretrained(path)
        raise SystemExit("loaded without trust_remote_code")
    except ValueError:
        pass
    model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(AutoModel.from_pretrained(path, trust_remote_code=True)).__name__ == "T5GQAModel"
    with torch.no_grad():
        torch.save(model(**inputs).logits, out)
    cache = model.generate(**{k: v for k, v in inputs.items() if k != "decoder_input_ids"}, max_new_tokens=2,
                           return_dict_in_generate=True).past_key_values
    assert cache.self_attention_cache.layers[0].keys.shape[1] == 2
    """
)


def test_trust_remote_code_without_hf_gqa(saved, tmp_path):
    path, inputs, expected = saved
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
