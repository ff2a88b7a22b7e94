"""`train_lora`: pipeline steps 2 and 6. Reads top to bottom: data -> identity/reuse -> model -> train -> save."""

from __future__ import annotations

import json
import logging
import platform
import resource
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from paw import __version__
from paw.errors import PawError
from paw.io import atomic_directory
from paw.models import load_base
from paw.progress import lightning_progress_callback
from paw.tasks import canonical_task_name, load_items
from paw.tasks.items import MCItem
from paw.train.checkpoint import PeriodicCheckpoint, SafetensorsCheckpointIO, is_checkpoint, read_position
from paw.train.config import (
    LoraSettings,
    TrainConfig,
    config_fingerprint,
    lora_settings,
    resolve_precision,
    resolve_target_modules,
    run_dir as run_dir_for,
)
from paw.train.data import GoldDataset, PlannedBatches, collate, data_hash, hold_out, mixed_items
from paw.train.loggers import JsonlLogger, finish_swanlab, swanlab_logger
from paw.train.module import LoraModule, is_lora_key
from paw.train.validation import Validation

log = logging.getLogger("paw.train")

RUN_INFO_FILE = "paw_run.json"


@dataclass
class TrainResult:
    """Where the trained adapter is and how the run went (the same facts as its paw_run.json)."""

    adapter_dir: Path  # the adapter after the last step: a PEFT folder with paw_run.json beside the weights
    run_dir: Path
    reused: bool  # True when an identical finished run was returned instead of training
    steps: int
    final_loss: float
    best_adapter_dir: Path | None  # the adapter with the best validation accuracy, when validating
    info: dict[str, Any]


