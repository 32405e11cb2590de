"""`hf-gqa report`: a Table I-shaped comparison of uptraining runs, as markdown, CSV and a PNG plot."""

import argparse
import csv
import json
import statistics

import pytest
from helpers import paired_t_by_hand, student_t_p_by_hand

from hf_gqa import report


def write_run(folder, variant, seed, rouge, kv_heads, decode=100.0, run_name=None, **config):
    """An `all_results.json` as recipes/uptrain_summarization.py writes it (only what the report reads)."""
    folder.mkdir(parents=True)
    heads = {"encoder": 8, "decoder_self": kv_heads, "cross": kv_heads}
    results = {
        **{f"eval_{k}": v for k, v in zip(("rouge1", "rouge2", "rougeL", "rougeLsum"), rouge, strict=True)},
        "eval_loss": 2.0,
        "decode_tokens_per_second": decode,
        "model": {
            "model_type": "t5_gqa",
            "parameters": 60_000_000 - 1000 * (8 - kv_heads),
            "num_heads": 8,
            "kv_heads": heads,
            "kv_cache_bytes_per_token": {"self": 6144 * kv_heads, "cross": 6144 * kv_heads},
            "variant": variant,
            "converted_attention": ["decoder_self", "cross"],
        },
        "config": {
            "convert_variant": variant,
            "groups": kv_heads if variant == "gqa" else None,
            "learning_rate": 1e-3,
            "seed": seed,
            "output_dir": str(folder),
            "run_name": run_name,
            **config,
        },
    }
    (folder / "all_results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "mha-s0", "mha", 0, (41.0, 19.0, 29.0, 38.0), 8, decode=100.0)
    write_run(root / "mha-s1", "mha", 1, (42.0, 20.0, 30.0, 39.0), 8, decode=110.0)
    write_run(root / "gqa-s0", "gqa", 0, (40.0, 18.0, 28.5, 37.0), 4, decode=150.0)
    write_run(root / "mqa-s0", "mqa", 0, (38.0, 17.0, 28.0, 36.0), 1, decode=200.0)
    write_run(root / "mqa-lr", "mqa", 0, (37.0, 16.0, 27.0, 35.0), 1, learning_rate=1e-4)
    return root


def test_report_table_csv_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(runs / "mha-s0"), str(runs / "mha-s1" / "all_results.json"), str(runs / "gqa-s0"),
                        str(runs / "mqa-s0"), str(runs / "mqa-lr"), "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    table = (out / "report.md").read_text()
    assert table in printed
    lines = table.splitlines()
    assert lines[0] == (
        "| variant | KV heads | parameters | KV cache / token | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum "
        "| decode tok/s | runs |"
    )
    mha, gqa, mqa, mqa_lr = lines[2:6]
    std = statistics.stdev([41.0, 42.0])
    assert mha.startswith("| MHA | 8 | 60,000,000 | 48.0 KiB + 48.0 KiB |")
    assert f"41.50 ± {std:.2f}" in mha and f"38.50 ± {std:.2f}" in mha and mha.endswith("| 2 |")
    assert gqa.startswith("| GQA-4 | 4 | 59,996,000 | 24.0 KiB + 24.0 KiB | 40.00 | 18.00 | 28.50 | 37.00 | 150.0 |")
    assert mqa.startswith("| MQA | 1 |") and mqa_lr.startswith("| MQA #2 | 1 |")  # another config: its own row

    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant_label"] for r in rows] == ["MHA", "GQA-4", "MQA", "MQA #2"]
    assert float(rows[0]["rouge1_mean"]) == 41.5 and float(rows[0]["rouge1_std"]) == pytest.approx(std)
    assert rows[1]["rouge1_std"] == "" and rows[0]["seeds"] == "0 1" and rows[2]["kv_cache_bytes_per_token"] == "6144"
    assert float(rows[0]["decode_tokens_per_second_mean"]) == 105.0

    pytest.importorskip("matplotlib")
    png = (out / report.PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_folder_of_runs_and_run_names(runs, tmp_path, capsys):
    write_run(runs / "named", "gqa", 3, (1.0, 2.0, 3.0, 4.0), 2, run_name="GQA-2 (my label)")
    assert report.main([str(runs), "-o", str(tmp_path / "r")]) == 0
    table = capsys.readouterr().out
    assert "| GQA-2 (my label) | 2 |" in table and "| MHA | 8 |" in table


def test_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"hf-gqa: error: {str(tmp_path / 'empty')!r} holds no all_results.json: not a finished run of "
        "recipes/uptrain_summarization.py"
    ]
    (tmp_path / "bad.json").write_text("{}")
    assert report.main([str(tmp_path / "bad.json")]) == 2
    assert "is not the all_results.json of an uptraining run" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2


def test_add_parser_plugs_into_a_cli(runs, tmp_path):
    parser = argparse.ArgumentParser(prog="hf-gqa")
    sub = parser.add_subparsers(dest="command", required=True)
    report.add_parser(sub)
    args = parser.parse_args(["report", str(runs / "gqa-s0"), "-o", str(tmp_path / "r"), "--title", "t"])
    assert report.run(args) == 0 and (tmp_path / "r" / "report.csv").is_file()


def write_weights_log(folder, records):
    """A `kv_weights.jsonl` as the uptraining loop writes it: {step, gqa_init, weights: [{module, attention, layer,
    projection, values}]} per logged step."""
    lines = []
    for step, weights in records:
        entries = [
            {"module": f"{kind}.{layer}.{p}", "attention": kind, "layer": layer, "projection": p, "values": values}
            for (kind, layer, p), values in weights.items()
        ]
        lines.append(json.dumps({"step": step, "gqa_init": "0.5", "weights": entries}))
    (folder / "kv_weights.jsonl").write_text("\n".join(lines) + "\n")


FINAL_WEIGHTS = {
    ("decoder_self", 0, "k"): [0.2, 0.3, 0.4, 0.1],
    ("decoder_self", 0, "v"): [0.6, 0.2, 0.3, 0.3],
    ("cross", 0, "k"): [0.5, 0.7, 0.6, 0.4],
    ("cross", 0, "v"): [0.45, 0.5, 0.55, 0.53],
}


def test_the_learned_weights_test_and_plot_from_a_run_folder(runs, tmp_path, capsys):
    # WGQA's Fig. 3 and the paper's significance test from a run folder: weights starting at 0.5 (step 0), then
    # known values. The t statistic and its p-value are computed here by hand (helpers: A&S 26.7.3/4).
    folder = write_run(runs / "wgqa-s0", "wgqa", 0, (40.0, 18.0, 28.0, 37.0), 4)
    start = {key: [0.5] * 4 for key in FINAL_WEIGHTS}
    middle = {key: [(0.5 + v) / 2 for v in values] for key, values in FINAL_WEIGHTS.items()}
    write_weights_log(folder, [(0, start), (10, middle), (20, FINAL_WEIGHTS)])
    out = tmp_path / "report"
    assert report.main([str(runs / "gqa-s0"), str(folder), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "report.md").read_text()
    assert table in printed and "## Learned K/V weights" in table
    every = [v for values in FINAL_WEIGHTS.values() for v in values]
    t_all = paired_t_by_hand(every, [0.5] * 16)  # df 15
    p_all = student_t_p_by_hand(t_all, 15)
    row = next(line for line in table.splitlines() if line.startswith("| wgqa-s0 | 20 | all |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["K and V", "16", "0.5", f"{sum(every) / 16:.4f} ± {statistics.stdev(every):.4f}",
                         f"{t_all:.3f}", "15", f"{p_all:.3g}"]  # fmt: skip
    self_k = next(line for line in table.splitlines() if line.startswith("| wgqa-s0 | 20 | decoder_self | K |"))
    t_self_k = paired_t_by_hand(FINAL_WEIGHTS[("decoder_self", 0, "k")], [0.5] * 4)
    assert f"| {t_self_k:.3f} | 3 | {student_t_p_by_hand(t_self_k, 3):.3g} |" in self_k

    with open(out / "kv_weights_tests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["attention"], r["projection"]) for r in rows[:5]] == [
        ("0", "all", "K and V"), ("0", "decoder_self", "K"), ("0", "decoder_self", "V"), ("0", "cross", "K"),
        ("0", "cross", "V"),
    ]  # fmt: skip
    assert float(rows[0]["t"]) == 0.0 and float(rows[0]["p"]) == 1.0  # step 0: the weights are their start
    last = next(r for r in rows if r["step"] == "20" and r["attention"] == "all")
    assert float(last["t"]) == pytest.approx(t_all, rel=1e-12) and float(last["p"]) == pytest.approx(p_all, rel=1e-9)
    middle_all = next(r for r in rows if r["step"] == "10" and r["attention"] == "all")
    assert float(middle_all["t"]) == pytest.approx(t_all, rel=1e-9)  # halfway to the same values: the same t

    pytest.importorskip("matplotlib")
    png = (out / "kv_weights_wgqa-s0.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (out / "kv_weights_gqa-s0.png").exists()  # GQA learned no weights


def test_a_run_labelled_by_its_regrouping_interval(runs, tmp_path, capsys):
    write_run(runs / "sim200", "simgqa", 0, (15.0, 1.0, 12.0, 14.0), 4, convert_regroup_every=200)
    write_run(runs / "simw200", "simwgqa", 0, (15.0, 1.0, 12.0, 14.0), 4, convert_regroup_every=200)
    assert report.main([str(runs / "sim200"), str(runs / "simw200"), "-o", str(tmp_path / "r")]) == 0
    table = capsys.readouterr().out
    assert "| SimGQA-4 every 200 | 4 |" in table and "| SimWGQA (ours)-4 every 200 | 4 |" in table


def test_tracking_and_upload_options_do_not_split_seeds(tmp_path, capsys):
    """Where a run logs to and whether it uploads its model do not change what it measures: one row of two seeds."""
    root = tmp_path / "runs"
    write_run(root / "s0", "gqa", 0, (40.0, 18.0, 28.0, 37.0), 4, report_to=["tensorboard"], push_to_hub=False)
    write_run(root / "s1", "gqa", 1, (42.0, 20.0, 30.0, 39.0), 4, report_to=["wandb"], push_to_hub=True,
              hub_model_id="me/t5-small-gqa", hub_private=True)  # fmt: skip
    assert report.main([str(root), "-o", str(tmp_path / "report")]) == 0
    rows = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 1 and rows[0].startswith("| GQA-4 |") and rows[0].endswith("| 2 |"), rows
