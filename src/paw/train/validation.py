"""Validation while training: the evaluator's accuracy on held-out items, and keeping the best adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from paw.evaluate import compute_metrics
from paw.evaluate.scoring import make_records, pack_items, score_in_batches
from paw.tasks.items import MCItem


class Validation(L.Callback):
    """Every N optimizer steps (and at the last): score the held-out items as `paw eval` does, log val/acc and
    val/acc_norm, and call `save_best` when accuracy is the best so far."""

    def __init__(self, items: list[MCItem], tokenizer: Any, every_n_steps: int, *, max_length: int, batch_size: int,
                 save_best: Callable[[L.Trainer, L.LightningModule, dict[str, Any]], None]) -> None:
        self.items = items
        # tokenized once, scored many times; an over-long answer is scored on its first max_length tokens
        self.rows = pack_items(tokenizer, items, max_length, truncate_answers=True)
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.save_best = save_best
        self.best: dict[str, Any] = {}
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step == self._last_step or not (step % self.every_n_steps == 0 or step == trainer.max_steps):
            return
        self._last_step = step
        model = pl_module.model
        model.eval()  # no dropout while scoring; every rank scores the same items, so sharded models stay in step
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            scores, _ = score_in_batches(model, self.rows, self.batch_size, halve_on_oom=False)
        model.train()
        metrics = compute_metrics(make_records(self.items, scores, self.rows))
        for logger in trainer.loggers:  # Lightning's logging step is the 0-based index of the step just taken
            logger.log_metrics({"val/acc": metrics["acc"], "val/acc_norm": metrics["acc_norm"]}, step=step - 1)
        if not self.best or metrics["acc"] > self.best["val_acc"]:
            self.best = {"step": step, "val_acc": metrics["acc"], "val_acc_norm": metrics["acc_norm"]}
            self.save_best(trainer, pl_module, self.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
