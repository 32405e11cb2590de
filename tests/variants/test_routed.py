"""Routed attention: KDGQA, DGQA, PGQA (Khan et al., 2024) and the GQKVA family (Javadi et al., 2023)."""

import json
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from conftest import batch, make_t5
from helpers import assert_bit_identical, one_error_line, pooled_qkv_oracle, run, tensors
from tiny_decoders import IDS, make
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import hf_gqa
from hf_gqa import GQASpec
from hf_gqa.conversion.sizes import routed_attention_parameters
from hf_gqa.conversion.streaming import save_streamed
from hf_gqa.modeling.configuration_routed import ROUTED_FAMILIES
from hf_gqa.modeling.routing import HeadRouting, allocate, head_index, routed_attention_forward
from hf_gqa.training import DGQAReallocate, TrainingState, run_hooks

INPUTS = batch()
ROUTED = {
    "kdgqa": dict(groups=2),
    "dgqa": dict(groups=2),
    "pgqa": dict(groups=2),
    "gqkva": dict(groups=2, q_groups=4),
    "gkva": dict(groups=2),
    "mkva": dict(),
}


def logits(model, ids=IDS, **kwargs):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(**INPUTS, **kwargs).logits
        return model(input_ids=ids, **kwargs).logits


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# Allocation


def test_allocations_sum_to_h_with_no_empty_group_and_follow_the_norms():
    g = torch.Generator().manual_seed(0)
    for heads, groups in ((8, 2), (8, 3), (9, 3), (12, 5), (16, 16), (6, 1)):
        scores = torch.rand(200, groups, generator=g) * torch.randint(0, 3, (200, 1), generator=g)  # incl. all-equal
        counts = allocate(scores, heads)
        assert counts.sum(-1).eq(heads).all() and counts.min() >= 1
        # a larger norm never gets fewer query heads
        larger = scores[:, :, None] > scores[:, None, :]
        assert (counts[:, :, None] >= counts[:, None, :])[larger].all()
    assert allocate(torch.tensor([0.0, 1.0]), 8).tolist() == [1, 7]  # min-max scaled: the smaller keeps one
    assert allocate(torch.tensor([1.0, 3.0, 2.0]), 9).tolist() == [1, 5, 3]
    assert allocate(torch.tensor([5.0, 5.0, 5.0]), 9).tolist() == [3, 3, 3]  # equal norms: GQA
    assert allocate(torch.tensor([5.0, 5.0, 5.0]), 8).tolist() == [3, 3, 2]  # ties to the lower group
    assert head_index(torch.tensor([1, 5, 3]), 9).tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2]  # left to right
    with pytest.raises(ValueError):
        allocate(torch.ones(4), 3)


def _attention(mode, query, key, value, mask=None, causal=False, **spec):
    routing = HeadRouting(
        {"mode": mode, "heads": query.shape[1], "q_heads": query.shape[1], "kv_heads": key.shape[1], **spec}
    ).eval()
    module = SimpleNamespace(routing=routing, is_causal=causal)
    return routed_attention_forward(module, query, key, value, mask)[0]


def test_kdgqa_with_equal_key_norms_is_uniform_gqa():
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, n, 7, 8, generator=g) for n in (8, 2, 2))
    key = key / key.norm(dim=-1, keepdim=True)  # every key vector of every head has norm 1
    for causal in (False, True):
        close(
            _attention("kdgqa", query, key, value, causal=causal), _attention("pgqa", query, key, value, causal=causal)
        )
    key[:, 1] *= 3  # now head 1 gets more query heads
    assert not torch.allclose(_attention("kdgqa", query, key, value), _attention("pgqa", query, key, value))


def test_kdgqa_statistic_is_causal_and_excludes_masked_keys():
    g = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, n, 6, 8, generator=g) for n in (8, 2, 2))
    full = _attention("kdgqa", query, key, value, causal=True)
    for t in range(1, 7):  # a prefix sees only its own keys: the same outputs as a forward over the prefix alone
        close(_attention("kdgqa", query[:, :, :t], key[:, :, :t], value[:, :, :t], causal=True), full[:, :t])
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 4:] = torch.finfo(torch.float32).min  # two padded keys: any values there change nothing
    noisy = key.clone()
    noisy[:, :, 4:] *= 100
    close(_attention("kdgqa", query, key, value, mask), _attention("kdgqa", query, noisy, value, mask))


