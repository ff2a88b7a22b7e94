"""Scoring as a Lightning predict job: `devices` processes (`strategy="ddp"`, gloo on CPU) each score a shard.

Rows are length-sorted before sharding, so every rank's shard stays sorted (the distributed sampler deals rows
out round-robin). Each rank keeps its scores keyed by item index; at the end they are all-gathered, so any
duplicates a padding sampler adds collapse, and every rank returns the records a single process would (up to
float rounding from different batch neighbours).
With the `ddp` strategy Lightning re-runs the calling script in the extra processes; write results from rank 0
only (`is_global_zero()`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from paw.evaluate.scoring import (
    ItemRecord,
    PackedItem,
    batch_plan,
    length_order,
    make_records,
    model_max_length,
    pack_items,
    score_in_batches,
)
from paw.progress import lightning_progress_callback
from paw.tasks.items import MCItem

QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")


def is_global_zero() -> bool:
    """True in the process that should write results (the only one when not distributed)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _dataloaders(container: Any) -> list[Any]:
    """Lightning hands loaders back as a bare DataLoader, a list of them, or a CombinedLoader."""
    if container is None:
        return []
    if isinstance(container, (list, tuple)):
        return [loader for part in container for loader in _dataloaders(part)]
    flattened = getattr(container, "flattened", None)  # CombinedLoader
    if flattened is not None:
        return _dataloaders(list(flattened))
    return [container]


def _scoring_module(model: Any, size: int, halve_on_oom: bool) -> Any:
    import lightning as L

    class ScoringModule(L.LightningModule):
        """Wraps a (possibly PEFT) causal LM; `predict_step` scores a batch of packed rows."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.size, self.halve_on_oom = size, halve_on_oom
            self.scores: dict[int, tuple[list[float], list[bool]]] = {}
            self.expected = 0

        def on_predict_start(self) -> None:
            self.scores = {}
            self.expected = sum(len(loader.dataset) for loader in _dataloaders(self.trainer.predict_dataloaders))

        def predict_step(self, batch: list[PackedItem], batch_idx: int, dataloader_idx: int = 0) -> None:
            # Keeps the smaller batch size after an out-of-memory halving for the rest of the job.
            scores, self.size = score_in_batches(self.model, batch, self.size, self.halve_on_oom)
            self.scores.update(scores)

        def on_predict_epoch_end(self) -> None:
            if self.trainer.world_size > 1:
                shards: list[Any] = [None] * self.trainer.world_size
                torch.distributed.all_gather_object(shards, self.scores)
                self.scores = {index: score for shard in shards for index, score in shard.items()}
            missing = self.expected - len(self.scores)
            if missing:
                raise RuntimeError(f"distributed scoring lost {missing} of {self.expected} items")

    return ScoringModule()


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's set-up chatter (GPU available, distributed init, few-workers hints); keep warnings."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*predict returned None.*")  # scores are kept on the module
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning 2.6 on torch >= 2.10
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def score_rows_lightning(
    model: Any,
    rows: list[PackedItem],
    *,
    batch_size: int | str = 8,
    devices: int | str = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
) -> dict[int, tuple[list[float], list[bool]]]:
    """`score_rows` as a Lightning predict job over `devices` processes; every rank returns all scores."""
    import lightning as L
    from torch.utils.data import DataLoader

    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[lightning_progress_callback()],
        )
        size, halve_on_oom = batch_plan(batch_size, trainer.strategy.root_device)
        module = _scoring_module(model, size, halve_on_oom)
        loader = DataLoader(length_order(rows), batch_size=size, shuffle=False, collate_fn=list)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return module.scores


def score_items_lightning(
    model: Any,
    tokenizer: Any,
    items: list[MCItem],
    *,
    max_length: int | None = None,
    **job: Any,
) -> list[ItemRecord]:
    """`score_items` as a Lightning job; `job` takes `score_rows_lightning`'s batch_size, devices, strategy,
    accelerator."""
    rows = pack_items(tokenizer, items, max_length or model_max_length(model, tokenizer))
    return make_records(items, score_rows_lightning(model, rows, **job), rows)
