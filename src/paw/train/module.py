"""The Lightning module around a PEFT LoRA model: loss on answer tokens, AdamW, warmup + cosine, safe resume."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch

from paw.errors import PawError
from paw.train.data import IGNORE_INDEX


def is_lora_key(name: str) -> bool:
    """Whether a state-dict entry is a LoRA weight (the only trainable ones; names as PEFT gives them)."""
    return ".lora_" in name


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warmup to 1 over warmup_steps, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def answer_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens, the same value as the model's own `labels` loss.

    The vocabulary projection runs only at the positions that predict an answer token (`logits_to_keep` with a
    mask keeps the model's own soft-capping): with Gemma's 262k vocabulary it would otherwise cost more than the
    rest of the model.
    """
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                   use_cache=False).logits
    if logits.dim() != 2:
        raise PawError(f"{type(model).__name__} ignores logits_to_keep masks; PAW needs transformers >= 5.18")
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])


class LoraModule(L.LightningModule):
    """Trains the LoRA weights of `model` (a PeftModel); only they are trainable, optimized and checkpointed."""

    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float, warmup_ratio: float,
                 max_steps: int, grad_accum: int) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = round(warmup_ratio * max_steps)
        self.max_steps = max_steps
        self.grad_accum = grad_accum
        self.strict_loading = False  # checkpoints hold the LoRA weights only, not the frozen base
        self.tokens_seen = 0
        self.last_step_loss = torch.zeros(())
        self._step_loss_sum = torch.zeros(())
        self._train_start = 0.0
        self._restored_rng: dict[str, torch.Tensor] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = answer_loss(self.model, batch)
        # All ranks agree, so they stop together instead of hanging in the next all-reduce.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            raise PawError(
                f"training loss became {float(loss.detach())} at step {self.trainer.global_step + 1}; stopped, "
                f"the last good checkpoint (if any) is kept; lower --lr (now {self.lr:g}) or --max_grad_norm, "
                "or use --precision 32"
            )
        if batch_idx % self.grad_accum == 0:
            self._step_loss_sum = loss.detach()
        else:
            self._step_loss_sum = self._step_loss_sum + loss.detach()
        if (batch_idx + 1) % self.grad_accum == 0:
            self.last_step_loss = self._step_loss_sum / self.grad_accum
        self.tokens_seen += batch["num_tokens"]
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False, batch_size=1)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [param for param in self.parameters() if param.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warmup, total = self.warmup_steps, self.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run continues every rank's dropout stream where the checkpoint left it.
        if self._restored_rng:
            torch.set_rng_state(self._restored_rng["cpu"])
            if "cuda" in self._restored_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(self._restored_rng["cuda"])
        self._train_start = time.perf_counter()

    def totals(self) -> dict[str, float]:
        """Run totals over all ranks (every rank must call it): final loss, tokens, time and throughput."""
        seconds = time.perf_counter() - self._train_start
        summed = self.trainer.strategy.reduce(
            torch.tensor([float(self.tokens_seen), float(self.last_step_loss)], device=self.device), reduce_op="sum")
        tokens = int(summed[0])
        return {"final_loss": float(summed[1]) / self.trainer.world_size, "tokens": tokens,
                "tokens_per_s": tokens / max(seconds, 1e-9), "train_time_s": seconds}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_lora_key(k)}
        # Where each rank's data stream continues (PlannedBatches counts micro-batches per rank).
        checkpoint["paw_data"] = {"next_micro_batch": self.trainer.global_step * self.grad_accum,
                                  "world_size": self.trainer.world_size}
        checkpoint["paw_rng"] = {"cpu": self._gather(torch.get_rng_state())}
        if torch.cuda.is_available() and self.device.type == "cuda":
            checkpoint["paw_rng"]["cuda"] = self._gather(torch.cuda.get_rng_state(self.device))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rank = self.trainer.global_rank
        self._restored_rng = {kind: states[rank].to(torch.uint8) for kind, states in checkpoint["paw_rng"].items()}

    def _gather(self, state: torch.Tensor) -> torch.Tensor:
        """This rank's RNG state from every rank: (world_size, n) bytes."""
        gathered = self.all_gather(state.to(self.device))
        return (gathered if self.trainer.world_size > 1 else gathered.unsqueeze(0)).cpu()