# Every variant, T5 and a decoder


@pytest.fixture(scope="module")
def sources():
    return {"t5": make_t5("flan"), "llama": make("llama"), "qwen2": make("qwen2")}


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("variant", sorted(ROUTED))
def test_generation_with_cache_equals_without_and_eval_is_deterministic(sources, family, variant):
    model = hf_gqa.convert(sources[family], variant=variant, **ROUTED[variant]).eval()
    assert logits(model).isfinite().all()
    torch.testing.assert_close(logits(model), logits(model), rtol=0, atol=0)
    if family == "t5":
        inputs = dict(input_ids=INPUTS["input_ids"], attention_mask=INPUTS["attention_mask"])
    else:
        mask = torch.ones_like(IDS)
        mask[0, :3] = 0  # left padding
        inputs = dict(input_ids=IDS, attention_mask=mask)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    out = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
    assert torch.equal(out.sequences, model.generate(**inputs, **kwargs, use_cache=False))
    cache = out.past_key_values.self_attention_cache if family == "t5" else out.past_key_values
    heads = {"gkva": 8, "mkva": 8}.get(variant, 2)
    assert cache.layers[0].keys.shape[1] == heads  # the cache holds the key/value heads


@pytest.mark.parametrize("variant", sorted(ROUTED))
def test_eval_outputs_do_not_depend_on_the_rest_of_the_batch(sources, variant):
    model = hf_gqa.convert(sources["llama"], variant=variant, **ROUTED[variant]).eval()
    together = logits(model)
    for i in range(IDS.shape[0]):
        close(logits(model, IDS[i : i + 1])[0], together[i])


def test_kdgqa_batch_statistic_couples_samples_in_training_only(sources):
    model = hf_gqa.convert(sources["llama"], variant="kdgqa", groups=2, statistic="batch")
    assert model.config.gqa_routing["self"]["statistic"] == "batch"
    g = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(2, n, 5, 8, generator=g) for n in (8, 2, 2))
    key[0, 0] *= 4  # sample 0 favours key head 0, sample 1 key head 1
    key[1, 1] *= 9
    routing = HeadRouting({"mode": "kdgqa", "heads": 8, "q_heads": 8, "kv_heads": 2, "statistic": "batch"})
    module = SimpleNamespace(routing=routing, is_causal=False)
    for training, coupled in ((True, True), (False, False)):
        routing.train(training)
        together = routed_attention_forward(module, query, key, value, None)[0][0]
        alone = routed_attention_forward(module, query[:1], key[:1], value[:1], None)[0][0]
        assert torch.allclose(together, alone, atol=1e-6) != coupled


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_kdgqa_forward_statistic_trains_evaluates_and_generates(sources, family):
    """The paper's per-forward statistic end to end (its numbers: tests/variants/test_routed_oracles.py)."""
    model = hf_gqa.convert(sources[family], variant="kdgqa", groups=2, statistic="forward", allocation="paper")
    assert {spec["statistic"] for spec in model.config.gqa_routing.values()} == {"forward"}
    model.train()
    if family == "t5":
        loss = model(**INPUTS, labels=INPUTS["decoder_input_ids"]).loss
    else:
        loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    assert logits(model).isfinite().all()
    inputs = dict(input_ids=INPUTS["input_ids"]) if family == "t5" else dict(input_ids=IDS)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[0] == inputs["input_ids"].shape[0]


def test_cli_statistic_forward(tmp_path, capsys, sources):
    sources["llama"].save_pretrained(tmp_path / "src")
    argv = ["--variant", "kdgqa", "--groups", "2", "--statistic", "forward", "-o", tmp_path / "out"]
    code, out, err = run(capsys, "convert", tmp_path / "src", *argv)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["gqa_routing"]["self"]["statistic"] == "forward"


