"""A run's log: `log.jsonl` (every record), `train_log.csv` and `eval_log.csv` (what `hf-gqa report` reads), and
the Accelerate trackers of the recipe's `report_to` (trackers.py: TensorBoard, trackio, wandb, ...).

On resume, records past the checkpoint's step (written by the run that was killed after it) are dropped first, so
the log of a resumed run reads like the log of an uninterrupted one.
"""

import csv
import json
import math
from pathlib import Path

from .trackers import PROJECT, tracker_config


class RunLogger:
    """Append-only metrics log of the main process (other processes get a logger that writes nothing)."""

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        accelerator=None,
        config: dict | None = None,
        resume_step: int | None = None,
    ):
        """`accelerator`: the run's Accelerator, whose trackers (`log_with`) are started here with `config` (the run's
        options) and get every record; a resumed TensorBoard log drops its events past `resume_step`."""
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.records: list[dict] = []
        self._accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "log.jsonl"
        if resume_step is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                self.records = [r for r in map(json.loads, filter(str.strip, f)) if r.get("step", 0) <= resume_step]
        self._rewrite()
        if self._accelerator is not None:
            init_kwargs = {"tensorboard": {"purge_step": resume_step}} if resume_step is not None else {}
            self._accelerator.init_trackers(PROJECT, config=tracker_config(config or {}), init_kwargs=init_kwargs)

    def _rewrite(self) -> None:
        with open(self.output_dir / "log.jsonl", "w", encoding="utf-8") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        for kind in ("train", "eval"):
            self._write_csv(kind)

    def _write_csv(self, kind: str) -> None:
        rows = [r for r in self.records if r.get("kind") == kind]
        path = self.output_dir / f"{kind}_log.csv"
        if not rows:
            path.unlink(missing_ok=True)
            return
        columns = list(dict.fromkeys(k for r in rows for k in r if k != "kind"))
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: v for k, v in r.items() if k != "kind"} for r in rows)

    def log(self, kind: str, step: int, **values) -> None:
        """Record `values` at optimizer step `step`; `kind` is `train` or `eval`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **{k: _plain(v) for k, v in values.items()}}
        self.records.append(record)
        with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv(kind)  # small files: rewritten whole, so the CSV header always covers every column
        if self._accelerator is not None:
            scalars = {
                f"{kind}/{key}": value
                for key, value in record.items()
                if key != "step"
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            }
            self._accelerator.log(scalars, step=step)

    def close(self) -> None:
        """Nothing to close: the trackers end with `accelerator.end_training()`."""


def _plain(value):
    return value.item() if hasattr(value, "item") else value


__all__ = ["RunLogger"]
