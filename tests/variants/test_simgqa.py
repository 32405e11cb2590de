"""SimGQA: similarity grouping once at conversion, or regrouped while uptraining (the WGQA training form)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import batch, make_t5
from helpers import assert_bit_identical, tensors
from tiny_decoders import IDS, STOCK_LOAD, logits, make

import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.cli import main
from hf_gqa.conversion.plan import get_architecture
from hf_gqa.conversion.streaming import save_streamed
from hf_gqa.errors import HfGqaError
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


@pytest.mark.parametrize("variant", ["simgqa", "simwgqa"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_regrouping_while_training_then_fold(family, variant, tmp_path):
    source = make("llama") if family == "llama" else make_t5("flan")
    inputs = {"input_ids": IDS} if family == "llama" else batch()
    labels = inputs["input_ids"] if family == "llama" else inputs["decoder_input_ids"]
    model = hf_gqa.convert(source, variant=variant, groups=2, regroup_every=2)
    assert model.config.gqa_kv_weights == ("mean" if variant == "simgqa" else "scalar")
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
    mixers = [p for n, p in model.named_parameters() if "mixer" in n]
    if variant == "simwgqa":  # ours: the weights are learned (they leave the mean, 1 / 4 here)
        assert mixers and any(not torch.all(m == 0.25) for m in mixers)
    else:
        assert not mixers
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
    assert config["gqa_kv_weights"] == "mean" and config["gqa_regroup_every"] == 10 and config["gqa_head_order"]
    assert not any("mixer" in key for key in tensors(tmp_path / "tf"))  # the paper's: no weights to train
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
        (["--variant", "gqa", "-g", "2", "--similarity", "key"], "apply to simgqa and simwgqa only"),
        (["--variant", "simgqa", "-g", "2", "--regroup-every", "0"], "--regroup-every must be a positive"),
        (["--variant", "simgqa", "-g", "2", "--weights", "vector_out"], "apply to simwgqa (learned weights, ours)"),
        (["--variant", "simgqa", "-g", "2", "--regroup-every", "2", "--weights-init", "0.5"], "apply to simwgqa"),
    ]
    for extra, message in bad:
        assert main(["convert", str(tmp_path / "src"), *extra, "-o", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    make("llama", kv_heads=2).save_pretrained(tmp_path / "gqa")
    assert main(["convert", str(tmp_path / "gqa"), "--variant", "simgqa", "-g", "1", "-o", str(tmp_path / "bad")]) == 2
    assert "needs one key/value head per query head" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(HfGqaError, match="unknown --weights 'mean'"):  # `mean` is simgqa's, not a learned shape
        hf_gqa.convert(make("llama"), variant="simwgqa", groups=2, weights="mean")


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


def effective_projection(module) -> torch.Tensor:
    """The (out_features, in_features) weight a K/V projection applies, read from its output on the unit vectors."""
    with torch.no_grad():
        eye = torch.eye(module.in_features)
        out = module(eye) - (module(torch.zeros(1, module.in_features)) if module.bias is not None else 0.0)
    return out.T


def kv_projections(model):
    """(name, module) of every weighted K/V projection of a training form (T5's k/v, the decoders' k_proj/v_proj)."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == "WeightedKV"]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_paper_simgqa_regrouped_keeps_every_group_the_exact_mean_of_its_heads(family):
    # The WGQA paper's SimGQA (every 200 / 1000 steps): after each regrouping the groups are mean-pooled. The weights
    # are fixed at 1 / group size and are not parameters: after AdamW steps (and regroupings) each grouped K/V head is
    # still the plain mean of the heads its group holds now. Oracle: the mean over each group's rows, by hand.
    source = make("llama") if family == "llama" else make_t5("flan")
    inputs = {"input_ids": IDS} if family == "llama" else batch()
    labels = inputs["input_ids"] if family == "llama" else inputs["decoder_input_ids"]
    model = hf_gqa.convert(source, variant="simgqa", groups=2, regroup_every=2)
    assert not [n for n, _ in model.named_parameters() if "mixer" in n]  # nothing for the optimizer to train
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    hook = SimGQARegroup(every=2)
    model.train()
    for step in range(1, 6):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run_hooks([hook], TrainingState(model=model, step=step, optimizer=optimizer))
    assert hook.regroups == 2
    projections = kv_projections(model)
    assert projections
    for name, module in projections:
        heads, groups, head_dim = module.num_heads, module.num_groups, module.head_dim
        size = heads // groups
        rows = module.weight.detach()
        expected = torch.zeros(groups * head_dim, module.in_features)
        for g in range(groups):
            for i in range(g * size, (g + 1) * size):
                expected[g * head_dim : (g + 1) * head_dim] += rows[i * head_dim : (i + 1) * head_dim]
            expected[g * head_dim : (g + 1) * head_dim] /= size
        got = effective_projection(module)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


