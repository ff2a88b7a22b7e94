"""SwanLab experiment tracking that works with no account and no network by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from paw.errors import PawError

# PAW's names for SwanLab's modes; "cloud" is SwanLab's "online" and is used only when asked for.
_MODES = {"disabled": "disabled", "offline": "offline", "local": "local", "cloud": "online", "online": "online"}


def swanlab_mode(configured: str | None = None) -> str:
    """The SwanLab mode to use: SWANLAB_MODE from the environment wins over the configured one."""
    requested = (os.environ.get("SWANLAB_MODE") or configured or "offline").strip().lower()
    if requested not in _MODES:
        raise PawError(f"unknown SwanLab mode {requested!r}; valid: disabled, offline, local, cloud")
    return _MODES[requested]


class Tracker:
    """One SwanLab run; logging is a no-op when the mode is `disabled`."""

    def __init__(self, project: str, name: str, log_dir: Path, mode: str | None, config: dict[str, Any]) -> None:
        self.mode = swanlab_mode(mode)
        self.run = None
        if self.mode != "disabled":
            import swanlab

            log_dir.mkdir(parents=True, exist_ok=True)
            self.run = swanlab.init(project=project, name=name, mode=self.mode, log_dir=str(log_dir),
                                    config=config, reinit=True)

    def log(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
            if numeric:
                self.run.log(numeric)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