@pytest.mark.parametrize("family", ["t5", "llama", "qwen2"])
def test_pgqa_and_untrained_dgqa_are_gqa_in_eval_and_pgqa_perturbs_in_training(sources, family):
    gqa = hf_gqa.convert(sources[family], groups=2).eval()
    for variant in ("pgqa", "dgqa"):
        close(logits(hf_gqa.convert(sources[family], variant=variant, groups=2).eval()), logits(gqa))
    pgqa = hf_gqa.convert(sources[family], variant="pgqa", groups=2).train()
    torch.manual_seed(0)
    first = logits(pgqa)
    assert not torch.allclose(first, logits(pgqa), atol=1e-4)  # fresh noise every training forward
    assert not torch.allclose(first, logits(gqa), atol=1e-4)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_gqkva_with_every_head_is_mha_and_with_one_kv_head_is_mqa(sources, family):
    source = sources[family]
    close(logits(hf_gqa.convert(source, variant="gqkva", groups=8, q_groups=8)), logits(source))
    close(logits(hf_gqa.convert(source, variant="gkva", groups=8)), logits(source))
    mqa = hf_gqa.convert(source, variant="mqa")
    close(logits(hf_gqa.convert(source, variant="gqkva", groups=1, q_groups=8)), logits(mqa))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("q_groups,kv_groups", [(4, 2), (2, 4), (1, 8), (2, 1)])
def test_gqkva_equals_the_pooled_queries_and_keys_oracle(sources, family, q_groups, kv_groups):
    source = sources[family]
    variant = dict(variant="gqkva", q_groups=q_groups, groups=kv_groups)
    if kv_groups == 8:  # MKVA / GKVA: one pair per original head
        variant = dict(variant="gkva", groups=q_groups) if q_groups > 1 else dict(variant="mkva")
    close(logits(hf_gqa.convert(source, **variant)), logits(pooled_qkv_oracle(source, q_groups, kv_groups)))


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("variant", ["gqkva", "gkva", "mkva", "kdgqa"])
def test_parameter_counts_follow_the_formula(sources, family, variant):
    model = hf_gqa.convert(sources[family], variant=variant, **ROUTED[variant])
    config = model.config.to_dict()
    hidden = config.get("d_model") or config["hidden_size"]
    head_dim = config.get("d_kv") or config["head_dim"]
    names = ("q", "k", "v", "o") if family == "t5" else ("q_proj", "k_proj", "v_proj", "o_proj")
    q_heads, kv_heads, out_heads = {"gqkva": (4, 2, 8), "gkva": (2, 8, 8), "mkva": (1, 8, 8), "kdgqa": (8, 2, 8)}[
        variant
    ]
    per_block = hidden * head_dim * (q_heads + 2 * kv_heads + out_heads)
    blocks = [m for m in model.modules() if getattr(m, "routing", None) is not None]
    assert len(blocks) == (6 if family == "t5" else 2)  # T5: decoder self- and cross-attention of 3 layers
    for module in blocks:
        assert sum(getattr(module, n).weight.numel() for n in names) == per_block
    assert routed_attention_parameters(config) == (per_block * len(blocks), 4 * hidden * head_dim * 8 * len(blocks))


# DGQA while training


