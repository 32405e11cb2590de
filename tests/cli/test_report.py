"""`hf-gqa report`: a Table I-shaped comparison of uptraining runs, as markdown, CSV and a PNG plot."""

import argparse
import csv
import json
import statistics

import pytest

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
