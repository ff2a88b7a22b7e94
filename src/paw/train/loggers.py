"""Where training metrics go: always a plain metrics.jsonl, and SwanLab unless disabled (never a login prompt)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from paw.tracking import swanlab_mode


class JsonlLogger(Logger):
    """One JSON line per logged step: {"step": 9, "train/loss": 1.23, ...}; step is the 0-based optimizer step."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if rank_zero_only.rank == 0:
            self._start(resume_step)

    def _start(self, resume_step: int | None) -> None:
        """A fresh run starts an empty file; a resumed run drops the rows logged after its checkpoint."""
        rows = []
        if resume_step is not None and self.path.exists():
            rows = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line and json.loads(line).get("step", 0) < resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"step": step, **{key: float(value) for key, value in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        pass  # the full config is in paw_run.json


def swanlab_logger(mode: str | None, log_dir: Path, name: str, config: dict[str, Any]) -> Logger | None:
    """SwanLab's own Lightning logger in the resolved mode, or None when tracking is disabled."""
    resolved = swanlab_mode(mode)
    if resolved == "disabled":
        return None
    from swanlab.integration.pytorch_lightning import SwanLabLogger

    log_dir.mkdir(parents=True, exist_ok=True)
    return SwanLabLogger(project="paw", experiment_name=name, mode=resolved, log_dir=str(log_dir), config=config)


def finish_swanlab() -> None:
    """Close the SwanLab run after success (SwanLab's Lightning logger only closes failed runs itself)."""
    import swanlab

    try:
        swanlab.get_run()
    except RuntimeError:  # no active run: it was never started, or already closed as crashed
        return
    swanlab.finish()
