"""Reading sources: the model class a checkpoint loads as (issue 12, item 5) and the dtypes both conversion paths
store (item 10)."""

import json

import pytest
import torch
from conftest import make_t5
from helpers import tensors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForSequenceClassification,
    GPTNeoXForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    T5ForConditionalGeneration,
)

import hf_gqa
from hf_gqa.cli import main

LLAMA = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
    num_labels=3,
)
HEADS = {"seq": (LlamaForSequenceClassification, AutoModelForSequenceClassification)}
HEADS["tok"] = (LlamaForTokenClassification, AutoModelForTokenClassification)
# Row 1 ends in padding: the sequence head reads its last non-padding token.
IDS = torch.tensor([[5, 9, 14, 3, 22, 7, 31, 2], [4, 8, 15, 16, 23, 42 % 64, 0, 0]])


def convert(capsys, source, out, *argv):
    code = main(["convert", str(source), "-o", str(out), *map(str, argv)])
    _, err = capsys.readouterr()
    assert code == 0, err
    return json.loads((out / "config.json").read_text())


def make_head(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = HEADS[kind][0](LlamaConfig(**LLAMA)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # a head bias at 0 and norms at 1 would hide a lost tensor
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("path", ["stream", "memory"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_classification_head_is_copied_through_and_nothing_changes_with_groups_equal_to_kv_heads(
    capsys, tmp_path, kind, path
):
    source = make_head(kind)
    source.save_pretrained(tmp_path / "src")
    extra = ("--in-memory",) if path == "memory" else ()
    config = convert(capsys, tmp_path / "src", tmp_path / "out", "--groups", 4, *extra)
    assert config["architectures"] == [type(source).__name__]
    assert config["num_key_value_heads"] == 4 and len(config["id2label"]) == 3
    assert tensors(tmp_path / "out").keys() == source.state_dict().keys()
    loaded = HEADS[kind][1].from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is type(source)
    assert torch.equal(logits(loaded), logits(source))


def causal_backbone_oracle(source, groups: int) -> torch.Tensor:
    """The head's logits computed independently: the source backbone as a LlamaForCausalLM, converted, then the
    source's head applied to its last hidden states (at each row's last non-padding token for a sequence head)."""
    causal = LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()
    missing, _ = causal.load_state_dict(source.state_dict(), strict=False)
    assert missing == ["lm_head.weight"]
    converted = hf_gqa.convert(causal, groups=groups)
    with torch.no_grad():
        hidden = converted.model(input_ids=IDS).last_hidden_state
        out = torch.nn.functional.linear(hidden, source.score.weight, source.score.bias)
    if isinstance(source, LlamaForSequenceClassification):
        last = torch.tensor([int((row != LLAMA["pad_token_id"]).nonzero().max()) for row in IDS])
        out = out[torch.arange(len(IDS)), last]
    return out


@pytest.mark.parametrize("path", ["stream", "memory"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_a_classification_head_converted_to_mqa_equals_the_converted_causal_backbone_with_the_head(
    capsys, tmp_path, kind, path
):
    source = make_head(kind)
    source.save_pretrained(tmp_path / "src")
    extra = ("--in-memory",) if path == "memory" else ()
    config = convert(capsys, tmp_path / "src", tmp_path / "out", "--variant", "mqa", *extra)
    assert config["architectures"] == [type(source).__name__] and config["num_key_value_heads"] == 1
    loaded = HEADS[kind][1].from_pretrained(tmp_path / "out").eval()
    expected = causal_backbone_oracle(source, groups=1)
    assert not torch.allclose(expected, logits(source), atol=1e-3)  # MQA changes something
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)


def test_the_python_api_converts_a_classification_checkpoint_from_its_folder(tmp_path):
    source = make_head("seq")
    source.save_pretrained(tmp_path / "src")
    converted = hf_gqa.convert(tmp_path / "src", variant="mqa")
    assert type(converted) is LlamaForSequenceClassification
    torch.testing.assert_close(logits(converted), causal_backbone_oracle(source, groups=1), rtol=0, atol=1e-6)


def gpt_neox_head(cls, seed: int = 0):
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=3,
        rotary_pct=0.5,
    )
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    return model


@pytest.mark.parametrize("path", ["stream", "memory"])
@pytest.mark.parametrize(
    "cls, auto, phi",
    [
        (GPTNeoXForSequenceClassification, AutoModelForSequenceClassification, "PhiForSequenceClassification"),
        (GPTNeoXForTokenClassification, AutoModelForTokenClassification, "PhiForTokenClassification"),
    ],
)
def test_gpt_neox_classification_heads_become_the_same_stock_phi_heads(capsys, tmp_path, cls, auto, phi, path):
    source = gpt_neox_head(cls)
    source.save_pretrained(tmp_path / "src")
    extra = ("--in-memory",) if path == "memory" else ()
    config = convert(capsys, tmp_path / "src", tmp_path / "out", "--variant", "mha", *extra)
    assert config["model_type"] == "phi" and config["architectures"] == [phi] and len(config["id2label"]) == 3
    loaded = auto.from_pretrained(tmp_path / "out").eval()
    assert type(loaded).__name__ == phi
    torch.testing.assert_close(logits(loaded), logits(source), rtol=0, atol=1e-5)


@pytest.mark.parametrize("path", ["default", "memory"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_a_config_without_architectures_converts_as_its_model_types_default_head(capsys, tmp_path, family, path):
    # Without --in-memory too: the class is decided from the model type before any work (the streamed path checks
    # the tensors against the class its config names, so such a config converts in memory).
    torch.manual_seed(0)
    if family == "llama":
        source = LlamaForCausalLM(LlamaConfig(**{**LLAMA, "num_labels": 2})).eval()
        expected_class, groups = "LlamaForCausalLM", 2
    elif family == "gpt2":
        source = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
        expected_class, groups = "GPT2GQALMHeadModel", 2
    else:
        source, expected_class, groups = make_t5(), "T5GQAForConditionalGeneration", 4
    source.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    extra = ("--in-memory",) if path == "memory" else ()
    out = convert(capsys, tmp_path / "src", tmp_path / "out", "--groups", groups, *extra)
    assert out["architectures"] == [expected_class]
    expected = hf_gqa.convert(source, groups=groups).state_dict()
    written = tensors(tmp_path / "out")
    for key, tensor in written.items():
        assert torch.equal(tensor, expected[key]), key
    loader = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    assert type(loader.from_pretrained(tmp_path / "out")).__name__ == expected_class


def one_error(capsys, *argv):
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("hf-gqa: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_work(monkeypatch):
    import hf_gqa.conversion.folder as folder
    import hf_gqa.conversion.memory as memory

    def fail(*args, **kwargs):
        pytest.fail("the checkpoint was read before the request was refused")

    for module, name in ((folder, "load_source"), (folder, "stream_convert"), (memory, "load_model")):
        monkeypatch.setattr(module, name, fail)


@pytest.mark.parametrize(
    "make, argv, needle",
    [
        (lambda: make_head("seq"), ("--variant", "wgqa", "--groups", 2), "LlamaForSequenceClassification"),
        (lambda: make_head("tok"), ("--variant", "kdgqa", "--groups", 2), "LlamaForTokenClassification"),
        (lambda: make_head("seq"), ("--variant", "randwgqa", "--groups", 2, "--in-memory"), "WGQA"),
    ],
)
def test_a_head_hf_gqa_has_no_form_class_for_is_refused_before_any_work(
    capsys, tmp_path, monkeypatch, make, argv, needle
):
    make().save_pretrained(tmp_path / "src")
    no_work(monkeypatch)
    line = one_error(capsys, "convert", tmp_path / "src", "-o", tmp_path / "out", *argv)
    assert needle in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(hf_gqa.HfGqaError, match=needle):
        hf_gqa.convert(tmp_path / "src", **dict(zip(("variant", "groups"), argv[1:4:2], strict=True)))


@pytest.mark.parametrize("head", ["GPT2ForSequenceClassification", "GPT2ForTokenClassification"])
def test_gpt2_heads_are_refused_before_any_work(capsys, tmp_path, monkeypatch, head):
    import transformers

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32, num_labels=3)
    getattr(transformers, head)(config).save_pretrained(tmp_path / "src")
    no_work(monkeypatch)
    for extra in ((), ("--in-memory",)):
        assert head in one_error(capsys, "convert", tmp_path / "src", "-o", tmp_path / "out", "--groups", 2, *extra)


def write_t5(path, dtype=torch.float16, loaded: bool = False):
    """A float16 T5: as built (`wo` stored in float16) or as transformers loads and saves it (`wo` kept in float32)."""
    model = make_t5().to(dtype)
    model.save_pretrained(path)
    if loaded:
        T5ForConditionalGeneration.from_pretrained(path, dtype=dtype).save_pretrained(path)
    return tensors(path)


@pytest.mark.parametrize("loaded", [False, True], ids=["wo-float16", "wo-float32"])
def test_t5_float16_stores_the_same_dtypes_and_tensors_in_memory_and_streamed(capsys, tmp_path, loaded):
    source = write_t5(tmp_path / "src", loaded=loaded)
    assert {t.dtype for k, t in source.items() if ".wo." in k} == {torch.float32 if loaded else torch.float16}
    convert(capsys, tmp_path / "src", tmp_path / "streamed", "--groups", 4)
    convert(capsys, tmp_path / "src", tmp_path / "memory", "--groups", 4, "--in-memory")
    streamed, memory = tensors(tmp_path / "streamed"), tensors(tmp_path / "memory")
    assert streamed.keys() == memory.keys()
    for key in streamed:
        assert memory[key].dtype == streamed[key].dtype and torch.equal(memory[key], streamed[key]), key
    for key in (k for k in streamed if k in source):  # what is not regrouped keeps the source's dtype
        assert streamed[key].dtype == source[key].dtype, key
    # ... and loads as transformers loads T5 in float16: `wo` upcast to float32 again
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "memory", dtype=torch.float16)
    assert model.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.float32


def test_t5_with_an_explicit_float16_dtype_stores_float16(capsys, tmp_path):
    write_t5(tmp_path / "src", dtype=torch.float32)
    convert(capsys, tmp_path / "src", tmp_path / "out", "--groups", 4, "--dtype", "float16")
    assert {t.dtype for t in tensors(tmp_path / "out").values()} == {torch.float16}
