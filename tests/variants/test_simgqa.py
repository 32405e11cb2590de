"""SimGQA: similarity grouping once at conversion, or regrouped while uptraining (the WGQA training form)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import batch, make_t5
from tiny_decoders import IDS, STOCK_LOAD, logits, make

import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.cli import main
from hf_gqa.conversion.plan import get_architecture
from hf_gqa.conversion.streaming import save_streamed
from hf_gqa.training import SimGQARegroup, TrainingState, regroup_heads_, run_hooks
from hf_gqa.variants.simgqa import SimGQA


def t5_logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def reorder_only(model, kinds, groups=2):
    """The MHA model with SimGQA's reorder applied and no pooling: must compute the same function."""
    config = model.config.to_dict()
    sd = model.state_dict()
    architecture = get_architecture(config)
    blocks = [b for b in architecture.attention_blocks(config, sd.keys()) if b.kind in kinds]
    kv_heads = {kind: (8, groups) for kind in kinds}
    spec = GQASpec(variant="simgqa", groups=groups)
    tensors, updates = SimGQA().prelude(architecture, config, blocks, kv_heads, spec, sd.__getitem__)
    new_config = type(model.config).from_dict({**config, **updates})
    reordered = type(model).from_pretrained(None, config=new_config, state_dict=tensors.apply(sd)).eval()
    return reordered, updates


@pytest.mark.parametrize("kinds", [("decoder_self", "cross"), ("encoder", "decoder_self", "cross")])
def test_t5_reorder_without_pooling_reproduces_the_logits(kinds):
    mha = hf_gqa.convert(make_t5("flan"), variant="mha")  # t5_gqa with 8 heads
    reordered, updates = reorder_only(mha, kinds)
    assert any(order != list(range(8)) for order in updates["gqa_head_order"]["decoder_self"])  # heads did move
    inputs = batch()
    torch.testing.assert_close(t5_logits(reordered, inputs), t5_logits(mha, inputs), rtol=0, atol=1e-5)
    # SimGQA is GQA of the reordered model
    simgqa = hf_gqa.convert(mha, variant="simgqa", groups=2, attention=kinds)
    oracle = hf_gqa.convert(reordered, groups=2, attention=kinds)
    torch.testing.assert_close(t5_logits(simgqa, inputs), t5_logits(oracle, inputs), rtol=0, atol=1e-5)
    assert simgqa.config.gqa_head_order == reordered.config.gqa_head_order


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "olmo2"])
def test_decoder_simgqa_is_gqa_of_the_reordered_model_and_stock(model_type):
    source = make(model_type)
    reordered, _ = reorder_only(source, ("self",))
    torch.testing.assert_close(logits(reordered), logits(source), rtol=0, atol=1e-5)
    simgqa, plan = hf_gqa.convert_model(source, GQASpec(variant="simgqa", groups=2), return_plan=True)
    assert type(simgqa) is type(source) and "auto_map" not in plan.config
    torch.testing.assert_close(logits(simgqa), logits(hf_gqa.convert(reordered, groups=2)), rtol=0, atol=1e-5)
    assert plan.config["gqa_similarity"] == "query"
    by_keys = hf_gqa.convert(source, variant="simgqa", groups=2, similarity="key")
    assert not torch.equal(logits(by_keys), logits(simgqa))


