"""lm-evaluation-harness (`lm-eval`, the extra `hf-gqa[lm-eval]`) on a loaded model: the tasks users know
(hellaswag, arc_easy, ...; these need the Hub for their data) and tasks of their own, written as lm-eval task YAML
files over local data (the `json`, `csv` or `text` builder with `data_files`), which run offline.

`prepare_tasks` imports lm-eval, finds and loads every task once (so an unknown name or unreadable data fails in one
line before any model is loaded); `run_tasks` runs them on a model that is already loaded (hf-gqa's loader, so
converted and uptrained folders of every type load as for the other figures), through lm-eval's `HFLM` and
`simple_evaluate`, with lm-eval's own defaults for everything not named here."""

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HfGqaError

INSTALL = "pip install 'hf-gqa[lm-eval]'"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class HarnessTasks:
    """Tasks checked by `prepare_tasks`: the specs as lm-eval takes them (names, or absolute .yaml paths), the
    task manager that finds them, and lm-eval's version."""

    specs: tuple[str, ...]
    manager: Any  # lm_eval.tasks.TaskManager
    version: str | None


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise HfGqaError(f"lm-eval is not installed ({error}): {INSTALL}") from None
    return lm_eval, HFLM, TaskManager


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().strip("'\"").splitlines()
    return lines[0] if lines else type(error).__name__


def prepare_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> HarnessTasks:
    """Check `tasks` (lm-eval task, group or tag names, or paths to task .yaml files) and load each once (its data
    too: a Hub data set is downloaded and cached here), with the task YAMLs of the folder `include_path` besides
    lm-eval's own. lm-eval's own task index (thousands of YAMLs, seconds to read) is only read when a name is not
    found in `include_path` or as a file. One-line errors: lm-eval missing, an unknown task (with near names), a
    task that cannot be loaded (offline without its data, a bad YAML, a missing data file)."""
    _, _, TaskManager = _import_lm_eval()
    version = lm_eval_version()
    specs = [str(t).strip() for t in tasks if str(t).strip()]
    if not specs:
        raise HfGqaError("--lm-eval-tasks names no task")
    if include_path is not None:
        include_path = Path(include_path).expanduser()
        if not include_path.is_dir():
            raise HfGqaError(f"--lm-eval-include {str(include_path)!r}: not a folder")
        include_path = str(include_path.resolve())
    resolved = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.suffix in YAML_SUFFIXES:
            if not path.is_file():
                raise HfGqaError(f"lm-eval task file {spec!r} not found")
            spec = str(path.resolve())
        resolved.append(spec)

    def unknown(manager) -> list[str]:
        return [s for s in resolved if not s.endswith(YAML_SUFFIXES) and s not in manager.all_tasks]

    manager = TaskManager(include_path=include_path, include_defaults=False)
    if unknown(manager):  # some name is not in --lm-eval-include: read lm-eval's own index too
        manager = TaskManager(include_path=include_path)
    for name in unknown(manager):
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HfGqaError(
            f"unknown lm-eval task {name!r}{hint} (lm-eval {version}: a task, group or tag name, a task "
            "in --lm-eval-include, or a .yaml file)"
        )
    for spec in resolved:  # each task's YAML and data, now, before any model is loaded
        try:
            manager.load([spec])
        except Exception as error:  # lm-eval's and datasets' own errors (offline, missing file, bad YAML): one line
            raise HfGqaError(f"lm-eval task {spec!r} cannot be loaded: {_first_line(error)}") from None
    return HarnessTasks(tuple(resolved), manager, version)


def lm_eval_version() -> str | None:
    """The installed lm-eval's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def run_tasks(
    model,
    tokenizer,
    tasks: HarnessTasks,
    *,
    seq2seq: bool,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 1,
) -> dict:
    """Run `tasks` on `model` (loaded, on its device) with `tokenizer`, through lm-eval's `HFLM` (backend
    "seq2seq" for an encoder-decoder model, else "causal") and `simple_evaluate`; `num_fewshot` None keeps each
    task's own, `limit` None scores every document. Returns {task: {metric: value}} with lm-eval's metric names
    (`acc`, `acc_norm`, `word_perplexity`, ... and their `_stderr`; a metric under a filter other than "none" is
    named `metric,filter`), `samples` (the documents scored) and `fewshot` (the examples in each prompt)."""
    lm_eval, HFLM, _ = _import_lm_eval()
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # lm-eval's INFO lines, one per task and setting
    try:
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            backend="seq2seq" if seq2seq else "causal",
            batch_size=batch_size,
        )
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks.specs),
            task_manager=tasks.manager,
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=False,
        )
    finally:
        quiet.setLevel(level)
    results = {}
    for task, figures in output["results"].items():
        metrics = {}
        for key, value in figures.items():
            metric, _, filtered = key.partition(",")
            if not filtered:  # name, alias, sample_len
                continue
            metrics[metric if filtered == "none" else key] = value
        samples = output.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            metrics["samples"] = samples
        if task in output.get("n-shot", {}):
            metrics["fewshot"] = output["n-shot"][task]
        results[task] = metrics
    return results


__all__ = ["INSTALL", "HarnessTasks", "lm_eval_version", "prepare_tasks", "run_tasks"]
