"""`hf-gqa report RUNS...`: the uptraining runs side by side, in the shape of the WGQA paper's Table I.

Each RUN is a run folder of `recipes/uptrain_summarization.py` (it holds `all_results.json`), that file itself, or a
folder of run folders. Runs whose configs differ only in their seed (and in where they wrote) are one row, shown as
mean ± standard deviation over the seeds. Columns: variant, key/value heads, parameters, KV-cache bytes per token,
ROUGE-1, ROUGE-2, ROUGE-L, ROUGE-Lsum and decode tokens/s. Writes `report.md`, `report.csv` and a plot of ROUGE
against KV-cache size, `rouge_vs_kv_cache.png`, into `--output-dir`, and prints the markdown table.

Runs that learned K/V mixing weights (wgqa, randwgqa, simwgqa) log them (`kv_weights.jsonl` in the run folder); for
each, the report adds the WGQA paper's analysis: `kv_weights_<run>.png`, the weights' distribution over training and
per attention kind, layer and K/V at the last step (the paper's Fig. 3), and the paper's two-sided t-test of their
mean against their initial value (Sec. V.A) at every logged step, in `kv_weights_tests.csv` and, for the last step,
in report.md.
"""

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from .core.text import format_bytes
from .errors import HfGqaError
from .variants.wgqa.weights_log import WEIGHTS_LOG, initial_values, read_weights_log, record_t_test

RESULTS = "all_results.json"
ROUGE = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("rougeLsum", "ROUGE-Lsum"))
VARIANT_NAMES = {
    "mha": "MHA",
    "mqa": "MQA",
    "gqa": "GQA",
    "wgqa": "WGQA",
    "randwgqa": "RandWGQA",
    "simgqa": "SimGQA",
    "simwgqa": "SimWGQA (ours)",
}
# Config keys that do not change what a run measures: runs differing only in these are seeds of one row.
RUN_SPECIFIC = {
    "seed",
    "convert_seed",
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "trust_checkpoint",
    "cache_dir",
    "preprocessing_num_workers",
    "logging_steps",
    "tensorboard",  # older runs: what report_to replaced
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "decode_benchmark_tokens",
    "num_processes",
    "eval_steps",
}
PLOT = "rouge_vs_kv_cache.png"


