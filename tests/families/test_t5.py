"""The T5 family's task models: sequence classification, token classification and question answering convert to
their t5_gqa classes, load through the Auto classes, and ship as remote code."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import batch, make_t5
from helpers import tensors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    T5ForQuestionAnswering,
    T5ForSequenceClassification,
    T5ForTokenClassification,
)

import hf_gqa
from hf_gqa import T5GQAConfig
from hf_gqa.cli import main

ALL = ("encoder", "decoder_self", "cross")
# source class -> (its Auto class, labels, the attention kinds it has)
HEADS = {
    "seq": (T5ForSequenceClassification, AutoModelForSequenceClassification, 3, ALL),
    "tok": (T5ForTokenClassification, AutoModelForTokenClassification, 3, ("encoder",)),
    "qa": (T5ForQuestionAnswering, AutoModelForQuestionAnswering, 2, ALL),
}


def inputs(eos_token_id: int = 1) -> dict:
    """The padded encoder batch, each row ending in </s> (the sequence head reads it)."""
    encoder = batch()
    ids, mask = encoder["input_ids"].clone(), encoder["attention_mask"]
    ids[torch.arange(len(ids)), mask.sum(1) - 1] = eos_token_id
    return {"input_ids": ids, "attention_mask": mask}


def make_head(kind: str, seed: int = 0):
    cls, _, labels, _ = HEADS[kind]
    config = make_t5("flan").config
    config.num_labels = labels
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # a head's bias at 0 would hide a lost tensor
                param.normal_(0.0, 0.3)
            elif name.endswith("relative_attention_bias.weight"):  # make the relative bias matter at this scale
                param.normal_(0.0, 1.0)
    return model


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs())
    return out.logits if "logits" in out else torch.stack([out.start_logits, out.end_logits])


def convert(capsys, source, out, *argv) -> dict:
    code = main(["convert", str(source), "-o", str(out), *map(str, argv)])
    _, err = capsys.readouterr()
    assert code == 0, err
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5-heads")
    out = {}
    for kind in HEADS:
        model = make_head(kind)
        model.save_pretrained(root / kind)
        out[kind] = (model, root / kind)
    return out


@pytest.mark.parametrize("path", ["stream", "memory"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_t5_head_converts_and_groups_equal_to_heads_change_nothing(capsys, tmp_path, sources, kind, path):
    source, folder = sources[kind]
    extra = ("--in-memory",) if path == "memory" else ()
    config = convert(capsys, folder, tmp_path / "out", "--groups", 8, "--attention", *HEADS[kind][3], *extra)
    name = type(source).__name__.replace("T5", "T5GQA")
    assert config["model_type"] == "t5_gqa" and config["architectures"] == [name]
    assert config["auto_map"][HEADS[kind][1].__name__] == f"modeling_t5_gqa.{name}"
    assert tensors(tmp_path / "out").keys() == tensors(folder).keys()
    loaded = HEADS[kind][1].from_pretrained(tmp_path / "out").eval()
    assert type(loaded).__name__ == name and type(loaded).__module__.startswith("hf_gqa.")
    assert torch.equal(outputs(loaded), outputs(source))


def pooled_kv_oracle(source, groups: int, kinds):
    """The source with each converted module's key and value rows replaced by its group's mean, by hand."""
    config = source.config
    heads, d = config.num_heads, config.d_kv
    base = "transformer." if hasattr(source, "transformer") else ""
    modules = {
        "encoder": [f"{base}encoder.block.{i}.layer.0.SelfAttention" for i in range(config.num_layers)],
        "decoder_self": [f"{base}decoder.block.{i}.layer.0.SelfAttention" for i in range(config.num_decoder_layers)],
        "cross": [f"{base}decoder.block.{i}.layer.1.EncDecAttention" for i in range(config.num_decoder_layers)],
    }
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    for kind in kinds:
        for prefix in modules[kind]:
            for proj in ("k", "v"):
                weight, new = source.state_dict()[f"{prefix}.{proj}.weight"], sd[f"{prefix}.{proj}.weight"]
                for h in range(heads):
                    group = [m for m in range(heads) if m // (heads // groups) == h // (heads // groups)]
                    new[h * d : (h + 1) * d] = sum(weight[m * d : (m + 1) * d] for m in group) / len(group)
    return type(source).from_pretrained(None, config=config, state_dict=sd).eval()


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_grouped_t5_head_equals_its_source_with_pooled_keys_and_values(sources, kind):
    source = sources[kind][0]
    kinds = HEADS[kind][3]
    converted = hf_gqa.convert(source, groups=2, attention=kinds)
    assert type(converted).__name__ == type(source).__name__.replace("T5", "T5GQA")
    attention = (converted.transformer if kind != "qa" else converted).encoder.block[1].layer[0].SelfAttention
    assert attention.k.out_features == 2 * 8
    expected = outputs(pooled_kv_oracle(source, 2, kinds))
    assert (expected - outputs(source)).abs().max() > 1e-3  # grouping changes the model
    torch.testing.assert_close(outputs(converted), expected, rtol=0, atol=1e-5)


def test_the_auto_classes_resolve_the_t5_gqa_heads():
    config = T5GQAConfig(**{**make_t5("flan").config.to_dict(), "num_key_value_heads": 2}, num_labels=2)
    for _, auto, _, _ in HEADS.values():
        model = auto.from_config(config)
        assert type(model).__name__ == auto._model_mapping[T5GQAConfig].__name__
        assert type(model).__name__.startswith("T5GQAFor")
        assert model.config.num_key_value_heads == 2
    assert type(AutoModel.from_config(config)).__name__ == "T5GQAModel"
    assert AutoConfig.for_model("t5_gqa").__class__ is T5GQAConfig


REMOTE = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    import transformers
    checks = json.loads(sys.argv[1])
    inputs = torch.load(checks["inputs"])
    for path, auto, out in checks["remote"]:
        model = getattr(transformers, auto).from_pretrained(path, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            result = model(**inputs)
        logits = result.logits if "logits" in result else torch.stack([result.start_logits, result.end_logits])
        torch.save(logits, out)
    """
)


