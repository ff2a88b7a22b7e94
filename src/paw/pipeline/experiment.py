"""The experiment folder: where it is, what to do when it exists, and which steps are finished.

Each finished step is recorded in `state.json` (written atomically) with a fingerprint of its inputs. A step is
skipped on `continue` only when its record exists, its fingerprint matches and its output folder is there;
step outputs are themselves written atomically, so a killed step leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from paw.errors import PawError
from paw.io import atomic_write_json


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def slug(name: str) -> str:
    """A model or dataset name as a folder-name component (`Qwen/Qwen2.5-7B` -> `Qwen2.5-7B`)."""
    name = name.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name) or "model"


def existing_experiments(experiments_dir: Path, prefix: str) -> list[Path]:
    if not experiments_dir.is_dir():
        return []
    return sorted(p for p in experiments_dir.glob(f"{prefix}__*") if (p / "config.yaml").exists())


def resolve_experiment_dir(experiments_dir: Path, prefix: str, experiment_id: str | None, action: str,
                           interactive: bool | None = None) -> tuple[Path, str]:
    """Pick the experiment folder and say what happens to an existing one: 'new', 'continue' or 'delete'.

    `action` is the user's choice for an existing folder (prompt, continue, delete, abort); `prompt` asks on a
    terminal and falls back to abort without one.
    """
    if experiment_id:
        candidates = [experiments_dir / f"{prefix}__{experiment_id}"]
        existing = [c for c in candidates if c.exists()]
    else:
        existing = existing_experiments(experiments_dir, prefix)
    if not existing:
        new_id = experiment_id or time.strftime("%Y%m%d-%H%M%S")
        return experiments_dir / f"{prefix}__{new_id}", "new"
    folder = existing[-1]
    if action == "prompt":
        interactive = sys.stdin.isatty() if interactive is None else interactive
        if not interactive:
            raise PawError(f"experiment {folder} exists and there is no terminal to ask; re-run with "
                           "--existing_experiment_action continue (or delete), or set "
                           "experiment_management.existing_experiment_action")
        answer = input(f"Experiment {folder} exists. [c]ontinue, [d]elete and start over, [a]bort? ").strip().lower()
        action = {"c": "continue", "continue": "continue", "d": "delete", "delete": "delete"}.get(answer, "abort")
    if action == "abort":
        raise PawError(f"experiment {folder} exists and the action is abort; nothing was changed. Use "
                       "--existing_experiment_action continue to finish it or delete to start over")
    if action == "delete":
        shutil.rmtree(folder)
        new_id = experiment_id or time.strftime("%Y%m%d-%H%M%S")
        return experiments_dir / f"{prefix}__{new_id}", "delete"
    return folder, "continue"


class StepState:
    """The record of finished steps in `<experiment>/state.json`."""

    def __init__(self, experiment_dir: Path) -> None:
        self.path = experiment_dir / "state.json"
        self.steps: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.steps = json.loads(self.path.read_text())["steps"]
            except (json.JSONDecodeError, KeyError):
                # An unreadable record trusts nothing: every step runs again.
                self.steps = {}

    def finished(self, key: str, fp: str, output: Path) -> dict[str, Any] | None:
        record = self.steps.get(key)
        if record and record.get("fingerprint") == fp and output.exists():
            return record
        return None

    def record(self, key: str, fp: str, summary: dict[str, Any]) -> None:
        self.steps[key] = {"fingerprint": fp, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}
        atomic_write_json(self.path, {"steps": self.steps})

    def forget(self, key: str) -> None:
        if self.steps.pop(key, None) is not None:
            atomic_write_json(self.path, {"steps": self.steps})