def find_results(paths: list[str]) -> list[Path]:
    """The `all_results.json` files named by RUN arguments (a file, a run folder, or a folder of run folders)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif (path / RESULTS).is_file():
            found.append(path / RESULTS)
        elif path.is_dir() and (inner := sorted(path.glob(f"*/{RESULTS}"))):
            found.extend(inner)
        elif path.is_dir():
            raise HfGqaError(f"{raw!r} holds no {RESULTS}: not a finished run of recipes/uptrain_summarization.py")
        else:
            raise HfGqaError(f"no run at {raw!r}")
    return found


def load_run(path: Path) -> dict:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HfGqaError(f"cannot read {str(path)!r}: {error}") from None
    if not isinstance(run, dict) or "model" not in run or not any(f"eval_{k}" in run for k, _ in ROUGE):
        raise HfGqaError(f"{str(path)!r} is not the all_results.json of an uptraining run")
    _check_fields(run, path)
    run["_path"] = str(path)
    return run


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# what the report reads of a run, and what each may be (None: the value is missing, which the report shows as "-")
_NUMBER = ("a number", _is_number)
_INT = ("an integer", _is_int)
_TEXT = ("a string", lambda v: isinstance(v, str))
_OBJECT = ("an object", lambda v: isinstance(v, dict))
FIELDS = {
    **{(f"eval_{key}",): _NUMBER for key, _ in ROUGE},
    ("decode_tokens_per_second",): _NUMBER,
    ("model",): _OBJECT,
    ("model", "parameters"): _INT,
    ("model", "kv_heads"): _OBJECT,
    ("model", "kv_heads", "*"): _INT,
    ("model", "kv_cache_bytes_per_token"): _OBJECT,
    ("model", "kv_cache_bytes_per_token", "*"): _NUMBER,
    ("model", "variant"): _TEXT,
    ("model", "converted_attention"): ("a list", lambda v: isinstance(v, list)),
    ("model", "converted_attention", "*"): _TEXT,
    ("config",): _OBJECT,
    ("config", "run_name"): _TEXT,
    ("config", "convert_variant"): _TEXT,
    ("config", "lora_r"): _INT,
    ("config", "seed"): _INT,
}


def _check_fields(run: dict, path: Path) -> None:
    """One line for the first field the report reads whose value has the wrong type (a string for a number, ...)."""

    def values(container, keys, where):
        if not keys:
            yield where, container
            return
        if keys[0] == "*":
            items = container.items() if isinstance(container, dict) else enumerate(container)
            for key, value in items:
                yield from values(value, keys[1:], [*where, str(key)])
        elif isinstance(container, dict) and container.get(keys[0]) is not None:
            yield from values(container[keys[0]], keys[1:], [*where, keys[0]])

    for keys, (expected, check) in FIELDS.items():
        for where, value in values(run, keys, []):
            if value is not None and not check(value):
                got = f"{type(value).__name__} {json.dumps(value, default=str)}"
                got = got if len(got) <= 60 else got[:57] + "..."
                raise HfGqaError(f"{str(path)!r}: {'.'.join(where)!r} should be {expected}, got {got}")


def _label(run: dict) -> str:
    config, model = run.get("config") or {}, run.get("model") or {}
    if config.get("run_name"):
        return str(config["run_name"])
    variant = config.get("convert_variant") or model.get("variant")
    if not variant:
        return Path(run["_path"]).parent.name
    name = VARIANT_NAMES.get(variant, variant)
    heads = _converted_heads(model)
    if variant not in ("mha", "mqa") and len(set(heads.values())) == 1:
        name += f"-{next(iter(heads.values()))}"
    if config.get("convert_regroup_every"):
        name += f" every {config['convert_regroup_every']}"
    if config.get("lora_r"):
        name += f" (LoRA r={config['lora_r']})"
    return name


def _converted_heads(model: dict) -> dict[str, int]:
    heads = model.get("kv_heads") or {}
    kinds = model.get("converted_attention") or list(heads)
    return {kind: heads[kind] for kind in kinds if kind in heads}


def _group_key(run: dict) -> str:
    config = {k: v for k, v in (run.get("config") or {}).items() if k not in RUN_SPECIFIC}
    return json.dumps(config, sort_keys=True, default=str)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration, in the order first seen: label, sizes, and (mean, std) of each metric."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    rows, labels = [], {}
    for members in groups.values():
        first = members[0]
        model = first.get("model") or {}
        label = _label(first)
        labels[label] = labels.get(label, 0) + 1
        if labels[label] > 1:
            label = f"{label} #{labels[label]}"
        kv = model.get("kv_cache_bytes_per_token") or {}
        row = {
            "label": label,
            "variant": (first.get("config") or {}).get("convert_variant") or model.get("variant") or "",
            "kv_heads": _converted_heads(model),
            "parameters": model.get("parameters"),
            "kv_cache_bytes_per_token": kv.get("self"),
            "kv_cache_bytes_per_source_token": kv.get("cross"),
            "runs": len(members),
            "seeds": [(m.get("config") or {}).get("seed") for m in members],
            "paths": [m["_path"] for m in members],
        }
        for key, _ in ROUGE:
            row[key] = _mean_std([m.get(f"eval_{key}") for m in members])
        row["decode_tokens_per_second"] = _mean_std([m.get("decode_tokens_per_second") for m in members])
        rows.append(row)
    return rows


def _cell(value: tuple[float | None, float | None], digits: int = 2) -> str:
    mean, std = value
    if mean is None:
        return "-"
    return f"{mean:,.{digits}f}" if std is None else f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def _heads_cell(heads: dict[str, int]) -> str:
    if not heads:
        return "-"
    if len(set(heads.values())) == 1:
        return str(next(iter(heads.values())))
    return ", ".join(f"{kind} {n}" for kind, n in heads.items())


def _kv_cell(row: dict) -> str:
    self_bytes, cross = row["kv_cache_bytes_per_token"], row["kv_cache_bytes_per_source_token"]
    if self_bytes is None:
        return "-"
    return format_bytes(self_bytes) if cross is None else f"{format_bytes(self_bytes)} + {format_bytes(cross)}"


def to_markdown(rows: list[dict]) -> str:
    header = ["variant", "KV heads", "parameters", "KV cache / token", *(n for _, n in ROUGE), "decode tok/s", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [
            row["label"],
            _heads_cell(row["kv_heads"]),
            f"{row['parameters']:,}" if row["parameters"] is not None else "-",
            _kv_cell(row),
            *(_cell(row[key]) for key, _ in ROUGE),
            _cell(row["decode_tokens_per_second"], 1),
            str(row["runs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "ROUGE: F-measure x 100 with stemming (rouge-score); ROUGE-L is over the whole summary, ROUGE-Lsum over its "
        "sentences (one per line). Several seeds of one configuration: mean ± standard deviation.",
    ]
    if any(r["kv_cache_bytes_per_source_token"] is not None for r in rows):
        notes.append(
            "KV cache / token of an encoder-decoder: decoder self-attention per target token + cross-attention per "
            "source token."
        )
    return "\n".join(lines + notes) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    columns = [
        "variant_label",
        "variant",
        "kv_heads",
        "parameters",
        "kv_cache_bytes_per_token",
        "kv_cache_bytes_per_source_token",
    ]
    for key in [k for k, _ in ROUGE] + ["decode_tokens_per_second"]:
        columns += [f"{key}_mean", f"{key}_std"]
    columns += ["runs", "seeds", "paths"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            values = [
                row["label"],
                row["variant"],
                json.dumps(row["kv_heads"]),
                row["parameters"],
                row["kv_cache_bytes_per_token"],
                row["kv_cache_bytes_per_source_token"],
            ]
            for key in [k for k, _ in ROUGE] + ["decode_tokens_per_second"]:
                values += list(row[key])
            values += [row["runs"], " ".join(map(str, row["seeds"])), " ".join(row["paths"])]
            writer.writerow(["" if v is None else v for v in values])


def plot(rows: list[dict], path: Path, title: str | None = None) -> bool:
    """ROUGE against KV-cache bytes per token, one marker per metric, error bars over seeds. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    points = [r for r in rows if r["kv_cache_bytes_per_token"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (key, name), marker in zip(ROUGE, "osD^", strict=True):
        xs, ys, errs = [], [], []
        for row in points:
            mean, std = row[key]
            if mean is None:
                continue
            xs.append(row["kv_cache_bytes_per_token"] + (row["kv_cache_bytes_per_source_token"] or 0))
            ys.append(mean)
            errs.append(std or 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=errs, fmt=marker, capsize=3, label=name)
    placed: dict[float, int] = {}
    xs_all = [r["kv_cache_bytes_per_token"] + (r["kv_cache_bytes_per_source_token"] or 0) for r in points] or [0]
    for row in points:
        mean = row["rouge1"][0]
        if mean is not None:
            x = row["kv_cache_bytes_per_token"] + (row["kv_cache_bytes_per_source_token"] or 0)
            placed[x] = placed.get(x, 0) + 1  # labels of runs with the same cache size are stacked
            right = x >= max(xs_all)  # the rightmost labels go to the left of their point
            offset = (-4 if right else 4, 6 + 11 * (placed[x] - 1))
            ax.annotate(
                row["label"],
                (x, mean),
                textcoords="offset points",
                xytext=offset,
                fontsize=8,
                ha="right" if right else "left",
            )
    encoder_decoder = any(r["kv_cache_bytes_per_source_token"] is not None for r in points)
    ax.set_xlabel("KV-cache bytes per token" + (" (self + cross)" if encoder_decoder else ""))
    ax.set_ylabel("ROUGE (F x 100)")
    if len({r["kv_cache_bytes_per_token"] for r in points}) > 1:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: format_bytes(v)))
    ax.margins(x=0.15, y=0.1)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no point has a KV-cache size: nothing to label
        ax.legend(fontsize=8)
    ax.set_title(title or "ROUGE against KV-cache size")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