def test_streamed_simgqa_equals_in_memory_and_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    for name, source, auto in (("llama", make("llama"), AutoModelForCausalLM), ("t5", make_t5("flan"), None)):
        source.save_pretrained(tmp_path / name, max_shard_size="60KB")
        save_streamed(tmp_path / name, tmp_path / f"{name}-s", GQASpec(variant="simgqa", groups=2), progress=False)
        memory = hf_gqa.convert(str(tmp_path / name), variant="simgqa", groups=2)
        streamed = (auto or AutoModelForSeq2SeqLM).from_pretrained(tmp_path / f"{name}-s")
        for key, value in memory.state_dict().items():
            assert torch.equal(value, streamed.state_dict()[key]), key
        if name == "t5":
            assert streamed.config.gqa_head_order == memory.config.gqa_head_order
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOAD.replace("== 1", "== 2"), str(tmp_path / "llama-s"), "LlamaForCausalLM"],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_regrouping_while_training_then_fold(family, tmp_path):
    source = make("llama") if family == "llama" else make_t5("flan")
    inputs = {"input_ids": IDS} if family == "llama" else batch()
    labels = inputs["input_ids"] if family == "llama" else inputs["decoder_input_ids"]
    model = hf_gqa.convert(source, variant="simgqa", groups=2, regroup_every=2)
    once = hf_gqa.convert(source, variant="simgqa", groups=2)
    torch.testing.assert_close(t5_logits(model, inputs), t5_logits(once, inputs), rtol=0, atol=1e-6)  # at step 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    hook = SimGQARegroup(every=2)
    model.train()
    for step in range(1, 5):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run_hooks([hook], TrainingState(model=model, step=step, optimizer=optimizer))
    assert hook.regroups == 2 and hook.state_dict()["regroups"] == 2
    model.eval()
    folded = hf_gqa.fold(model)
    torch.testing.assert_close(t5_logits(folded, inputs), t5_logits(model, inputs), rtol=0, atol=1e-5)
    folded.save_pretrained(tmp_path / "folded")
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForCausalLM if family == "llama" else AutoModelForSeq2SeqLM
    loaded = auto.from_pretrained(tmp_path / "folded")
    torch.testing.assert_close(t5_logits(loaded, inputs), t5_logits(folded, inputs), rtol=0, atol=0)


def test_regrouping_moves_the_optimizer_state_with_the_parameters():
    model = hf_gqa.convert(make("llama"), variant="simgqa", groups=2, regroup_every=1)
    with torch.no_grad():  # make a regroup move heads: perturb the query projections
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.add_(torch.randn_like(layer.self_attn.q_proj.weight))
    optimizer = torch.optim.AdamW(model.parameters())
    for param in model.parameters():  # state equal to the parameter: after the move it must still be equal
        optimizer.state[param] = {"exp_avg": param.detach().clone(), "step": torch.tensor(3.0)}
    orders = regroup_heads_(model, optimizer)
    assert any(order != list(range(8)) for order in orders.values())
    for param in model.parameters():
        assert torch.equal(optimizer.state[param]["exp_avg"], param.detach())


def test_t5_training_form_with_head_order_saves_and_loads(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = hf_gqa.convert(make_t5("flan"), variant="simgqa", groups=2, regroup_every=10)
    model.save_pretrained(tmp_path / "tf")
    config = json.loads((tmp_path / "tf" / "config.json").read_text())
    assert config["gqa_kv_weights"] == "scalar" and config["gqa_regroup_every"] == 10 and config["gqa_head_order"]
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "tf")
    inputs = batch()
    torch.testing.assert_close(t5_logits(loaded, inputs), t5_logits(model, inputs), rtol=0, atol=0)


def test_cli_simgqa_and_its_errors(tmp_path, capsys):
    make("llama").save_pretrained(tmp_path / "src")
    args = ["convert", str(tmp_path / "src"), "--variant", "simgqa", "-g", "2", "--similarity", "key"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2 and config["gqa_similarity"] == "key"
    capsys.readouterr()
    bad = [
        (["--variant", "gqa", "-g", "2", "--similarity", "key"], "apply to simgqa only"),
        (["--variant", "simgqa", "-g", "2", "--regroup-every", "0"], "--regroup-every must be a positive"),
        (["--variant", "simgqa", "-g", "2", "--weights", "vector_out"], "only with --regroup-every"),
    ]
    for extra, message in bad:
        assert main(["convert", str(tmp_path / "src"), *extra, "-o", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    make("llama", kv_heads=2).save_pretrained(tmp_path / "gqa")
    assert main(["convert", str(tmp_path / "gqa"), "--variant", "simgqa", "-g", "1", "-o", str(tmp_path / "bad")]) == 2
    assert "needs one key/value head per query head" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_hooks_run_under_the_transformers_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_gqa.training import HookCallback, TrainingHook

    class Count(TrainingHook):
        def __init__(self):
            self.events = []

        def on_train_begin(self, state):
            self.events.append(("begin", state.step))

        def on_step_end(self, state):
            self.events.append(("step", state.step))

        def on_train_end(self, state):
            self.events.append(("end", state.step))

    model = hf_gqa.convert(make("llama"), variant="simgqa", groups=2, regroup_every=1)
    data = [{"input_ids": IDS[0], "labels": IDS[0]} for _ in range(6)]
    regroup, count = SimGQARegroup(every=1), Count()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[HookCallback([regroup, count])]).train()
    assert regroup.regroups == 3
    assert count.events == [("begin", 0), ("step", 1), ("step", 2), ("step", 3), ("end", 3)]
