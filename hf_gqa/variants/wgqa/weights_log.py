"""The learned K/V mixing weights over an uptraining run, and the WGQA paper's test of them against their start.

The uptraining loop calls `log_mixing_weights(model, output_dir, step)` at step 0 (`first=True`, also on resume) and
at every logging step; for a WGQA training form with learned weights (wgqa, randwgqa, simwgqa) it appends one JSON
line to `OUTPUT_DIR/kv_weights.jsonl` (other models: nothing is written):

    {"step": 50, "gqa_init": "0.5", "weights": [
        {"module": "decoder.block.0.layer.0.SelfAttention.k", "attention": "decoder_self", "layer": 0,
         "projection": "k", "values": [0.43, 0.61, ...]}, ...]}

one entry per weighted K or V projection, `values` its mixing weights flattened (one per head for the paper's scalar
weights). A resumed run first drops the records after its checkpoint, as the run log does. `read_weights_log` reads
the file back; `hf-gqa report` plots the weights per attention kind, layer and K/V (the paper's Fig. 3) and gives
`t_test` (the paper's Sec. V.A).

The paper's test: "the null hypothesis as the mean of scalar weight values is equal to 0.5 [their initial value], and
the alternative is that the mean is not equal to 0.5", two-sided, over the weights of all attention modules at a
step. `t_test` is that one-sample Student t-test on the differences `w - w0` between each weight and its initial
value: for a constant initial value (WGQA's 0.5) it is exactly the paper's test; for RandWGQA's N(0, 1) draws it is
the paired test of the weights against their own initial values (ours: the paper gives no test for RandWGQA).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import HfGqaError
from ...families import family_for
from .form import FORM, is_training_form

WEIGHTS_LOG = "kv_weights.jsonl"


def _module_name(name: str) -> str | None:
    """The model's own module name of a PEFT-wrapped one (the trained copy of a `modules_to_save`), else None for
    PEFT's frozen original."""
    if ".original_module." in f".{name}.":
        return None
    return name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")


def mixing_weights(model) -> list[dict]:
    """Every learned K/V mixing-weight tensor of a WGQA training form: module, attention kind, layer, projection
    (`k` or `v`) and values (flattened floats). Empty for any other model (also SimGQA's `mean` form: no weights)."""
    config = model.config.to_dict()
    if not is_training_form(config):
        return []
    family, _ = family_for(config)
    view = family.form_stock_config(config, FORM.name, FORM.fields)
    kinds = set(config.get("gqa_kv_source_heads") or {})
    blocks = {b.prefix: b for b in family.attention_blocks(view) if b.kind in kinds}
    entries = []
    for name, module in model.named_modules():
        if type(module).__name__ != "HeadMixer":  # also the remote-code copy of the class
            continue
        clean = _module_name(name)
        if clean is None:
            continue
        projection_name = clean.removesuffix(".mixer")
        prefix, projection = projection_name.rsplit(".", 1)
        block = blocks.get(prefix)
        if block is None:
            continue
        layer = re.search(r"\.(\d+)(\.|$)", prefix)
        entries.append(
            {
                "module": projection_name,
                "attention": block.kind,
                "layer": int(layer.group(1)) if layer else 0,
                "projection": "k" if projection.startswith("k") else "v",
                "values": [float(v) for v in module.weight.detach().float().reshape(-1).tolist()],
            }
        )
    return entries


def log_mixing_weights(model, output_dir: str | Path, step: int, first: bool = False) -> bool:
    """Append the mixing weights of `model` at optimizer `step` to `output_dir/kv_weights.jsonl`; with `first` (the
    start of a run, or its resume at `step`) drop the records from `step` on first. False (nothing written) when the
    model has no learned mixing weights."""
    weights = mixing_weights(model)
    if not weights:
        return False
    path = Path(output_dir) / WEIGHTS_LOG
    if first:
        kept = [r for r in _records(path) if r.get("step", 0) < step] if path.is_file() else []
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    record = {"step": int(step), "gqa_init": getattr(model.config, "gqa_init", None), "weights": weights}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return True