QUERY_GROUPS = ({0, 3, 5, 6}, {1, 2, 4, 7})  # planted in the query heads; keys and values are planted otherwise
VALUE_GROUPS = ({0, 1, 2, 3}, {4, 5, 6, 7})


def plant(weight: torch.Tensor, groups, heads: int = 8, seed: int = 0) -> None:
    """Make the heads of each group in `groups` near-copies of one random head (in place)."""
    g = torch.Generator().manual_seed(seed)
    rows = weight.shape[0] // heads
    with torch.no_grad():
        for members in groups:
            base = torch.randn(rows, weight.shape[1], generator=g)
            for h in members:
                weight[h * rows : (h + 1) * rows] = base + 0.05 * torch.randn(rows, weight.shape[1], generator=g)


def cosine_by_hand(weight: torch.Tensor, heads: int) -> list[list[float]]:
    """The cosine similarity of the flattened heads of a projection, with plain Python floats."""
    rows = weight.shape[0] // heads
    flat = [[float(x) for x in weight[h * rows : (h + 1) * rows].reshape(-1)] for h in range(heads)]
    norms = [math.sqrt(sum(x * x for x in v)) for v in flat]
    return [
        [sum(a * b for a, b in zip(flat[i], flat[j], strict=True)) / (norms[i] * norms[j]) for j in range(heads)]
        for i in range(heads)
    ]


def greedy_groups_by_hand(similarity: list[list[float]], size: int) -> list[list[int]]:
    """hf-gqa's documented rule: the lowest free head opens a group, which takes the free head of highest mean
    similarity to its members until it has `size`."""
    free, groups = list(range(len(similarity))), []
    while free:
        group = [free.pop(0)]
        while len(group) < size:
            best = max(free, key=lambda h: (sum(similarity[h][m] for m in group) / len(group), -h))
            free.remove(best)
            group.append(best)
        groups.append(group)
    return groups


def mean_rows_by_hand(weight: torch.Tensor, members, heads: int = 8) -> torch.Tensor:
    rows = weight.shape[0] // heads
    total = torch.zeros_like(weight[:rows])
    for h in members:
        total = total + weight[h * rows : (h + 1) * rows]
    return total / len(members)


