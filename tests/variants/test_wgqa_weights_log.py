"""The WGQA mixing weights logged while uptraining, and the paper's t-test of them against their initial value."""

import json
import math

import pytest
import torch
from conftest import make_t5
from helpers import paired_t_by_hand, student_t_p_by_hand
from tiny_decoders import make

import hf_gqa
from hf_gqa.variants.wgqa.weights_log import (
    WEIGHTS_LOG,
    log_mixing_weights,
    mixing_weights,
    read_weights_log,
    student_t_two_sided_p,
    t_test,
)


def test_t_test_against_a_constant_start_is_the_papers_test():
    # The paper: H0 "the mean of scalar weight values is equal to 0.5", two-sided. By hand: d = w - 0.5 =
    # [-0.3, -0.2, -0.1, -0.4, 0.1, -0.3, -0.2, -0.2], mean -0.2, squared deviations sum 0.16, sd = sqrt(0.16 / 7),
    # t = -0.2 / (sd / sqrt(8)) = -3.7417, df 7.
    values = [0.2, 0.3, 0.4, 0.1, 0.6, 0.2, 0.3, 0.3]
    result = t_test(values, [0.5] * 8)
    expected_t = -0.2 / (math.sqrt(0.16 / 7) / math.sqrt(8))
    assert result.t == pytest.approx(expected_t, rel=1e-12) and result.t == pytest.approx(-3.7417, abs=1e-4)
    assert result.df == 7 and result.n == 8 and result.initial == 0.5 and result.mean == pytest.approx(0.3)
    assert result.p == pytest.approx(student_t_p_by_hand(expected_t, 7), rel=1e-9)
    assert 0.005 < result.p < 0.01  # a two-sided t of 3.74 with 7 df


def test_t_test_of_random_starts_is_paired():
    values, initial = [0.1, -0.5, 1.2, 0.3, 0.0], [0.3, -0.4, 0.9, 0.0, -0.6]
    result = t_test(values, initial)
    assert result.t == pytest.approx(paired_t_by_hand(values, initial), rel=1e-12)
    assert result.initial == pytest.approx(sum(initial) / 5)
    assert result.p == pytest.approx(student_t_p_by_hand(result.t, 4), rel=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        t_test([0.4], [0.5])


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 31, 191])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.2, 4.0, 9.0, -6.5])
def test_student_t_p_value_matches_the_closed_forms(t, df):
    assert student_t_two_sided_p(t, df) == pytest.approx(student_t_p_by_hand(t, df), rel=1e-9, abs=1e-15)


def test_student_t_p_value_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 5, 191, 5000):
        for t in (0.5, 2.0, 5.3, 12.0):
            assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


def test_mixing_weights_name_every_weighted_projection_by_kind_layer_and_k_or_v():
    model = hf_gqa.convert(make_t5("flan"), variant="wgqa", groups=4, weights_init=0.5)  # decoder: self + cross
    with torch.no_grad():
        model.decoder.block[2].layer[1].EncDecAttention.v.mixer.weight.copy_(torch.arange(8.0))
    entries = {e["module"]: e for e in mixing_weights(model)}
    expected = {
        f"decoder.block.{layer}.layer.{sub}.{attention}.{p}": (kind, layer, p)
        for layer in range(3)
        for sub, attention, kind in ((0, "SelfAttention", "decoder_self"), (1, "EncDecAttention", "cross"))
        for p in ("k", "v")
    }
    assert {m: (e["attention"], e["layer"], e["projection"]) for m, e in entries.items()} == expected
    assert entries["decoder.block.2.layer.1.EncDecAttention.v"]["values"] == [float(i) for i in range(8)]
    assert entries["decoder.block.0.layer.0.SelfAttention.k"]["values"] == [0.5] * 8
    decoder = hf_gqa.convert(make("llama"), variant="randwgqa", groups=2)
    names = [e["module"] for e in mixing_weights(decoder)]
    assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "kv"]
    pytest.importorskip("peft")
    from hf_gqa.training import apply_lora

    lora = apply_lora(decoder, r=2)  # the trained copies of the mixers (modules_to_save), under the model's names
    with torch.no_grad():
        lora.base_model.model.model.layers[1].self_attn.v_proj.modules_to_save["default"].mixer.weight.fill_(7.0)
    entries = mixing_weights(lora)
    assert [e["module"] for e in entries] == names and entries[-1]["values"] == [7.0] * 8
    # nothing to log: a model without learned weights, and the paper's SimGQA (its groups are plain means)
    assert mixing_weights(hf_gqa.convert(make("llama"), groups=2)) == []
    assert mixing_weights(hf_gqa.convert(make("llama"), variant="simgqa", groups=2, regroup_every=3)) == []


def test_the_log_appends_and_a_resume_drops_what_came_after_its_checkpoint(tmp_path):
    model = hf_gqa.convert(make("llama"), variant="wgqa", groups=2)
    for step in range(4):
        with torch.no_grad():
            model.model.layers[0].self_attn.k_proj.mixer.weight.fill_(step)
        assert log_mixing_weights(model, tmp_path, step, first=step == 0)
    records = read_weights_log(tmp_path / WEIGHTS_LOG)
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[0]["gqa_init"] == "mean"
    assert [r["weights"][0]["values"][0] for r in records] == [0.0, 1.0, 2.0, 3.0]
    log_mixing_weights(model, tmp_path, 2, first=True)  # resumed from the checkpoint of step 2
    assert [r["step"] for r in read_weights_log(tmp_path / WEIGHTS_LOG)] == [0, 1, 2]
    log_mixing_weights(model, tmp_path, 0, first=True)  # a fresh run in the same folder
    assert [r["step"] for r in read_weights_log(tmp_path / WEIGHTS_LOG)] == [0]
    assert not log_mixing_weights(make("llama"), tmp_path / "gqa", 0, first=True)
    assert not (tmp_path / "gqa").exists()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"step": 1, "weights": [{"values": "x"}]}) + "\n")
    with pytest.raises(hf_gqa.HfGqaError, match="line 1"):
        read_weights_log(tmp_path / "bad.jsonl")


def test_an_uptraining_run_logs_its_weights_for_the_report(recipe, tiny_t5, cnndm, datasets_cache, tmp_path):
    pytest.importorskip("accelerate")
    from recipe_fixtures import argv, run

    from hf_gqa import report

    output = tmp_path / "wgqa"
    extra = ("--convert-variant", "wgqa", "--groups", "4", "--convert-weights-init", "0.5", "--max-train-steps", "3")
    extra += ("--logging-steps", "1", "--checkpointing-steps", "0", "--decode-benchmark-tokens", "0")
    extra += ("--learning-rate", "1e-2")
    assert run(recipe, argv(tiny_t5, output, cnndm, datasets_cache, *extra)) == 0
    records = read_weights_log(output / WEIGHTS_LOG)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert len(records[0]["weights"]) == 2 * 2 * 3  # K and V of the decoder's self- and cross-attention, 3 layers
    assert all(v == 0.5 for e in records[0]["weights"] for v in e["values"])  # the paper's start
    assert any(v != 0.5 for e in records[-1]["weights"] for v in e["values"])  # the weights did train
    assert report.main([str(output), "-o", str(tmp_path / "report")]) == 0
    assert "| wgqa | 3 | all | K and V | 96 | 0.5 |" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "kv_weights_wgqa.png").is_file()