def train_lora(config: TrainConfig, *, model: Any = None, items: Mapping[str, list[MCItem]] | None = None,
               callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Train a LoRA adapter on the tasks' train split, or return the identical finished run.

    `model` is a LoadedModel (model, tokenizer, ref) to train on instead of `paw.models.load_base(config.model)`;
    `items` maps task -> train items to use instead of `paw.tasks.load_items(task, "train")`; `callbacks` are
    extra Lightning callbacks. The LoRA layers are removed from the base model afterwards, so a cached base
    stays as it was.
    """
    config.validate()
    started = time.perf_counter()

    # Data and run identity: the same base, data, LoRA settings, hyper-parameters and seed reuse a finished run.
    if items is None:
        # `ARC_Easy` and `arc-easy` are one task, so they name one run.
        config = replace(config, datasets=[canonical_task_name(task) for task in config.datasets])
        items = _load_train_items(config)
    items = dict(items)
    validation_items: list[MCItem] = []
    if config.val_every_n_steps:
        items, validation_items = hold_out(items, config.val_size, config.seed)
    train_items = mixed_items(items)
    lora = lora_settings(config)
    fingerprint = config_fingerprint(config, lora, data_hash(train_items))
    run_dir = run_dir_for(config, fingerprint)
    adapter_dir, best_dir, checkpoint_dir = run_dir / "adapter", run_dir / "best", run_dir / "checkpoints" / "last"

    finished = _finished_run(adapter_dir, fingerprint)
    if finished is not None and not config.force:
        log.info("reusing the finished identical run in %s (pass --force to retrain)", run_dir)
        return _result(run_dir, finished, reused=True)

    resume_step, start_batch = _resume_position(config, checkpoint_dir)
    if resume_step is None:
        shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
        shutil.rmtree(best_dir, ignore_errors=True)

    # Model: LoRA layers go onto the (possibly cached) base and come off again at the end.
    loaded = model if model is not None else _load_base(config)
    precision = resolve_precision(config.precision)
    if precision == "bf16-true" and loaded.dtype != torch.bfloat16:
        # Lightning would cast the shared base to bf16 in place; train on the cache's bf16 copy of it instead.
        loaded = load_base(loaded.ref.location, dtype=torch.bfloat16, device=loaded.device)
    base, tokenizer = loaded.model, loaded.tokenizer
    L.seed_everything(config.seed, verbose=False)
    with _lora_attached(loaded, lora) as peft_model:
        module = LoraModule(peft_model, lr=config.lr, weight_decay=config.weight_decay,
                            warmup_ratio=config.warmup_ratio, max_steps=config.max_steps, grad_accum=config.grad_accum)

        # Callbacks checkpoint, validate, report progress and write the adapter; loggers keep the metrics.
        all_callbacks: list[L.Callback] = [lightning_progress_callback(), *callbacks]
        validation = None
        if validation_items:
            validation = Validation(validation_items, tokenizer, config.val_every_n_steps,
                                    max_length=config.max_length, batch_size=config.batch_size,
                                    save_best=lambda trainer, pl_module, best: save_adapter(
                                        trainer, pl_module, best_dir, {"config_hash": fingerprint, "best": best}))
            all_callbacks.append(validation)
        if config.checkpoint_every_n_steps:
            all_callbacks.append(PeriodicCheckpoint(checkpoint_dir, config.checkpoint_every_n_steps))

        def run_info(trainer: L.Trainer, pl_module: LoraModule) -> dict[str, Any]:
            return {
                "paw_version": __version__,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config_hash": fingerprint,
                "config": asdict(config),
                "lora": asdict(lora),
                "base_model": {"name": config.model, "path": loaded.ref.location,
                               "architecture": base.config.model_type},
                "data": {"tasks": list(items), "train_items": len(train_items),
                         "validation_items": len(validation_items), "hash": data_hash(train_items)},
                "versions": _versions(),
                "precision": precision,
                "world_size": trainer.world_size,
                "steps": trainer.global_step,
                **pl_module.totals(),
                "wall_time_s": time.perf_counter() - started,
                "peak_memory_mb": _peak_memory_mb(),
                "best": validation.best if validation is not None else None,
            }

        all_callbacks.append(AdapterWriter(adapter_dir, run_info))
        loggers: list[Any] = [JsonlLogger(run_dir / "metrics.jsonl", resume_step)]
        tracker = swanlab_logger(config.swanlab_mode, run_dir / "swanlab", run_dir.name, asdict(config))
        if tracker is not None:
            loggers.append(tracker)

        with _quiet_lightning():
            trainer = L.Trainer(
                accelerator="auto",
                devices=config.devices,
                num_nodes=config.num_nodes,
                strategy=_strategy(config.strategy, base),
                precision=precision,  # type: ignore[arg-type]
                max_steps=config.max_steps,
                accumulate_grad_batches=config.grad_accum,
                gradient_clip_val=config.max_grad_norm or None,
                callbacks=all_callbacks,
                logger=loggers,
                log_every_n_steps=max(1, min(10, config.max_steps // 20)),
                plugins=[SafetensorsCheckpointIO()],
                enable_checkpointing=False,
                enable_progress_bar=True,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                use_distributed_sampler=False,  # PlannedBatches shards the data itself, in a resumable order
                default_root_dir=run_dir,
            )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batches = PlannedBatches(len(train_items), config.batch_size, config.max_steps * config.grad_accum, config.seed,
                                 rank=trainer.global_rank, world_size=trainer.world_size,
                                 start_batch=start_batch)
        loader = DataLoader(GoldDataset(train_items, tokenizer, config.max_length), batch_sampler=batches,
                            collate_fn=partial(collate, pad_id=pad_id),
                            generator=torch.Generator().manual_seed(config.seed))

        peft_model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it is given
        try:
            with _quiet_lightning():
                trainer.fit(module, train_dataloaders=loader,
                            ckpt_path=checkpoint_dir if resume_step is not None else None)
        except torch.OutOfMemoryError as error:
            raise PawError(
                f"out of GPU memory training {config.model}: lower --batch_size (now {config.batch_size}) and raise "
                f"--grad_accum to keep the effective batch, or lower --max_length (now {config.max_length})"
            ) from error
        finally:
            if tracker is not None and trainer.is_global_zero:
                finish_swanlab()

    info = _finished_run(adapter_dir, fingerprint)
    if info is None:
        raise PawError(f"training stopped before the last step; run again with --resume to continue in {run_dir}")
    if trainer.is_global_zero:
        shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
    log.info("trained %s for %d steps (final loss %.4f): %s", config.model, info["steps"], info["final_loss"],
             adapter_dir)
    return _result(run_dir, info, reused=False)


def save_adapter(trainer: L.Trainer, pl_module: LoraModule, target: Path, run_info: dict[str, Any]) -> None:
    """Write the LoRA weights as a PEFT folder with paw_run.json, atomically, on rank 0.

    Every rank must call it: under FSDP the full weights are gathered from all ranks first.
    """
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        lora_state = {name.removeprefix("model."): tensor for name, tensor in state.items() if is_lora_key(name)}
        with atomic_directory(target) as tmp:
            pl_module.model.save_pretrained(tmp, state_dict=lora_state)
            (tmp / RUN_INFO_FILE).write_text(_json(run_info), encoding="utf-8")
    trainer.strategy.barrier("paw_save_adapter")


class AdapterWriter(L.Callback):
    """Saves the final adapter while the strategy still holds the trained weights (before Lightning's teardown)."""

    def __init__(self, target: Path, run_info: Any) -> None:
        self.target = target
        self.run_info = run_info

    def on_train_end(self, trainer: L.Trainer, pl_module: LoraModule) -> None:
        save_adapter(trainer, pl_module, self.target, self.run_info(trainer, pl_module))


def _load_train_items(config: TrainConfig) -> dict[str, list[MCItem]]:
    return {task: load_items(task, "train", source=config.data_source, data_dir=config.data_dir)
            for task in config.datasets}


def _load_base(config: TrainConfig) -> Any:
    return load_base(config.model, models_dir=config.models_dir)


@contextmanager
def _lora_attached(loaded: Any, lora: LoraSettings) -> Iterator[torch.nn.Module]:
    """A PeftModel with fresh LoRA layers on the loaded base; afterwards the layers are removed and the base is put
    back on its device, dtype, mode and requires_grad flags (Lightning's teardown moves it to the CPU)."""
    from peft import LoraConfig, get_peft_model

    base = loaded.model
    if loaded.adapter is not None:
        raise PawError(f"model {loaded.ref.name!r} carries adapter {loaded.adapter}; "
                       "train on a plain base from load_base")
    targets = resolve_target_modules(base, lora.target_modules)
    param = next(base.parameters())
    device, dtype, training = param.device, param.dtype, base.training
    grad_flags = [p.requires_grad for p in base.parameters()]
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # PEFT's call into transformers
        peft_model = get_peft_model(base, peft_config)
    peft_config.base_model_name_or_path = loaded.ref.location  # what reloads the base, wherever it came from
    try:
        yield peft_model
    finally:
        peft_model.unload()
        moved = next(base.parameters())
        if moved.device != device or moved.dtype != dtype:
            base.to(device=device, dtype=dtype)
        base.train(training)
        for p, flag in zip(base.parameters(), grad_flags):
            p.requires_grad_(flag)


def _strategy(name: str, base: torch.nn.Module) -> Any:
    if name != "fsdp":
        return name
    if not torch.cuda.is_available():
        raise PawError("strategy fsdp needs CUDA GPUs (Lightning shards on GPUs only); on CPU use --strategy ddp")
    from lightning.pytorch.strategies import FSDPStrategy

    # Shard by decoder layer; use_orig_params lets frozen base and trainable LoRA weights share FSDP units.
    layer_classes = {type(m) for m in base.modules() if type(m).__name__ in set(base._no_split_modules or ())}
    return FSDPStrategy(auto_wrap_policy=layer_classes, use_orig_params=True, state_dict_type="full")


def _resume_position(config: TrainConfig, checkpoint_dir: Path) -> tuple[int | None, int]:
    """(step, next micro-batch) to resume from, or (None, 0) to start over."""
    if not is_checkpoint(checkpoint_dir):
        if config.resume:
            log.info("no checkpoint in %s; starting from step 0", checkpoint_dir)
        return None, 0
    step, next_micro_batch = read_position(checkpoint_dir)
    if not config.resume or config.force:
        log.info("starting over; a checkpoint at step %d exists (pass --resume to continue it)", step)
        return None, 0
    if config.strategy == "fsdp":
        raise PawError("resuming is supported with strategy auto or ddp, not fsdp; rerun without --resume")
    log.info("resuming from step %d (%s)", step, checkpoint_dir)
    return step, next_micro_batch


def _finished_run(adapter_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    info_file = adapter_dir / RUN_INFO_FILE
    if not info_file.is_file():
        return None
    info = json.loads(info_file.read_text(encoding="utf-8"))
    return info if info.get("config_hash") == fingerprint else None


def _result(run_dir: Path, info: dict[str, Any], reused: bool) -> TrainResult:
    best_dir = run_dir / "best"
    return TrainResult(adapter_dir=run_dir / "adapter", run_dir=run_dir, reused=reused, steps=info["steps"],
                       final_loss=info["final_loss"], best_adapter_dir=best_dir if best_dir.is_dir() else None,
                       info=info)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "lightning": L.__version__, "paw": __version__}


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep Lightning's banner lines ("GPU available ...") and data-loader tips out of the logs."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*litlogger.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        lightning_log.setLevel(level)