# --- the learned K/V weights (the WGQA paper's Fig. 3 and Sec. V.A) ------------------------------------------------

WEIGHT_TESTS = "kv_weights_tests.csv"
WEIGHT_PLOT = "kv_weights_{run}.png"
PROJECTIONS = (("k", "K"), ("v", "V"))


def weight_logs(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(run name, records) of every run whose folder holds a `kv_weights.jsonl`; the name is the run folder's
    (numbered when two folders share one)."""
    logs, seen = [], {}
    for run in runs:
        folder = Path(run["_path"]).parent
        if not (folder / WEIGHTS_LOG).is_file():
            continue
        records = read_weights_log(folder / WEIGHTS_LOG)
        if not records:
            continue
        name = folder.name or "run"
        seen[name] = seen.get(name, 0) + 1
        logs.append((name if seen[name] == 1 else f"{name}-{seen[name]}", records))
    return logs


def _subsets(record: dict) -> list[tuple[str, str, object]]:
    """(attention kind or "all", K/V or "", selector) of the weights one test covers: all of them (the paper's),
    then each attention kind's K and V."""
    kinds = list(dict.fromkeys(e["attention"] for e in record["weights"]))
    subsets = [("all", "", None)]
    for kind in kinds:
        for projection, label in PROJECTIONS:
            subsets.append((kind, label, lambda e, k=kind, p=projection: e["attention"] == k and e["projection"] == p))
    return subsets


def weight_tests(name: str, records: list[dict]) -> list[dict]:
    """The t-test of the weights against their initial values (the first record, step 0) at every logged step, over
    all weights and per attention kind and K/V."""
    initial = initial_values(records)
    rows = []
    for record in records:
        for kind, projection, select in _subsets(record):
            test = record_t_test(record, initial, select)
            if test is None:
                continue
            rows.append(
                {"run": name, "step": record["step"], "attention": kind, "projection": projection, "test": test}
            )
    return rows


def _p_cell(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g}"


def weights_markdown(tests: list[dict]) -> str:
    """The last logged step of each run: one row over all weights (the paper's test), then per kind and K/V."""
    last = {}
    for row in tests:
        last[row["run"]] = max(last.get(row["run"], row["step"]), row["step"])
    lines = [
        "",
        "## Learned K/V weights (the WGQA paper's Fig. 3 and significance test)",
        "",
        "| run | step | weights | K/V | n | initial | mean ± sd | t | df | p (two-sided) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in tests:
        if row["step"] != last[row["run"]]:
            continue
        t = row["test"]
        lines.append(
            f"| {row['run']} | {row['step']} | {row['attention']} | {row['projection'] or 'K and V'} | {t.n} | "
            f"{t.initial:.4g} | {t.mean:.4f} ± {t.std:.4f} | {t.t:.3f} | {t.df} | {_p_cell(t.p)} |"
        )
    lines += [
        "",
        "Two-sided one-sample t-test of the mean difference between each learned weight and its initial value (for "
        "a constant start, e.g. WGQA's 0.5, the paper's test of the weights' mean against 0.5; for RandWGQA the "
        f"paired test against their own draws, ours). Every logged step: {WEIGHT_TESTS}; the weights' distribution: "
        + WEIGHT_PLOT.format(run="<run>")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def write_weight_tests(tests: list[dict], path: Path) -> None:
    columns = ["run", "step", "attention", "projection", "n", "initial", "mean", "std", "t", "df", "p"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in tests:
            t = row["test"]
            writer.writerow([row["run"], row["step"], row["attention"], row["projection"] or "K and V", t.n,
                             t.initial, t.mean, t.std, t.t, t.df, t.p])  # fmt: skip


def plot_weights(name: str, records: list[dict], path: Path) -> bool:
    """The paper's Fig. 3 for one run: histograms of all the weights at up to five logged steps (the first, the
    last and evenly spaced ones), then, per attention kind (rows) and K/V (columns), the weights of each layer at
    the last step; the dashed line is the mean initial value. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    first, last = records[0], records[-1]
    start = statistics.fmean(v for e in first["weights"] for v in e["values"])
    kinds = list(dict.fromkeys(e["attention"] for e in last["weights"]))
    fig = plt.figure(figsize=(9, 3.2 * (1 + len(kinds))), dpi=110)
    grid = fig.add_gridspec(1 + len(kinds), 2)
    top = fig.add_subplot(grid[0, :])
    picks = [records[i] for i in sorted({round(i * (len(records) - 1) / 4) for i in range(5)})]
    values = {r["step"]: [v for e in r["weights"] for v in e["values"]] for r in picks}
    low, high = min(min(v) for v in values.values()), max(max(v) for v in values.values())
    low, high = (low - 0.5, high + 0.5) if low == high else (low, high)
    bins = [low + (high - low) * i / 40 for i in range(41)]  # the same bins for every step
    for step, step_values in values.items():
        top.hist(step_values, bins=bins, histtype="step", linewidth=1.3, label=f"step {step}")
    top.axvline(start, color="grey", linestyle="--", linewidth=1)
    top.set_title(f"{name}: all learned K/V weights over training")
    top.set_xlabel("weight")
    top.set_ylabel("count")
    top.legend(fontsize=8)
    for row, kind in enumerate(kinds, 1):
        for column, (projection, label) in enumerate(PROJECTIONS):
            ax = fig.add_subplot(grid[row, column])
            entries = sorted(
                (e for e in last["weights"] if e["attention"] == kind and e["projection"] == projection),
                key=lambda e: e["layer"],
            )
            if entries:
                ax.boxplot([e["values"] for e in entries], tick_labels=[str(e["layer"]) for e in entries])
            ax.axhline(start, color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"{kind} {label}, step {last['step']}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("weight")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def add_parser(subparsers) -> None:
    """Add the `report` command to `hf-gqa`'s sub-command parsers."""
    report = subparsers.add_parser(
        "report",
        help="compare uptraining runs: a table (markdown, CSV) and a plot of ROUGE against KV-cache size",
        description=__doc__.split("\n\n", 1)[1].replace("`", ""),
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folder, its all_results.json, or a folder of runs")
    report.add_argument(
        "-o",
        "--output-dir",
        default="gqa-report",
        help="where report.md, report.csv and the plot go (default: %(default)s)",
    )
    report.add_argument("--title", help="title of the plot")


def _output_dir(raw: str) -> Path:
    """`-o`, created if needed; a file in the way is a one-line error."""
    output = Path(raw)
    for existing in (p for p in (output, *output.parents) if p.exists()):
        if not existing.is_dir():
            where = "" if existing == output else f": {str(existing)!r}"
            raise HfGqaError(f"-o {raw!r}{where} is not a folder")
        break
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HfGqaError(f"-o {raw!r}: cannot create the folder: {error.strerror or error}") from None
    return output


def run(args) -> int:
    """`hf-gqa report`: print the table and write report.md, report.csv and the plot (and, for runs that learned
    K/V weights, their tests and plots)."""
    runs = [load_run(p) for p in find_results(args.runs)]
    rows = summarize(runs)
    logs = weight_logs(runs)
    tests = [row for name, records in logs for row in weight_tests(name, records)]
    output = _output_dir(args.output_dir)
    markdown = to_markdown(rows) + (weights_markdown(tests) if tests else "")
    written = [output / "report.md", output / "report.csv"]
    try:
        written[0].write_text(markdown, encoding="utf-8")
        write_csv(rows, written[1])
        plotted = plot(rows, output / PLOT, args.title)
        if tests:
            write_weight_tests(tests, output / WEIGHT_TESTS)
            written.append(output / WEIGHT_TESTS)
        weight_plots = [output / WEIGHT_PLOT.format(run=name) for name, _ in logs]
        plotted = (
            all([plot_weights(name, records, path) for (name, records), path in zip(logs, weight_plots, strict=True)])
            and plotted
        )
    except OSError as error:
        raise HfGqaError(f"cannot write {error.filename or str(output)!r}: {error.strerror or error}") from None
    print(markdown)
    if plotted:
        written += [output / PLOT, *weight_plots]
    else:
        print("note: no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_gqa.report RUNS...`, the same as `hf-gqa report`."""
    parser = argparse.ArgumentParser(prog="hf-gqa")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except HfGqaError as error:
        print(f"hf-gqa: error: {error}", file=sys.stderr)
        return 2


__all__ = [
    "add_parser",
    "find_results",
    "load_run",
    "main",
    "plot",
    "plot_weights",
    "run",
    "summarize",
    "to_markdown",
    "weight_logs",
    "weight_tests",
    "weights_markdown",
    "write_csv",
    "write_weight_tests",
]


if __name__ == "__main__":
    sys.exit(main())