def _records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_weights_log(path: str | Path) -> list[dict]:
    """The records of a `kv_weights.jsonl`, by step; one-line errors for a file that is not one."""
    path = Path(path)
    try:
        records = _records(path)
    except (OSError, ValueError) as error:
        raise HfGqaError(f"cannot read {str(path)!r}: {error}") from None
    for number, record in enumerate(records, 1):
        entries = record.get("weights") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or not isinstance(entries, list):
            raise HfGqaError(f"{str(path)!r} line {number}: not a record of the WGQA mixing weights")
        for entry in entries:
            values = entry.get("values") if isinstance(entry, dict) else None
            if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
                raise HfGqaError(f"{str(path)!r} line {number}: an entry without a list of numbers as values")
            if entry.get("projection") not in ("k", "v") or not isinstance(entry.get("layer"), int):
                raise HfGqaError(f"{str(path)!r} line {number}: an entry without projection k|v and a layer number")
    return sorted(records, key=lambda r: r["step"])


@dataclass(frozen=True)
class TTest:
    """A two-sided one-sample t-test of the mean difference between the weights and their initial values."""

    n: int  # weights
    mean: float  # of the weights
    std: float  # of the weights (sample standard deviation)
    initial: float  # mean of their initial values (the constant, for WGQA)
    t: float  # mean(w - w0) / (sd(w - w0) / sqrt(n))
    df: int  # n - 1
    p: float  # two-sided p-value of t under Student's t with df degrees of freedom


def t_test(values: list[float], initial: list[float]) -> TTest:
    """The paper's significance test of the learned weights `values` against their `initial` values (see the
    module docstring). Needs at least two weights."""
    if len(values) != len(initial):
        raise ValueError(f"{len(values)} weights but {len(initial)} initial values")
    n = len(values)
    if n < 2:
        raise ValueError("a t-test needs at least two weights")
    differences = [v - i for v, i in zip(values, initial, strict=True)]
    mean_difference = math.fsum(differences) / n
    variance = math.fsum((d - mean_difference) ** 2 for d in differences) / (n - 1)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    if variance == 0.0:
        t = 0.0 if mean_difference == 0.0 else math.copysign(math.inf, mean_difference)
    else:
        t = mean_difference / math.sqrt(variance / n)
    return TTest(n, mean, std, math.fsum(initial) / n, t, n - 1, student_t_two_sided_p(t, n - 1))


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom: the regularized incomplete beta function
    I_x(df / 2, 1 / 2) at x = df / (df + t^2)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where
    the fraction converges slowly."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_incomplete_beta(b, a, 1.0 - x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def initial_values(records: list[dict]) -> dict[str, list[float]]:
    """Module -> its weights at the first logged step (step 0 of the run: the initial values)."""
    if not records:
        return {}
    return {e["module"]: list(e["values"]) for e in records[0]["weights"]}


def record_t_test(record: dict, initial: dict[str, list[float]], select=None) -> TTest | None:
    """`t_test` of one record's weights (those `select(entry)` keeps) against their initial values; None with
    fewer than two weights."""
    values, starts = [], []
    for entry in record["weights"]:
        if select is not None and not select(entry):
            continue
        start = initial.get(entry["module"])
        if start is None or len(start) != len(entry["values"]):
            raise HfGqaError(f"the weights of {entry['module']} at step {record['step']} have no initial values")
        values += entry["values"]
        starts += start
    return t_test(values, starts) if len(values) >= 2 else None


__all__ = [
    "WEIGHTS_LOG",
    "TTest",
    "initial_values",
    "log_mixing_weights",
    "mixing_weights",
    "read_weights_log",
    "student_t_two_sided_p",
    "t_test",
    "record_t_test",
]
