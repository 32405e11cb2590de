"""Bad input the uptraining recipe and `hf-gqa report` read (issue 12, item 6): one line naming the file and what is
wrong, exit status 2, never a traceback. (Corrupt checkpoints are in test_trust.py, beside the run they tamper with.)
"""

import copy
import json

import pytest
from recipe_fixtures import argv, run

from hf_gqa import report
from hf_gqa.cli import main as cli_main

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("rouge_score")

GOOD = '{"article": "The cat sat on the mat. It was happy.", "highlights": "A cat sat."}\n'


def one_error_line(err: str, prefix: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------
# Recipe data


@pytest.mark.parametrize(
    "name,content,needles",
    [
        ("missing.jsonl", GOOD + '{"article": "A text."}\n', ["'highlights'", "row 2", "missing or null"]),
        ("null.jsonl", GOOD + '{"article": "A text.", "highlights": null}\n', ["'highlights'", "row 2", "null"]),
        ("null-text.jsonl", GOOD * 2 + '{"article": null, "highlights": "x"}\n', ["'article'", "row 3", "null"]),
        ("all-null.jsonl", '{"article": "A text.", "highlights": null}\n', ["'highlights'", "null"]),
        ("numbers.jsonl", '{"article": "A text.", "highlights": 5}\n', ["'highlights'", "int64", "not text"]),
        ("mixed.jsonl", GOOD + '{"article": "A text.", "highlights": 5}\n', ["'highlights'", "row 2", "not text"]),
        ("lists.jsonl", '{"article": "A text.", "highlights": ["a", "b"]}\n', ["'highlights'", "not text"]),
        ("numbers.csv", "article,highlights\n12,A summary.\n", ["'article'", "int64", "not text"]),
        ("latin1.jsonl", (GOOD + '{"article": "caf\xe9", "highlights": "x"}\n').encode("latin-1"),
         ["not UTF-8", "row 2"]),
        ("latin1.csv", "article,highlights\ncaf\xe9,x\n".encode("latin-1"), ["not UTF-8", "line 2"]),
        ("empty.jsonl", "", ["is empty"]),
        ("empty.csv", "", ["is empty"]),
        ("header.csv", "article,highlights\n", ["no examples"]),
        ("garbage.json", "{not json", ["cannot read"]),
        ("garbage.parquet", "not parquet", ["cannot read"]),
    ],
)  # fmt: skip
def test_bad_recipe_data_is_one_line(recipe, tiny_t5, datasets_cache, tmp_path, capsys, name, content, needles):
    bad = tmp_path / name
    (bad.write_bytes if isinstance(content, bytes) else bad.write_text)(content)
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD * 4)
    output = tmp_path / "out"
    code = run(recipe, argv(tiny_t5, output, (bad, good), datasets_cache, "--max-train-steps", "1",
                            "--summary-column", "highlights"))  # fmt: skip
    line = one_error_line(capsys.readouterr().err, "uptrain_summarization: error:")
    assert code == 2 and str(bad) in line, line
    for needle in needles:
        assert needle in line, line


def test_no_examples_after_max_samples_is_one_line(recipe, tiny_t5, datasets_cache, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD * 4)
    code = run(recipe, argv(tiny_t5, tmp_path / "out", (good, good), datasets_cache, "--summary-column", "highlights",
                            "--max-train-samples", "0"))  # fmt: skip
    line = one_error_line(capsys.readouterr().err, "uptrain_summarization: error:")
    assert code == 2 and str(good) in line and "no examples" in line


# ---------------------------------------------------------------------------------------------------------------
# hf-gqa report


RESULTS = {
    "eval_rouge1": 40.0,
    "eval_rouge2": 18.0,
    "eval_rougeL": 28.0,
    "eval_rougeLsum": 37.0,
    "eval_loss": 2.0,
    "decode_tokens_per_second": 150.0,
    "model": {
        "model_type": "t5_gqa",
        "parameters": 60_000_000,
        "num_heads": 8,
        "kv_heads": {"encoder": 8, "decoder_self": 4, "cross": 4},
        "kv_cache_bytes_per_token": {"self": 24576, "cross": 24576},
        "variant": "gqa",
        "converted_attention": ["decoder_self", "cross"],
    },
    "config": {"convert_variant": "gqa", "groups": 4, "seed": 0, "run_name": None, "lora_r": 0},
}


def write_results(folder, results) -> str:
    folder.mkdir(parents=True)
    (folder / "all_results.json").write_text(json.dumps(results))
    return str(folder / "all_results.json")


@pytest.mark.parametrize(
    "keys,value",
    [
        (("eval_rouge1",), "41.0"),
        (("eval_rouge2",), True),
        (("decode_tokens_per_second",), "fast"),
        (("model",), "t5"),
        (("model", "parameters"), "60M"),
        (("model", "parameters"), 6.5),
        (("model", "kv_heads"), [8]),
        (("model", "kv_heads"), {"decoder_self": "4"}),
        (("model", "kv_cache_bytes_per_token"), 6144),
        (("model", "kv_cache_bytes_per_token"), {"self": "6 KiB"}),
        (("model", "variant"), ["gqa"]),
        (("model", "converted_attention"), "decoder_self"),
        (("config",), ["gqa"]),
        (("config", "convert_variant"), 3),
        (("config", "run_name"), {"name": "x"}),
        (("config", "lora_r"), "4"),
        (("config", "seed"), [0]),
    ],
)
def test_report_with_odd_field_types_is_one_line(tmp_path, capsys, keys, value):
    results = copy.deepcopy(RESULTS)
    target = results
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path = write_results(tmp_path / "run", results)
    assert report.main([path, "-o", str(tmp_path / "report")]) == 2
    line = one_error_line(capsys.readouterr().err, "hf-gqa: error:")
    assert path in line and ".".join(keys) in line, line
    assert not (tmp_path / "report").exists()


def test_report_accepts_nulls_where_a_value_may_be_missing(tmp_path, capsys):
    results = copy.deepcopy(RESULTS)
    results["eval_rouge2"] = None
    results["decode_tokens_per_second"] = None
    results["model"]["kv_cache_bytes_per_token"] = None
    results["config"] = None
    assert report.main([write_results(tmp_path / "run", results), "-o", str(tmp_path / "report")]) == 0
    assert "| GQA-4 | 4 | 60,000,000 | - | 40.00 | - |" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_report_output_that_is_not_a_folder_is_one_line(tmp_path, capsys, where):
    path = write_results(tmp_path / "run", RESULTS)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    output = taken if where == "file" else taken / "report"
    for entry in (
        lambda: report.main([path, "-o", str(output)]),
        lambda: cli_main(["report", path, "-o", str(output)]),
    ):
        assert entry() == 2
        line = one_error_line(capsys.readouterr().err, "hf-gqa: error:")
        assert str(taken) in line and "not a folder" in line, line
    assert taken.read_text() == "keep me"