def test_simgqa_groups_by_query_similarity_in_groups_of_four():
    # The paper: heads are rearranged "based on the similarity of queries" (cosine of the flattened heads), then
    # mean-pooled. Oracle: the cosine of the query heads by hand, the grouping rule by hand, and the pooled K/V of
    # each group by hand. Keys and values are planted in other groups, so grouping by them must fail this test.
    source = make("llama")
    for layer in source.model.layers:
        plant(layer.self_attn.q_proj.weight, QUERY_GROUPS, seed=1)
        plant(layer.self_attn.v_proj.weight, VALUE_GROUPS, seed=2)
        plant(layer.self_attn.k_proj.weight, VALUE_GROUPS, seed=3)
    model = hf_gqa.convert(source, variant="simgqa", groups=2)  # 8 heads -> 2 groups of 4
    for old, new in zip(source.model.layers, model.model.layers, strict=True):
        before, after = old.self_attn, new.self_attn
        expected = greedy_groups_by_hand(cosine_by_hand(before.q_proj.weight.detach(), 8), 4)
        assert [set(g) for g in expected] == list(QUERY_GROUPS)  # the oracle sees the planted query groups
        q_before, q_after = before.q_proj.weight.detach(), after.q_proj.weight.detach()
        for g, members in enumerate(expected):
            moved = {
                h
                for h in range(8)
                for p in range(g * 4, (g + 1) * 4)
                if torch.equal(q_after[p * 8 : (p + 1) * 8], q_before[h * 8 : (h + 1) * 8])
            }
            assert moved == set(members)  # the group's query heads
            for name in ("k_proj", "v_proj"):
                got = getattr(after, name)
                want = mean_rows_by_hand(getattr(before, name).weight.detach(), members)
                torch.testing.assert_close(got.weight.detach()[g * 8 : (g + 1) * 8], want, rtol=1e-6, atol=1e-7)
                want_bias = mean_rows_by_hand(getattr(before, name).bias.detach(), members)
                torch.testing.assert_close(got.bias.detach()[g * 8 : (g + 1) * 8], want_bias, rtol=1e-6, atol=1e-7)


def test_regrouping_while_training_follows_the_query_heads_of_the_moment():
    # The hook regroups by the *current* query heads: plant new query groups in the training form (in its current
    # head numbering), regroup, and each group must be the mean of the heads the hand-computed rule puts in it.
    model = hf_gqa.convert(make("llama"), variant="simgqa", groups=2, regroup_every=1)
    new_groups = ({0, 1, 6, 7}, {2, 3, 4, 5})
    for layer in model.model.layers:
        plant(layer.self_attn.q_proj.weight, new_groups, seed=4)
        plant(layer.self_attn.v_proj.weight, VALUE_GROUPS, seed=5)
        plant(layer.self_attn.k_proj.weight, ({0, 2, 4, 6}, {1, 3, 5, 7}), seed=6)
    before = {
        i: {n: getattr(layer.self_attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj")}
        for i, layer in enumerate(model.model.layers)
    }
    regroup_heads_(model)
    for i, layer in enumerate(model.model.layers):
        expected = greedy_groups_by_hand(cosine_by_hand(before[i]["q_proj"], 8), 4)
        assert [set(g) for g in expected] == list(new_groups)
        for name in ("k_proj", "v_proj"):
            effective = effective_projection(getattr(layer.self_attn, name))
            for g, members in enumerate(expected):
                want = mean_rows_by_hand(before[i][name], members)
                torch.testing.assert_close(effective[g * 8 : (g + 1) * 8], want, rtol=1e-5, atol=1e-6)


def test_paper_simgqa_training_form_streams_and_folds_to_simgqa_once(tmp_path):
    # The mean training form holds no weights; streamed and in memory it is the same checkpoint, and before any
    # training its fold is SimGQA-once (the reordered heads, mean-pooled) in a stock LlamaForCausalLM.
    from transformers import AutoModelForCausalLM

    source = make("llama")
    source.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    save_streamed(
        tmp_path / "src", tmp_path / "streamed", GQASpec(variant="simgqa", groups=2, regroup_every=5), progress=False
    )
    hf_gqa.convert(str(tmp_path / "src"), variant="simgqa", groups=2, regroup_every=5).save_pretrained(
        tmp_path / "memory"
    )
    streamed = tensors(tmp_path / "streamed")
    assert_bit_identical(streamed, tensors(tmp_path / "memory"))
    assert not any("mixer" in key for key in streamed)
    hf_gqa.fold_to_folder(tmp_path / "streamed", tmp_path / "folded", progress=False)
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded")
    assert type(folded).__name__ == "LlamaForCausalLM" and folded.config.num_key_value_heads == 2
    once = hf_gqa.convert(source, variant="simgqa", groups=2).state_dict()
    for key, value in folded.state_dict().items():
        torch.testing.assert_close(value, once[key], rtol=0, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")
