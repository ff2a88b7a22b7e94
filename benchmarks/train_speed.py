"""PAW training (`train_lora`: Lightning + PEFT) vs a plain PEFT + PyTorch loop: training tokens/s, in one run.

Both train the same LoRA (same preset, seed, AdamW, warmup + cosine, clipping) on the same base model object, the
same items, the same batches in the same order and the same precision; both count the non-padding tokens they
train on and time the training loop only (model loading and data set-up excluded; PAW's full call time is
printed too). Runs alternate (PAW, plain, PAW, ...). On a shared machine whole-run times swing with other
processes' load, so the headline ratio pairs the runs step by step: step i trains the same batch in both, and the
median over steps (the first, warm-up step left out) of plain_time_i / paw_time_i is PAW's relative throughput.
Target: PAW overhead <= 10% (ratio >= 0.90).

    python benchmarks/train_speed.py --model smollm2-135m --task arc-easy --steps 20 --batch_size 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from paw.models import load_base
from paw.tasks import load_items
from paw.tasks.items import MCItem
from paw.train import TrainConfig, train_lora
from paw.train.config import lora_settings
from paw.train.data import GoldDataset, PlannedBatches, collate
from paw.train.module import warmup_cosine


class StepTimes(L.Callback):
    """Seconds per optimizer step inside PAW's Lightning loop (end to end, data loading included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def plain_loop(loaded: Any, items: list[MCItem], config: TrainConfig) -> tuple[float, list[float]]:
    """The reference: get_peft_model, a DataLoader and a hand-written loop with a loss print per step."""
    from peft import LoraConfig, get_peft_model

    lora = lora_settings(config)
    torch.manual_seed(config.seed)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, peft_config)
    model.train()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = round(config.warmup_ratio * config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, config.max_steps))
    tokenizer = loaded.tokenizer
    batches = PlannedBatches(len(items), config.batch_size, config.max_steps, config.seed)
    loader = DataLoader(GoldDataset(items, tokenizer, config.max_length), batch_sampler=batches,
                        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16-mixed")
    tokens = 0
    step_seconds = []
    start = last = time.perf_counter()
    for batch in loader:
        with autocast:
            loss = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         labels=batch["labels"].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["num_tokens"]
        print(f"loss {loss.item():.4f}", end="\r")
        now = time.perf_counter()
        step_seconds.append(now - last)
        last = now
    seconds = time.perf_counter() - start
    model.unload()
    return tokens / seconds, step_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arc-easy")
    parser.add_argument("--items", type=int, default=400, help="Train items used (the first N of the train split).")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--preset", default="conservative")
    parser.add_argument("--precision", default="bf16-mixed", choices=["32", "bf16-mixed"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_base(args.model)
    items = load_items(args.task, "train")[: args.items]
    print(f"model {args.model} ({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.0f}M params, "
          f"{loaded.device}), {args.task}: {len(items)} items, {args.steps} steps x batch {args.batch_size}, "
          f"preset {args.preset}, precision {args.precision}", flush=True)
    step_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=args.model, datasets=[args.task], batch_size=args.batch_size, max_steps=args.steps,
                             preset=args.preset, precision=args.precision, output_dir=out, force=True,
                             checkpoint_every_n_steps=0, swanlab_mode="disabled", lr=1e-4)
        # Untimed warm-up of both paths (first-call kernel selection and allocator growth would land on whichever
        # ran first).
        warm = dataclasses.replace(config, max_steps=3)
        train_lora(warm, model=loaded, items={args.task: items})
        plain_loop(loaded, items, warm)
        paw_best = plain_best = 0.0
        for repeat in range(args.repeats):
            started = time.perf_counter()
            timer = StepTimes()
            info = train_lora(config, model=loaded, items={args.task: items}, callbacks=[timer]).info
            print(f"[{repeat}] PAW   {info['tokens_per_s']:8.1f} tokens/s (train loop {info['train_time_s']:.1f} s, "
                  f"whole call {time.perf_counter() - started:.1f} s, final loss {info['final_loss']:.4f})", flush=True)
            plain, plain_seconds = plain_loop(loaded, items, config)
            print(f"[{repeat}] plain {plain:8.1f} tokens/s (train loop {sum(plain_seconds):.1f} s)", flush=True)
            step_ratios += [p / q for p, q in zip(plain_seconds[1:], timer.seconds[1:], strict=True)]
            paw_best, plain_best = max(paw_best, info["tokens_per_s"]), max(plain_best, plain)
    ratio = statistics.median(step_ratios)
    print(f"best runs: PAW / plain = {paw_best:.1f} / {plain_best:.1f} tokens/s = {paw_best / plain_best:.3f}")
    print(f"PAW / plain PEFT loop throughput, median over {len(step_ratios)} paired steps = {ratio:.3f} "
          f"(PAW overhead {100 * (1 - ratio):.1f}%; target <= 10%)")


if __name__ == "__main__":
    main()
