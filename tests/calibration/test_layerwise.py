"""The calibrated init layer by layer (hf_gqa.calibration.layerwise / streamed): each block is fitted on the
source block's inputs against its outputs, and on disk only one layer of each model is in memory at a time.
Oracles: plain forward passes of the HF models (hooks on their attention modules), and the in-memory conversion."""

import json

import pytest
import torch
from helpers import run, tensors
from tiny_decoders import make
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import hf_gqa
from hf_gqa.calibration import streamed
from hf_gqa.calibration.fit import converted_blocks, fit_layers
from hf_gqa.calibration.layerwise import find_stack, walk
from hf_gqa.conversion.memory import convert_model
from hf_gqa.spec import GQASpec

WORDS = [f"w{i}" for i in range(90)]


def attention_io(model, batch) -> dict[str, list]:
    """Each self-attention module's input hidden states and output in a plain forward pass."""
    seen, handles = {}, []
    for name, module in model.named_modules():
        if name.endswith("self_attn"):

            def hook(_, args, kwargs, output, name=name):
                seen[name] = (kwargs["hidden_states"].detach().clone(), output[0].detach().clone())

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(**batch, use_cache=False)
    for h in handles:
        h.remove()
    return seen


def test_each_block_is_fitted_on_the_sources_inputs_against_the_sources_outputs():
    source = make("llama", kv_heads=8, num_hidden_layers=3)
    target, plan = convert_model(source, GQASpec(groups=2), return_plan=True)
    _, blocks, _ = converted_blocks(source, plan.kv_heads, "calibrated")
    stack = find_stack(source, blocks)
    assert stack.container == "model.layers" and stack.layer_of == {b.prefix: i for i, b in enumerate(blocks)}
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(3, 96, (2, 12), generator=g)} for _ in range(2)]
    received, order = {}, []

    def fit_block(block, records):
        received[block.prefix] = records

    walk(source, stack, blocks, batches, fit_block, prepare=order.append, finish=lambda i, b: order.append(-1 - i))
    assert order == [0, -1, 1, -2, 2, -3]  # each layer prepared, fitted, finished before the next
    for i, batch in enumerate(batches):
        want = attention_io(source, batch)
        for prefix, records in received.items():
            torch.testing.assert_close(records[i]["kwargs"]["hidden_states"], want[prefix][0])
            torch.testing.assert_close(records[i]["output"], want[prefix][1])


def test_fitting_layer_by_layer_lowers_the_logit_error_and_never_ends_a_block_worse():
    source = make("llama", kv_heads=8, num_hidden_layers=3)
    batches = [
        {"input_ids": torch.randint(3, 96, (4, 24), generator=torch.Generator().manual_seed(s))} for s in range(6)
    ]
    mean, plan = convert_model(source, GQASpec(groups=1), return_plan=True)
    fitted, _ = convert_model(source, GQASpec(groups=1), return_plan=True)
    for param in fitted.parameters():
        param.data = param.data.clone()
    _, blocks, _ = converted_blocks(source, plan.kv_heads, "calibrated")
    reports = fit_layers(source, fitted, blocks, find_stack(source, blocks), plan.kv_heads, batches, "calibrated",
                         steps=30, lr=1e-3, seed=0, progress=False)  # fmt: skip
    assert len(reports) == 3 and all(r.loss_after <= r.loss_before for r in reports)
    held_out = {"input_ids": torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(99))}
    with torch.no_grad():
        want = source(**held_out).logits
        errors = {
            name: (m(**held_out).logits - want).pow(2).mean().item() for name, m in [("mean", mean), ("fit", fitted)]
        }
    assert errors["fit"] < errors["mean"], errors


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}, "<unk>": 93}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


@pytest.fixture
def llama_folder(tmp_path):
    model = make("llama", kv_heads=8, num_hidden_layers=3)
    folder = tmp_path / "llama"
    model.save_pretrained(folder, max_shard_size="100KB")  # several shards
    tiny_tokenizer().save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (60,), generator=g)) for _ in range(24)]
    data = tmp_path / "calibration.jsonl"
    data.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    return folder, data


def test_on_disk_one_layer_at_a_time_equals_the_in_memory_fit(llama_folder, tmp_path, capsys, monkeypatch):
    folder, data = llama_folder
    live = {"now": set(), "most": 0}
    load, release = streamed.load, streamed.release

    def counting_load(module, prefix, reader):
        live["now"].add(id(module))
        live["most"] = max(live["most"], len(live["now"]))
        load(module, prefix, reader)

    def counting_release(module):
        live["now"].discard(id(module))
        release(module)

    monkeypatch.setattr(streamed, "load", counting_load)
    monkeypatch.setattr(streamed, "release", counting_release)
    options = ["--groups", "2", "--init", "calibrated", "--calibration-data", str(data), "--calibration-samples",
               "6", "--calibration-seq-len", "32", "--calibration-steps", "10"]  # fmt: skip
    code, _, err = run(capsys, "convert", folder, *options, "--max-shard-size", "100KB", "-o", tmp_path / "disk")
    assert code == 0, err
    assert live["most"] == 2 and not live["now"]  # one layer of the source and one of the converted model
    code, _, err = run(capsys, "convert", folder, *options, "--in-memory", "-o", tmp_path / "memory")
    assert code == 0, err
    disk, memory = tensors(tmp_path / "disk"), tensors(tmp_path / "memory")
    assert disk.keys() == memory.keys()
    for key in disk:
        torch.testing.assert_close(disk[key], memory[key], rtol=1e-4, atol=1e-5, msg=key)
    assert len(list((tmp_path / "disk").glob("*.safetensors"))) > 1  # sharded as asked
    assert (tmp_path / "disk" / "model.safetensors.index.json").is_file()
    mean = hf_gqa.convert(folder, groups=2)
    fitted = AutoModelForCausalLM.from_pretrained(tmp_path / "disk")
    assert not torch.equal(
        fitted.model.layers[2].self_attn.k_proj.weight, mean.model.layers[2].self_attn.k_proj.weight
    )
    untouched = [k for k in disk if "self_attn" not in k]
    source = tensors(folder)
    assert untouched and all(torch.equal(disk[k], source[k]) for k in untouched)