def test_converted_t5_heads_load_as_remote_code_without_hf_gqa(tmp_path, sources):
    expected, remote = {}, []
    for kind, (source, _) in sources.items():
        converted = hf_gqa.convert(source, groups=2, attention=HEADS[kind][3])
        hf_gqa.save_converted(converted, tmp_path / kind)
        expected[kind] = outputs(converted)
        remote.append([str(tmp_path / kind), HEADS[kind][1].__name__, str(tmp_path / f"{kind}.pt")])
    torch.save(inputs(), tmp_path / "inputs.pt")
    checks = {"inputs": str(tmp_path / "inputs.pt"), "remote": remote}
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, json.dumps(checks)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in HEADS:
        assert torch.equal(torch.load(tmp_path / f"{kind}.pt"), expected[kind]), kind


def test_a_t5_class_t5_gqa_has_no_counterpart_of_is_refused_by_name():
    from hf_gqa.errors import UnsupportedModelError
    from hf_gqa.families.t5 import T5

    assert T5().target_architecture("MT5ForSequenceClassification") == "T5GQAForSequenceClassification"
    with pytest.raises(UnsupportedModelError, match="cannot convert a T5ForMaskedLM: t5_gqa has T5GQAFor"):
        T5().target_architecture("T5ForMaskedLM")


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_variant_converts_a_t5_head(sources, kind):
    source, kinds = sources[kind][0], HEADS[kind][3]
    name = type(source).__name__.replace("T5", "T5GQA")
    gqa = hf_gqa.convert(source, groups=2, attention=kinds)
    folded = hf_gqa.fold(hf_gqa.convert(source, variant="wgqa", groups=2, attention=kinds))
    assert type(folded).__name__ == name and torch.equal(outputs(folded), outputs(gqa))
    simgqa = hf_gqa.convert(source, variant="simgqa", groups=2, attention=kinds)
    layers = {"encoder": source.config.num_layers, "decoder_self": source.config.num_decoder_layers}
    assert {k: len(v) for k, v in simgqa.config.gqa_head_order.items()} == {k: layers[k] for k in kinds if k in layers}
    for variant, options in (("kdgqa", dict(groups=2)), ("gqkva", dict(groups=2, q_groups=4)), ("mqa", {})):
        model = hf_gqa.convert(source, variant=variant, attention=kinds, **options)
        assert type(model).__name__ == name and torch.isfinite(outputs(model)).all()