def test_dgqa_reallocates_only_at_window_boundaries_and_never_in_eval(sources):
    model = hf_gqa.convert(sources["llama"], variant="dgqa", groups=2, window=3, ema_alpha=0.5)
    routings = [m for m in model.modules() if isinstance(m, HeadRouting)]
    assert len(routings) == 2 and all(r.window == 3 and r.alpha == 0.5 for r in routings)
    with torch.no_grad():  # make head 1's keys larger, so the allocation has something to follow
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight[8:] *= 4  # key head 1 (head_dim 8)
    hooks = [DGQAReallocate()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    run_hooks(hooks, TrainingState(model=model, step=0, optimizer=optimizer), "on_train_begin")
    history = []
    for step in range(1, 8):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run_hooks(hooks, TrainingState(model=model, step=step, optimizer=optimizer))
        history.append([r.allocation.tolist() for r in routings])
        model.eval()
        frozen = [r.allocation.clone() for r in routings] + [r.norm_sum.clone() for r in routings]
        logits(model)
        assert all(
            torch.equal(a, b)
            for a, b in zip(frozen, [r.allocation for r in routings] + [r.norm_sum for r in routings], strict=True)
        )
        model.train()
    uniform = [[4, 4], [4, 4]]
    assert history[0] == history[1] == uniform  # steps 1, 2: GQA
    assert history[2] != uniform and history[2][0][1] > 4  # step 3: the larger keys get more query heads
    assert history[3] == history[4] == history[2]  # unchanged inside the window
    assert all(sum(a) == 8 and min(a) >= 1 for step in history for a in step)


def test_dgqa_difference_evolution_and_a_bad_hook(sources):
    model = hf_gqa.convert(sources["llama"], variant="dgqa", groups=2, evolution="difference")
    routing = next(m for m in model.modules() if isinstance(m, HeadRouting))
    routing.norm_sum.copy_(torch.tensor([2.0, 1.0]))
    routing.norm_count.fill_(1)
    assert routing.reallocate() and routing.allocation.tolist() == [7, 1]  # first window: the norms themselves
    routing.norm_sum.copy_(torch.tensor([2.0, 3.0]))
    routing.norm_count.fill_(1)
    assert routing.reallocate() and routing.allocation.tolist() == [1, 7]  # then their change: head 1 moved by 2
    assert not routing.reallocate()  # an empty window changes nothing
    with pytest.raises(hf_gqa.HfGqaError, match="needs a DGQA model"):
        DGQAReallocate().on_train_begin(TrainingState(model=sources["llama"], step=0))


# Save, load, remote code, streaming, CLI


@pytest.fixture(scope="module")
def saved(tmp_path_factory, sources):
    root = tmp_path_factory.mktemp("routed")
    out = {}
    for name, model in (
        ("t5", hf_gqa.convert(sources["t5"], variant="gqkva", groups=2, q_groups=4)),
        ("llama", hf_gqa.convert(sources["llama"], variant="dgqa", groups=2, window=5)),
        ("qwen2", hf_gqa.convert(sources["qwen2"], variant="kdgqa", groups=2)),
    ):
        for r in (m for m in model.modules() if isinstance(m, HeadRouting) and m.mode == "dgqa"):
            r.allocation.copy_(torch.tensor([3, 5]))  # a trained allocation must survive the round trip
        hf_gqa.save_converted(model, root / name)
        out[name] = (root / name, logits(model.eval()))
    return out


def test_routed_checkpoints_reload_with_the_auto_classes(saved):
    for name, auto in (
        ("t5", AutoModelForSeq2SeqLM),
        ("llama", AutoModelForCausalLM),
        ("qwen2", AutoModelForCausalLM),
    ):
        path, expected = saved[name]
        model = auto.from_pretrained(path)
        assert type(model).__module__.startswith("hf_gqa.")
        assert torch.equal(logits(model), expected)
    config = json.loads((saved["llama"][0] / "config.json").read_text())
    assert config["model_type"] == "llama_routed" and config["gqa_routing"]["self"]["window"] == 5
    code = sorted(p.name for p in saved["llama"][0].glob("*.py"))
    assert code == [
        "configuration_routed.py",
        "family_forms.py",
        "modeling_routed.py",
        "routing.py",
    ]
    assert "routing.py" in {p.name for p in saved["t5"][0].glob("*.py")}


REMOTE = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_gqa"] = None  # `import hf_gqa` raises ImportError here
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    checks = json.loads(sys.argv[1])
    inputs = torch.load(checks["inputs"])
    for path, kind, out in checks["remote"]:
        auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
        model = auto.from_pretrained(path, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(**inputs).logits if kind == "t5" else model(input_ids=inputs["ids"]).logits
        torch.save(logits, out)
    """
)


def test_remote_code_without_hf_gqa(saved, tmp_path):
    torch.save({**INPUTS, "ids": IDS}, tmp_path / "inputs.pt")
    checks = {
        "inputs": str(tmp_path / "inputs.pt"),
        "remote": [[str(saved[f][0]), f, str(tmp_path / f"{f}.pt")] for f in ("t5", "llama")],
    }
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, json.dumps(checks)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for family in ("t5", "llama"):
        assert torch.equal(torch.load(tmp_path / f"{family}.pt"), saved[family][1])


@pytest.mark.parametrize("variant", ["dgqa", "gqkva"])
def test_streamed_conversion_equals_in_memory_bit_for_bit(tmp_path, variant):
    model = make("qwen2").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    spec = GQASpec(variant=variant, groups=2, q_groups=4 if variant == "gqkva" else None)
    result = save_streamed(tmp_path / "src", tmp_path / "streamed", spec, max_shard_size="60KB", progress=False)
    assert result.plan.config["model_type"] == "qwen2_routed"
    in_memory = hf_gqa.convert(str(tmp_path / "src"), **{k: v for k, v in vars(spec).items() if v is not None})
    in_memory.save_pretrained(tmp_path / "memory")
    assert_bit_identical(tensors(tmp_path / "streamed"), tensors(tmp_path / "memory"))


def test_every_routed_family_converts_and_generates():
    for family in (f for f in ROUTED_FAMILIES if f != "vit"):  # ViT: tests/families/test_vit.py
        model = hf_gqa.convert(make(family), variant="gqkva", groups=2, q_groups=4).eval()
        assert type(model).__name__.endswith("RoutedForCausalLM")
        out = model.generate(input_ids=IDS[:1, :6], max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert torch.equal(
            out,
            model.generate(
                input_ids=IDS[:1, :6], max_new_tokens=3, min_new_tokens=3, use_cache=False, do_sample=False
            ),
        )


def test_cli_convert_and_info(tmp_path, capsys, sources):
    sources["llama"].save_pretrained(tmp_path / "src")
    code, out, err = run(
        capsys,
        "convert",
        tmp_path / "src",
        "--variant",
        "gqkva",
        "--q-groups",
        "4",
        "--groups",
        "2",
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    code, out, err = run(capsys, "info", tmp_path / "out")
    assert code == 0 and "gqkva" in out and "query heads" in out and "attention parameters" in out
    code, out, err = run(
        capsys,
        "convert",
        tmp_path / "src",
        "--variant",
        "dgqa",
        "--groups",
        "2",
        "--window",
        "50",
        "-o",
        tmp_path / "dgqa",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "dgqa" / "config.json").read_text())["gqa_routing"]["self"]["window"] == 50


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--variant", "gqkva", "--groups", "2"], "--q-groups (query heads, gq) is required"),
        (["--variant", "gqkva", "--groups", "2", "--q-groups", "3"], "--q-groups 3 does not divide the 8"),
        (["--variant", "gqa", "--groups", "2", "--window", "5"], "--window applies to dgqa only"),
        (["--variant", "mkva", "--groups", "2"], "variant 'mkva' has 1 query head"),
    ],
)
def test_bad_routed_options_give_one_line_errors(tmp_path, capsys, sources, argv, message):
    sources["llama"].save_pretrained(tmp_path / "src")
    code, out, err = run(capsys, "convert", tmp_path / "src", *argv, "-o", tmp_path / "out")
    assert code != 0 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_bad_options_through_the_python_api(sources):
    for options, message in (
        (dict(variant="dgqa", groups=2, evolution="nope"), "unknown --evolution 'nope'"),
        (dict(variant="dgqa", groups=2, ema_alpha=0.0), "--ema-alpha must be in"),
        (dict(variant="dgqa", groups=2, window=0), "--window must be a positive"),
        (dict(variant="kdgqa", groups=2, statistic="nope"), "unknown --statistic 'nope'"),
        (dict(variant="pgqa", groups=2, q_groups=2), "--q-groups applies to gqkva only"),
        (dict(variant="kdgqa", groups=3), "--groups 3 does not divide the 8 heads"),
    ):
        with pytest.raises(hf_gqa.HfGqaError, match=re.escape(message)):
            hf_gqa.convert(sources["llama"], **options)


def test_families_without_a_routed_form_and_routed_checkpoints_are_refused(tmp_path, saved):
    with pytest.raises(hf_gqa.HfGqaError, match="phi3 has no routed-attention form"):
        hf_gqa.convert(make("phi3"), variant="kdgqa", groups=2)
    with pytest.raises(hf_gqa.HfGqaError, match="already a routed-attention checkpoint"):
        hf_gqa.convert(str(saved["llama"][0]), groups=1)
    with pytest.raises(hf_gqa.HfGqaError, match="has routed attention"):
        hf_gqa.convert(str(saved["t5"][0]), groups=1)
