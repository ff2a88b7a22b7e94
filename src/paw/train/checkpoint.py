"""Resumable checkpoints without pickle: Lightning's checkpoint dict as safetensors (tensors) + JSON (the rest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from safetensors.torch import load_file, save_file

from paw.io import atomic_directory

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"


def split_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `value` whose tensors are moved into `tensors` and referenced by key.

    Dicts with non-string keys (optimizer state is keyed by parameter index) and tuples are tagged so that
    `join_tensors` rebuilds them exactly.
    """
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: split_tensors(v, tensors) for k, v in value.items()}
        return {"__items__": [[split_tensors(k, tensors), split_tensors(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [split_tensors(v, tensors) for v in value]}
    if isinstance(value, list):
        return [split_tensors(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint without pickle")


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__items__" in value:
            return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in value["__items__"]}
        if "__tuple__" in value:
            return tuple(join_tensors(v, tensors) for v in value["__tuple__"])
        return {k: join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [join_tensors(v, tensors) for v in value]
    return value


def save_tree(tree: dict[str, Any], path: Path) -> None:
    """Write a checkpoint folder atomically: a reader sees the previous checkpoint or this one, never half."""
    tensors: dict[str, torch.Tensor] = {}
    state = split_tensors(tree, tensors)
    with atomic_directory(path) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


def load_tree(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    tensors = load_file(str(Path(path) / TENSORS_FILE), device=str(device))
    return join_tensors(json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8")), tensors)


def read_position(path: Path) -> tuple[int, int]:
    """(optimizer step, next micro-batch of the data order) a checkpoint was taken at, without loading tensors."""
    state = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    return int(state["global_step"]), int(state["paw_data"]["next_micro_batch"])


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / STATE_FILE).is_file() and (Path(path) / TENSORS_FILE).is_file()


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning's checkpoint IO with safetensors + JSON in place of torch.save / pickle."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_tree(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_tree(Path(path), map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)


class PeriodicCheckpoint(L.Callback):
    """Every N optimizer steps, replace `path` with a checkpoint of the run (adapter, optimizer, scheduler, loops)."""

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._saved_step:
            if step < trainer.max_steps:  # the finished adapter supersedes a checkpoint at the last step
                trainer.save_checkpoint(self.path)
            self._saved_step = step
